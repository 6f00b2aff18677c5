"""``gateway secrets check`` and ``gateway secrets accept-new`` on the embedded SQLite database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text
from typer.testing import CliRunner

from auth_db import migrate
from auth_db.engine import create_engine
from gateway.cli import app
from gateway.security import shared_secrets

SECRET = "cli-secret-key-0123456789abcdefghijklmnopqrstuv"
OTHER_SECRET = "another-secret-key-0123456789abcdefghijklmnop"
TOTP_KEY = Fernet.generate_key().decode()


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    database = tmp_path / "auth.db"
    for name, value in {
        "AUTH_DB_SQLITE_PATH": str(database),
        "GATEWAY_SECRET_KEY": SECRET,
        "TOTP_ENCRYPTION_KEY": TOTP_KEY,
        "LOG_JSON": "false",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ["AUTH_DATABASE_URL", "AUTH_DB_HOST", "GATEWAY_ENV", "JWT_ISSUER", "JWT_AUDIENCE"]:
        monkeypatch.delenv(name, raising=False)
    migrate.upgrade(f"sqlite+aiosqlite:///{database}")
    return database


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["secrets", *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


def recorded(database: Path) -> dict[str, str]:
    async def read() -> dict[str, str]:
        engine = create_engine(f"sqlite+aiosqlite:///{database}")
        try:
            return {r.name: r.recorded_via for r in await shared_secrets.recorded(engine)}
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_check_before_anything_is_recorded(db: Path) -> None:
    code, out, _ = run("check")
    assert code == 0
    assert "GATEWAY_SECRET_KEY: not recorded yet" in out
    assert recorded(db) == {}  # a check writes nothing


def test_check_names_a_difference_and_fails(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("accept-new", "--yes")[0] == 0
    code, out, _ = run("check")
    assert code == 0
    assert "GATEWAY_SECRET_KEY: matches" in out
    monkeypatch.setenv("GATEWAY_SECRET_KEY", OTHER_SECRET)
    code, out, err = run("check")
    assert code == 1
    assert "GATEWAY_SECRET_KEY: DIFFERS" in out
    assert "TOTP_ENCRYPTION_KEY: matches" in out
    assert "refuses to start" in err
    assert SECRET not in out + err
    assert OTHER_SECRET not in out + err


def test_accept_new_asks_then_records_the_rotation(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("accept-new", "--yes")[0] == 0
    monkeypatch.setenv("GATEWAY_SECRET_KEY", OTHER_SECRET)
    code, out, _ = run("accept-new", stdin="n\n")
    assert code == 1
    assert "GATEWAY_SECRET_KEY: replaces the value recorded on" in out
    assert run("check")[0] == 1  # unchanged
    code, out, _ = run("accept-new", stdin="y\n")
    assert code == 0, out
    assert recorded(db) == dict.fromkeys(
        ["GATEWAY_SECRET_KEY", "JWT_ISSUER/JWT_AUDIENCE", "TOTP_ENCRYPTION_KEY"], "secrets accept-new"
    )
    assert run("check")[0] == 0
    code, out, _ = run("accept-new")
    assert (code, out.strip()) == (0, "this configuration matches the recorded secrets: nothing to do")


def test_accept_new_warns_about_totp_secrets_the_new_key_cannot_read(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    enrolled = Fernet(TOTP_KEY.encode()).encrypt(b"JBSWY3DPEHPK3PXP").decode()

    async def enrol() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{db}")
        try:
            async with engine.begin() as connection:
                await connection.execute(
                    text(
                        "INSERT INTO user (id, username, display_name, password_hash, is_active, "
                        "must_change_password, totp_secret_encrypted, totp_enabled, created_at, updated_at, "
                        "password_changed_at, sso_only) VALUES ('0b7c8f5e7f4a4d8e9a8b1c2d3e4f5a6b', 'ada', "
                        "'Ada', 'x', 1, 0, :secret, 1, '2026-01-01', '2026-01-01', '2026-01-01', 0)"
                    ),
                    {"secret": enrolled},
                )
        finally:
            await engine.dispose()

    asyncio.run(enrol())
    assert run("accept-new", "--yes")[0] == 0
    monkeypatch.setenv("TOTP_ENCRYPTION_KEY", Fernet.generate_key().decode())
    code, _, err = run("accept-new", stdin="n\n")
    assert code == 1
    assert "1 of 1 enrolled TOTP secrets cannot be decrypted" in err


def test_accept_new_needs_a_secret_key(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_SECRET_KEY")
    code, _, err = run("accept-new", "--yes")
    assert code == 2
    assert "GATEWAY_SECRET_KEY is not set" in err
    assert recorded(db) == {}


def test_an_unmigrated_database_is_named(db: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUTH_DB_SQLITE_PATH", str(tmp_path / "empty.db"))
    code, _, err = run("check")
    assert code == 2
    assert "gateway db upgrade" in err
