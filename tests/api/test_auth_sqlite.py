"""Smoke test of the auth flows on the embedded SQLite default (no PostgreSQL needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from auth_db.engine import create_engine, create_session_factory
from gateway.security.passwords import PasswordService
from gateway.settings import Settings
from tests.conftest import running_app
from tests.factories import DEFAULT_PASSWORD, audit_actions, bearer_headers, create_user


async def test_login_refresh_throttle_and_logout_on_sqlite(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(auth_db_sqlite_path=tmp_path / "auth.db")
    async with running_app(settings) as client:
        engine = create_engine(settings.computed_auth_database_url)
        try:
            await create_user(create_session_factory(engine), username="carol", roles=["clinician"])
        finally:
            await engine.dispose()
        wrong = await client.post("/auth/login", json={"username": "carol", "password": "wrong-password-x"})
        assert wrong.json()["code"] == "invalid_credentials"
        login = await client.post("/auth/login", json={"username": "carol", "password": DEFAULT_PASSWORD})
        assert login.status_code == 200, login.text
        csrf = {"X-CSRF-Token": login.json()["csrf_token"]}
        assert (await client.get("/auth/me")).json()["username"] == "carol"
        assert (await client.post("/auth/refresh", headers=csrf)).status_code == 200
        csrf = {"X-CSRF-Token": client.cookies["gw_csrf"]}
        assert (await client.post("/auth/logout", headers=csrf)).status_code == 204
        assert (await client.get("/auth/me")).status_code == 401
        for _ in range(5):
            await client.post("/auth/login", json={"username": "carol", "password": "wrong-password-x"})
        locked = await client.post("/auth/login", json={"username": "carol", "password": DEFAULT_PASSWORD})
        assert locked.status_code == 429


async def test_account_changes_and_their_audit_records_commit_together_on_sqlite(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(auth_db_sqlite_path=tmp_path / "auth.db")
    async with running_app(settings) as client:
        engine = create_engine(settings.computed_auth_database_url)
        try:
            factory = create_session_factory(engine)
            await create_user(factory, username="root", roles=["admin", "clinician"])
            headers = await bearer_headers(client, "root")
            created = await client.post(
                "/admin/users",
                json={"username": "dana", "display_name": "Dana", "roles": ["clinician"]},
                headers=headers,
            )
            assert created.status_code == 201, created.text
            setting = await client.put(
                "/settings/system/lockout_threshold", json={"value": 7}, headers=headers
            )
            assert setting.status_code == 200, setting.text
            changed = await client.post(
                "/auth/password",
                json={"current_password": DEFAULT_PASSWORD, "new_password": "A-Brand-New-Passphrase-77"},
                headers=headers,
            )
            assert changed.status_code == 204, changed.text
            actions = await audit_actions(factory)
        finally:
            await engine.dispose()
    assert ("admin.user_create", "success") in actions
    assert ("admin.setting_update", "success") in actions
    assert ("auth.password_change", "success") in actions


async def test_the_password_hasher_is_ready_before_the_first_login(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    # Building it computes the dummy hash (argon2): at start-up, not inside the first login on the event loop.
    settings = make_settings(auth_db_sqlite_path=tmp_path / "auth.db")
    async with running_app(settings) as client:
        built = client.app.state.password_service  # type: ignore[attr-defined]
        assert isinstance(built, PasswordService)
        unknown = await client.post(
            "/auth/login", json={"username": "nobody", "password": "wrong-password-x"}
        )
        assert unknown.json()["code"] == "invalid_credentials"
        assert client.app.state.password_service is built  # type: ignore[attr-defined]
