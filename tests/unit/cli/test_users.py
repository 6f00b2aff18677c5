"""``gateway users create-admin``: the first administrator, password from a prompt or stdin only."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from auth_db.engine import create_engine, create_session_factory
from auth_db.models import User, UserRole
from gateway.cli import app

PASSWORD = "Very-Long-Unusual-Passphrase-42"


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "auth.db"
    for name, value in {
        "AUTH_DB_SQLITE_PATH": str(db),
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_COST_KIB": "8192",
        "ARGON2_PARALLELISM": "1",
        "LOG_JSON": "false",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ["AUTH_DATABASE_URL", "AUTH_DB_HOST", "GATEWAY_ENV"]:
        monkeypatch.delenv(name, raising=False)
    return db


def stored(db: Path) -> list[tuple[str, bool, list[str]]]:
    async def read() -> list[tuple[str, bool, list[str]]]:
        engine = create_engine(f"sqlite+aiosqlite:///{db}")
        try:
            async with create_session_factory(engine)() as session:
                users = (await session.exec(select(User))).all()
                result = []
                for user in users:
                    roles = (
                        await session.exec(select(UserRole.role).where(UserRole.user_id == user.id))
                    ).all()
                    result.append((user.username, user.must_change_password, sorted(roles)))
                return result
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_create_admin_reads_the_password_from_stdin(cli_env: Path) -> None:
    result = CliRunner().invoke(
        app, ["users", "create-admin", "--username", "Alice", "--password-stdin"], input=PASSWORD + "\n"
    )
    assert result.exit_code == 0, result.output
    assert "created administrator alice" in result.output
    assert PASSWORD not in result.output
    assert stored(cli_env) == [("alice", False, ["admin", "clinician"])]


def test_create_admin_prompts_twice_and_refuses_a_mismatch(cli_env: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["users", "create-admin", "--username", "alice", "--no-clinician"],
        input=f"{PASSWORD}\n{PASSWORD}\n",
    )
    assert result.exit_code == 0, result.output
    assert stored(cli_env) == [("alice", False, ["admin"])]
    mismatch = CliRunner().invoke(
        app, ["users", "create-admin", "--username", "bob"], input=f"{PASSWORD}\nsomething-else-entirely\n"
    )
    assert mismatch.exit_code == 1


def test_create_admin_refuses_weak_passwords_and_duplicates(cli_env: Path) -> None:
    weak = CliRunner().invoke(
        app, ["users", "create-admin", "--username", "alice", "--password-stdin"], input="password1234\n"
    )
    assert weak.exit_code == 2
    ok = CliRunner().invoke(
        app, ["users", "create-admin", "--username", "alice", "--password-stdin"], input=PASSWORD + "\n"
    )
    assert ok.exit_code == 0
    again = CliRunner().invoke(
        app, ["users", "create-admin", "--username", "alice", "--password-stdin"], input=PASSWORD + "\n"
    )
    assert again.exit_code == 1
    assert "username_taken" in again.output


def test_there_is_no_password_option() -> None:
    result = CliRunner().invoke(app, ["users", "create-admin", "--username", "alice", "--password", PASSWORD])
    assert result.exit_code != 0


def test_purge_deletes_dead_sessions_and_stale_counters(cli_env: Path) -> None:
    from datetime import timedelta

    from auth_db.models import AuthSession, LoginThrottle
    from auth_db.types import utcnow

    CliRunner().invoke(
        app, ["users", "create-admin", "--username", "alice", "--password-stdin"], input=PASSWORD + "\n"
    )
    (user,) = stored_ids(cli_env)
    long_ago = utcnow() - timedelta(days=3)

    async def seed() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{cli_env}")
        try:
            async with create_session_factory(engine)() as session:
                session.add(
                    AuthSession(
                        family_id=user,
                        user_id=user,
                        refresh_token_hash="a" * 64,
                        family_created_at=long_ago,
                        expires_at=long_ago,
                    )
                )
                session.add(LoginThrottle(key="user:ghost", failures=2, window_started_at=long_ago))
                session.add(LoginThrottle(key="user:fresh", failures=2, window_started_at=utcnow()))
                await session.commit()
        finally:
            await engine.dispose()

    asyncio.run(seed())
    result = CliRunner().invoke(app, ["users", "purge"])
    assert result.exit_code == 0, result.output
    assert "deleted 1 session rows and 1 throttle counters" in result.output


def stored_ids(db: Path) -> list[uuid.UUID]:
    async def read() -> list[uuid.UUID]:
        engine = create_engine(f"sqlite+aiosqlite:///{db}")
        try:
            async with create_session_factory(engine)() as session:
                return [user.id for user in (await session.exec(select(User))).all()]
        finally:
            await engine.dispose()

    return asyncio.run(read())
