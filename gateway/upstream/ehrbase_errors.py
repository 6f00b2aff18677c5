"""EHRbase answers as the project's errors: status mapping, error bodies, ETag values.

EHRbase error bodies are ``{"error": <HTTP reason phrase>, "message": <text>}``, or the same two fields as
XML (``<HashMap><error>…</error><message>…</message></HashMap>``) when the request accepted XML, as the
template endpoints do; they are carried into the problem's ``upstream_issues`` (``code`` = reason,
``diagnostics`` = message).
"""

from __future__ import annotations

import json

from gateway.errors import (
    ApiError,
    Conflict,
    NotFound,
    PreconditionFailed,
    UnprocessableEntity,
    UpstreamError,
    UpstreamIssue,
)
from gateway.upstream.transport import UpstreamResponse


class EhrSubjectInUse(Conflict):
    """409 from ``POST /ehr``: another EHR already has this subject (a concurrent create won)."""

    code = "ehr_subject_in_use"


class CompositionGone(ApiError):
    """The composition was deleted (EHRbase answers such a read with 204)."""

    status, code, title = 410, "letter_deleted", "Letter deleted"


def _error_fields(response: UpstreamResponse) -> tuple[object, object] | None:
    """``(error, message)`` of an EHRbase error body in JSON or XML; None when it is neither."""
    if "xml" in response.headers.get("content-type", ""):
        from lxml import etree  # imported on first use: only the template endpoints answer XML

        parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
        try:
            root = etree.fromstring(response.content, parser)
        except etree.XMLSyntaxError:
            return None
        return root.findtext("error"), root.findtext("message")
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    return body.get("error"), body.get("message")


def issues_of(response: UpstreamResponse) -> list[UpstreamIssue]:
    """EHRbase's error body as upstream issues (an empty list when the body is not the usual shape)."""
    fields = _error_fields(response)
    if fields is None:
        return []
    error, message = fields
    return [
        UpstreamIssue(
            severity="error",
            code=str(error) if error is not None else None,
            diagnostics=str(message)[:1000] if message is not None else None,
        )
    ]


def upstream_failure(response: UpstreamResponse, what: str) -> ApiError:
    """Map an EHRbase 4xx/5xx answer to the project's error (with EHRbase's message carried along)."""
    issues = issues_of(response) or None
    status = response.status_code
    if status == 404:
        return NotFound(f"EHRbase does not know this {what}.", upstream_issues=issues)
    if status == 409:
        return Conflict(f"EHRbase reports a conflict on this {what}.", upstream_issues=issues)
    if status == 412:
        return PreconditionFailed(f"The {what} has changed since it was read.", upstream_issues=issues)
    if status in (400, 422):
        return UnprocessableEntity(
            f"EHRbase rejected the {what}.", code="upstream_rejected", upstream_issues=issues
        )
    return UpstreamError(f"EHRbase answered {status} for the {what}.", upstream_issues=issues)


def strip_etag(value: str | None) -> str | None:
    """An ``ETag`` header value without ``W/`` and quotes (EHRbase sends ``"<uid>::<system>::<n>"``)."""
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"') or None
