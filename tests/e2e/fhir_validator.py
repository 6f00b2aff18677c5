"""FHIR R4 validation for the e2e tests: HAPI FHIR's own validator, in the e2e HAPI server, offline.

The e2e HAPI FHIR JPA server (``tests/e2e/infra/hapi``, at ``E2E_FHIR_URL``) answers
``POST {base}/{Type}/$validate`` with HAPI's ``FhirInstanceValidator`` (the HL7 core validator) checking
the resource against the R4 core specification: structure and cardinality, data types, invariants
(``pat-1``, ``bdl-*``, ...), fixed and required value sets. Everything it uses is in the server's jar
(``hapi-fhir-validation`` and ``hapi-fhir-validation-resources-r4``): no terminology server, no package
download. What it cannot know is reported as a warning, not an error: codes of code systems it does not
hold (SNOMED CT, LOINC) unless a required binding rules them out, references to resources it does not hold.

A resource HAPI cannot even parse (an unknown code of a FHIR enumeration such as ``status: "bogus"``, a
malformed date or base64 value) is answered with 400 and an OperationOutcome naming the element: that is
returned as an error too. Anything else (HAPI down, 5xx, an unknown resource type) raises
:class:`FhirValidatorError`, so a broken validator never reads as "no errors".

Use::

    from tests.e2e.fhir_validator import assert_valid, validation_errors

    assert validation_errors(None, resource) == []   # None: E2E_FHIR_URL; or a base URL, or an httpx.Client
    assert_valid(resource)                           # the same, failing with the errors listed

or the ``fhir_validator`` fixture below (a :class:`FhirValidator` on one HTTP client for the session; to offer
it to every e2e test, import it into ``tests/e2e/conftest.py``). Async tests can use
:func:`validation_errors_async`. The first validation after HAPI starts loads the R4 definitions and
warms the validator up (up to half a minute on a 2-core machine); later ones take well under a second, a
large CapabilityStatement a few seconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

#: Seconds one $validate call may take (the first one loads HAPI's R4 definitions).
TIMEOUT = 120.0
FHIR_JSON = "application/fhir+json"
ERROR_SEVERITIES = frozenset({"error", "fatal"})
#: Statuses whose OperationOutcome is a verdict on the resource (200: validated; 400: HAPI could not parse
#: it; 412/422: what HAPI answers when it rejects a resource, depending on the version and operation mode).
VERDICT_STATUSES = frozenset({200, 400, 412, 422})


class FhirValidatorError(RuntimeError):
    """HAPI did not validate the resource (not running, failed, or answered something else)."""


@dataclass(frozen=True)
class Issue:
    """One ``OperationOutcome.issue`` of a validation."""

    severity: str
    code: str
    location: str
    diagnostics: str
    message_id: str = ""

    @property
    def is_error(self) -> bool:
        """True for ``error`` and ``fatal`` (what makes a resource invalid)."""
        return self.severity in ERROR_SEVERITIES

    def __str__(self) -> str:
        return f"{self.severity} at {self.location or '(resource)'}: {self.diagnostics}"


def _base_url(base_url: str | None, client: httpx.Client | httpx.AsyncClient | None = None) -> str:
    """``base_url``, else the client's own base URL, else ``E2E_FHIR_URL``."""
    url = base_url or (str(client.base_url) if client is not None else "") or os.environ.get("E2E_FHIR_URL")
    if not url:
        raise FhirValidatorError("no FHIR base URL: pass one or set E2E_FHIR_URL (tests/e2e/infra/up.sh)")
    return url.rstrip("/")


def _request(resource: Mapping[str, Any], as_parameters: bool) -> tuple[str, dict[str, Any]]:
    """The path (relative to the FHIR base) and the body of the $validate call for ``resource``."""
    resource_type = resource.get("resourceType") if isinstance(resource, Mapping) else None
    if not isinstance(resource_type, str) or not resource_type:
        raise ValueError("a FHIR resource needs a resourceType")
    body: dict[str, Any] = dict(resource)
    if as_parameters:
        body = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": body}]}
    return f"{resource_type}/$validate", body


def _issues(response: httpx.Response) -> list[Issue]:
    """The issues of HAPI's answer; raises when the answer is no verdict on the resource."""
    try:
        outcome = response.json()
    except ValueError:
        outcome = None
    if (
        response.status_code not in VERDICT_STATUSES
        or not isinstance(outcome, dict)
        or outcome.get("resourceType") != "OperationOutcome"
    ):
        raise FhirValidatorError(
            f"$validate at {response.request.url} answered {response.status_code}: {response.text[:2000]}"
        )
    issues = []
    for issue in outcome.get("issue", []):
        # expression (FHIRPath) first; location may also hold HAPI's "Line[1] Col[282]"
        where = (issue.get("expression") or issue.get("location") or [""])[0]
        message_id = next(
            (
                ext.get("valueString", "")
                for ext in issue.get("extension", [])
                if ext.get("url", "").endswith("operationoutcome-message-id")
            ),
            "",
        )
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
        issues.append(Issue(issue.get("severity", ""), issue.get("code", ""), where, text, message_id))
    if response.status_code != 200 and not any(issue.is_error for issue in issues):
        raise FhirValidatorError(f"$validate answered {response.status_code} without an error: {outcome}")
    return issues


