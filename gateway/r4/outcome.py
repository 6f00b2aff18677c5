"""Errors on the FHIR face as ``OperationOutcome`` (the JSON API's problem details, re-shaped).

The gateway has one error model (:class:`gateway.errors.ApiError`); under ``/fhir`` it is rendered as an
OperationOutcome with the same HTTP status. The stable ``code`` travels in ``issue.details.coding`` (system
:data:`ERROR_CODE_SYSTEM`), the message in ``diagnostics``; field errors become one issue each with an
``expression``. Upstream issues are reduced to their severity and code: nothing of an upstream error body
reaches a FHIR client as text.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from gateway.errors import STATUSES, ApiError

FHIR_JSON = "application/fhir+json"
#: The code system of the gateway's stable error codes (docs/api/errors.md).
ERROR_CODE_SYSTEM = "urn:fhir-openehr-gateway:error-code"


class OutcomeCoding(BaseModel):
    system: str | None = None
    code: str | None = None
    display: str | None = None


class OutcomeDetails(BaseModel):
    coding: list[OutcomeCoding] | None = None
    text: str | None = None


class OutcomeIssue(BaseModel):
    severity: str = Field(description="fatal | error | warning | information")
    code: str = Field(description="FHIR IssueType, e.g. not-found, forbidden, invalid, transient.")
    details: OutcomeDetails | None = Field(
        default=None, description=f"The gateway's stable error code (system {ERROR_CODE_SYSTEM})."
    )
    diagnostics: str | None = None
    expression: list[str] | None = None


class OperationOutcomeBody(BaseModel):
    """A FHIR R4 OperationOutcome: the body of every error under ``/fhir`` (documentation schema)."""

    resourceType: str = Field(default="OperationOutcome", description="Always OperationOutcome.")
    issue: list[OutcomeIssue]


def outcome_responses() -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries: every 4xx and 5xx of the FHIR face is an OperationOutcome."""
    schema = {"$ref": "#/components/schemas/OperationOutcomeBody"}
    return {
        status: {
            "model": OperationOutcomeBody,
            "content": {FHIR_JSON: {"schema": schema}},
            "description": description,
        }
        for status, description in (
            ("4XX", "A client error (FHIR's 400 for invalid input), as an OperationOutcome."),
            ("5XX", "An upstream or gateway failure (502, 503, 504), as an OperationOutcome."),
        )
    }


def is_fhir_path(path: str) -> bool:
    """Whether a request path is on the FHIR face (its errors are OperationOutcomes)."""
    return path == "/fhir" or path.startswith("/fhir/")


def outcome_of(error: ApiError, request_id: str | None) -> dict[str, Any]:
    """The OperationOutcome JSON for ``error`` (validated by the fhir.resources model)."""
    from fhir.resources.R4B.operationoutcome import OperationOutcome  # on the first error, not at start-up

    diagnostics = error.detail or error.title
    if request_id:
        diagnostics = f"{diagnostics} (request id {request_id})"
    known = STATUSES.get(error.status)
    issue_type = known.issue if known else "exception"
    severity = "fatal" if error.status == 500 else "error"
    issues: list[dict[str, Any]] = [
        {
            "severity": severity,
            "code": issue_type,
            "details": {
                "coding": [{"system": ERROR_CODE_SYSTEM, "code": error.code, "display": error.title}],
                "text": error.title,
            },
            "diagnostics": diagnostics,
        }
    ]
    for field in error.errors or []:
        issues.append(
            {
                "severity": "error",
                "code": "invalid",
                "diagnostics": field.msg,
                "expression": [".".join(str(part) for part in field.loc)],
            }
        )
    for upstream in error.upstream_issues or []:
        issues.append(
            {
                "severity": upstream.severity if upstream.severity in _SEVERITIES else "error",
                "code": upstream.code if upstream.code in _ISSUE_TYPES else "exception",
                "diagnostics": "Reported by the upstream store.",
            }
        )
    outcome = OperationOutcome.model_validate({"resourceType": "OperationOutcome", "issue": issues})
    body: dict[str, Any] = outcome.model_dump(mode="json", exclude_none=True)
    return body


_SEVERITIES = {"fatal", "error", "warning", "information"}
#: FHIR R4 IssueType codes an upstream issue may keep (anything else becomes ``exception``).
_ISSUE_TYPES = {
    "invalid",
    "structure",
    "required",
    "value",
    "invariant",
    "security",
    "login",
    "unknown",
    "expired",
    "forbidden",
    "suppressed",
    "processing",
    "not-supported",
    "duplicate",
    "multiple-matches",
    "not-found",
    "deleted",
    "too-long",
    "code-invalid",
    "extension",
    "too-costly",
    "business-rule",
    "conflict",
    "transient",
    "lock-error",
    "no-store",
    "exception",
    "timeout",
    "incomplete",
    "throttled",
    "informational",
}
