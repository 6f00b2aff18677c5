"""Logs: one JSON object per line with request id, user id, route, status and duration — and no secrets.

The secrets test drives a whole flow (failed and successful logins, cookie and bearer use, a patient
read, a letter write, an unreachable upstream, readiness, metrics, refresh, logout) at DEBUG level and
then searches every captured log line for each secret and piece of patient data that was used.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import respx
from sqlalchemy.engine import make_url

from auth_db.engine import SessionFactory
from auth_db.models import PatientEhr
from gateway.security.access import grant_care_team
from gateway.settings import Settings
from tests import ehrbase_payloads as eb
from tests import fhir_payloads as hapi
from tests import ops_payloads as ops
from tests.conftest import running_app
from tests.factories import create_user
from tests.respx_transport import UPSTREAM

PASSWORD = "Cl1nician-Pa55phrase-Zq8x"
WRONG_PASSWORD = "Wr0ng-Guess-Kp4vTt"
SECRET_KEY = "log-test-secret-key-7f3a9c1e5b2d8f4a6c0e9b7d5f3a1c8e"
METRICS_TOKEN = "metrics-scrape-token-4b8d2f6a"
FHIR_PASSWORD = "hapi-service-password-93kd"
EHRBASE_PASSWORD = "ehrbase-user-password-55xq"
EHRBASE_ADMIN_PASSWORD = "ehrbase-admin-password-77zr"
LETTER_TEXT = "Synthetic confidential letter text 4417"
PATIENT = "1001"


def json_lines(text: str) -> list[dict[str, object]]:
    lines = [line for line in text.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def encodings(secret: str) -> set[str]:
    """A secret as it might leak: plain, URL-quoted, or inside a Basic header."""
    from urllib.parse import quote

    return {secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode()}


async def test_access_log_line_has_request_id_user_route_status_duration(
    pg_engine: object,
    pg_url: str,
    session_factory: SessionFactory,
    make_settings: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
) -> None:
    user = await create_user(session_factory, username="ada", roles=["clinician"], password=PASSWORD)
    async with running_app(make_settings(auth_database_url=pg_url, log_level="DEBUG")) as client:
        token = (await client.post("/auth/token", data={"username": "ada", "password": PASSWORD})).json()
        capsys.readouterr()
        response = await client.get(
            "/auth/me",
            headers={"Authorization": f"Bearer {token['access_token']}", "X-Request-ID": "req-0001-abcd"},
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-0001-abcd"
    [line] = [e for e in json_lines(capsys.readouterr().err) if e.get("logger") == "gateway.access"]
    assert line["request_id"] == "req-0001-abcd"
    assert line["user_id"] == str(user.id)
    assert line["route"] == "/auth/me"
    assert line["method"] == "GET"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float)
    assert line["level"] == "debug"
    assert "timestamp" in line


async def test_no_line_per_request_above_debug(
    pg_engine: object,
    pg_url: str,
    session_factory: SessionFactory,
    make_settings: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
) -> None:
    await create_user(session_factory, username="ada", roles=["clinician"], password=PASSWORD)
    async with running_app(make_settings(auth_database_url=pg_url, log_level="INFO")) as client:
        token = (await client.post("/auth/token", data={"username": "ada", "password": PASSWORD})).json()
        capsys.readouterr()
        for _ in range(3):
            response = await client.get(
                "/auth/me", headers={"Authorization": f"Bearer {token['access_token']}"}
            )
            assert response.status_code == 200
        assert (await client.get("/health")).status_code == 200
        # Read before the app stops: its shutdown summary is one INFO line, not a line per request.
        assert json_lines(capsys.readouterr().err) == []


async def test_request_id_is_sent_upstream(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    with respx.mock(using=UPSTREAM, assert_all_called=False) as router:
        route = router.get(f"{ops.FHIR_BASE}/metadata").mock(
            side_effect=lambda _r: ops.capability_statement()
        )
        async with running_app(make_settings(auth_db_sqlite_path=tmp_path / "a.db")) as client:
            app = client.app  # type: ignore[attr-defined]
            from gateway.context import request_id_var

            token = request_id_var.set("req-upstream-0042")
            try:
                await app.state.fhir.metadata()
            finally:
                request_id_var.reset(token)
    assert route.calls.last.request.headers["x-request-id"] == "req-upstream-0042"


async def test_no_secret_or_patient_data_in_any_log_line(
    pg_engine: object,
    pg_url: str,
    session_factory: SessionFactory,
    make_settings: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    user = await create_user(session_factory, username="ada", roles=["clinician"], password=PASSWORD)
    async with session_factory() as session:
        await grant_care_team(session, user_id=user.id, patient_id=PATIENT, granted_by=None)
        session.add(PatientEhr(patient_id=PATIENT, ehr_id=eb.EHR_ID))
        await session.commit()
    settings = make_settings(
        auth_database_url=pg_url,
        gateway_secret_key=SECRET_KEY,
        log_level="DEBUG",
        metrics_token=METRICS_TOKEN,
        fhir_auth_mode="basic",
        fhir_username="gateway-svc",
        fhir_password=FHIR_PASSWORD,
        ehrbase_api_password=EHRBASE_PASSWORD,
        ehrbase_api_admin_password=EHRBASE_ADMIN_PASSWORD,
        ready_cache_seconds=0,
        breaker_failure_threshold=100,
    )
    seen: dict[str, str] = {}
    with respx.mock(using=UPSTREAM, assert_all_called=False) as router:
        router.get(f"{ops.FHIR_BASE}/metadata").mock(side_effect=lambda _r: ops.capability_statement())
        router.get(f"{ops.EHRBASE_BASE}/rest/status").mock(side_effect=lambda _r: ops.ehrbase_status())
        patient = router.get(f"{hapi.BASE}/Patient/{PATIENT}").mock(
            side_effect=lambda _r: hapi.resource_response(hapi.patient(pid=PATIENT))
        )

        def echo(request: httpx.Request) -> httpx.Response:
            composition = json.loads(request.content)
            return eb.composition_written(eb.EHR_ID, composition, composition["uid"]["value"])

        router.post(f"{eb.BASE}/ehr/{eb.EHR_ID}/composition").mock(side_effect=echo)
        router.get(f"{eb.BASE}/ehr/{eb.EHR_ID}").mock(side_effect=lambda _r: eb.ehr())

        async with running_app(settings) as client:
            failed = await client.post("/auth/login", json={"username": "ada", "password": WRONG_PASSWORD})
            assert failed.status_code == 401
            login = await client.post("/auth/login", json={"username": "ada", "password": PASSWORD})
            assert login.status_code == 200, login.text
            seen["csrf"] = login.json()["csrf_token"]
            seen.update({f"cookie:{name}": value for name, value in client.cookies.items()})
            assert (await client.get("/auth/me")).status_code == 200

            client.cookies.clear()
            tokens = (await client.post("/auth/token", data={"username": "ada", "password": PASSWORD})).json()
            seen["access"] = tokens["access_token"]
            seen["refresh"] = tokens["refresh_token"]
            bearer = {"Authorization": f"Bearer {tokens['access_token']}"}

            read = await client.get(f"/patients/{PATIENT}", headers=bearer)
            assert read.status_code == 200, read.text
            written = await client.post(
                f"/patients/{PATIENT}/letters",
                headers={**bearer, "Idempotency-Key": "key-9b1c7e55-2f4d"},
                json={"title": "Discharge", "body": LETTER_TEXT, "status": "draft", "recipients": ["GP"]},
            )
            assert written.status_code == 201, written.text
            patient.mock(side_effect=httpx.ConnectError("connection refused"))
            unreachable = await client.get(f"/patients/{PATIENT}", headers=bearer)
            assert unreachable.status_code == 503

            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/ready")).status_code == 200
            scrape = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
            assert scrape.status_code == 200
            refreshed = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
            seen["refreshed"] = json.dumps(refreshed.json())

    output = capsys.readouterr().err
    records = "\n".join(json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert "gateway.access" in output, "the flow must have produced log lines"
    for line in output.splitlines():
        if line.strip():
            json.loads(line)  # every line is one JSON object

    db_password = make_url(pg_url).password
    secrets = {
        "password": PASSWORD,
        "wrong password": WRONG_PASSWORD,
        "secret key": SECRET_KEY,
        "metrics token": METRICS_TOKEN,
        "FHIR password": FHIR_PASSWORD,
        "EHRbase password": EHRBASE_PASSWORD,
        "EHRbase admin password": EHRBASE_ADMIN_PASSWORD,
        "letter text": LETTER_TEXT,
        "patient family name": "Chalmers",
        "patient birth date": "1974-12-25",
        "patient NHS number": hapi.VALID_NHS_NUMBER,
        **{name: value for name, value in seen.items() if len(value) >= 8 and name != "refreshed"},
    }
    if db_password:
        secrets["auth DB password"] = db_password
    for token_field in ("access_token", "refresh_token"):
        value = json.loads(seen["refreshed"]).get(token_field)
        if value:
            secrets[f"refreshed {token_field}"] = value
    for name, secret in secrets.items():
        for form in encodings(secret):
            assert form not in output, f"{name} appears in the log output"
            assert form not in records, f"{name} appears in a log record"
