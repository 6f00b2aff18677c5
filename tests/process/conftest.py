"""A real ``gateway serve`` process (``python -m gateway.cli serve``) on a fresh PostgreSQL auth database.

:func:`start_gateway` starts it in a process group of its own, with an environment that inherits none of the
developer's gateway settings and a working directory without a ``.env``; the fixture ``gateways`` stops
whatever a test left running (SIGKILL to that group). The upstream stores are
:class:`tests.process.upstream_stub.UpstreamStub`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlmodel import col, select

from auth_db import migrate
from auth_db.engine import create_engine, create_session_factory
from auth_db.models import AuditEvent
from gateway.security.access import grant_care_team
from gateway.security.principal import Role
from tests.conftest import ROOT, TEST_SECRET
from tests.factories import DEFAULT_PASSWORD, create_user

#: Seconds a starting gateway has to answer ``/health`` (generous: workers start slowly on a busy machine).
START_TIMEOUT = 90.0
#: The patient the test user may read (a care-team link).
PATIENT_ID = "7001"
USERNAME = "process.clinician"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Gateway:
    """A running ``gateway serve``."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server process (with several workers: the supervisor)."""
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """The exit status, waiting at most ``timeout`` seconds (fails the test if it is still running)."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the gateway did not exit within {timeout:g} s:\n{self.output()}")

    def output(self) -> str:
        """The end of its log (stdout and stderr)."""
        return self.log.read_text(errors="replace")[-6000:]

    def worker_pids(self) -> list[int]:
        """The process ids of its workers (the supervisor's children)."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        found = []
        for child in children:
            try:  # multiprocessing also starts a resource tracker; the workers run the spawn entry point
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"spawn_main" in command:
                found.append(int(child))
        return found


def gateway_env(database_url: str, upstream_url: str, **settings: str) -> dict[str, str]:
    """The environment of a production-mode gateway; ``settings`` add or override variables."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AUTH_", "FHIR_", "EHRBASE_", "GATEWAY_", "PROMETHEUS_", "SHUTDOWN_"))
    }
    return {
        **inherited,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "GATEWAY_ENV": "production",
        "GATEWAY_SECRET_KEY": TEST_SECRET,
        "TOTP_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "AUTH_DATABASE_URL": database_url,
        "AUTH_DB_AUTO_MIGRATE": "false",
        "FHIR_SERVER_URL": f"{upstream_url}/fhir",
        "EHRBASE_URL": f"{upstream_url}/ehrbase",
        "EHRBASE_API_USER": "ehrbase-user",
        "EHRBASE_API_PASSWORD": "ehrbase-user-secret",
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_COST_KIB": "8192",
        "ARGON2_PARALLELISM": "1",
        "LOG_LEVEL": "INFO",
        "READY_CACHE_SECONDS": "0",
        **settings,
    }


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """``start(env, workers=1)``: a gateway process, stopped (SIGKILL to its group) after the test."""
    started: list[Gateway] = []

    def start(env: dict[str, str], *, workers: int = 1, args: Sequence[str] = ()) -> Gateway:
        port = free_port()
        log = tmp_path / f"gateway-{len(started)}.log"
        command = [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*command, *args],
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        gateway = Gateway(process, f"http://127.0.0.1:{port}", log)
        started.append(gateway)
        wait_until_serving(gateway)
        return gateway

    yield start
    for gateway in started:
        if gateway.process.poll() is None:
            os.killpg(gateway.process.pid, signal.SIGKILL)
            gateway.process.wait(timeout=10)


def wait_until_serving(gateway: Gateway) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            pytest.fail(f"the gateway exited during start-up:\n{gateway.output()}")
        try:
            if httpx.get(f"{gateway.url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the gateway did not answer /health within {START_TIMEOUT:g} s:\n{gateway.output()}")


@pytest.fixture
def database(fresh_pg_database: Callable[[], str]) -> str:
    """A new auth database, migrated, with a clinician who may read :data:`PATIENT_ID`."""
    url = fresh_pg_database()
    migrate.upgrade(url)
    asyncio.run(_add_clinician(url))
    return url


async def _add_clinician(url: str) -> None:
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        factory = create_session_factory(engine)
        user = await create_user(factory, username=USERNAME, roles=[Role.clinician])
        async with factory() as session:
            await grant_care_team(session, user_id=user.id, patient_id=PATIENT_ID, granted_by=None)
            await session.commit()
    finally:
        await engine.dispose()


async def bearer(client: httpx.AsyncClient) -> dict[str, str]:
    """Log in as the clinician through ``POST /auth/token``; the Authorization header."""
    response = await client.post("/auth/token", data={"username": USERNAME, "password": DEFAULT_PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def request_id() -> str:
    """A fresh ``X-Request-ID`` (the gateway keeps a well-formed one and records it in the audit trail)."""
    return uuid.uuid4().hex


async def audited_request_ids(database_url: str, action: str = "patient.read") -> set[str]:
    """The request ids of the successful ``action`` rows of the audit trail."""
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with create_session_factory(engine)() as session:
            statement = select(AuditEvent.request_id).where(
                col(AuditEvent.action) == action, col(AuditEvent.outcome) == "success"
            )
            return {value for value in (await session.exec(statement)).all() if value is not None}
    finally:
        await engine.dispose()
