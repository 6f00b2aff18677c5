"""Losing the auth database mid-run: authenticated routes answer 503, /ready says so, and the gateway
recovers by itself when the database is back (the app is never restarted).

The database "goes away" behind a TCP proxy that resets every connection and refuses new ones; to the
gateway this is indistinguishable from the PostgreSQL server stopping and starting again.
"""

from __future__ import annotations

from collections.abc import Callable

import respx
from sqlalchemy.engine import make_url

from auth_db.engine import SessionFactory
from gateway.settings import Settings
from tests.conftest import running_app
from tests.factories import bearer_headers, create_user
from tests.faults import TcpProxy
from tests.respx_transport import UPSTREAM


async def test_auth_db_loss_and_recovery(
    pg_url: str, session_factory: SessionFactory, make_settings: Callable[..., Settings]
) -> None:
    await create_user(session_factory, username="dr.dbloss", roles=["clinician"])
    url = make_url(pg_url)
    async with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        settings = make_settings(auth_database_url=proxied, auth_db_pool_timeout=2, ready_cache_seconds=0)
        with respx.mock(using=UPSTREAM, assert_all_called=False) as mock:
            mock.get("http://fhir.test/fhir/metadata").respond(
                200, json={"resourceType": "CapabilityStatement"}
            )
            mock.get("http://ehrbase.test/ehrbase/rest/status").respond(
                200, json={"ehrbase_version": "2.31.0"}
            )
            async with running_app(settings) as client:
                headers = await bearer_headers(client, "dr.dbloss")
                assert (await client.get("/auth/me", headers=headers)).status_code == 200

                proxy.cut()
                down = await client.get("/auth/me", headers=headers)
                assert down.status_code == 503
                assert down.json()["code"] == "auth_db_unavailable"
                assert "retry-after" in down.headers
                login = await client.post("/auth/token", data={"username": "dr.dbloss", "password": "x" * 14})
                assert login.status_code == 503
                ready = await client.get("/ready")
                assert ready.status_code == 503
                assert ready.json()["checks"]["auth_db"]["status"] == "down"
                assert (await client.get("/health")).status_code == 200

                proxy.restore()
                back = await client.get("/auth/me", headers=headers)
                assert back.status_code == 200, back.text
                assert (await client.get("/ready")).status_code == 200
