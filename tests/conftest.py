"""Shared fixtures: a real PostgreSQL auth database (migrated once per run), settings, the app client.

PostgreSQL comes from ``TEST_AUTH_DATABASE_URL`` (a server URL whose user may create databases;
``.ci/postgres.sh start`` prints one) or, for a non-root user with PostgreSQL installed, from
pytest-postgresql's throwaway server. Without either, PostgreSQL tests skip locally and fail
under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
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


@pytest.fixture(scope="session")
def pg_server_url(request: pytest.FixtureRequest) -> str:
    """A URL of a PostgreSQL server where the tests may create databases."""
    url = os.environ.get("TEST_AUTH_DATABASE_URL")
    if url:
        return url
    if _can_spawn_postgres():
        proc = request.getfixturevalue("postgresql_proc")
        return f"postgresql://{proc.user}:{proc.password}@{proc.host}:{proc.port}/postgres"
    message = (
        'PostgreSQL tests need a server: run `eval "$(bash .ci/postgres.sh start)"` '
        "(sets TEST_AUTH_DATABASE_URL) or install PostgreSQL and run as a non-root user"
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