class FhirValidator:
    """Validates FHIR R4 resources (dicts, as JSON) with the e2e HAPI server's ``$validate``.

    Args:
        base_url: HAPI's FHIR base URL; default the client's ``base_url`` if it has one, else
            ``E2E_FHIR_URL``.
        client: an ``httpx.Client`` to send with (not closed here); default one of its own.
    """

    def __init__(self, base_url: str | None = None, client: httpx.Client | None = None) -> None:
        self.base_url = _base_url(base_url, client)
        self._own = client is None
        self._client = client or httpx.Client(timeout=TIMEOUT)

    def __enter__(self) -> FhirValidator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP client if this validator made it."""
        if self._own:
            self._client.close()

    def issues(self, resource: Mapping[str, Any], *, as_parameters: bool = False) -> list[Issue]:
        """Every issue HAPI reports (errors, warnings, information) for ``resource``.

        ``as_parameters`` sends it inside a Parameters body (part ``resource``) instead of as the body.
        """
        path, body = _request(resource, as_parameters)
        try:
            response = self._client.post(
                f"{self.base_url}/{path}",
                json=body,
                headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
                timeout=TIMEOUT,
            )
        except httpx.HTTPError as exc:
            raise FhirValidatorError(f"$validate at {self.base_url}/{path} failed: {exc!r}") from exc
        return _issues(response)

    def errors(self, resource: Mapping[str, Any], *, as_parameters: bool = False) -> list[str]:
        """The error- and fatal-level issues for ``resource``, as readable strings; ``[]`` when valid."""
        return [str(issue) for issue in self.issues(resource, as_parameters=as_parameters) if issue.is_error]

    def assert_valid(self, resource: Mapping[str, Any], *, as_parameters: bool = False) -> None:
        """Fail (AssertionError) with the list of errors unless ``resource`` is valid FHIR R4."""
        errors = self.errors(resource, as_parameters=as_parameters)
        kind = resource.get("resourceType", "resource")
        assert not errors, f"{kind} is not valid FHIR R4:\n" + "\n".join(f"  - {e}" for e in errors)


def validation_errors(
    client_or_base_url: httpx.Client | str | None, resource: Mapping[str, Any], *, as_parameters: bool = False
) -> list[str]:
    """The error- and fatal-level issues of HAPI's ``$validate`` for ``resource``; ``[]`` when it is valid.

    Args:
        client_or_base_url: HAPI's FHIR base URL; or an ``httpx.Client`` whose ``base_url`` is HAPI's FHIR
            base (without one: ``E2E_FHIR_URL``); or None for a client of its own to ``E2E_FHIR_URL``.
        resource: the resource as JSON (a dict with ``resourceType``).
        as_parameters: send it as the ``resource`` part of a Parameters body instead.

    Returns:
        One string per issue: ``"<severity> at <FHIRPath>: <diagnostics>"``.

    Raises:
        FhirValidatorError: HAPI gave no verdict (unreachable, 5xx, unknown resource type).
    """
    if isinstance(client_or_base_url, httpx.Client):
        validator = FhirValidator(client=client_or_base_url)
    else:
        validator = FhirValidator(client_or_base_url)
    with validator:
        return validator.errors(resource, as_parameters=as_parameters)


async def validation_errors_async(
    client_or_base_url: httpx.AsyncClient | str | None,
    resource: Mapping[str, Any],
    *,
    as_parameters: bool = False,
) -> list[str]:
    """:func:`validation_errors` for async tests (an ``httpx.AsyncClient``, a base URL, or None)."""
    if isinstance(client_or_base_url, httpx.AsyncClient):
        base_url = _base_url(None, client_or_base_url)
    else:
        base_url = _base_url(client_or_base_url)
    path, body = _request(resource, as_parameters)
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    try:
        if isinstance(client_or_base_url, httpx.AsyncClient):
            response = await client_or_base_url.post(
                f"{base_url}/{path}", json=body, headers=headers, timeout=TIMEOUT
            )
        else:
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                response = await client.post(f"{base_url}/{path}", json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise FhirValidatorError(f"$validate at {base_url}/{path} failed: {exc!r}") from exc
    return [str(issue) for issue in _issues(response) if issue.is_error]


def assert_valid(resource: Mapping[str, Any], client_or_base_url: httpx.Client | str | None = None) -> None:
    """Fail (AssertionError) with the list of errors unless ``resource`` is valid FHIR R4."""
    if isinstance(client_or_base_url, httpx.Client):
        validator = FhirValidator(client=client_or_base_url)
    else:
        validator = FhirValidator(client_or_base_url)
    with validator:
        validator.assert_valid(resource)


@pytest.fixture(scope="session")
def fhir_validator() -> Iterator[FhirValidator]:
    """A :class:`FhirValidator` for ``E2E_FHIR_URL``, one HTTP client for the whole session."""
    with FhirValidator() as validator:
        yield validator
