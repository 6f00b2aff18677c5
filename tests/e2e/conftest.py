"""End-to-end harness: the gateway as a real process against real HAPI FHIR, EHRbase and PostgreSQL.

``tests/e2e/run.sh`` (``just e2e``) starts the servers with ``tests/e2e/infra/up.sh`` and exports their
addresses as ``E2E_*`` variables; this module then

- recreates the gateway's auth database (``gateway_e2e``) and migrates it with ``gateway db upgrade``,
- uploads the letter template with ``gateway templates sync``,
- creates the first administrator with ``gateway users create-admin`` (the only step outside the HTTP API:
  there are no default accounts),
- starts ``gateway serve`` on a free loopback port and hands the tests an HTTP client for it.

Every scenario acts through the gateway's HTTP API; direct upstream calls only check the result in the
store itself (AQL in EHRbase, an identifier search in HAPI). ``test_fhir_client_races.py`` is the one
exception: it drives the FHIR client alone, to make conditional creates race inside HAPI. HAPI and EHRbase
keep their data between runs, so every run uses its own random family name and NHS numbers.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.gateway_process import gateway_env, recreate_database, run_cli, stop, wait_until_serving

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "tests" / "e2e" / "infra"
REQUIRED = (
    "E2E_FHIR_URL",
    "E2E_EHRBASE_URL",
    "E2E_EHRBASE_USER",
    "E2E_EHRBASE_PASSWORD",
    "E2E_EHRBASE_ADMIN_USER",
    "E2E_EHRBASE_ADMIN_PASSWORD",
    "E2E_GATEWAY_ADMIN_DB_URL",
    "E2E_KEYCLOAK_URL",
)
AUTH_DB = "gateway_e2e"
ADMIN_USER = "e2e.admin"
ADMIN_PASSWORD = "Admin-e2e-" + secrets.token_urlsafe(12)
#: Bound of every wait in the harness (seconds).


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without the servers the suite cannot mean anything: refuse to run rather than skip quietly."""
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if missing and items:
        raise pytest.UsageError(
            "e2e: the real servers are not running ("
            + ", ".join(missing)
            + ' unset). Run `uv run just e2e`, or `eval "$(bash tests/e2e/infra/up.sh)"` first.'
        )


@dataclass
class Stack:
    """Addresses and credentials of the running stack, and what the scenarios learn on the way."""

    gateway_url: str
    fhir_url: str
    ehrbase_url: str
    ehrbase_user: tuple[str, str]
    namespace: str
    log_path: Path
    #: The auth database (only the SSO scenario reads it: to age a login transaction past its TTL).
    database_url: str = ""
    admin_token: str = ""
    clinician: dict[str, Any] = field(default_factory=dict)
    clinician_token: str = ""
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    state: dict[str, Any] = field(default_factory=dict)

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client for the gateway, signed in with ``token`` when given."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.gateway_url, headers=headers, timeout=60.0)

    def ehrbase_aql(self, query: str, parameters: dict[str, Any]) -> list[list[Any]]:
        """Run a parameterised AQL query in EHRbase itself (not through the gateway)."""
        response = httpx.post(
            f"{self.ehrbase_url}/rest/openehr/v1/query/aql",
            json={"q": query, "query_parameters": parameters},
            auth=self.ehrbase_user,
            timeout=30.0,
        )
        assert response.status_code == 200, response.text
        rows: list[list[Any]] = response.json()["rows"]
        return rows


#: The gateway's clients in the Keycloak realms of tests/e2e/infra/keycloak (docs/sso.md).
SSO_PROVIDERS = {
    "hospital": {"realm": "hospital", "secret": "gateway-e2e-secret", "provisioning": "pre_provisioned"},
    "clinic": {"realm": "clinic", "secret": "clinic-e2e-secret", "provisioning": "jit"},
}


def sso_env(gateway_url: str) -> dict[str, str]:
    """Single sign-on settings: the ``hospital`` realm pre-provisioned, the ``clinic`` realm just in time."""
    keycloak = os.environ["E2E_KEYCLOAK_URL"].rstrip("/")
    providers = [
        {
            "id": name,
            "display_name": f"Sign in with the {name}",
            "issuer": f"{keycloak}/realms/{spec['realm']}",
            "client_id": "gateway",
            "client_secret": spec["secret"],
            "roles_claim": "realm_access.roles",
            "role_map": {"gateway-clinician": ["clinician"], "gateway-admin": ["admin"]},
            "provisioning": spec["provisioning"],
        }
        for name, spec in SSO_PROVIDERS.items()
    ]
    return {
        "OIDC_PROVIDERS": json.dumps(providers),
        "GATEWAY_PUBLIC_URL": gateway_url,
        # No separate frontend in this suite: the browser is sent back to the gateway's own origin.
        "FRONTEND_URL": gateway_url,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The gateway process with a fresh auth database, our template in EHRbase and a first admin."""
    database_url = recreate_database(os.environ["E2E_GATEWAY_ADMIN_DB_URL"], AUTH_DB)
    namespace = "fhir-patient"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = gateway_env(
        database_url,
        **sso_env(url),
        EHRBASE_SUBJECT_NAMESPACE=namespace,
        # Outage scenario: see readiness and the breaker change within seconds, not the production 5 s/30 s.
        READY_CACHE_SECONDS="0",
        BREAKER_RESET_SECONDS="2",
        # DEBUG: the per-request access lines are written too, so the secrets check covers them
        LOG_LEVEL="DEBUG",
    )
    workdir = tempfile.mkdtemp(prefix="gateway-e2e-")  # no stray .env is read
    run_cli(env, workdir, "db", "upgrade")
    synced = run_cli(env, workdir, "templates", "sync")
    print(f"e2e: templates sync: {synced.strip()}")
    # A second sync must recognise the template EHRbase now holds (EHRbase re-serialises the OPT).
    again = run_cli(env, workdir, "templates", "sync")
    assert "unchanged" in again, again
    run_cli(
        env,
        workdir,
        "users",
        "create-admin",
        "--username",
        ADMIN_USER,
        "--display-name",
        "E2E Administrator",
        "--password-stdin",
        stdin=ADMIN_PASSWORD + "\n",
    )
    log_dir = ROOT / "var" / "e2e" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_serving(url, process, log_path)
        yield Stack(
            gateway_url=url,
            fhir_url=os.environ["E2E_FHIR_URL"],
            ehrbase_url=os.environ["E2E_EHRBASE_URL"],
            ehrbase_user=(os.environ["E2E_EHRBASE_USER"], os.environ["E2E_EHRBASE_PASSWORD"]),
            namespace=namespace,
            log_path=log_path,
            database_url=database_url,
        )
    finally:
        stop(process)


def infra(script: str, *args: str, services: str | None = None, timeout: float = 600) -> None:
    """Run ``tests/e2e/infra/<script>`` (used to stop and restart EHRbase mid-suite)."""
    env = dict(os.environ)
    if services is not None:
        env["E2E_SERVICES"] = services
    result = subprocess.run(
        ["bash", str(INFRA / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{script} {' '.join(args)} failed:\n{result.stderr[-3000:]}"
