"""Every route is declared public, authenticated or PHI; every PHI route is guarded and audited.

A route is PHI when its dependencies include ``patient_access`` (see gateway/security/access.py),
authenticated when they include ``current_principal``, and public only when listed in ``PUBLIC``.
A new route that is none of these fails :func:`test_every_route_is_classified`; a new PHI route
without an example request below fails :func:`test_every_phi_route_has_an_example`, and then gets
the three checks (401 without credentials, 403 + denial audit without a relationship and before
any upstream call, access with a relationship and an audit record) automatically.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import respx
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from sqlmodel import col, select

from auth_db.engine import SessionFactory
from auth_db.models import AuditEvent, PatientEhr
from gateway.main import create_app
from gateway.security.access import grant_care_team
from gateway.security.deps import authenticated_principal, current_principal
from gateway.settings import Settings
from tests import ehrbase_payloads as eb
from tests import fhir_payloads as hapi
from tests.conftest import running_app
from tests.factories import bearer_headers, create_user
from tests.respx_transport import UPSTREAM

PUBLIC = {
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("POST", "/auth/login"),
    ("POST", "/auth/token"),
    ("POST", "/auth/refresh"),
    ("GET", "/auth/csrf"),
    ("POST", "/auth/logout"),
    # Single sign-on: the provider list, the navigations of the flow, and the provider's own back-channel
    # call (authenticated by its signed logout token, not by a session); see docs/sso.md.
    ("GET", "/auth/sso/providers"),
    # The FHIR face's CapabilityStatement (no patient data; FHIR clients read it before authenticating).
    ("GET", "/fhir/metadata"),
    ("GET", "/auth/sso/{provider_id}/login"),
    ("GET", "/auth/sso/{provider_id}/callback"),
    ("POST", "/auth/sso/{provider_id}/backchannel-logout"),
    ("GET", "/auth/sso/logout/continue"),
}
PATIENT = "1001"
LETTER = eb.VERSION_1
LETTER_BODY = {"title": "Discharge summary", "body": "Seen today.", "status": "draft"}

#: One request per PHI route: (query params, JSON body, extra headers).
EXAMPLES: dict[tuple[str, str], tuple[dict[str, str], Any, dict[str, str]]] = {
    ("GET", "/patients/{patient_id}"): ({}, None, {}),
    ("PUT", "/patients/{patient_id}"): ({}, hapi.patient(PATIENT), {"If-Match": 'W/"1"'}),
    ("GET", "/patients/{patient_id}/letters"): ({}, None, {}),
    ("POST", "/patients/{patient_id}/letters"): ({}, LETTER_BODY, {}),
    ("GET", "/patients/{patient_id}/letters/{letter_id}"): ({}, None, {}),
    ("PUT", "/patients/{patient_id}/letters/{letter_id}"): ({}, LETTER_BODY, {"If-Match": LETTER}),
    ("DELETE", "/patients/{patient_id}/letters/{letter_id}"): ({}, None, {"If-Match": LETTER}),
}


def _calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub)


def classify(method: str, path: str, route: APIRoute) -> str:
    calls = list(_calls(route.dependant))
    if any(getattr(call, "__name__", "").startswith("patient_access_") for call in calls):
        return "phi"
    if current_principal in calls or authenticated_principal in calls:
        return "authenticated"
    if (method, path) in PUBLIC:
        return "public"
    return "unclassified"


def api_routes() -> list[tuple[str, str, APIRoute]]:
    app = create_app(Settings(_env_file=None))  # type: ignore[call-arg]
    result = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute):
            result.extend((method, str(context.path), route) for method in sorted(route.methods))
    return result


ROUTES = api_routes()
PHI_ROUTES = [(m, p) for m, p, route in ROUTES if classify(m, p, route) == "phi"]


def test_every_route_is_classified() -> None:
    unclassified = [f"{m} {p}" for m, p, route in ROUTES if classify(m, p, route) == "unclassified"]
    assert unclassified == [], "declare these routes public (PUBLIC) or protect them"


def test_public_routes_are_only_the_declared_ones() -> None:
    public = {(m, p) for m, p, route in ROUTES if classify(m, p, route) == "public"}
    assert public <= PUBLIC


def test_every_phi_route_has_an_example() -> None:
    assert PHI_ROUTES, "the PHI routes were not found"
    missing = [f"{m} {p}" for m, p in PHI_ROUTES if (m, p) not in EXAMPLES]
    assert missing == [], "add an example request to EXAMPLES for these PHI routes"


def test_patient_and_letter_routes_are_phi() -> None:
    for key in EXAMPLES:
        assert key in PHI_ROUTES


@dataclass
class Env:
    client: httpx.AsyncClient
    factory: SessionFactory
    headers: dict[str, str]
    user_id: Any
    fhir: respx.Route
    upstream_calls: list[httpx.Request]


@pytest.fixture
async def env(
    pg_url: str, session_factory: SessionFactory, make_settings: Callable[..., Settings]
) -> AsyncIterator[Env]:
    user = await create_user(session_factory, username="dr.inventory", roles=["clinician"])
    calls: list[httpx.Request] = []
    async with running_app(make_settings(auth_database_url=pg_url)) as client:
        headers = await bearer_headers(client, "dr.inventory")
        with respx.mock(using=UPSTREAM, assert_all_called=False) as mock:

            def record(
                answer: Callable[[httpx.Request], httpx.Response],
            ) -> Callable[[httpx.Request], httpx.Response]:
                def side_effect(request: httpx.Request) -> httpx.Response:
                    calls.append(request)
                    return answer(request)

                return side_effect

            fhir = mock.route(host="fhir.test").mock(side_effect=record(_fhir_answer))
            mock.route(host="ehrbase.test").mock(side_effect=record(_ehrbase_answer))
            yield Env(client, session_factory, headers, user.id, fhir, calls)


def _fhir_answer(request: httpx.Request) -> httpx.Response:
    if request.method == "PUT":
        return hapi.resource_response(hapi.patient(PATIENT, version="2"))
    return hapi.resource_response(hapi.patient(PATIENT))


def _ehrbase_answer(request: httpx.Request) -> httpx.Response:
    path = request.url.path
    if path.endswith("/query/aql"):
        sent = json.loads(request.content)
        return httpx.Response(200, json=eb.result_set(sent["q"], eb.LETTER_COLUMNS, [], 0, 10))
    if request.method == "POST" and path.endswith("/composition"):
        composition = json.loads(request.content)
        return eb.composition_written(eb.EHR_ID, composition, composition.get("uid", {}).get("value", LETTER))
    return eb.composition_not_found(eb.LETTER_UUID)


def _request(env: Env, method: str, path: str, headers: dict[str, str]) -> Any:
    params, body, extra = EXAMPLES[(method, path)]
    url = path.replace("{patient_id}", PATIENT).replace("{letter_id}", LETTER)
    return env.client.request(method, url, params=params, json=body, headers={**headers, **extra})


async def _events(env: Env) -> list[AuditEvent]:
    async with env.factory() as session:
        query = select(AuditEvent).where(AuditEvent.patient_id == PATIENT).order_by(col(AuditEvent.id))
        return list(await session.exec(query))


@pytest.mark.parametrize(("method", "path"), PHI_ROUTES)
async def test_phi_route_without_credentials_is_401(env: Env, method: str, path: str) -> None:
    response = await _request(env, method, path, {})
    assert response.status_code == 401
    assert env.upstream_calls == []


@pytest.mark.parametrize(("method", "path"), PHI_ROUTES)
async def test_phi_route_without_relationship_is_403_audited_and_sends_nothing(
    env: Env, method: str, path: str
) -> None:
    response = await _request(env, method, path, env.headers)
    assert response.status_code == 403
    assert response.json()["code"] == "no_patient_relationship"
    assert env.upstream_calls == []
    events = await _events(env)
    assert [(e.outcome, e.actor_user_id) for e in events] == [("denied", env.user_id)]


@pytest.mark.parametrize(("method", "path"), PHI_ROUTES)
async def test_phi_route_with_relationship_passes_and_is_audited(env: Env, method: str, path: str) -> None:
    async with env.factory() as session:
        await grant_care_team(session, user_id=env.user_id, patient_id=PATIENT, granted_by=None)
        session.add(PatientEhr(patient_id=PATIENT, ehr_id=eb.EHR_ID))
        await session.commit()
    response = await _request(env, method, path, env.headers)
    assert response.status_code not in (401, 403), response.text
    assert response.status_code < 500, response.text
    events = await _events(env)
    assert events, "no audit record"
    assert all(e.outcome != "denied" for e in events)
    assert all(e.actor_user_id == env.user_id for e in events)
