"""The OpenAPI document types every body, so a generated TypeScript client needs no hand edits.

Every request body and every answer with a body has a schema under each media type it is sent with, and
every error answer is the ``Problem`` schema under ``application/problem+json``. The reference web client
(tests/browser/app) is generated from this document; ``just browser`` checks the generated types match it.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.openapi import openapi_document

PROBLEM = {"$ref": "#/components/schemas/Problem"}
#: The FHIR face (/fhir) answers errors as FHIR OperationOutcomes, declared as 4XX/5XX ranges.
OUTCOME = {"$ref": "#/components/schemas/OperationOutcomeBody"}
METHODS = {"get", "put", "post", "patch", "delete"}
#: Non-2xx answers that are not errors: readiness reports which store is down in its own shape.
NOT_PROBLEMS = {
    ("GET", "/ready", "503"),
    # OpenID Connect Back-Channel Logout 1.0 prescribes its own error body for the identity provider.
    ("POST", "/auth/sso/{provider_id}/backchannel-logout", "400"),
}


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    paths: dict[str, dict[str, Any]] = openapi_document()["paths"]  # type: ignore[assignment]
    return [
        (method.upper(), path, operation)
        for path, item in sorted(paths.items())
        for method, operation in sorted(item.items())
        if method in METHODS
    ]


OPERATIONS = operations()


def test_the_routes_a_frontend_uses_are_documented() -> None:
    documented = {(method, path) for method, path, _ in OPERATIONS}
    assert {
        ("POST", "/auth/login"),
        ("POST", "/auth/refresh"),
        ("GET", "/auth/csrf"),
        ("POST", "/auth/logout"),
        ("GET", "/patients"),
        ("POST", "/patients"),
        ("GET", "/patients/{patient_id}"),
        ("POST", "/patients/{patient_id}/letters"),
        ("PUT", "/patients/{patient_id}/letters/{letter_id}"),
    } <= documented


@pytest.mark.parametrize(
    ("method", "path", "operation"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS]
)
def test_every_body_has_a_schema_and_every_error_is_a_problem(
    method: str, path: str, operation: dict[str, Any]
) -> None:
    for media, content in operation.get("requestBody", {}).get("content", {}).items():
        assert content.get("schema"), f"{method} {path}: request body {media} has no schema"
    responses: dict[str, dict[str, Any]] = operation["responses"]
    if path.startswith("/fhir/"):
        assert {"4XX", "5XX"} <= set(responses), f"{method} {path}: errors not declared"
        for status in ("4XX", "5XX"):
            outcome = responses[status]["content"]["application/fhir+json"]["schema"]
            assert outcome == OUTCOME, f"{method} {path}: {status} is not an OperationOutcome"
        assert not [s for s in responses if s[0] in "45" and s not in ("4XX", "5XX")], (
            f"{method} {path}: a problem+json status on the FHIR face"
        )
        return
    for status, response in responses.items():
        content: dict[str, dict[str, Any]] = response.get("content", {})
        if int(status) >= 400 and (method, path, status) not in NOT_PROBLEMS:
            assert content.get("application/problem+json", {}).get("schema") == PROBLEM, (
                f"{method} {path}: {status} is not declared as a problem"
            )
        elif int(status) == 204:
            assert not content, f"{method} {path}: 204 with a body"
        for media, body in content.items():
            assert body.get("schema"), f"{method} {path}: {status} {media} has no schema"
