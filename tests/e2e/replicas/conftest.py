"""Scale-out harness: three ``gateway serve`` replicas on one PostgreSQL auth DB, behind HAProxy.

``tests/e2e/replicas/run.sh`` (``just e2e-replicas``) starts PostgreSQL, HAPI FHIR and EHRbase with
``tests/e2e/infra/up.sh`` (reused when they run already) and exports their ``E2E_*`` variables; this module
then

- recreates the auth database ``gateway_replicas``, migrates it, syncs the letter template and creates the
  first administrator (the ``gateway`` command line, as ``tests/e2e/conftest.py`` does);
- starts three replicas ``gw1``-``gw3`` with the **same** secrets (``GATEWAY_SECRET_KEY``,
  ``TOTP_ENCRYPTION_KEY``), as docs/operations.md requires; ``gw3`` reaches PostgreSQL and EHRbase through
  :class:`~tests.e2e.replicas.cluster.TcpRelay` s, so a scenario can cut that one replica off the auth DB,
  or make EHRbase stop answering it;
- starts HAProxy with ``docker/haproxy/haproxy.cfg``, the file compose.dev.yml uses, and waits until it has
  every replica in rotation.

The scenarios address a replica directly (``cluster.replicas[i].url``) when it matters which one answers,
and HAProxy (``cluster.lb_url``) otherwise.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from tests.e2e.gateway_process import gateway_env, recreate_database, run_cli
from tests.e2e.replicas.cluster import HAProxy, Replica, TcpRelay, free_ports

AUTH_DB = "gateway_replicas"
ADMIN_USER = "replicas.admin"
ADMIN_PASSWORD = "Admin-replicas-" + secrets.token_urlsafe(12)
FIRST_PASSWORD = "Replica-first-Passw0rd!"
PASSWORD = "Replica-own-Passw0rd-42!"
#: docs/security.md: a positive authorisation answer is reused for at most this long by a process.
AUTHZ_CACHE_MS = 500
NHS = "https://fhir.nhs.uk/Id/nhs-number"


@dataclass
class Cluster:
    """The running replicas, HAProxy in front of them, and what the scenarios share."""

    replicas: list[Replica]
    haproxy: HAProxy
    relay: TcpRelay  # gw3 -> PostgreSQL
    ehrbase_relay: TcpRelay  # gw3 -> EHRbase
    database_url: str
    ehrbase_url: str
    ehrbase_user: tuple[str, str]
    fhir_url: str
    admin_token: str = ""
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def lb_url(self) -> str:
        return self.haproxy.url

    def replica(self, name: str) -> Replica:
        return next(r for r in self.replicas if r.name == name)

    def client(self, base_url: str, token: str | None = None) -> httpx.Client:
        """An HTTP client for one replica or HAProxy, signed in with ``token`` when given."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=base_url, headers=headers, timeout=60.0)

    def token(self, base_url: str, username: str, password: str) -> str:
        response = httpx.post(
            f"{base_url}/auth/token", data={"username": username, "password": password}, timeout=30
        )
        assert response.status_code == 200, f"login of {username} at {base_url}: {response.text}"
        value: str = response.json()["access_token"]
        return value

    def onboard(self, username: str, display_name: str, *, via: str) -> tuple[dict[str, Any], str]:
        """The admin creates a clinician at ``via``; the clinician sets an own password; (account, token)."""
        with self.client(via, self.admin_token) as admin:
            created = admin.post(
                "/admin/users",
                json={
                    "username": username,
                    "display_name": display_name,
                    "roles": ["clinician"],
                    "initial_password": FIRST_PASSWORD,
                },
            )
            assert created.status_code == 201, created.text
        user: dict[str, Any] = created.json()["user"]
        with self.client(via, self.token(via, username, FIRST_PASSWORD)) as clinician:
            changed = clinician.post(
                "/auth/password", json={"current_password": FIRST_PASSWORD, "new_password": PASSWORD}
            )
            assert changed.status_code == 204, changed.text
        return user, self.token(via, username, PASSWORD)

    def register_patient(self, base_url: str, token: str, given: str, nhs: str) -> str:
        """Register a patient (the registering clinician gets a care-team link); its FHIR id."""
        body = {
            "resourceType": "Patient",
            "identifier": [{"system": NHS, "value": nhs}],
            "name": [{"family": f"Scale{self.run_id}", "given": [given]}],
            "gender": "female",
            "birthDate": "1980-02-29",
        }
        with self.client(base_url, token) as clinician:
            response = clinician.post("/patients", json=body)
        assert response.status_code == 201, response.text
        patient_id: str = response.json()["id"]
        return patient_id

    def ehrbase_aql(self, query: str, parameters: dict[str, Any]) -> list[list[Any]]:
        """A parameterised AQL query in EHRbase itself (not through the gateway)."""
        response = httpx.post(
            f"{self.ehrbase_url}/rest/openehr/v1/query/aql",
            json={"q": query, "query_parameters": parameters},
            auth=self.ehrbase_user,
            timeout=30.0,
        )
        assert response.status_code == 200, response.text
        rows: list[list[Any]] = response.json()["rows"]
        return rows

    def compositions(self, patient_id: str) -> list[str]:
        """The version uids of every composition in the patient's EHR(s) (by subject, in EHRbase)."""
        return [uid for uid, _ in self.letters(patient_id)]

    def letters(self, patient_id: str) -> list[tuple[str, str]]:
        """(version uid, title) of every letter in the patient's EHR(s) (by subject, in EHRbase)."""
        rows = self.ehrbase_aql(
            "SELECT c/uid/value, s/name/value FROM EHR e CONTAINS COMPOSITION c "
            "CONTAINS SECTION s[openEHR-EHR-SECTION.adhoc.v1] "
            "WHERE e/ehr_status/subject/external_ref/id/value = $subject",
            {"subject": patient_id},
        )
        return [(str(uid), str(title)) for uid, title in rows]

    def idempotency_state(self, key: str) -> str | None:
        """The state of an Idempotency-Key in the auth DB (``in_progress``, ``completed``) or None."""
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute("SELECT state FROM idempotency_key WHERE key = %s", (key,)).fetchone()
        return None if row is None else str(row[0])

    def audit_rows(self, request_ids: list[str]) -> list[tuple[str, str, str]]:
        """(request id, action, outcome) of every audit_event row of these request ids."""
        with psycopg.connect(self.database_url) as conn:
            rows = conn.execute(
                "SELECT request_id, action, outcome FROM audit_event WHERE request_id = ANY(%s)",
                (request_ids,),
            ).fetchall()
        return [(str(r), str(a), str(o)) for r, a, o in rows]


