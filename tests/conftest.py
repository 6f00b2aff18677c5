"""Shared fixtures: a real PostgreSQL auth database (migrated once per run), settings, the app client.

PostgreSQL comes, in this order, from ``TEST_AUTH_DATABASE_URL`` (a server URL whose user may create
databases; ``.ci/postgres.sh start`` prints one), from pytest-postgresql's throwaway server (a non-root
user with ``pg_ctl`` on ``PATH``), or from a throwaway server this run starts itself with
``.ci/postgres.sh`` whenever PostgreSQL's server binaries are installed (Debian keeps them off ``PATH``;
as root it runs as the ``postgres`` user), on a port and in a data directory of its own, stopped and
deleted at the end of the run. Without any of these, PostgreSQL tests skip locally and fail under
``CI=true``.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from pytest_postgresql import factories
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from auth_db import migrate
from auth_db.engine import SessionFactory, create_engine, create_session_factory
from auth_db.models import metadata
from gateway.main import create_app
from gateway.settings import Settings, normalise_database_url

# respx fakes HAPI FHIR and EHRbase at the gateway's transport boundary (AiohttpTransport.send): every
# test names that mocker, `respx.mock(using=UPSTREAM, ...)` or the `upstream_mock` fixture below.
# Imported here so that it is registered with respx whichever test module is collected first.
from tests.respx_transport import UPSTREAM

# It is also respx's default, so that a router written without `using=` still fakes the stores at the
# same boundary instead of letting the calls go to the network. Name it anyway: that says which layer is
# mocked where the test is read.
respx.mocks.DEFAULT_MOCKER = UPSTREAM

TEST_SECRET = "test-secret-key-0123456789abcdefghijklmnopqrstuvwxyz"
TEST_TOTP_KEY = "q1YQ8o1cM7O1HxH0Bf2gWgUu3lKQ0xZbq6l2v3J0c1E="

postgresql_proc = factories.postgresql_proc(port=None, password="test")


def _can_spawn_postgres() -> bool:
    return os.geteuid() != 0 and (shutil.which("pg_ctl") is not None)


ROOT = Path(__file__).resolve().parents[1]
#: Ports a self-started server may take: outside Linux's ephemeral range, clear of the e2e (25432) and
#: `.ci/postgres.sh` (25433) defaults.
OWN_PG_PORTS = range(25440, 25500)


def postgres_bindir() -> Path | None:
    """Where PostgreSQL's server binaries are (``pg_config --bindir``, else Debian's directories)."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(found.stdout.strip()))
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True
    )
    return next(
        (path for path in candidates if (path / "pg_ctl").exists() and (path / "initdb").exists()), None
    )


def _can_start_own_postgres() -> bool:
    if postgres_bindir() is None:
        return False
    if os.geteuid() != 0:
        return True
    try:
        pwd.getpwnam("postgres")  # as root the server runs as this user
    except KeyError:
        return False
    # runuser lives in /usr/sbin, which a non-login root shell may not have on PATH (.ci/postgres.sh adds it)
    return shutil.which("runuser", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") is not None


def _free_port(ports: range) -> int:
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1} for a throwaway PostgreSQL")


