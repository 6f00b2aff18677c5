"""The HAPI FHIR client: the raw Patient read (body bytes handed on unchanged), query strings, credentials.

HAPI is faked with respx at the transport boundary (``tests/respx_transport.py``); the client and the
resilience policy run as in production.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import respx

from gateway.errors import Gone, NotFound, UpstreamError
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


def as_hapi_sends_it(body: dict[str, object]) -> bytes:
    """HAPI's pretty-printed JSON (whitespace and key order the gateway must not change)."""
    return json.dumps(body, indent=2).encode()


class TestReadPatientRaw:
    async def test_the_body_comes_back_byte_for_byte_with_its_validators(
        self, fhir: FhirClient, upstream_mock: respx.MockRouter
    ) -> None:
        content = as_hapi_sends_it(hapi.patient("1001", version="4"))
        route = upstream_mock.get(f"{hapi.BASE}/Patient/1001").mock(
            return_value=httpx.Response(
                200,
                content=content,
                headers={
                    "Content-Type": hapi.FHIR_JSON,
                    "ETag": 'W/"4"',
                    "Last-Modified": hapi.LAST_MODIFIED,
                },
            )
        )
        raw = await fhir.read_patient_raw("1001")
        assert raw.content == content
        assert (raw.etag, raw.last_modified, raw.version_id) == ('W/"4"', hapi.LAST_MODIFIED, "4")
        assert route.calls.last.request.headers["Accept"] == "application/fhir+json"
        assert "Chalmers" not in repr(raw)

    async def test_it_reads_what_read_patient_reads(
        self, fhir: FhirClient, upstream_mock: respx.MockRouter
    ) -> None:
        upstream_mock.get(f"{hapi.BASE}/Patient/1001").mock(
            side_effect=lambda _r: hapi.resource_response(hapi.patient("1001", version="2"))
        )
        raw = await fhir.read_patient_raw("1001")
        parsed = await fhir.read_patient("1001")
        assert json.loads(raw.content) == parsed.body
        assert (raw.etag, raw.last_modified, raw.version_id) == (
            parsed.etag,
            parsed.last_modified,
            parsed.version_id,
        )

    @pytest.mark.parametrize(
        ("answer", "error", "code"),
        [
            (hapi.not_found("1001"), NotFound, "patient_not_found"),
            (hapi.gone(), Gone, "patient_deleted"),
        ],
    )
    async def test_statuses_mean_what_they_mean_for_read_patient(
        self,
        fhir: FhirClient,
        upstream_mock: respx.MockRouter,
        answer: httpx.Response,
        error: type[Exception],
        code: str,
    ) -> None:
        upstream_mock.get(f"{hapi.BASE}/Patient/1001").mock(return_value=answer)
        with pytest.raises(error) as raised:
            await fhir.read_patient_raw("1001")
        assert getattr(raised.value, "code", None) == code

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            (b'{"resourceType": "Pat', "not JSON"),
            (b'["Patient"]', "not a resource"),
            (json.dumps({"resourceType": "OperationOutcome", "id": "1001"}).encode(), "'OperationOutcome'"),
            (json.dumps(hapi.patient("1002")).encode(), "another Patient"),
            (json.dumps({"resourceType": "Patient"}).encode(), "another Patient"),
        ],
        ids=["truncated", "array", "other-type", "other-id", "no-id"],
    )
    async def test_anything_but_this_patient_is_a_bad_upstream_answer(
        self, fhir: FhirClient, upstream_mock: respx.MockRouter, content: bytes, message: str
    ) -> None:
        upstream_mock.get(f"{hapi.BASE}/Patient/1001").mock(
            return_value=httpx.Response(200, content=content, headers={"Content-Type": hapi.FHIR_JSON})
        )
        with pytest.raises(UpstreamError) as raised:
            await fhir.read_patient_raw("1001")
        assert raised.value.status == 502
        assert message in str(raised.value.detail)


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
        await client.read_patient_raw("1001")
        await client.read_patient("1001")
    finally:
        await client.aclose()
    assert [call.request.headers["Authorization"] for call in route.calls] == [expected, expected]
    assert "fhir-pw-1" not in repr(client.auth)
    assert "fhir-token-2" not in repr(client.auth)
