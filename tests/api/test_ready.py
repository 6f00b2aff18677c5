"""``GET /ready``: each store down in turn gives 503 naming it, and readiness returns with the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import respx
from sqlalchemy.engine import make_url

from gateway.settings import Settings
from tests import ops_payloads as ops
from tests.conftest import _admin_execute, running_app
from tests.faults import closed_port
from tests.respx_transport import UPSTREAM

METADATA = f"{ops.FHIR_BASE}/metadata"
STATUS = f"{ops.EHRBASE_BASE}/rest/status"
#: A fresh healthy answer per call (a response body can be read once).
HEALTHY = {
    METADATA: lambda _request: ops.capability_statement(),
    STATUS: lambda _request: ops.ehrbase_status(),
}


def healthy_upstreams(router: respx.MockRouter) -> None:
    for url, answer in HEALTHY.items():
        router.get(url).mock(side_effect=answer)


@dataclass
class ReadyEnv:
    client: httpx.AsyncClient
    router: respx.MockRouter


@pytest.fixture
async def env(
    pg_engine: object, pg_url: str, make_settings: Callable[..., Settings]
) -> AsyncIterator[ReadyEnv]:
    """An app on PostgreSQL whose FHIR and EHRbase answer until a test says otherwise."""
    with respx.mock(using=UPSTREAM, assert_all_called=False) as router:
        healthy_upstreams(router)
        settings = make_settings(auth_database_url=pg_url, ready_cache_seconds=0)
        async with running_app(settings) as client:
            yield ReadyEnv(client, router)


def down(body: dict[str, object]) -> list[str]:
    checks = body["checks"]
    assert isinstance(checks, dict)
    return sorted(name for name, check in checks.items() if check["status"] == "down")


async def test_all_stores_up_is_ready(env: ReadyEnv) -> None:
    response = await env.client.get("/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"auth_db", "fhir", "ehrbase"}
    for check in body["checks"].values():
        assert check["status"] == "up"
        assert check["latency_ms"] >= 0
        assert check["error"] is None


async def test_probes_send_the_store_credentials(env: ReadyEnv) -> None:
    await env.client.get("/ready")
    status_call = next(c for c in env.router.calls if c.request.url == STATUS)
    expected = httpx.BasicAuth("ehrbase-user", "ehrbase-user-secret")
    request = next(expected.auth_flow(httpx.Request("GET", STATUS)))
    assert status_call.request.headers["authorization"] == request.headers["authorization"]


@pytest.mark.parametrize(
    ("url", "store"),
    [(METADATA, "fhir"), (STATUS, "ehrbase")],
)
async def test_unreachable_upstream_is_named_and_recovers(env: ReadyEnv, url: str, store: str) -> None:
    route = env.router.get(url)
    route.mock(side_effect=httpx.ConnectError("connection refused"))

    response = await env.client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert down(body) == [store]
    assert "unreachable" in body["checks"][store]["error"]

    route.mock(side_effect=HEALTHY[url])
    recovered = await env.client.get("/ready")
    assert recovered.status_code == 200, recovered.text
    assert down(recovered.json()) == []


async def test_a_store_on_a_closed_port_is_unreachable_and_the_error_shows_no_credentials(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    password = "fhir-password-that-must-not-leak"
    with respx.mock(using=UPSTREAM, assert_all_called=False) as router:
        healthy_upstreams(router)
        router.route(host="127.0.0.1").pass_through()  # the real transport, to a real closed port
        settings = make_settings(
            auth_db_sqlite_path=tmp_path / "a.db",
            ready_cache_seconds=0,
            fhir_server_url=f"http://127.0.0.1:{closed_port()}/fhir",
            fhir_auth_mode="basic",
            fhir_username="svc",
            fhir_password=password,
        )
        async with running_app(settings) as client:
            response = await client.get("/ready")
    assert response.status_code == 503
    assert down(response.json()) == ["fhir"]
    assert response.json()["checks"]["fhir"]["error"].startswith("unreachable (cannot connect")
    assert password not in response.text


@pytest.mark.parametrize(("url", "store"), [(METADATA, "fhir"), (STATUS, "ehrbase")])
async def test_error_answer_is_down_with_its_status(env: ReadyEnv, url: str, store: str) -> None:
    env.router.get(url).mock(
        side_effect=lambda _r: httpx.Response(503, json={"error": "Service Unavailable"})
    )
    response = await env.client.get("/ready")
    assert response.status_code == 503
    assert down(response.json()) == [store]
    assert response.json()["checks"][store]["error"] == "HTTP 503"


async def test_fhir_url_that_is_not_a_fhir_base_is_down(env: ReadyEnv) -> None:
    env.router.get(METADATA).mock(side_effect=lambda _r: httpx.Response(200, text="<html>welcome</html>"))
    response = await env.client.get("/ready")
    assert response.status_code == 503
    assert "not JSON" in response.json()["checks"]["fhir"]["error"]


async def test_slow_upstream_is_down_after_the_probe_timeout(
    pg_engine: object, pg_url: str, make_settings: Callable[..., Settings]
) -> None:
    # The probe timeout applies to the auth-DB check too: 1 s, so that a loaded machine does not time that
    # one out as well (0.1 s failed once when the suite shared two cores with two others).
    async def slow(_request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return ops.ehrbase_status()

    with respx.mock(using=UPSTREAM, assert_all_called=False) as router:
        router.get(METADATA).mock(side_effect=HEALTHY[METADATA])
        router.get(STATUS).mock(side_effect=slow)
        settings = make_settings(auth_database_url=pg_url, ready_cache_seconds=0, ready_probe_timeout=1.0)
        async with running_app(settings) as client:
            response = await client.get("/ready")
    assert response.status_code == 503
    assert down(response.json()) == ["ehrbase"]
    assert "no answer within" in response.json()["checks"]["ehrbase"]["error"]


async def test_auth_db_on_a_closed_port_is_down_without_credentials_in_the_error(
    make_settings: Callable[..., Settings],
) -> None:
    secret = "db-password-that-must-not-leak"
    url = f"postgresql://gateway:{secret}@127.0.0.1:9/gateway_auth"
    with respx.mock(using=UPSTREAM, assert_all_called=False) as router:
        healthy_upstreams(router)
        async with running_app(make_settings(auth_database_url=url, ready_cache_seconds=0)) as client:
            response = await client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert down(body) == ["auth_db"]
    assert body["checks"]["auth_db"]["error"]
    assert secret not in response.text


async def test_auth_db_stopped_then_back(
    fresh_pg_database: Callable[[], str], pg_server_url: str, make_settings: Callable[..., Settings]
) -> None:
    url = await asyncio.to_thread(fresh_pg_database)
    name = make_url(url).database
    with respx.mock(using=UPSTREAM, assert_all_called=False) as router:
        healthy_upstreams(router)
        async with running_app(make_settings(auth_database_url=url, ready_cache_seconds=0)) as client:
            assert (await client.get("/ready")).status_code == 200
            await client.app.state.engine.dispose()  # type: ignore[attr-defined]
            await _admin_execute(pg_server_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            try:
                stopped = await client.get("/ready")
            finally:
                await _admin_execute(pg_server_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            back = await client.get("/ready")
    assert stopped.status_code == 503
    assert down(stopped.json()) == ["auth_db"]
    assert back.status_code == 200, back.text


async def test_results_are_cached_between_calls(
    pg_engine: object, pg_url: str, make_settings: Callable[..., Settings]
) -> None:
    with respx.mock(using=UPSTREAM, assert_all_called=False) as router:
        metadata = router.get(METADATA).mock(side_effect=HEALTHY[METADATA])
        router.get(STATUS).mock(side_effect=HEALTHY[STATUS])
        settings = make_settings(auth_database_url=pg_url, ready_cache_seconds=3600)
        async with running_app(settings) as client:
            answers = await asyncio.gather(*(client.get("/ready") for _ in range(5)))
            metadata.mock(side_effect=httpx.ConnectError("down now"))
            cached = await client.get("/ready")
    assert [a.status_code for a in answers] == [200] * 5, answers[0].text
    assert cached.status_code == 200
    assert metadata.call_count == 1


async def test_ready_on_the_embedded_sqlite(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    with respx.mock(using=UPSTREAM, assert_all_called=False) as router:
        healthy_upstreams(router)
        settings = make_settings(auth_db_sqlite_path=tmp_path / "a.db", ready_cache_seconds=0)
        async with running_app(settings) as client:
            response = await client.get("/ready")
    assert response.status_code == 200, response.text


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
async def test_fhir_probe_sends_the_configured_credentials(
    make_settings: Callable[..., Settings], tmp_path: Path, overrides: dict[str, str], expected: str
) -> None:
    with respx.mock(using=UPSTREAM, assert_all_called=False) as router:
        healthy_upstreams(router)
        settings = make_settings(auth_db_sqlite_path=tmp_path / "a.db", ready_cache_seconds=0, **overrides)
        async with running_app(settings) as client:
            response = await client.get("/ready")
        metadata = router.get(METADATA)
    assert response.status_code == 200, response.text
    assert metadata.calls.last.request.headers["authorization"] == expected