@contextmanager
def own_postgres() -> Iterator[str]:
    """Start a throwaway PostgreSQL with ``.ci/postgres.sh`` (also as root); yield its server URL."""
    # As root the postgres user must reach it: not under a private /tmp; mkdtemp makes it 0700 anyway.
    base = "/var/tmp" if os.geteuid() == 0 else None  # noqa: S108
    datadir = Path(tempfile.mkdtemp(prefix="gateway-pytest-pg-", dir=base))
    env = {**os.environ, "TEST_PG_PORT": str(_free_port(OWN_PG_PORTS)), "TEST_PG_DIR": str(datadir)}
    script = str(ROOT / ".ci" / "postgres.sh")
    try:
        started = subprocess.run(
            ["bash", script, "start"], env=env, capture_output=True, text=True, check=False
        )
        if started.returncode != 0:
            raise RuntimeError(f"could not start a throwaway PostgreSQL:\n{started.stderr[-2000:]}")
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines() if "=" in line
        )
        yield exports["TEST_AUTH_DATABASE_URL"]
    finally:
        subprocess.run(["bash", script, "stop"], env=env, capture_output=True, check=False)
        shutil.rmtree(datadir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A URL of a PostgreSQL server where the tests may create databases."""
    url = os.environ.get("TEST_AUTH_DATABASE_URL")
    if url:
        yield url
        return
    if _can_spawn_postgres():
        proc = request.getfixturevalue("postgresql_proc")
        yield f"postgresql://{proc.user}:{proc.password}@{proc.host}:{proc.port}/postgres"
        return
    if _can_start_own_postgres():
        with own_postgres() as url:
            yield url
        return
    message = (
        "PostgreSQL tests need a server: install PostgreSQL's server binaries (Debian: apt-get install "
        'postgresql), or run `eval "$(bash .ci/postgres.sh start)"` (sets TEST_AUTH_DATABASE_URL)'
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


async def _admin_execute(server_url: str, statement: str) -> None:
    engine = create_async_engine(normalise_database_url(server_url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def fresh_pg_database(pg_server_url: str) -> Iterator[Callable[[], str]]:
    """A factory of new, empty databases on the test server (dropped at the end of the run)."""
    created: list[str] = []

    def make() -> str:
        name = f"gw_test_{uuid.uuid4().hex[:12]}"
        asyncio.run(_admin_execute(pg_server_url, f'CREATE DATABASE "{name}"'))
        created.append(name)
        return normalise_database_url(
            make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
        )

    yield make
    for name in created:
        asyncio.run(_admin_execute(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_url(fresh_pg_database: Callable[[], str]) -> str:
    """The URL of this run's auth database on PostgreSQL, migrated to head once."""
    url = fresh_pg_database()
    migrate.upgrade(url)
    return url


TABLES = ", ".join(f'"{name}"' for name in sorted(metadata.tables))


@pytest.fixture
async def pg_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the run's database; every table is emptied after the test."""
    engine = create_engine(pg_url, pool_size=5, max_overflow=5)
    try:
        yield engine
    finally:
        async with engine.begin() as connection:
            await connection.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
        await engine.dispose()


@pytest.fixture
def session_factory(pg_engine: AsyncEngine) -> SessionFactory:
    return create_session_factory(pg_engine)


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    """Settings isolated from the developer's environment and ``.env`` file."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "gateway_secret_key": TEST_SECRET,
            "totp_encryption_key": TEST_TOTP_KEY,
            "cookie_secure": False,
            "log_json": True,
            "fhir_server_url": "http://fhir.test/fhir",
            "ehrbase_url": "http://ehrbase.test/ehrbase",
            "ehrbase_api_user": "ehrbase-user",
            "ehrbase_api_password": "ehrbase-user-secret",
            "ehrbase_api_admin_user": "ehrbase-admin",
            "ehrbase_api_admin_password": "ehrbase-admin-secret",
            "upstream_retry_max_wait": 0.05,
            "argon2_time_cost": 1,
            "argon2_memory_cost_kib": 8192,
            "argon2_parallelism": 1,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture
def upstream_mock() -> Iterator[respx.MockRouter]:
    """A respx router faking the upstream stores at the transport boundary, for the test's duration.

    A call no route matches fails the test (``assert_all_mocked``); unused routes are allowed.
    """
    with respx.mock(using=UPSTREAM, assert_all_called=False) as router:
        yield router


@asynccontextmanager
async def running_app(settings: Settings, **app_kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and yield a client talking to it in-process."""
    app = create_app(settings, **app_kwargs)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.10", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture
async def client(
    pg_engine: AsyncEngine, pg_url: str, make_settings: Callable[..., Settings]
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app on the PostgreSQL auth database."""
    async with running_app(make_settings(auth_database_url=pg_url)) as http:
        yield http
