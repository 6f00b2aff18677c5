"""The authorisation cache's bound across workers (docs/security.md), on a real PostgreSQL.

Two app instances share one auth database, as two uvicorn workers (or two replicas) do; each has its own
in-process cache of positive authorisation checks (``AUTHZ_CACHE_MS``). A change made through worker A
takes effect on A at once, and on worker B — which answered from its cache just before — once the bound
has passed: the tests wait past it and then expect the refusal.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
import respx

from auth_db.engine import SessionFactory
from auth_db.models import BreakGlassGrant
from auth_db.types import utcnow
from gateway.security.access import grant_care_team
from gateway.settings import Settings
from tests import fhir_payloads as hapi
from tests.conftest import running_app
from tests.factories import bearer_headers, create_user

BOUND_MS = 300
PAST_THE_BOUND = BOUND_MS / 1000 + 0.2


@dataclass
class Workers:
    a: httpx.AsyncClient
    b: httpx.AsyncClient
    clinician: dict[str, str]
    admin: dict[str, str]
    clinician_id: Any
    factory: SessionFactory


@pytest.fixture
async def workers(
    pg_url: str, session_factory: SessionFactory, make_settings: Callable[..., Settings]
) -> AsyncIterator[Workers]:
    clinician = await create_user(session_factory, username="dr.bound", roles=["clinician"])
    # an administrator holding every role the clinician holds may reset the clinician's password
    await create_user(session_factory, username="admin.bound", roles=["admin", "clinician"])
    async with session_factory() as session:
        await grant_care_team(session, user_id=clinician.id, patient_id="1001", granted_by=None)
        await session.commit()
    settings = make_settings(auth_database_url=pg_url, authz_cache_ms=BOUND_MS)
    with respx.mock(base_url=hapi.BASE, assert_all_called=False) as mock:
        mock.get("/Patient/1001").mock(return_value=hapi.resource_response(hapi.patient()))
        async with running_app(settings) as a, running_app(settings) as b:
            yield Workers(
                a,
                b,
                await bearer_headers(a, "dr.bound"),
                await bearer_headers(a, "admin.bound"),
                clinician.id,
                session_factory,
            )


async def read(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await client.get("/patients/1001", headers=headers)


async def logout(w: Workers) -> None:
    assert (await w.a.post("/auth/logout", headers=w.clinician)).status_code == 204


async def disable(w: Workers) -> None:
    response = await w.a.post(f"/admin/users/{w.clinician_id}/disable", headers=w.admin)
    assert response.status_code == 200, response.text


async def reset_password(w: Workers) -> None:
    response = await w.a.post(f"/admin/users/{w.clinician_id}/reset-password", json={}, headers=w.admin)
    assert response.status_code == 200, response.text


async def end_sessions(w: Workers) -> None:
    response = await w.a.delete(f"/admin/users/{w.clinician_id}/sessions", headers=w.admin)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("change", [logout, disable, reset_password, end_sessions])
async def test_an_ended_session_is_refused_by_every_worker_within_the_bound(
    workers: Workers, change: Callable[[Workers], Awaitable[None]]
) -> None:
    assert (await read(workers.b, workers.clinician)).status_code == 200  # B has the answer cached now
    await change(workers)
    on_a = await read(workers.a, workers.clinician)
    assert on_a.status_code == 401, "the worker that made the change sees it at once"
    assert on_a.json()["code"] == "session_ended"
    await asyncio.sleep(PAST_THE_BOUND)
    on_b = await read(workers.b, workers.clinician)
    assert on_b.status_code == 401, on_b.text
    assert on_b.json()["code"] == "session_ended"
    assert "Chalmers" not in on_b.text


async def test_a_revoked_care_team_link_is_refused_by_every_worker_within_the_bound(workers: Workers) -> None:
    links = await workers.a.get(f"/admin/care-team?user_id={workers.clinician_id}", headers=workers.admin)
    assert links.status_code == 200, links.text
    [link] = links.json()["items"]
    assert (await read(workers.b, workers.clinician)).status_code == 200
    revoked = await workers.a.delete(f"/admin/care-team/{link['id']}", headers=workers.admin)
    assert revoked.status_code == 204
    assert (await read(workers.a, workers.clinician)).status_code == 403
    await asyncio.sleep(PAST_THE_BOUND)
    on_b = await read(workers.b, workers.clinician)
    assert on_b.status_code == 403
    assert on_b.json()["code"] == "no_patient_relationship"


async def test_an_expired_break_glass_grant_is_refused_within_the_bound(workers: Workers) -> None:
    expires = utcnow() + timedelta(seconds=1)
    async with workers.factory() as session:
        session.add(
            BreakGlassGrant(
                user_id=workers.clinician_id, patient_id="2002", reason="test", expires_at=expires
            )
        )
        await session.commit()
    patient = hapi.patient("2002")
    with respx.mock(base_url=hapi.BASE, assert_all_called=False) as mock:
        mock.get("/Patient/2002").mock(return_value=hapi.resource_response(patient))
        assert (await workers.b.get("/patients/2002", headers=workers.clinician)).status_code == 200
        await asyncio.sleep(max(0.0, (expires - utcnow()).total_seconds()) + PAST_THE_BOUND)
        refused = await workers.b.get("/patients/2002", headers=workers.clinician)
    assert refused.status_code == 403
    assert refused.json()["code"] == "no_patient_relationship"


async def test_with_the_cache_off_every_worker_refuses_at_once(
    pg_url: str, session_factory: SessionFactory, make_settings: Callable[..., Settings]
) -> None:
    await create_user(session_factory, username="dr.nocache", roles=["clinician"])
    settings = make_settings(auth_database_url=pg_url, authz_cache_ms=0)
    async with running_app(settings) as a, running_app(settings) as b:
        headers = await bearer_headers(a, "dr.nocache")
        assert (await b.get("/auth/me", headers=headers)).status_code == 200
        assert (await a.post("/auth/logout", headers=headers)).status_code == 204
        assert (await b.get("/auth/me", headers=headers)).status_code == 401
