"""Load shedding: past MAX_REQUESTS_IN_FLIGHT a worker answers 503 ``overloaded`` at once, never queues
without limit, and never refuses its liveness, readiness or metrics routes.

Two PHI reads are held in flight by a lock on the audit table (their rows cannot be committed, so
they cannot be answered); the third request finds the worker full.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import respx
from sqlalchemy.engine import make_url

from auth_db.engine import SessionFactory
from gateway.middleware import GatewayMiddleware
from gateway.security.access import grant_care_team
from gateway.settings import Settings
from tests import fhir_payloads as hapi
from tests.conftest import running_app
from tests.factories import bearer_headers, create_user


def gateway_middleware(app: Any) -> GatewayMiddleware:
    layer = app.middleware_stack
    while not isinstance(layer, GatewayMiddleware):
        layer = layer.app
    return layer


async def test_a_full_worker_sheds_at_once_and_keeps_answering_probes(
    pg_url: str, session_factory: SessionFactory, make_settings: Callable[..., Settings]
) -> None:
    user = await create_user(session_factory, username="dr.shed", roles=["clinician"])
    async with session_factory() as session:
        await grant_care_team(session, user_id=user.id, patient_id="1001", granted_by=None)
        await session.commit()
    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    frontend = "http://localhost:5173"
    settings = make_settings(
        auth_database_url=pg_url, max_requests_in_flight=2, cors_allow_origins=[frontend]
    )
    with respx.mock(base_url=hapi.BASE, assert_all_called=False) as mock:
        mock.get("/Patient/1001").mock(return_value=hapi.resource_response(hapi.patient()))
        async with running_app(settings) as client:
            headers = await bearer_headers(client, "dr.shed")
            middleware = gateway_middleware(client.app)  # type: ignore[attr-defined]
            lock = await psycopg.AsyncConnection.connect(dsn)
            await lock.execute("LOCK TABLE audit_event IN SHARE ROW EXCLUSIVE MODE")
            try:
                held = [
                    asyncio.ensure_future(client.get("/patients/1001", headers=headers)) for _ in range(2)
                ]
                async with asyncio.timeout(10):
                    while middleware.in_flight < 2:
                        await asyncio.sleep(0.005)
                shed = await client.get("/patients/1001", headers={**headers, "Origin": frontend})
                assert shed.status_code == 503
                assert shed.headers["content-type"] == "application/problem+json"
                assert shed.headers["retry-after"] == "1"
                assert shed.json()["code"] == "overloaded"
                assert shed.json()["request_id"] == shed.headers["x-request-id"]
                # A browser frontend may read the refusal and its Retry-After (CORS headers present).
                assert shed.headers["access-control-allow-origin"] == frontend
                assert "retry-after" in shed.headers["access-control-expose-headers"].lower()
                assert "Chalmers" not in shed.text
                assert (await client.get("/health")).status_code == 200
                assert (await client.get("/metrics")).status_code == 200
                assert not any(task.done() for task in held)
            finally:
                await lock.commit()
                await lock.close()
            assert [(await task).status_code for task in held] == [200, 200]
            assert middleware.in_flight == 0
            assert (await client.get("/patients/1001", headers=headers)).status_code == 200
            metrics = (await client.get("/metrics")).text
    assert "gateway_requests_shed_total 1.0" in metrics
