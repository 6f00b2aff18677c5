"""EHRbase answers mapped to the project's errors, with EHRbase's message carried along."""

from __future__ import annotations

import httpx
import pytest

from gateway.errors import Conflict, NotFound, PreconditionFailed, UnprocessableEntity, UpstreamError
from gateway.upstream.ehrbase_errors import issues_of, strip_etag, upstream_failure
from tests import ehrbase_payloads as eb
from tests.respx_transport import upstream_response


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, UnprocessableEntity),
        (404, NotFound),
        (409, Conflict),
        (412, PreconditionFailed),
        (422, UnprocessableEntity),
        (500, UpstreamError),
    ],
)
def test_status_mapping(status: int, kind: type[Exception]) -> None:
    error = upstream_failure(upstream_response(eb.error(status, "some text")), "letter")
    assert type(error) is kind
    assert error.upstream_issues is not None
    assert error.upstream_issues[0].diagnostics == "some text"


def test_unexpected_status_is_a_bad_upstream_response() -> None:
    error = upstream_failure(
        upstream_response(httpx.Response(401, json={"error": "Unauthorized", "message": "Bad credentials"})),
        "EHR",
    )
    assert error.status == 502


def test_a_non_json_error_body_gives_no_issues() -> None:
    assert issues_of(upstream_response(httpx.Response(502, text="<html>Bad Gateway</html>"))) == []
    assert issues_of(upstream_response(httpx.Response(500, json=["not", "a", "map"]))) == []


@pytest.mark.parametrize(
    ("header", "value"),
    [('"a::b::1"', "a::b::1"), ('W/"a::b::1"', "a::b::1"), ("a::b::1", "a::b::1"), ("", None), (None, None)],
)
def test_strip_etag(header: str | None, value: str | None) -> None:
    assert strip_etag(header) == value
