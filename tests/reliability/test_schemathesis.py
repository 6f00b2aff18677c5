"""Schemathesis against the app's own OpenAPI: no 5xx, responses match their schema, statuses are declared.

The gateway runs under uvicorn on a loopback port (with its lifespan) on the test PostgreSQL; HAPI FHIR
and EHRbase are answered by respx, which intercepts httpx in every thread. Requests are authenticated as
a clinician with a care-team link and as an administrator. Operations that would end the very sessions
the run uses (logout, password and TOTP changes, ending sessions) are left out. The run is bounded
(``SCHEMATHESIS_MAX_EXAMPLES``, default 8 per operation); ``just fuzz`` runs a longer one.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import requests
import respx
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import checks

from auth_db.engine import SessionFactory
from gateway.main import create_app
from gateway.security.access import grant_care_team
from gateway.settings import Settings
from tests import ehrbase_payloads as eb
from tests import fhir_payloads as hapi
from tests.factories import DEFAULT_PASSWORD, create_user
from tests.faults import closed_port
from tests.respx_transport import UPSTREAM

#: No 5xx; bodies, headers, content types and status codes as the OpenAPI declares. (Schemathesis's
#: positive/negative data checks are left out: business rules such as an NHS number's check digit or a
#: reserved e-mail domain rightly refuse data the JSON schema alone allows.)
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "8"))
SESSION_ENDING = (
    r"^/auth/(logout|password|sessions/end|totp/.*)$"
    r"|^/admin/users/\{[^}]+\}/(disable|sessions.*|password.*|totp.*)$"
)


def _upstreams(mock: respx.MockRouter) -> None:
    def fhir(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            return httpx.Response(200, json={"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"})
        if request.method in ("POST", "PUT"):
            return hapi.resource_response(
                hapi.patient("1001", version="2"), 201 if request.method == "POST" else 200
            )
        if request.url.path.rstrip("/").endswith("/Patient") or "_getpages" in str(request.url):
            return hapi.searchset([hapi.patient("1001")], total=1)
        pid = request.url.path.rsplit("/", 1)[-1]
        return hapi.resource_response(hapi.patient(pid)) if pid == "1001" else hapi.not_found(pid)

    def ehrbase(request: httpx.Request) -> httpx.Response:
        import json

        path = request.url.path
        if path.endswith("/rest/status"):
            return httpx.Response(200, json={"ehrbase_version": "2.31.0"})
        if path.endswith("/query/aql"):
            return httpx.Response(
                200, json=eb.result_set(json.loads(request.content)["q"], eb.LETTER_COLUMNS, [], 0, 10)
            )
        if path.endswith("/ehr") or path.endswith(f"/ehr/{eb.EHR_ID}"):
            return eb.ehr()
        if request.method == "POST" and path.endswith("/composition"):
            composition = json.loads(request.content)
            return eb.composition_written(
                eb.EHR_ID, composition, composition.get("uid", {}).get("value", eb.VERSION_1)
            )
        return eb.error(404, "Not found")

    mock.route(host="fhir.test").mock(side_effect=fhir)
    mock.route(host="ehrbase.test").mock(side_effect=ehrbase)


@pytest.fixture
def served(
    pg_url: str, session_factory: SessionFactory, make_settings: Callable[..., Settings]
) -> Iterator[str]:
    async def seed() -> None:
        clinician = await create_user(session_factory, username="dr.fuzz", roles=["clinician"])
        await create_user(session_factory, username="admin.fuzz", roles=["admin"])
        async with session_factory() as session:
            await grant_care_team(session, user_id=clinician.id, patient_id="1001", granted_by=None)
            await session.commit()

    asyncio.get_event_loop_policy()  # the seed runs on its own loop: the app runs in another thread
    loop = asyncio.new_event_loop()
    loop.run_until_complete(seed())
    loop.close()
    port = closed_port()
    app = create_app(make_settings(auth_database_url=pg_url, log_level="WARNING"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    with respx.mock(using=UPSTREAM, assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        _upstreams(mock)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(10)


def _token(base: str, username: str) -> dict[str, str]:
    answer = requests.post(
        f"{base}/auth/token", data={"username": username, "password": DEFAULT_PASSWORD}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


@pytest.mark.parametrize("username", ["dr.fuzz", "admin.fuzz"])
def test_openapi_conformance(served: str, username: str) -> None:
    schema = schemathesis.openapi.from_url(f"{served}/openapi.json").exclude(path_regex=SESSION_ENDING)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        headers = _token(served, username)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            try:
                # check() runs right away, inside this iteration: headers cannot be late-bound.
                case.call_and_validate(headers=headers, timeout=30, checks=CHECKS)  # noqa: B023
            except Exception as exc:  # collect and go on: one report for the whole run
                failures.append(f"{case.method} {case.path}: {type(exc).__name__}: {str(exc)[:600]}")

        check()
    assert operations > 20
    assert failures == [], "\n\n".join(failures[:10])
