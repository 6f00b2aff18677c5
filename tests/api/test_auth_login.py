"""Login flows: browser cookies + CSRF, bearer tokens for tools, bad input, token confusion."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import jwt
from sqlmodel import select

from auth_db.engine import SessionFactory
from auth_db.models import AuditEvent, AuthSession, User
from gateway.security.keys import derive_key
from gateway.settings import Settings
from tests.conftest import TEST_SECRET
from tests.factories import (
    DEFAULT_PASSWORD,
    audit_actions,
    bearer_headers,
    browser_login,
    create_user,
    login_tokens,
)


class TestBrowserLogin:
    async def test_sets_httponly_samesite_cookies_and_returns_csrf_token(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        response = await client.post("/auth/login", json={"username": "carol", "password": DEFAULT_PASSWORD})
        assert response.status_code == 200
        body = response.json()
        assert body["user"]["username"] == "carol"
        assert body["user"]["roles"] == ["clinician"]
        assert "patient:read" in body["user"]["permissions"]
        assert body["expires_in"] == 900
        cookies = {c.split("=", 1)[0]: c for c in response.headers.get_list("set-cookie")}
        assert set(cookies) == {"gw_access", "gw_refresh", "gw_csrf"}
        assert "HttpOnly" in cookies["gw_access"]
        assert "Path=/;" in cookies["gw_access"] + ";"
        assert "SameSite=strict" in cookies["gw_access"]
        assert "HttpOnly" in cookies["gw_refresh"]
        assert "Path=/auth/refresh" in cookies["gw_refresh"]
        assert "HttpOnly" not in cookies["gw_csrf"]
        assert client.cookies["gw_csrf"] == body["csrf_token"]
        assert ("auth.login", "success") in await audit_actions(session_factory)

    async def test_secure_cookies_use_host_prefix(
        self, pg_url: str, make_settings: type[Settings], session_factory: SessionFactory
    ) -> None:
        from tests.conftest import running_app

        await create_user(session_factory, username="carol", roles=["clinician"])
        async with running_app(make_settings(auth_database_url=pg_url, cookie_secure=True)) as secure:
            response = await secure.post(
                "/auth/login", json={"username": "carol", "password": DEFAULT_PASSWORD}
            )
        cookies = response.headers.get_list("set-cookie")
        assert any(c.startswith("__Host-gw_access=") and "Secure" in c for c in cookies)
        assert any(c.startswith("__Secure-gw_refresh=") and "Secure" in c for c in cookies)
        assert any(c.startswith("__Host-gw_csrf=") for c in cookies)

    async def test_cookie_authenticates_safe_requests(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        await browser_login(client, "carol")
        response = await client.get("/auth/me")
        assert response.status_code == 200
        assert response.json()["username"] == "carol"

    async def test_unsafe_cookie_request_without_csrf_header_is_refused(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        body = await browser_login(client, "carol")
        refused = await client.patch("/auth/me", json={"display_name": "Carol C"})
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "csrf_failed"
        wrong = await client.patch(
            "/auth/me", json={"display_name": "Carol C"}, headers={"X-CSRF-Token": "not-the-token"}
        )
        assert wrong.json()["code"] == "csrf_failed"
        accepted = await client.patch(
            "/auth/me", json={"display_name": "Carol C"}, headers={"X-CSRF-Token": str(body["csrf_token"])}
        )
        assert accepted.status_code == 200
        assert accepted.json()["display_name"] == "Carol C"

    async def test_logout_revokes_the_session_server_side(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        body = await browser_login(client, "carol")
        access = client.cookies["gw_access"]
        response = await client.post("/auth/logout", headers={"X-CSRF-Token": str(body["csrf_token"])})
        assert response.status_code == 204
        assert "gw_access" not in client.cookies
        # The old access token, replayed, no longer works: the session is revoked in the database.
        replay = await client.get("/auth/me", headers={"Authorization": f"Bearer {access}"})
        assert replay.status_code == 401
        assert replay.json()["code"] == "session_ended"
        async with session_factory() as session:
            rows = (await session.exec(select(AuthSession))).all()
        assert rows
        assert all(row.revoked_reason == "logout" for row in rows)


class TestTokenLogin:
    async def test_password_grant_returns_bearer_tokens_usable_without_csrf(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="tool", roles=["clinician"])
        tokens = await login_tokens(client, "tool")
        assert tokens["token_type"] == "bearer"
        assert tokens["expires_in"] == 900
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        response = await client.patch("/auth/me", json={"display_name": "Tool"}, headers=headers)
        assert response.status_code == 200

    async def test_access_token_claims(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        user = await create_user(session_factory, username="tool", roles=["clinician"])
        tokens = await login_tokens(client, "tool")
        header = jwt.get_unverified_header(tokens["access_token"])
        claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        assert header["alg"] == "HS256"
        assert {"iss", "aud", "sub", "exp", "iat", "jti", "typ", "sid"} <= set(claims)
        assert claims["typ"] == "access"
        assert claims["sub"] == str(user.id)
        assert claims["exp"] - claims["iat"] == 900

    async def test_openapi_declares_the_password_flow(self, client: httpx.AsyncClient) -> None:
        schema = (await client.get("/openapi.json")).json()
        scheme = schema["components"]["securitySchemes"]["bearer"]
        assert scheme["flows"]["password"]["tokenUrl"] == "/auth/token"

    async def test_refresh_token_is_not_accepted_as_access_token(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="tool", roles=["clinician"])
        tokens = await login_tokens(client, "tool")
        response = await client.get(
            "/auth/me", headers={"Authorization": f"Bearer {tokens['refresh_token']}"}
        )
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_token"

    async def test_signed_token_of_another_type_is_refused(
        self, client: httpx.AsyncClient, session_factory: SessionFactory, make_settings: type[Settings]
    ) -> None:
        await create_user(session_factory, username="tool", roles=["clinician"])
        tokens = await login_tokens(client, "tool")
        claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        key = derive_key(make_settings(), "jwt")
        forged = jwt.encode({**claims, "typ": "refresh"}, key, algorithm="HS256")
        response = await client.get("/auth/me", headers={"Authorization": f"Bearer {forged}"})
        assert response.json()["code"] == "invalid_token"

    async def test_tampered_forged_none_and_expired_tokens_are_refused(
        self, client: httpx.AsyncClient, session_factory: SessionFactory, make_settings: type[Settings]
    ) -> None:
        await create_user(session_factory, username="tool", roles=["clinician"])
        tokens = await login_tokens(client, "tool")
        claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        head, payload, signature = tokens["access_token"].split(".")
        tampered = f"{head}.{payload}.{signature[:-4]}AAAA"
        with_raw_secret = jwt.encode(claims, TEST_SECRET, algorithm="HS256")
        unsigned = jwt.encode(claims, None, algorithm="none")
        key = derive_key(make_settings(), "jwt")
        now = datetime.now(UTC)
        expired = jwt.encode(
            {**claims, "iat": int((now - timedelta(hours=1)).timestamp()), "exp": int(now.timestamp()) - 60},
            key,
            algorithm="HS256",
        )
        other_audience = jwt.encode({**claims, "aud": "someone-else"}, key, algorithm="HS256")
        for token, code in [
            (tampered, "invalid_token"),
            (with_raw_secret, "invalid_token"),
            (unsigned, "invalid_token"),
            (other_audience, "invalid_token"),
            ("not-a-jwt", "invalid_token"),
            (expired, "token_expired"),
        ]:
            response = await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, token
            assert response.json()["code"] == code, token
            assert response.headers["www-authenticate"] == "Bearer"
        assert ("auth.token_rejected", "denied") in await audit_actions(session_factory)


class TestBadLogins:
    async def test_wrong_password_and_unknown_user_get_the_same_answer(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        wrong = await client.post("/auth/login", json={"username": "carol", "password": "wrong-password-1"})
        unknown = await client.post(
            "/auth/login", json={"username": "nobody", "password": "wrong-password-1"}
        )
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.json()["code"] == unknown.json()["code"] == "invalid_credentials"
        assert wrong.json()["detail"] == unknown.json()["detail"]
        async with session_factory() as session:
            failed = (
                await session.exec(select(AuditEvent).where(AuditEvent.action == "auth.login_failed"))
            ).all()
        assert len(failed) == 2
        assert all("password" not in (row.details or {}) for row in failed)

    async def test_disabled_user_cannot_log_in_and_its_tokens_stop_working(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        user = await create_user(session_factory, username="carol", roles=["clinician"])
        headers = await bearer_headers(client, "carol")
        async with session_factory() as session:
            row = await session.get(User, user.id)
            assert row is not None
            row.is_active = False
            session.add(row)
            await session.commit()
        assert (await client.get("/auth/me", headers=headers)).json()["code"] == "session_ended"
        response = await client.post("/auth/login", json={"username": "carol", "password": DEFAULT_PASSWORD})
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_credentials"

    async def test_malformed_bodies_are_422_problem_json(self, client: httpx.AsyncClient) -> None:
        for body in [{}, {"username": "x"}, {"username": "x", "password": "y", "extra": 1}, [1, 2]]:
            response = await client.post("/auth/login", json=body)
            assert response.status_code == 422
            assert response.json()["code"] == "validation_error"
        response = await client.post(
            "/auth/login", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert response.status_code == 422
        response = await client.post("/auth/token", data={"username": "x"})
        assert response.status_code == 422

    async def test_control_characters_are_422_not_500(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["admin", "clinician"])
        login = await client.post("/auth/login", json={"username": "car\u0000ol", "password": "x"})
        assert login.status_code == 422
        token = await client.post("/auth/token", data={"username": "car\x00ol", "password": "x"})
        assert token.status_code == 422
        refresh = await client.post("/auth/refresh", json={"refresh_token": "a\u0000b"})
        assert refresh.status_code == 422
        headers = await bearer_headers(client, "carol")
        profile = await client.patch("/auth/me", json={"display_name": "Ca\u0000rol"}, headers=headers)
        assert profile.status_code == 422
        search = await client.get("/admin/users", params={"q": "a\x00"}, headers=headers)
        assert search.status_code == 422
        setting = await client.put(
            "/settings/user/timezone", json={"value": "Europe/\u0000"}, headers=headers
        )
        assert setting.json()["code"] == "invalid_setting_value"

    async def test_anonymous_requests_are_401(self, client: httpx.AsyncClient) -> None:
        for method, path in [("GET", "/auth/me"), ("POST", "/auth/logout"), ("GET", "/admin/users")]:
            response = await client.request(method, path)
            assert response.status_code == 401
            assert response.json()["code"] == "not_authenticated"

    async def test_token_for_unknown_session_is_refused(
        self, client: httpx.AsyncClient, session_factory: SessionFactory, make_settings: type[Settings]
    ) -> None:
        user = await create_user(session_factory, username="carol", roles=["clinician"])
        from gateway.security.tokens import issue_access_token

        token, _ = issue_access_token(
            make_settings(), user_id=user.id, session_family=uuid.uuid4(), now=datetime.now(UTC)
        )
        response = await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert response.json()["code"] == "session_ended"
