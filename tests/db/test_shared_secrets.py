"""The secrets every replica must share (gateway.security.shared_secrets), on PostgreSQL and SQLite.

The first start records fingerprints; a start with the same values passes; one with another value is refused
with a message naming it and nothing is written; concurrent first starts agree on one record; a deliberate
rotation is recorded with ``accept_new``; a process without a secret key records nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_db import migrate
from auth_db.engine import create_engine
from gateway.security import shared_secrets
from gateway.security.shared_secrets import JWT, MASTER, TOTP, NotMigrated, SecretsDiffer
from gateway.settings import Settings
from tests.conftest import TEST_SECRET

OTHER_SECRET = "another-secret-key-0123456789abcdefghijklmnop"
ALL = [MASTER, JWT, TOTP]


async def forget_fingerprints(database: str) -> None:
    engine = create_engine(database)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("DELETE FROM secret_fingerprint"))
    finally:
        await engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated auth database: the run's PostgreSQL one, or a new SQLite file."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    sqlite = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    migrate.upgrade(sqlite)
    return sqlite


@pytest.fixture
async def url(database: str) -> AsyncIterator[str]:
    """``database`` without fingerprints (also after the test)."""
    await forget_fingerprints(database)
    yield database
    await forget_fingerprints(database)


@pytest.fixture
async def engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def rows(engine: AsyncEngine) -> dict[str, shared_secrets.Recorded]:
    return {record.name: record for record in await shared_secrets.recorded(engine)}


async def test_the_first_start_records_fingerprints_never_the_secrets(
    engine: AsyncEngine, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    held = await shared_secrets.check(engine, settings, host="replica-a")
    assert sorted(record.name for record in held) == sorted(ALL)
    assert {(r.recorded_by, r.recorded_via) for r in held} == {("replica-a", "start-up")}
    stored = await rows(engine)
    assert stored == {record.name: record for record in held}
    values = [record.fingerprint for record in held]
    assert all(len(value) == 64 and int(value, 16) >= 0 for value in values)
    secret = settings.gateway_secret_key.get_secret_value()  # type: ignore[union-attr]
    totp = settings.totp_encryption_key.get_secret_value()  # type: ignore[union-attr]
    for material in (secret, totp):
        assert hashlib.sha256(material.encode()).hexdigest() not in values
        assert all(material not in value for value in values)


async def test_the_same_secrets_start_again_and_keep_the_first_record(
    engine: AsyncEngine, make_settings: Callable[..., Settings]
) -> None:
    first = await shared_secrets.check(engine, make_settings(), host="replica-a")
    again = await shared_secrets.check(engine, make_settings(), host="replica-b")
    assert again == first
    assert {record.recorded_by for record in await shared_secrets.recorded(engine)} == {"replica-a"}


@pytest.mark.parametrize(
    ("overrides", "differing"),
    [
        ({"gateway_secret_key": OTHER_SECRET}, [MASTER]),
        ({"totp_encryption_key": Fernet.generate_key().decode()}, [TOTP]),
        ({"totp_encryption_key": None}, [TOTP]),  # derived from the secret key instead of the shared one
        ({"jwt_audience": "another-audience"}, [JWT]),
    ],
)
async def test_a_different_value_is_refused_with_a_message_and_nothing_is_written(
    engine: AsyncEngine,
    make_settings: Callable[..., Settings],
    overrides: dict[str, object],
    differing: list[str],
) -> None:
    await shared_secrets.check(engine, make_settings(), host="replica-a")
    before = await rows(engine)
    with pytest.raises(SecretsDiffer) as refused:
        await shared_secrets.check(engine, make_settings(**overrides), host="replica-b")
    assert [difference.ours.name for difference in refused.value.differences] == differing
    message = str(refused.value)
    assert "does not start" in message
    assert f"  - {differing[0]}" in message
    assert "by replica-a (start-up)" in message
    assert "Give every replica the same values" in message
    assert "`gateway secrets accept-new`" in message
    assert OTHER_SECRET not in message
    assert await rows(engine) == before


async def test_a_value_recorded_later_is_added_without_touching_the_others(
    engine: AsyncEngine, make_settings: Callable[..., Settings]
) -> None:
    await shared_secrets.check(engine, make_settings(), host="replica-a")
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM secret_fingerprint WHERE name = :name"), {"name": JWT})
    await shared_secrets.check(engine, make_settings(), host="replica-b")
    assert {name: record.recorded_by for name, record in (await rows(engine)).items()} == {
        MASTER: "replica-a",
        TOTP: "replica-a",
        JWT: "replica-b",
    }


async def test_concurrent_first_starts_agree(url: str, make_settings: Callable[..., Settings]) -> None:
    engines = [create_engine(url, pool_size=1, max_overflow=0) for _ in range(6)]
    try:
        results = await asyncio.gather(
            *(shared_secrets.check(e, make_settings(), host=f"replica-{i}") for i, e in enumerate(engines))
        )
        assert all(result == results[0] for result in results)
        assert len(results[0]) == len(ALL)
        assert len({record.recorded_by for record in results[0]}) == 1  # one start wrote every row
    finally:
        for engine in engines:
            await engine.dispose()


async def test_concurrent_first_starts_with_different_keys_let_one_key_win(
    url: str, make_settings: Callable[..., Settings]
) -> None:
    keys = [TEST_SECRET, OTHER_SECRET] * 3
    engines = [create_engine(url, pool_size=1, max_overflow=0) for _ in keys]
    try:
        results = await asyncio.gather(
            *(
                shared_secrets.check(e, make_settings(gateway_secret_key=key))
                for e, key in zip(engines, keys, strict=True)
            ),
            return_exceptions=True,
        )
    finally:
        for engine in engines:
            await engine.dispose()
    started = {
        key for key, result in zip(keys, results, strict=True) if not isinstance(result, BaseException)
    }
    refused = [key for key, result in zip(keys, results, strict=True) if isinstance(result, SecretsDiffer)]
    assert len(started) == 1, results
    assert len(refused) == 3
    assert started.isdisjoint(refused)


async def test_a_start_waits_for_a_concurrent_first_record_on_postgres(
    pg_url: str, make_settings: Callable[..., Settings]
) -> None:
    """The other replica has inserted its record but not committed yet: this start waits and compares."""
    await forget_fingerprints(pg_url)
    other = shared_secrets.fingerprints(make_settings(gateway_secret_key=OTHER_SECRET))
    first, second = create_engine(pg_url), create_engine(pg_url)
    try:
        async with first.begin() as connection:
            await shared_secrets._insert_absent(connection, other, host="replica-a", via="start-up")
            waiting = asyncio.create_task(shared_secrets.check(second, make_settings(), host="replica-b"))
            await asyncio.sleep(0.5)
            assert not waiting.done()  # blocked on the uncommitted row, not deciding without it
        with pytest.raises(SecretsDiffer, match="by replica-a"):
            await waiting
    finally:
        await first.dispose()
        await second.dispose()
        await forget_fingerprints(pg_url)


async def test_accept_new_records_a_rotation(
    engine: AsyncEngine, make_settings: Callable[..., Settings]
) -> None:
    old, new = make_settings(), make_settings(gateway_secret_key=OTHER_SECRET)
    await shared_secrets.check(engine, old, host="replica-a")
    with pytest.raises(SecretsDiffer):
        await shared_secrets.check(engine, new)
    accepted = await shared_secrets.accept_new(engine, new, host="admin-host")
    assert {(r.name, r.recorded_by, r.recorded_via) for r in accepted} == {
        (name, "admin-host", "secrets accept-new") for name in ALL
    }
    await shared_secrets.check(engine, new, host="replica-b")
    with pytest.raises(SecretsDiffer, match="by admin-host \\(secrets accept-new\\)"):
        await shared_secrets.check(engine, old)


async def test_accept_new_needs_a_secret_key(
    engine: AsyncEngine, make_settings: Callable[..., Settings]
) -> None:
    with pytest.raises(ValueError, match="GATEWAY_SECRET_KEY is not set"):
        await shared_secrets.accept_new(engine, make_settings(gateway_secret_key=None))


async def test_without_a_secret_key_nothing_is_recorded_and_a_shared_record_is_only_warned_about(
    engine: AsyncEngine, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    development = make_settings(gateway_secret_key=None, totp_encryption_key=None)
    assert shared_secrets.fingerprints(development) == []
    assert await shared_secrets.check(engine, development) == []
    assert await shared_secrets.check(engine, development) == []  # a second such process is not refused
    await shared_secrets.check(engine, make_settings(), host="replica-a")
    with caplog.at_level(logging.WARNING, logger="gateway.security"):
        await shared_secrets.check(engine, development)
    assert "GATEWAY_SECRET_KEY is not set" in caplog.text


async def test_without_a_secret_key_an_explicit_totp_key_is_still_checked(
    engine: AsyncEngine, make_settings: Callable[..., Settings]
) -> None:
    await shared_secrets.check(engine, make_settings(gateway_secret_key=None))
    assert list(await rows(engine)) == [TOTP]
    other_totp = make_settings(gateway_secret_key=None, totp_encryption_key=Fernet.generate_key().decode())
    with pytest.raises(SecretsDiffer):
        await shared_secrets.check(engine, other_totp)


async def test_a_database_not_migrated_to_this_release_is_named(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await asyncio.to_thread(migrate.upgrade, database, "0002")
    engine = create_engine(database)
    try:
        with pytest.raises(NotMigrated, match="gateway db upgrade"):
            await shared_secrets.check(engine, make_settings())
    finally:
        await engine.dispose()
