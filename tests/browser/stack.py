"""The browser suite's gateway: a real ``gateway serve`` process on PostgreSQL, with accounts and patients.

    uv run python -m tests.browser.stack --port 25501 --web-origin http://localhost:25502 \
        --state var/browser/stack.json

Started by ``tests/browser/run.sh`` after ``tests/e2e/infra/up.sh`` (whose ``E2E_*`` exports give the
PostgreSQL cluster, HAPI FHIR and EHRbase). It

- recreates the auth database ``gateway_browser`` and migrates it (``gateway db upgrade``),
- makes sure the letter template is in EHRbase (``gateway templates sync``),
- creates the first administrator (``gateway users create-admin``),
- starts ``gateway serve`` as in production (``GATEWAY_ENV=production``, ``__Host-`` cookies, which
  browsers accept from ``http://localhost``) with ``CORS_ALLOW_ORIGINS`` set to the web client's origin,
- through the HTTP API: creates two clinicians (``carol`` with TOTP enrolled, ``dave`` without), each of
  whom changes the temporary password, and registers four patients of this run's family name as ``dave``
  (so the search in the browser has pages to follow),
- writes what the Playwright specs need (addresses, passwords, the TOTP secret) to ``--state``,

then waits until it is stopped (SIGTERM or SIGINT) and stops the gateway. Logs: ``var/browser/logs/``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import pyotp

from tests.e2e.gateway_process import (
    gateway_env,
    nhs_number,
    recreate_database,
    run_cli,
    wait_until_serving,
)

ROOT = Path(__file__).resolve().parents[2]
AUTH_DB = "gateway_browser"
ADMIN = "browser.admin"
#: Bound of every wait here (seconds).
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"


def expect(response: httpx.Response, status: int) -> Any:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
        )
    return response.json() if response.content else None


def token(http: httpx.Client, username: str, password: str) -> dict[str, str]:
    body = expect(http.post("/auth/token", data={"username": username, "password": password}), 200)
    return {"Authorization": f"Bearer {body['access_token']}"}


def clinician(
    http: httpx.Client, admin: dict[str, str], username: str, display_name: str, password: str
) -> None:
    """Create a clinician as the administrator; the clinician replaces the temporary password."""
    created = expect(
        http.post(
            "/admin/users",
            json={"username": username, "display_name": display_name, "roles": ["clinician"]},
            headers=admin,
        ),
        201,
    )
    first = token(http, username, created["temporary_password"])
    expect(
        http.post(
            "/auth/password",
            json={"current_password": created["temporary_password"], "new_password": password},
            headers=first,
        ),
        204,
    )


def enrol_totp(http: httpx.Client, username: str, password: str) -> tuple[str, int]:
    """Enrol and confirm TOTP for ``username``; returns the secret and the time step used to confirm."""
    headers = token(http, username, password)
    secret = expect(http.post("/auth/totp/enrol", json={"password": password}, headers=headers), 200)[
        "secret"
    ]
    now = time.time()
    expect(http.post("/auth/totp/confirm", json={"code": pyotp.TOTP(secret).at(now)}, headers=headers), 200)
    return secret, int(now // 30)


def register(
    http: httpx.Client, headers: dict[str, str], family: str, given: str, birth_date: str, nhs: str
) -> str:
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": NHS_SYSTEM, "value": nhs}],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": "female",
        "birthDate": birth_date,
    }
    body = expect(http.post("/patients", json=patient, headers=headers), 201)
    return str(body["id"])


def prepare(url: str, run_id: str) -> dict[str, Any]:
    """Accounts and patients through the HTTP API; returns what the specs need."""
    rng = secrets.SystemRandom()
    passwords = {name: f"Browser-{name}-{secrets.token_urlsafe(12)}" for name in ("carol", "dave")}
    family = f"Browser{run_id.upper()}"
    with httpx.Client(base_url=url, timeout=60.0) as http:
        admin = token(http, ADMIN, os.environ["BROWSER_ADMIN_PASSWORD"])
        clinician(http, admin, "carol", "Dr Carol Browser", passwords["carol"])
        clinician(http, admin, "dave", "Dr Dave Browser", passwords["dave"])
        secret, step = enrol_totp(http, "carol", passwords["carol"])
        dave = token(http, "dave", passwords["dave"])
        patients = [
            register(http, dave, family, given, f"19{50 + i}-0{i + 1}-1{i}", nhs_number(rng))
            for i, given in enumerate(["Ada", "Bea", "Cleo", "Dora"])
        ]
    return {
        "runId": run_id,
        "family": family,
        "carol": {
            "username": "carol",
            "password": passwords["carol"],
            "totpSecret": secret,
            "totpStep": step,
        },
        "dave": {"username": "dave", "password": passwords["dave"]},
        "admin": {"username": ADMIN, "password": os.environ["BROWSER_ADMIN_PASSWORD"]},
        "davePatients": patients,
        "newNhsNumber": nhs_number(rng),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="the gateway's port on 127.0.0.1")
    parser.add_argument("--web-origin", required=True, help="the web client's origin (CORS_ALLOW_ORIGINS)")
    parser.add_argument("--state", type=Path, required=True, help="where to write the JSON the specs read")
    args = parser.parse_args()
    args.state.unlink(missing_ok=True)
    os.environ.setdefault("BROWSER_ADMIN_PASSWORD", "Admin-browser-" + secrets.token_urlsafe(12))
    env = gateway_env(
        recreate_database(os.environ["E2E_GATEWAY_ADMIN_DB_URL"], AUTH_DB), CORS_ALLOW_ORIGINS=args.web_origin
    )
    workdir = tempfile.mkdtemp(prefix="gateway-browser-")  # no stray .env is read
    run_cli(env, workdir, "db", "upgrade")
    run_cli(env, workdir, "templates", "sync")
    run_cli(
        env,
        workdir,
        "users",
        "create-admin",
        "--username",
        ADMIN,
        "--display-name",
        "Browser Administrator",
        "--password-stdin",
        stdin=os.environ["BROWSER_ADMIN_PASSWORD"] + "\n",
    )
    log_dir = ROOT / "var" / "browser" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "gateway.log"
    serve = [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(args.port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(serve, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        url = f"http://127.0.0.1:{args.port}"
        wait_until_serving(url, process, log_path)
        state = prepare(url, secrets.token_hex(3))
        state["gatewayUrl"] = f"http://localhost:{args.port}"
        args.state.write_text(json.dumps(state, indent=2))
        print(f"browser stack: gateway on {state['gatewayUrl']}, state in {args.state}", flush=True)
        while process.poll() is None:
            time.sleep(0.5)
        raise RuntimeError(f"the gateway stopped:\n{log_path.read_text()[-4000:]}")
    finally:
        stop(process)


if __name__ == "__main__":
    main()
