"""The start-up check of the shared secrets, through the app's lifespan and the real server.

A replica with another ``GATEWAY_SECRET_KEY`` does not start: the lifespan fails with the message, and
``gateway serve`` exits with uvicorn's start-up failure status and that message only (no traceback). A start
while the auth database cannot answer the check goes on and checks in the background; a difference found
then stops the process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import respx
from sqlalchemy.engine import make_url

from auth_db import migrate
from auth_db.engine import create_engine
from gateway.security import shared_secrets
from gateway.security.shared_secrets import MASTER, SecretsDiffer, StartupCheck
from gateway.settings import Settings
from tests.conftest import TEST_SECRET, TEST_TOTP_KEY, running_app
from tests.respx_transport import UPSTREAM

OTHER_SECRET = "another-secret-key-0123456789abcdefghijklmnop"


async def test_a_replica_with_another_secret_key_does_not_start(
    tmp_path: Path, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    database = tmp_path / "auth.db"
    with respx.mock(using=UPSTREAM, assert_all_called=False):
        async with running_app(make_settings(auth_db_sqlite_path=database)) as client:
            assert (await client.get("/health")).status_code == 200
        async with running_app(make_settings(auth_db_sqlite_path=database)) as client:
            assert (await client.get("/health")).status_code == 200  # the same secrets start again
        with pytest.raises(SecretsDiffer) as refused:
            async with running_app(
                make_settings(auth_db_sqlite_path=database, gateway_secret_key=OTHER_SECRET)
            ):
                pytest.fail("started with another GATEWAY_SECRET_KEY")
    assert [difference.ours.name for difference in refused.value.differences] == [MASTER]
    critical = [record for record in caplog.records if record.levelno == logging.CRITICAL]
    assert [record.getMessage() for record in critical] == [str(refused.value)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_the_server_exits_with_the_message_and_no_traceback(tmp_path: Path) -> None:
    database = tmp_path / "auth.db"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AUTH_", "FHIR_", "EHRBASE_", "GATEWAY_"))
    }
    env |= {
        "AUTH_DB_SQLITE_PATH": str(database),
        "GATEWAY_SECRET_KEY": TEST_SECRET,
        "TOTP_ENCRYPTION_KEY": TEST_TOTP_KEY,
        "LOG_JSON": "false",
    }
    migrate.upgrade(f"sqlite+aiosqlite:///{database}")
    recorded = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "secrets", "accept-new", "--yes"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert recorded.returncode == 0, recorded.stderr
    served = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(_free_port())],
        env=env | {"GATEWAY_SECRET_KEY": OTHER_SECRET},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert served.returncode == 3, served.stderr  # uvicorn's start-up failure
    assert "GATEWAY_SECRET_KEY" in served.stderr
    assert "gateway secrets accept-new" in served.stderr
    assert "Traceback" not in served.stderr
    assert OTHER_SECRET not in served.stderr + served.stdout


async def test_a_start_before_the_migration_checks_later_and_stops_on_a_difference(
    fresh_pg_database: Callable[[], str], make_settings: Callable[..., Settings]
) -> None:
    url = await asyncio.to_thread(fresh_pg_database)
    refusals: list[SecretsDiffer] = []
    startup = StartupCheck(
        make_settings(auth_database_url=url), on_late_refusal=refusals.append, retry_seconds=(0.05, 0.2)
    )
    await startup.run()  # no table yet: the start goes on
    assert startup.task is not None
    assert not startup.task.done()

    async def other_replica_starts() -> None:
        engine = create_engine(url)
        other = make_settings(gateway_secret_key=OTHER_SECRET)
        try:
            await shared_secrets.check(engine, other, host="replica-a")
        finally:
            await engine.dispose()

    def migrated_and_recorded() -> None:
        migrate.upgrade(url)
        asyncio.run(other_replica_starts())

    # In a thread the event loop waits for (blocking it): the background check cannot record first.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(migrated_and_recorded).result()
    await asyncio.wait_for(startup.task, timeout=30)
    assert len(refusals) == 1
    assert "by replica-a" in str(refusals[0])


async def test_a_start_before_the_migration_records_once_it_can(
    fresh_pg_database: Callable[[], str], make_settings: Callable[..., Settings]
) -> None:
    url = await asyncio.to_thread(fresh_pg_database)
    refusals: list[SecretsDiffer] = []
    startup = StartupCheck(
        make_settings(auth_database_url=url), on_late_refusal=refusals.append, retry_seconds=(0.05, 0.2)
    )
    await startup.run()
    assert startup.task is not None
    await asyncio.to_thread(migrate.upgrade, url)
    await asyncio.wait_for(startup.task, timeout=30)
    assert refusals == []
    engine = create_engine(url)
    try:
        assert len(await shared_secrets.recorded(engine)) == 3
    finally:
        await engine.dispose()


async def test_a_start_while_the_database_does_not_answer_goes_on(
    pg_url: str, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    closed = make_url(pg_url).set(host="127.0.0.1", port=9).render_as_string(hide_password=False)
    startup = StartupCheck(make_settings(auth_database_url=closed), retry_seconds=(0.05, 0.2))
    await startup.run()
    assert "the auth database does not answer" in caplog.text
    assert startup.task is not None
    await asyncio.sleep(0.3)  # a few attempts, all unanswered
    assert not startup.task.done()
    await startup.aclose()
    assert startup.task.cancelled()
