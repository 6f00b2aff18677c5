"""The HAPI FHIR client: query strings and credentials.

HAPI is faked with respx at the transport boundary (``tests/respx_transport.py``); the client and the
resilience policy run as in production.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import respx

from gateway.settings import Settings
from gateway.upstream.fhir import FhirClient, PageRef
from tests import fhir_payloads as hapi


@pytest.fixture
async def fhir(make_settings: Callable[..., Settings]) -> AsyncIterator[FhirClient]:
    client = FhirClient(make_settings(breaker_failure_threshold=50))
    try:
        yield client
    finally:
        await client.aclose()


async def test_search_sends_every_parameter_encoded(
    fhir: FhirClient, upstream_mock: respx.MockRouter
) -> None:
    route = upstream_mock.get(f"{hapi.BASE}/Patient").mock(return_value=hapi.searchset([]))
    await fhir.search_patients(
        [("family", "O'Brien Smith"), ("identifier", f"{hapi.NHS}|9434765919"), ("_id", "1,2")], count=5
    )
    sent = route.calls.last.request.url
    assert sent.params.multi_items() == [
        ("family", "O'Brien Smith"),
        ("identifier", f"{hapi.NHS}|9434765919"),
        ("_id", "1,2"),
        ("_count", "5"),
    ]
    assert sent.query == (
        b"family=O%27Brien+Smith&identifier=https%3A%2F%2Ffhir.nhs.uk%2FId%2Fnhs-number%7C9434765919"
        b"&_id=1%2C2&_count=5"
    )


async def test_a_page_is_requested_by_hapi_page_id_and_offset(
    fhir: FhirClient, upstream_mock: respx.MockRouter
) -> None:
    route = upstream_mock.get(hapi.BASE).mock(return_value=hapi.searchset([hapi.patient("1002")]))
    page = await fhir.search_page(PageRef("5e9d3c1a-7b2f", 20, 10))
    assert [p["id"] for p in page.resources] == ["1002"]
    assert dict(route.calls.last.request.url.params) == {
        "_getpages": "5e9d3c1a-7b2f",
        "_getpagesoffset": "20",
        "_count": "10",
        "_bundletype": "searchset",
    }


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"fhir_auth_mode": "basic", "fhir_username": "svc", "fhir_password": "fhir-pw-1"},
            "Basic c3ZjOmZoaXItcHctMQ==",
        ),
        ({"fhir_auth_mode": "bearer", "fhir_bearer_token": "fhir-token-2"}, "Bearer fhir-token-2"),
    ],
)
async def test_every_call_carries_the_service_credentials(
    make_settings: Callable[..., Settings],
    upstream_mock: respx.MockRouter,
    overrides: dict[str, str],
    expected: str,
) -> None:
    client = FhirClient(make_settings(**overrides))
    route = upstream_mock.get(f"{hapi.BASE}/Patient/1001").mock(
        side_effect=lambda _r: hapi.resource_response(hapi.patient("1001"))
    )
    try:
        await client.read_patient("1001")
    finally:
        await client.aclose()
    assert [call.request.headers["Authorization"] for call in route.calls] == [expected]
    assert "fhir-pw-1" not in repr(client.auth)
    assert "fhir-token-2" not in repr(client.auth)
