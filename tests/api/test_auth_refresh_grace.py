"""Concurrent refreshes (several tabs) within the reuse grace, and reuse detection after it, on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import update
from sqlmodel import col, select

from auth_db.engine import SessionFactory, create_engine, create_session_factory
from auth_db.models import AuditEvent, AuthSession, User
from gateway.settings import Settings
from gateway.system_settings import set_system_setting
from tests.api.test_auth_sessions import age_used_tokens, bearer
from tests.conftest import running_app
from tests.factories import audit_actions, browser_login, create_user, login_tokens

TABS = 8


async def live_rows(session_factory: SessionFactory) -> list[AuthSession]:
    """The rows that can still be refreshed: unused and unrevoked."""
    async with session_factory() as session:
        statement = select(AuthSession).where(
            col(AuthSession.used_at).is_(None), col(AuthSession.revoked_at).is_(None)
        )
        return list((await session.exec(statement)).all())


async def refresh_events(session_factory: SessionFactory) -> list[AuditEvent]:
    async with session_factory() as session:
        statement = select(AuditEvent).where(AuditEvent.action == "auth.refresh").order_by(col(AuditEvent.id))
        return list((await session.exec(statement)).all())


class TestConcurrentRefresh:
    async def test_concurrent_refreshes_of_one_token_all_succeed_and_leave_one_live_family(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="tool", roles=["clinician"])
        tokens = await login_tokens(client, "tool")
        responses = await asyncio.gather(
            *[
                client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
                for _ in range(TABS)
            ]
        )
        assert [response.status_code for response in responses] == [200] * TABS
        bodies = [response.json() for response in responses]
        # Every tab got the same successor, and every access token works.
        assert len({body["refresh_token"] for body in bodies}) == 1
        for body in bodies:
            assert (await client.get("/auth/me", headers=bearer(body["access_token"]))).status_code == 200
        live = await live_rows(session_factory)
        assert len(live) == 1
        async with session_factory() as session:
            families = {row.family_id for row in (await session.exec(select(AuthSession))).all()}
        assert families == {live[0].family_id}
        # One rotation and TABS - 1 replays, each audited; no reuse.
        events = await refresh_events(session_factory)
        assert [event.outcome for event in events] == ["success"] * TABS
        assert sorted(bool(event.details) for event in events) == [False] + [True] * (TABS - 1)
        assert all(event.details == {"concurrent_replay": True} for event in events if event.details)
        assert ("auth.refresh_reuse", "denied") not in await audit_actions(session_factory)
        # The family goes on: the successor rotates normally.
        successor = bodies[0]["refresh_token"]
        following = await client.post("/auth/refresh", json={"refresh_token": successor})
        assert following.status_code == 200

    async def test_two_tabs_refreshing_by_cookie_at_once_stay_signed_in(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        login = await browser_login(client, "carol")
        csrf = {"X-CSRF-Token": str(login["csrf_token"])}
        responses = await asyncio.gather(*[client.post("/auth/refresh", headers=csrf) for _ in range(2)])
        assert [response.status_code for response in responses] == [200, 200]
        # Both answers set the same refresh cookie and CSRF token, whichever the browser keeps last.
        assert responses[0].cookies["gw_refresh"] == responses[1].cookies["gw_refresh"]
        assert {response.json()["csrf_token"] for response in responses} == {login["csrf_token"]}
        assert (await client.get("/auth/me")).status_code == 200
        # Long after the grace, the cookie the browser holds is the live token, not a spent one.
        await age_used_tokens(session_factory)
        later = await client.post("/auth/refresh", headers=csrf)
        assert later.status_code == 200
        assert (
            await client.patch("/auth/me", json={"display_name": "Carol"}, headers=csrf)
        ).status_code == 200

    async def test_a_replay_within_the_grace_follows_the_family_to_its_live_token(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="tool", roles=["clinician"])
        first = await login_tokens(client, "tool")
        second = (await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})).json()
        third = (await client.post("/auth/refresh", json={"refresh_token": second["refresh_token"]})).json()
        replay = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert replay.status_code == 200
        assert replay.json()["refresh_token"] == third["refresh_token"]
        assert len(await live_rows(session_factory)) == 1

    async def test_a_replay_adds_no_row_and_extends_nothing(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="tool", roles=["clinician"])
        first = await login_tokens(client, "tool")
        await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        async with session_factory() as session:
            before = {(row.id, row.expires_at) for row in (await session.exec(select(AuthSession))).all()}
        replay = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert replay.status_code == 200
        async with session_factory() as session:
            after = {(row.id, row.expires_at) for row in (await session.exec(select(AuthSession))).all()}
        assert after == before


class TestReuseAfterTheGrace:
    async def test_a_replay_after_the_grace_revokes_the_family_and_is_audited(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="tool", roles=["clinician"])
        first = await login_tokens(client, "tool")
        responses = await asyncio.gather(
            *[client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]}) for _ in range(3)]
        )
        successor = responses[0].json()
        await age_used_tokens(session_factory, seconds=6)  # the default grace is 5 seconds
        replay = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert replay.status_code == 401
        assert replay.json()["code"] == "invalid_refresh_token"
        assert await live_rows(session_factory) == []
        refused = await client.post("/auth/refresh", json={"refresh_token": successor["refresh_token"]})
        assert refused.json()["code"] == "invalid_refresh_token"
        me = await client.get("/auth/me", headers=bearer(successor["access_token"]))
        assert me.json()["code"] == "session_ended"
        assert ("auth.refresh_reuse", "denied") in await audit_actions(session_factory)

    async def test_grace_zero_treats_every_replay_as_reuse(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="tool", roles=["clinician"])
        async with session_factory() as session:
            await set_system_setting(session, "refresh_reuse_grace_seconds", 0, updated_by=None)
            await session.commit()
        first = await login_tokens(client, "tool")
        assert (
            await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        ).status_code == 200
        replay = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert replay.json()["code"] == "invalid_refresh_token"
        assert await live_rows(session_factory) == []
        assert ("auth.refresh_reuse", "denied") in await audit_actions(session_factory)

    async def test_no_grace_for_a_logged_out_session(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="tool", roles=["clinician"])
        first = await login_tokens(client, "tool")
        second = (await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})).json()
        logout = await client.post("/auth/logout", headers=bearer(second["access_token"]))
        assert logout.status_code == 204
        replay = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert replay.json()["code"] == "invalid_refresh_token"
        assert await live_rows(session_factory) == []

    async def test_no_grace_for_a_disabled_account(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        user = await create_user(session_factory, username="tool", roles=["clinician"])
        first = await login_tokens(client, "tool")
        await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        async with session_factory() as session:
            await session.exec(update(User).where(col(User.id) == user.id).values(is_active=False))
            await session.commit()
        replay = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert replay.status_code == 401
        assert replay.json()["code"] == "invalid_refresh_token"


class TestCsrfToken:
    async def test_a_tab_that_did_not_log_in_reads_the_sessions_csrf_token(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        login = await browser_login(client, "carol")
        response = await client.get("/auth/csrf")
        assert response.status_code == 200
        assert response.json() == {"csrf_token": login["csrf_token"]}
        assert response.headers["cache-control"] == "no-store"

    async def test_without_a_browser_session_there_is_no_csrf_token(self, client: httpx.AsyncClient) -> None:
        missing = await client.get("/auth/csrf")
        assert missing.status_code == 401
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.json()["code"] == "not_authenticated"
        client.cookies.set("gw_csrf", "<script>", domain="gateway.test", path="/")
        assert (await client.get("/auth/csrf")).status_code == 401

    async def test_every_login_gets_a_csrf_token_of_its_own(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        first = await browser_login(client, "carol")
        second = await browser_login(client, "carol")
        assert first["csrf_token"] != second["csrf_token"]
        stale = await client.patch(
            "/auth/me", json={"display_name": "C"}, headers={"X-CSRF-Token": str(first["csrf_token"])}
        )
        assert stale.json()["code"] == "csrf_failed"


async def test_concurrent_refreshes_on_the_embedded_sqlite_database(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(auth_db_sqlite_path=tmp_path / "auth.db")
    async with running_app(settings) as client:
        engine = create_engine(settings.computed_auth_database_url)
        try:
            factory = create_session_factory(engine)
            await create_user(factory, username="tool", roles=["clinician"])
            tokens = await login_tokens(client, "tool")
            responses = await asyncio.gather(
                *[
                    client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
                    for _ in range(4)
                ]
            )
            assert [response.status_code for response in responses] == [200] * 4, [r.text for r in responses]
            assert len({response.json()["refresh_token"] for response in responses}) == 1
            assert len(await live_rows(factory)) == 1
        finally:
            await engine.dispose()
