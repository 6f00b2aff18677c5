"""``GET /ready`` once the process has been told to stop: 503 at once, without probing the stores.

``gateway serve`` hands the app a ShutdownState in the ASGI lifespan state, which the server copies into each
request's ``scope["state"]``; here a small ASGI wrapper does what the server does. The signal itself, on a
real process, is in tests/process/test_shutdown.py.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import respx
from starlette.types import Receive, Scope, Send

from gateway.api.health import STOPPING
from gateway.main import create_app
from gateway.settings import Settings
from gateway.shutdown import SHUTDOWN_STATE_KEY, ShutdownState
from tests import ops_payloads as ops
from tests.respx_transport import UPSTREAM


async def test_ready_answers_503_at_once_when_stopping_even_with_fresh_cached_probes(
    pg_engine: object, pg_url: str, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(auth_database_url=pg_url, ready_cache_seconds=60)
    app = create_app(settings)
    shutdown = ShutdownState()

    async def served(scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})[SHUTDOWN_STATE_KEY] = shutdown
        await app(scope, receive, send)

    with respx.mock(using=UPSTREAM, assert_all_called=False) as router:
        metadata = router.get(f"{ops.FHIR_BASE}/metadata").mock(
            side_effect=lambda _: ops.capability_statement()
        )
        status = router.get(f"{ops.EHRBASE_BASE}/rest/status").mock(
            side_effect=lambda _: ops.ehrbase_status()
        )
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=served)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
                assert (await client.get("/ready")).status_code == 200
                probes = metadata.call_count + status.call_count

                shutdown.begin()
                response = await client.get("/ready")
                assert response.status_code == 503
                assert response.json() == {
                    "status": "unavailable",
                    "checks": {"shutdown": {"status": "down", "latency_ms": 0.0, "error": STOPPING}},
                }
                assert metadata.call_count + status.call_count == probes, "no store is probed"
                assert (await client.get("/health")).status_code == 200, "alive, only not ready"


async def test_without_a_server_state_ready_probes_as_before(
    pg_engine: object, pg_url: str, make_settings: Callable[..., Settings]
) -> None:
    """The app served by anything else than gateway serve (no ShutdownState) is never stopping."""
    settings = make_settings(auth_database_url=pg_url, ready_cache_seconds=0)
    app = create_app(settings)
    with respx.mock(using=UPSTREAM, assert_all_called=False) as router:
        router.get(f"{ops.FHIR_BASE}/metadata").mock(side_effect=lambda _: ops.capability_statement())
        router.get(f"{ops.EHRBASE_BASE}/rest/status").mock(side_effect=lambda _: ops.ehrbase_status())
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
                response = await client.get("/ready")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"
