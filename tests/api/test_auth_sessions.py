"""Refresh-token rotation, reuse detection, concurrent refreshes, timeouts and session revocation."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import httpx
import jwt
from sqlalchemy import update
from sqlmodel import col, select

from auth_db.engine import SessionFactory
from auth_db.models import AuthSession
from auth_db.types import utcnow
from gateway.security.tokens import issue_access_token
from gateway.settings import Settings
from tests.factories import DEFAULT_PASSWORD, audit_actions, browser_login, create_user, login_tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def age_used_tokens(session_factory: SessionFactory, seconds: int = 60) -> None:
    """Move every use of a refresh token ``seconds`` into the past (beyond the reuse grace)."""
    async with session_factory() as session:
        await session.exec(
            update(AuthSession)
            .where(col(AuthSession.used_at).is_not(None))
            .values(used_at=utcnow() - timedelta(seconds=seconds))
        )
        await session.commit()


class TestRefresh:
    async def test_body_refresh_rotates_the_refresh_token(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="tool", roles=["clinician"])
        first = await login_tokens(client, "tool")
        response = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert response.status_code == 200
        second = response.json()
        assert second["token_type"] == "bearer"
        assert second["refresh_token"] != first["refresh_token"]
        assert (await client.get("/auth/me", headers=bearer(second["access_token"]))).status_code == 200
        # Both access tokens name the same live session family.
        assert (await client.get("/auth/me", headers=bearer(first["access_token"]))).status_code == 200
        async with session_factory() as session:
            rows = (await session.exec(select(AuthSession))).all()
        assert len(rows) == 2
        assert len({row.family_id for row in rows}) == 1
        assert all(first["refresh_token"] not in row.refresh_token_hash for row in rows)

    async def test_reusing_a_used_refresh_token_revokes_the_whole_family(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="tool", roles=["clinician"])
        first = await login_tokens(client, "tool")
        second = (await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})).json()
        await age_used_tokens(session_factory)  # the replay comes after the grace
        replay = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert replay.status_code == 401
        assert replay.json()["code"] == "invalid_refresh_token"
        # The legitimate successor is dead too, and so are the family's access tokens.
        successor = await client.post("/auth/refresh", json={"refresh_token": second["refresh_token"]})
        assert successor.status_code == 401
        me = await client.get("/auth/me", headers=bearer(second["access_token"]))
        assert me.json()["code"] == "session_ended"
        async with session_factory() as session:
            rows = (await session.exec(select(AuthSession))).all()
        assert all(row.revoked_reason == "refresh_reuse" for row in rows)
        assert ("auth.refresh_reuse", "denied") in await audit_actions(session_factory)

    async def test_reuse_in_one_family_leaves_other_sessions_alone(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="tool", roles=["clinician"])
        laptop = await login_tokens(client, "tool")
        phone = await login_tokens(client, "tool")
        await client.post("/auth/refresh", json={"refresh_token": laptop["refresh_token"]})
        await age_used_tokens(session_factory)
        replay = await client.post("/auth/refresh", json={"refresh_token": laptop["refresh_token"]})
        assert replay.json()["code"] == "invalid_refresh_token"
        assert (await client.get("/auth/me", headers=bearer(phone["access_token"]))).status_code == 200

    async def test_cookie_refresh_needs_csrf_and_sets_new_cookies_with_the_sessions_csrf_token(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        body = await browser_login(client, "carol")
        old_refresh = client.cookies["gw_refresh"]
        refused = await client.post("/auth/refresh")
        assert refused.status_code == 403
        assert refused.json()["code"] == "csrf_failed"
        response = await client.post("/auth/refresh", headers={"X-CSRF-Token": str(body["csrf_token"])})
        assert response.status_code == 200
        refreshed = response.json()
        assert refreshed["access_token"] is None
        # One CSRF token per session: a refresh sets the same value again, so other tabs keep theirs.
        assert refreshed["csrf_token"] == client.cookies["gw_csrf"] == body["csrf_token"]
        assert client.cookies["gw_refresh"] != old_refresh
        assert (await client.get("/auth/me")).status_code == 200

    async def test_expired_access_cookie_gets_token_expired_and_refresh_recovers(
        self,
        client: httpx.AsyncClient,
        session_factory: SessionFactory,
        make_settings: Callable[..., Settings],
    ) -> None:
        user = await create_user(session_factory, username="carol", roles=["clinician"])
        body = await browser_login(client, "carol")
        claims = jwt.decode(client.cookies["gw_access"], options={"verify_signature": False})
        stale, _ = issue_access_token(
            make_settings(),
            user_id=user.id,
            session_family=uuid.UUID(claims["sid"]),
            now=utcnow() - timedelta(hours=1),
        )
        client.cookies.set("gw_access", stale, domain="gateway.test", path="/")
        expired = await client.get("/auth/me")
        assert expired.status_code == 401
        assert expired.json()["code"] == "token_expired"
        refreshed = await client.post("/auth/refresh", headers={"X-CSRF-Token": str(body["csrf_token"])})
        assert refreshed.status_code == 200
        assert (await client.get("/auth/me")).status_code == 200

    async def test_missing_or_unknown_refresh_token_is_401(self, client: httpx.AsyncClient) -> None:
        assert (await client.post("/auth/refresh")).json()["code"] == "invalid_refresh_token"
        response = await client.post("/auth/refresh", json={"refresh_token": "made-up"})
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_refresh_token"

    async def test_expired_session_cannot_refresh_and_its_access_tokens_stop(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="tool", roles=["clinician"])
        tokens = await login_tokens(client, "tool")
        async with session_factory() as session:
            await session.exec(update(AuthSession).values(expires_at=utcnow() - timedelta(seconds=1)))
            await session.commit()
        response = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert response.json()["code"] == "invalid_refresh_token"
        assert (await client.get("/auth/me", headers=bearer(tokens["access_token"]))).status_code == 401

    async def test_refresh_never_extends_past_the_absolute_lifetime(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="tool", roles=["clinician"])
        tokens = await login_tokens(client, "tool")
        # Pretend the login was 12 hours minus one minute ago (absolute lifetime: 720 minutes).
        async with session_factory() as session:
            await session.exec(
                update(AuthSession).values(family_created_at=utcnow() - timedelta(minutes=719))
            )
            await session.commit()
        second = (await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})).json()
        async with session_factory() as session:
            row = (await session.exec(select(AuthSession).where(col(AuthSession.used_at).is_(None)))).one()
        assert row.expires_at <= utcnow() + timedelta(minutes=1)
        assert second["refresh_token"]

    async def test_idle_timeout_comes_from_the_system_setting(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="admin", roles=["admin"])
        admin = await login_tokens(client, "admin")
        put = await client.put(
            "/settings/system/session_idle_timeout_minutes",
            json={"value": 5},
            headers=bearer(admin["access_token"]),
        )
        assert put.status_code == 200
        await login_tokens(client, "admin")
        async with session_factory() as session:
            newest = (
                await session.exec(select(AuthSession).order_by(col(AuthSession.created_at).desc()))
            ).first()
        assert newest is not None
        assert newest.expires_at - newest.created_at == timedelta(minutes=5)

    async def test_login_deletes_the_users_sessions_past_their_absolute_lifetime(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="tool", roles=["clinician"])
        old = await login_tokens(client, "tool")
        await client.post("/auth/refresh", json={"refresh_token": old["refresh_token"]})
        async with session_factory() as session:
            await session.exec(update(AuthSession).values(family_created_at=utcnow() - timedelta(days=1)))
            await session.commit()
        await login_tokens(client, "tool")
        async with session_factory() as session:
            rows = (await session.exec(select(AuthSession))).all()
        assert len(rows) == 1


class TestRevocation:
    async def test_password_change_ends_every_session(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        one = await login_tokens(client, "carol")
        two = await login_tokens(client, "carol")
        response = await client.post(
            "/auth/password",
            json={"current_password": DEFAULT_PASSWORD, "new_password": "A-Brand-New-Passphrase-77"},
            headers=bearer(one["access_token"]),
        )
        assert response.status_code == 204
        for tokens in (one, two):
            assert (await client.get("/auth/me", headers=bearer(tokens["access_token"]))).status_code == 401
            refresh = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
            assert refresh.status_code == 401
        assert (await login_tokens(client, "carol", "A-Brand-New-Passphrase-77"))["access_token"]
        assert ("auth.password_change", "success") in await audit_actions(session_factory)

    async def test_password_change_checks_current_password_and_policy(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        headers = bearer((await login_tokens(client, "carol"))["access_token"])
        wrong = await client.post(
            "/auth/password",
            json={"current_password": "not-my-password", "new_password": "A-Brand-New-Passphrase-77"},
            headers=headers,
        )
        assert wrong.status_code == 403
        assert wrong.json()["code"] == "invalid_current_password"
        for new, code in [
            ("short", "weak_password"),
            ("password1234", "weak_password"),
            ("carolcarolcarol", "weak_password"),
            (DEFAULT_PASSWORD, "password_unchanged"),
        ]:
            response = await client.post(
                "/auth/password",
                json={"current_password": DEFAULT_PASSWORD, "new_password": new},
                headers=headers,
            )
            assert response.status_code == 422, new
            assert response.json()["code"] == code, new


class TestOwnSessions:
    async def test_list_and_end_other_sessions_with_the_password(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        laptop = await login_tokens(client, "carol")
        phone = await login_tokens(client, "carol")
        tablet = await login_tokens(client, "carol")
        headers = bearer(laptop["access_token"])
        listed = (await client.get("/auth/sessions", headers=headers)).json()
        assert len(listed) == 3
        assert [item["current"] for item in listed].count(True) == 1
        phone_id = next(
            item["id"]
            for item in listed
            if not item["current"] and item["id"] != _sid(tablet["access_token"])
        )
        wrong = await client.post("/auth/sessions/end", json={"password": "not-it-at-all"}, headers=headers)
        assert wrong.status_code == 403
        one = await client.post(
            "/auth/sessions/end", json={"password": DEFAULT_PASSWORD, "session_id": phone_id}, headers=headers
        )
        assert one.json() == {"sessions_ended": 1}
        assert (await client.get("/auth/me", headers=bearer(phone["access_token"]))).status_code == 401
        rest = await client.post("/auth/sessions/end", json={"password": DEFAULT_PASSWORD}, headers=headers)
        assert rest.json() == {"sessions_ended": 1}
        assert (await client.get("/auth/me", headers=bearer(tablet["access_token"]))).status_code == 401
        assert (await client.get("/auth/me", headers=headers)).status_code == 200

    async def test_cannot_end_another_users_session(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        await create_user(session_factory, username="dave", roles=["clinician"])
        carol = await login_tokens(client, "carol")
        dave = await login_tokens(client, "dave")
        response = await client.post(
            "/auth/sessions/end",
            json={"password": DEFAULT_PASSWORD, "session_id": _sid(dave["access_token"])},
            headers=bearer(carol["access_token"]),
        )
        assert response.json() == {"sessions_ended": 0}
        assert (await client.get("/auth/me", headers=bearer(dave["access_token"]))).status_code == 200


def _sid(access_token: str) -> str:
    return str(jwt.decode(access_token, options={"verify_signature": False})["sid"])
