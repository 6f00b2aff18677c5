"""Fault matrix: each upstream fault on each kind of call gives the documented problem, with retries only
for idempotent calls, and never an unaudited PHI access.

Real sockets for connection refused (a closed port), read timeout (a server that never answers), a
reset mid-body and a body over ``UPSTREAM_MAX_RESPONSE_BYTES`` (the transport enforces the limit);
respx, at the transport boundary, for status codes, bodies and transport errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx

from tests import ehrbase_payloads as eb
from tests import fhir_payloads as hapi
from tests.faults import CannedServer, ResettingServer, SilentServer, closed_port
from tests.reliability.conftest import PATIENT
from tests.respx_transport import UPSTREAM

LETTER = {"title": "Clinic letter", "body": "Reviewed today.", "status": "draft"}

# (fault id, respx answer, expected status, expected code, attempts of an idempotent call)
RESPX_FAULTS: list[tuple[str, Any, int, str, int]] = [
    ("500", httpx.Response(500, text="boom"), 502, "upstream_bad_response", 1),
    ("502", httpx.Response(502), 502, "upstream_bad_response", 3),
    ("503", httpx.Response(503), 503, "upstream_unavailable", 3),
    ("503-retry-after", httpx.Response(503, headers={"Retry-After": "1"}), 503, "upstream_unavailable", 3),
    ("429", httpx.Response(429, headers={"Retry-After": "0"}), 503, "upstream_unavailable", 3),
    ("504", httpx.Response(504), 504, "upstream_timeout", 3),
    ("dns", httpx.ConnectError("Name or service not known"), 503, "upstream_unavailable", 3),
    ("connect-timeout", httpx.ConnectTimeout("connect timed out"), 504, "upstream_timeout", 3),
    (
        "malformed-json",
        httpx.Response(200, content=b'{"resourceType": "Pat', headers={"Content-Type": "application/json"}),
        502,
        "upstream_bad_response",
        1,
    ),
]


def _answer(answer: Any) -> Any:
    return {"side_effect": answer} if isinstance(answer, Exception) else {"return_value": answer}


class TestFhirFaults:
    """GET /patients/{id} (idempotent read) and POST /patients (conditional create, idempotent)."""

    @pytest.mark.parametrize(
        ("fault", "answer", "status", "code", "attempts"), RESPX_FAULTS, ids=[f[0] for f in RESPX_FAULTS]
    )
    async def test_read(
        self, gateway: Callable[..., Any], fault: str, answer: Any, status: int, code: str, attempts: int
    ) -> None:
        async with gateway(upstream_max_response_bytes=65_536) as gw:
            with respx.mock(using=UPSTREAM, assert_all_called=False) as mock:
                route = mock.get(f"{hapi.BASE}/Patient/{PATIENT}").mock(**_answer(answer))
                response = await gw.client.get(f"/patients/{PATIENT}", headers=gw.headers)
            assert response.status_code == status, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == code
            assert route.call_count == attempts
            assert [
                e.outcome for e in await gw.audit("patient.read")
            ] == []  # no PHI left, none recorded as read

    async def test_read_wrong_resource_type(self, gateway: Callable[..., Any]) -> None:
        async with gateway() as gw:
            with respx.mock(using=UPSTREAM, assert_all_called=False) as mock:
                mock.get(f"{hapi.BASE}/Patient/{PATIENT}").mock(
                    return_value=httpx.Response(200, json={"resourceType": "OperationOutcome", "id": PATIENT})
                )
                response = await gw.client.get(f"/patients/{PATIENT}", headers=gw.headers)
            assert response.status_code == 502

    @pytest.mark.parametrize("kind", ["refused", "read-timeout", "reset"])
    async def test_real_sockets(self, gateway: Callable[..., Any], kind: str) -> None:
        expected = {
            "refused": (503, "upstream_unavailable"),
            "read-timeout": (504, "upstream_timeout"),
            "reset": (502, "upstream_bad_response"),
        }[kind]
        if kind == "refused":
            async with gateway(fhir_server_url=f"http://127.0.0.1:{closed_port()}/fhir") as gw:
                response = await gw.client.get(f"/patients/{PATIENT}", headers=gw.headers)
            assert (response.status_code, response.json()["code"]) == expected
            return
        server_type = SilentServer if kind == "read-timeout" else ResettingServer
        async with server_type() as server, gateway(fhir_server_url=f"{server.url}/fhir") as gw:
            response = await gw.client.get(f"/patients/{PATIENT}", headers=gw.headers)
            assert (response.status_code, response.json()["code"]) == expected
            assert server.connections == 3  # idempotent: retried

    async def test_read_over_the_size_limit(self, gateway: Callable[..., Any]) -> None:
        async with (
            CannedServer.http(200, b" " * 200_000, {"Content-Type": "application/json"}) as server,
            gateway(fhir_server_url=f"{server.url}/fhir", upstream_max_response_bytes=65_536) as gw,
        ):
            response = await gw.client.get(f"/patients/{PATIENT}", headers=gw.headers)
            assert response.status_code == 502, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "upstream_response_too_large"
            assert server.requests == 1  # not retried
            assert [e.outcome for e in await gw.audit("patient.read")] == []

    async def test_conditional_create_is_retried_and_registers_once(
        self, gateway: Callable[..., Any]
    ) -> None:
        async with gateway() as gw:
            with respx.mock(using=UPSTREAM, assert_all_called=False) as mock:
                route = mock.post(f"{hapi.BASE}/Patient").mock(
                    side_effect=[httpx.Response(503), hapi.resource_response(hapi.patient("2001"), 201)]
                )
                response = await gw.client.post("/patients", json=hapi.new_patient(), headers=gw.headers)
            assert response.status_code == 201
            assert route.call_count == 2
            assert (
                route.calls[0].request.headers["if-none-exist"]
                == route.calls[1].request.headers["if-none-exist"]
            )

    async def test_breaker_opens_other_routes_unaffected_and_it_recovers(
        self, gateway: Callable[..., Any]
    ) -> None:
        async with gateway(
            breaker_failure_threshold=2, breaker_reset_seconds=0.3, upstream_retry_attempts=1
        ) as gw:
            with respx.mock(using=UPSTREAM, assert_all_called=False) as mock:
                fhir = mock.get(f"{hapi.BASE}/Patient/{PATIENT}").mock(return_value=httpx.Response(503))

                def aql(request: httpx.Request) -> httpx.Response:
                    return httpx.Response(
                        200,
                        json=eb.result_set(json.loads(request.content)["q"], eb.LETTER_COLUMNS, [], 0, 10),
                    )

                mock.post(f"{eb.BASE}/query/aql").mock(side_effect=aql)
                for _ in range(2):
                    assert (
                        await gw.client.get(f"/patients/{PATIENT}", headers=gw.headers)
                    ).status_code == 503
                open_answer = await gw.client.get(f"/patients/{PATIENT}", headers=gw.headers)
                assert open_answer.status_code == 503
                assert "circuit breaker" in open_answer.json()["detail"]
                assert "retry-after" in open_answer.headers
                assert fhir.call_count == 2  # the open breaker sent nothing
                letters = await gw.client.get(f"/patients/{PATIENT}/letters", headers=gw.headers)
                assert letters.status_code == 200, letters.text  # EHRbase routes unaffected
                import asyncio

                await asyncio.sleep(0.35)
                fhir.mock(return_value=hapi.resource_response(hapi.patient()))
                assert (await gw.client.get(f"/patients/{PATIENT}", headers=gw.headers)).status_code == 200


class TestEhrbaseFaults:
    """GET /patients/{id}/letters (AQL, idempotent) and POST …/letters (a write)."""

    @pytest.mark.parametrize(
        ("fault", "answer", "status", "code", "attempts"), RESPX_FAULTS, ids=[f[0] for f in RESPX_FAULTS]
    )
    async def test_list(
        self, gateway: Callable[..., Any], fault: str, answer: Any, status: int, code: str, attempts: int
    ) -> None:
        async with gateway(upstream_max_response_bytes=65_536) as gw:
            with respx.mock(using=UPSTREAM, assert_all_called=False) as mock:
                route = mock.post(f"{eb.BASE}/query/aql").mock(**_answer(answer))
                response = await gw.client.get(f"/patients/{PATIENT}/letters", headers=gw.headers)
            assert response.status_code == status, response.text
            assert response.json()["code"] == code
            assert route.call_count == attempts
            assert all(e.outcome != "success" for e in await gw.audit("letter.list"))

    async def test_list_over_the_size_limit(self, gateway: Callable[..., Any]) -> None:
        async with (
            CannedServer.http(200, b" " * 200_000, {"Content-Type": "application/json"}) as server,
            gateway(ehrbase_url=f"{server.url}/ehrbase", upstream_max_response_bytes=65_536) as gw,
        ):
            response = await gw.client.get(f"/patients/{PATIENT}/letters", headers=gw.headers)
            assert response.status_code == 502, response.text
            assert response.json()["code"] == "upstream_response_too_large"
            assert server.requests == 1  # not retried
            assert all(e.outcome != "success" for e in await gw.audit("letter.list"))

    @pytest.mark.parametrize(
        ("answer", "status"),
        [
            (httpx.Response(503), 503),
            (httpx.Response(502), 502),
            (httpx.ReadTimeout("no answer"), 504),
            (httpx.ConnectError("refused"), 503),
        ],
    )
    async def test_write_without_idempotency_key_is_never_retried(
        self, gateway: Callable[..., Any], answer: Any, status: int
    ) -> None:
        async with gateway() as gw:
            with respx.mock(using=UPSTREAM, assert_all_called=False) as mock:
                mock.get(f"{hapi.BASE}/Patient/{PATIENT}").mock(
                    return_value=hapi.resource_response(hapi.patient())
                )
                route = mock.post(f"{eb.BASE}/ehr/{eb.EHR_ID}/composition").mock(**_answer(answer))
                response = await gw.client.post(
                    f"/patients/{PATIENT}/letters", json=LETTER, headers=gw.headers
                )
            assert response.status_code == status, response.text
            assert route.call_count == 1

    async def test_write_with_idempotency_key_that_timed_out_exists_once_after_a_retry(
        self, gateway: Callable[..., Any]
    ) -> None:
        stored: dict[str, dict[str, Any]] = {}

        def create(request: httpx.Request) -> httpx.Response:
            composition = json.loads(request.content)
            uid = composition["uid"]["value"]
            if uid in stored:
                return eb.composition_exists(uid)
            stored[uid] = composition
            raise httpx.ReadTimeout("the answer was lost")

        def read(request: httpx.Request) -> httpx.Response:
            ((uid, composition),) = stored.items()
            return eb.composition_read(eb.EHR_ID, composition, uid)

        async with gateway() as gw:
            headers = {**gw.headers, "Idempotency-Key": "letter-7f3a9c"}
            with respx.mock(using=UPSTREAM, assert_all_called=False) as mock:
                mock.get(f"{hapi.BASE}/Patient/{PATIENT}").mock(
                    return_value=hapi.resource_response(hapi.patient())
                )
                mock.post(f"{eb.BASE}/ehr/{eb.EHR_ID}/composition").mock(side_effect=create)
                mock.get(url__startswith=f"{eb.BASE}/ehr/{eb.EHR_ID}/composition/").mock(side_effect=read)
                mock.get(f"{eb.BASE}/ehr/{eb.EHR_ID}").mock(return_value=eb.ehr())
                first = await gw.client.post(f"/patients/{PATIENT}/letters", json=LETTER, headers=headers)
                second = await gw.client.post(f"/patients/{PATIENT}/letters", json=LETTER, headers=headers)
            assert first.status_code in (201, 504), first.text
            assert second.status_code in (200, 201), second.text
            assert len(stored) == 1


async def test_an_ehrbase_500_carries_its_message(gateway: Callable[..., Any]) -> None:
    async with gateway() as gw:
        with respx.mock(using=UPSTREAM, assert_all_called=False) as mock:
            mock.post(f"{eb.BASE}/query/aql").mock(return_value=eb.error(500, "Could not execute query"))
            response = await gw.client.get(f"/patients/{PATIENT}/letters", headers=gw.headers)
    assert response.status_code == 502
    assert response.json()["upstream_issues"][0]["diagnostics"] == "Could not execute query"