def request_id() -> str:
    """A fresh X-Request-ID (the gateway keeps a well-formed one and records it in the audit trail)."""
    return uuid.uuid4().hex


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    database_url = recreate_database(os.environ["E2E_GATEWAY_ADMIN_DB_URL"], AUTH_DB)
    db = urlsplit(database_url)
    ehrbase = urlsplit(os.environ["E2E_EHRBASE_URL"])
    relay_ports = free_ports(2, start=25900, end=26000)
    relay = TcpRelay(db.hostname or "127.0.0.1", db.port or 5432, port=relay_ports[0])
    ehrbase_relay = TcpRelay(ehrbase.hostname or "127.0.0.1", ehrbase.port or 80, port=relay_ports[1])
    relay.start()
    ehrbase_relay.start()
    # One configuration and one set of secrets for every replica; gw3 reaches the auth DB through the relay.
    env = gateway_env(
        database_url,
        EHRBASE_SUBJECT_NAMESPACE="fhir-patient",
        AUTHZ_CACHE_MS=str(AUTHZ_CACHE_MS),
        # HAProxy checks /ready every second: each check sees the stores as they are now.
        READY_CACHE_SECONDS="0",
        # Three processes on the e2e cluster (max_connections 200), beside HAPI's and EHRbase's pools.
        AUTH_DB_POOL_SIZE="4",
        AUTH_DB_MAX_OVERFLOW="4",
        AUTH_DB_HOT_POOL_SIZE="4",
    )
    workdir = tempfile.mkdtemp(prefix="gateway-replicas-")  # no stray .env is read
    run_cli(env, workdir, "db", "upgrade")
    print(f"replicas: templates sync: {run_cli(env, workdir, 'templates', 'sync').strip()}")
    run_cli(
        env,
        workdir,
        "users",
        "create-admin",
        "--username",
        ADMIN_USER,
        "--display-name",
        "Replicas Administrator",
        "--password-stdin",
        stdin=ADMIN_PASSWORD + "\n",
    )
    relayed = database_url.replace(f":{db.port}/", f":{relay.port}/", 1)
    relayed_ehrbase = os.environ["E2E_EHRBASE_URL"].replace(f":{ehrbase.port}/", f":{ehrbase_relay.port}/", 1)
    ports = free_ports(3)
    replicas = [
        Replica("gw1", ports[0], env, workdir),
        Replica("gw2", ports[1], env, workdir),
        Replica(
            "gw3", ports[2], {**env, "AUTH_DATABASE_URL": relayed, "EHRBASE_URL": relayed_ehrbase}, workdir
        ),
    ]
    haproxy = HAProxy([f"127.0.0.1:{r.port}" for r in replicas])
    try:
        for replica in replicas:
            replica.log_path.unlink(missing_ok=True)
            replica.start()
        for replica in replicas:
            replica.wait_ready()
        haproxy.start()
        for replica in replicas:
            haproxy.wait_state(replica.name, "UP", timeout=30)
        cluster = Cluster(
            replicas=replicas,
            haproxy=haproxy,
            relay=relay,
            ehrbase_relay=ehrbase_relay,
            database_url=database_url,
            ehrbase_url=os.environ["E2E_EHRBASE_URL"],
            ehrbase_user=(os.environ["E2E_EHRBASE_USER"], os.environ["E2E_EHRBASE_PASSWORD"]),
            fhir_url=os.environ["E2E_FHIR_URL"],
        )
        cluster.admin_token = cluster.token(replicas[0].url, ADMIN_USER, ADMIN_PASSWORD)
        yield cluster
    finally:
        haproxy.stop()
        for replica in replicas:
            replica.kill()
        relay.close()
        ehrbase_relay.resume()
        ehrbase_relay.close()
