"""Hostile input: injection, odd ids, TOTP brute force, CORS, security headers, oversize and nested bodies."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pyotp
import pytest
import respx

from auth_db.engine import SessionFactory
from gateway.settings import Settings
from tests import ehrbase_payloads as eb
from tests.api.test_auth_totp import enrol
from tests.conftest import running_app
from tests.factories import DEFAULT_PASSWORD, bearer_headers, create_user
from tests.reliability.conftest import PATIENT, Gateway
from tests.respx_transport import UPSTREAM

INJECTIONS = [
    "1001' OR '1'='1",
    "1001; DROP TABLE user;--",
    '1001" or e/ehr_id/value != "',
    "../../ehr",
    "1001%00",
    "1001/../../admin",
    "\u02bc OR 1=1",
]


@pytest.fixture
async def gw(gateway: Callable[..., Any]) -> AsyncIterator[Gateway]:
    async with gateway() as g:
        yield g


class TestInjection:
    @pytest.mark.parametrize("value", INJECTIONS)
    async def test_patient_ids_never_reach_an_upstream(self, gw: Gateway, value: str) -> None:
        with respx.mock(using=UPSTREAM, assert_all_called=False) as mock:
            fhir = mock.route(host="fhir.test").respond(200, json={})
            ehrbase = mock.route(host="ehrbase.test").respond(200, json={})
            for path in (f"/patients/{value}", f"/patients/{value}/letters"):
                response = await gw.client.get(path, headers=gw.headers)
                assert response.status_code in (404, 422), (path, response.status_code)
            assert fhir.call_count + ehrbase.call_count == 0

    async def test_aql_carries_values_only_as_query_parameters(self, gw: Gateway) -> None:
        sent: list[dict[str, object]] = []

        def aql(request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content)
            sent.append(body)
            return httpx.Response(200, json=eb.result_set(body["q"], eb.LETTER_COLUMNS, [], 0, 10))

        with respx.mock(using=UPSTREAM, assert_all_called=False) as mock:
            mock.post(f"{eb.BASE}/query/aql").mock(side_effect=aql)
            response = await gw.client.get(
                f"/patients/{PATIENT}/letters",
                params={"limit": 5},
                headers=gw.headers,
            )
        assert response.status_code == 200, response.text
        (body,) = sent
        assert eb.EHR_ID not in body["q"]
        assert eb.EHR_ID in json.dumps(body["query_parameters"])
        assert "$" in body["q"]

    @pytest.mark.parametrize(
        "params",
        [
            {"action": "patient.read' OR 1=1--"},
            {"patient": "1' OR '1'='1"},
            {"user": "1 OR 1=1"},
            {"from": "2026-01-01'; DROP TABLE audit_event;--"},
        ],
    )
    async def test_sql_injection_through_audit_filters_is_refused(
        self,
        pg_url: str,
        session_factory: SessionFactory,
        make_settings: Callable[..., Settings],
        params: dict[str, str],
    ) -> None:
        await create_user(session_factory, username="admin.inj", roles=["admin"])
        async with running_app(make_settings(auth_database_url=pg_url)) as client:
            headers = await bearer_headers(client, "admin.inj")
            response = await client.get("/admin/audit", params=params, headers=headers)
            assert response.status_code == 422
            assert (await client.get("/admin/audit", headers=headers)).status_code == 200

    @pytest.mark.parametrize("letter_id", ["..%2F..%2Fehr", "not-a-uid", "x" * 300, "1;2"])
    async def test_odd_letter_ids_are_refused_without_an_upstream_call(
        self, gw: Gateway, letter_id: str
    ) -> None:
        with respx.mock(using=UPSTREAM, assert_all_called=False) as mock:
            fhir = mock.route(host="fhir.test").respond(200, json={})
            ehrbase = mock.route(host="ehrbase.test").respond(200, json={})
            response = await gw.client.get(
                f"/patients/{PATIENT}/letters/{letter_id}",
                headers=gw.headers,
            )
        assert response.status_code in (404, 422)
        assert fhir.call_count + ehrbase.call_count == 0


class TestBruteForce:
    async def test_totp_guessing_is_throttled(
        self, pg_url: str, session_factory: SessionFactory, make_settings: Callable[..., Settings]
    ) -> None:
        await create_user(session_factory, username="dr.totp", roles=["clinician"])
        async with running_app(make_settings(auth_database_url=pg_url)) as client:
            headers = await bearer_headers(client, "dr.totp")
            secret, _codes = await enrol(client, headers)
            statuses = []
            for guess in range(12):
                response = await client.post(
                    "/auth/token",
                    data={"username": "dr.totp", "password": DEFAULT_PASSWORD, "totp_code": f"{guess:06d}"},
                )
                statuses.append(response.status_code)
            assert 429 in statuses, statuses
            assert statuses[-1] == 429
            good = await client.post(
                "/auth/token",
                data={
                    "username": "dr.totp",
                    "password": DEFAULT_PASSWORD,
                    "totp_code": pyotp.TOTP(secret).now(),
                },
            )
            assert good.status_code == 429  # still locked: a right code does not lift the lockout


class TestHeaders:
    async def test_cors_gives_credentials_to_configured_origins_only(
        self, pg_url: str, make_settings: Callable[..., Settings], pg_engine: object
    ) -> None:
        settings = make_settings(auth_database_url=pg_url, cors_allow_origins=["https://clinic.example.org"])
        async with running_app(settings) as client:
            allowed = await client.options(
                "/patients",
                headers={"Origin": "https://clinic.example.org", "Access-Control-Request-Method": "GET"},
            )
            refused = await client.options(
                "/patients",
                headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
            )
            simple = await client.get("/health", headers={"Origin": "https://evil.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://clinic.example.org"
        assert allowed.headers["access-control-allow-credentials"] == "true"
        assert "access-control-allow-origin" not in refused.headers
        assert "access-control-allow-origin" not in simple.headers

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/health"),
            ("GET", "/patients"),
            ("GET", "/patients/1001"),
            ("GET", "/nope"),
            ("POST", "/auth/token"),
            ("GET", "/admin/audit"),
        ],
    )
    async def test_security_headers_on_every_response(self, gw: Gateway, method: str, path: str) -> None:
        response = await gw.client.request(method, path)
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert "strict-transport-security" not in response.headers  # plain http here

    async def test_docs_have_a_strict_csp_and_hsts_comes_with_https(self, gw: Gateway) -> None:
        docs = await gw.client.get("/docs")
        csp = docs.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp
        assert "default-src 'none'" in csp
        secure = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gw.client.app), base_url="https://gateway.test"
        )
        async with secure:
            response = await secure.get("/health")
        assert response.headers["strict-transport-security"].startswith("max-age=")


class TestBodies:
    async def test_oversize_body_is_413_before_parsing(self, gw: Gateway) -> None:
        response = await gw.client.post(
            "/patients",
            content=b"{" + b" " * 2_000_000 + b"}",
            headers={**gw.headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 413
        assert response.json()["code"] == "payload_too_large"

    async def test_deeply_nested_json_is_a_clear_4xx(self, gw: Gateway) -> None:
        body = '{"resourceType": "Patient", "extension": ' + "[" * 50_000 + "]" * 50_000 + "}"
        response = await gw.client.post(
            "/patients",
            content=body,
            headers={**gw.headers, "Content-Type": "application/json"},
        )
        assert 400 <= response.status_code < 500
        assert response.headers["content-type"] == "application/problem+json"
