"""TOTP two-factor authentication: enrolment, login, replay refusal, recovery codes, admin policy."""

from __future__ import annotations

import time

import httpx
import pyotp
from sqlmodel import select

from auth_db.engine import SessionFactory
from auth_db.models import RecoveryCode, SystemSetting, User
from tests.factories import DEFAULT_PASSWORD, audit_actions, create_user, login_tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def next_code(secret: str) -> str:
    """The code of the next 30-second step (accepted: the window is one step either side)."""
    return str(pyotp.TOTP(secret).at(time.time() + 30))


async def enrol(client: httpx.AsyncClient, headers: dict[str, str]) -> tuple[str, list[str]]:
    started = await client.post("/auth/totp/enrol", json={"password": DEFAULT_PASSWORD}, headers=headers)
    assert started.status_code == 200, started.text
    secret = started.json()["secret"]
    assert started.json()["otpauth_uri"].startswith("otpauth://totp/")
    confirmed = await client.post(
        "/auth/totp/confirm", json={"code": pyotp.TOTP(secret).now()}, headers=headers
    )
    assert confirmed.status_code == 200, confirmed.text
    return secret, confirmed.json()["recovery_codes"]


class TestEnrolment:
    async def test_secret_is_encrypted_at_rest_and_codes_hashed(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        user = await create_user(session_factory, username="carol", roles=["clinician"])
        headers = bearer((await login_tokens(client, "carol"))["access_token"])
        secret, codes = await enrol(client, headers)
        assert len(codes) == 10
        assert len(set(codes)) == 10
        async with session_factory() as session:
            row = await session.get(User, user.id)
            stored = (await session.exec(select(RecoveryCode))).all()
        assert row is not None
        assert row.totp_enabled
        assert row.totp_secret_encrypted
        assert secret not in row.totp_secret_encrypted
        assert all(code not in {r.code_hash for r in stored} for code in codes)
        actions = await audit_actions(session_factory)
        assert ("auth.totp_enable", "success") in actions

    async def test_confirm_with_a_wrong_code_keeps_totp_off(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        headers = bearer((await login_tokens(client, "carol"))["access_token"])
        await client.post("/auth/totp/enrol", json={"password": DEFAULT_PASSWORD}, headers=headers)
        response = await client.post("/auth/totp/confirm", json={"code": "000000"}, headers=headers)
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_totp_code"
        assert (await client.get("/auth/me", headers=headers)).json()["totp_enabled"] is False

    async def test_enrol_needs_the_password_and_confirm_needs_an_enrolment(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        headers = bearer((await login_tokens(client, "carol"))["access_token"])
        wrong = await client.post("/auth/totp/enrol", json={"password": "wrong-password"}, headers=headers)
        assert wrong.json()["code"] == "invalid_current_password"
        early = await client.post("/auth/totp/confirm", json={"code": "123456"}, headers=headers)
        assert early.status_code == 409
        assert early.json()["code"] == "totp_not_enrolled"


class TestLoginWithTotp:
    async def test_login_needs_the_code_and_refuses_its_replay(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        headers = bearer((await login_tokens(client, "carol"))["access_token"])
        secret, _ = await enrol(client, headers)
        missing = await client.post("/auth/login", json={"username": "carol", "password": DEFAULT_PASSWORD})
        assert missing.status_code == 401
        assert missing.json()["code"] == "totp_required"
        code = next_code(secret)
        body = {"username": "carol", "password": DEFAULT_PASSWORD, "totp_code": code}
        assert (await client.post("/auth/login", json=body)).status_code == 200
        replay = await client.post("/auth/login", json=body)
        assert replay.status_code == 401
        assert replay.json()["code"] == "invalid_totp_code"
        wrong = await client.post("/auth/login", json={**body, "totp_code": "12345x"})
        assert wrong.json()["code"] == "invalid_totp_code"

    async def test_the_code_confirming_enrolment_cannot_be_replayed_at_login(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        headers = bearer((await login_tokens(client, "carol"))["access_token"])
        started = await client.post("/auth/totp/enrol", json={"password": DEFAULT_PASSWORD}, headers=headers)
        secret = started.json()["secret"]
        code = pyotp.TOTP(secret).now()
        await client.post("/auth/totp/confirm", json={"code": code}, headers=headers)
        response = await client.post(
            "/auth/login", json={"username": "carol", "password": DEFAULT_PASSWORD, "totp_code": code}
        )
        # Same step (or, across a step boundary, an earlier one): refused either way.
        assert response.status_code == 401

    async def test_token_endpoint_accepts_totp_code(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        headers = bearer((await login_tokens(client, "carol"))["access_token"])
        secret, _ = await enrol(client, headers)
        tokens = await login_tokens(client, "carol", totp_code=next_code(secret))
        assert tokens["access_token"]

    async def test_recovery_codes_work_once(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        headers = bearer((await login_tokens(client, "carol"))["access_token"])
        _, codes = await enrol(client, headers)
        body = {"username": "carol", "password": DEFAULT_PASSWORD, "recovery_code": codes[0].upper()}
        assert (await client.post("/auth/login", json=body)).status_code == 200
        again = await client.post("/auth/login", json=body)
        assert again.status_code == 401
        assert again.json()["code"] == "invalid_totp_code"
        assert (await client.post("/auth/login", json={**body, "recovery_code": codes[1]})).status_code == 200
        assert ("auth.recovery_code_used", "success") in await audit_actions(session_factory)

    async def test_disable_needs_the_password(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        headers = bearer((await login_tokens(client, "carol"))["access_token"])
        await enrol(client, headers)
        wrong = await client.post("/auth/totp/disable", json={"password": "nope-nope-nope"}, headers=headers)
        assert wrong.status_code == 403
        ok = await client.post("/auth/totp/disable", json={"password": DEFAULT_PASSWORD}, headers=headers)
        assert ok.status_code == 204
        assert (await login_tokens(client, "carol"))["access_token"]
        async with session_factory() as session:
            assert (await session.exec(select(RecoveryCode))).all() == []
        assert ("auth.totp_disable", "success") in await audit_actions(session_factory)

    async def test_regenerated_recovery_codes_replace_the_old_ones(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        headers = bearer((await login_tokens(client, "carol"))["access_token"])
        _, old = await enrol(client, headers)
        response = await client.post(
            "/auth/totp/recovery-codes", json={"password": DEFAULT_PASSWORD}, headers=headers
        )
        new = response.json()["recovery_codes"]
        body = {"username": "carol", "password": DEFAULT_PASSWORD}
        assert (await client.post("/auth/login", json={**body, "recovery_code": old[0]})).status_code == 401
        assert (await client.post("/auth/login", json={**body, "recovery_code": new[0]})).status_code == 200


class TestAdminsMustEnrol:
    async def test_require_2fa_for_admins_limits_an_unenrolled_admin(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="root", roles=["admin"])
        async with session_factory() as session:
            session.add(SystemSetting(key="require_2fa_for_admins", value=True))
            await session.commit()
        headers = bearer((await login_tokens(client, "root"))["access_token"])
        me = await client.get("/auth/me", headers=headers)
        assert me.json()["totp_enrolment_required"] is True
        blocked = await client.get("/admin/users", headers=headers)
        assert blocked.status_code == 403
        assert blocked.json()["code"] == "totp_enrolment_required"
        await enrol(client, headers)
        assert (await client.get("/admin/users", headers=headers)).status_code == 200
