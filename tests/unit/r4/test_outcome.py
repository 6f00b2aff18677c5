"""Errors on the FHIR face: OperationOutcome with the stable code, nothing of upstream text."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome

from gateway.errors import (
    FieldError,
    Forbidden,
    NotFound,
    UnprocessableEntity,
    UpstreamIssue,
    UpstreamTimeout,
)
from gateway.r4.outcome import ERROR_CODE_SYSTEM, is_fhir_path, outcome_of


def test_code_title_and_request_id() -> None:
    outcome = OperationOutcome.model_validate(
        outcome_of(NotFound("No such thing.", code="document_not_found"), "rid-1")
    )
    issue = outcome.issue[0]
    assert (issue.severity, issue.code) == ("error", "not-found")
    assert (issue.details.coding[0].system, issue.details.coding[0].code) == (
        ERROR_CODE_SYSTEM,
        "document_not_found",
    )
    assert issue.diagnostics == "No such thing. (request id rid-1)"


def test_field_errors_become_issues_with_an_expression() -> None:
    error = UnprocessableEntity(
        "Bad.", errors=[FieldError(loc=["query", "_count"], msg="too big", type="value_error")]
    )
    outcome = outcome_of(error, None)
    assert outcome["issue"][1]["expression"] == ["query._count"]


def test_upstream_issues_keep_only_severity_and_code() -> None:
    error = UpstreamTimeout(
        "Slow.",
        upstream_issues=[UpstreamIssue(severity="error", code="processing", diagnostics="secret path /x/y")],
    )
    outcome = outcome_of(error, None)
    assert outcome["issue"][0]["code"] == "timeout"
    assert outcome["issue"][1] == {
        "severity": "error",
        "code": "processing",
        "diagnostics": "Reported by the upstream store.",
    }
    assert "secret" not in str(outcome)


def test_unknown_upstream_codes_are_exceptions() -> None:
    error = Forbidden("No.", upstream_issues=[UpstreamIssue(severity="bogus", code="weird")])
    assert outcome_of(error, None)["issue"][1]["code"] == "exception"


@pytest.mark.parametrize(
    ("path", "fhir"), [("/fhir", True), ("/fhir/Patient", True), ("/fhirx", False), ("/patients", False)]
)
def test_fhir_paths(path: str, fhir: bool) -> None:
    assert is_fhir_path(path) is fhir
