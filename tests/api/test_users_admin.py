"""``/admin/users``: account administration, escalation refusal and last-admin protection."""

from __future__ import annotations

import asyncio

import httpx
from sqlmodel import col, select

from auth_db.engine import SessionFactory
from auth_db.models import AuditEvent, User
from tests.factories import DEFAULT_PASSWORD, audit_actions, bearer_headers, create_user, login_tokens

NEW_PASSWORD = "Another-Long-Passphrase-31"


async def admin_headers(
    client: httpx.AsyncClient, session_factory: SessionFactory, *roles: str
) -> dict[str, str]:
    await create_user(session_factory, username="root", roles=roles or ["admin", "clinician"])
    return await bearer_headers(client, "root")


class TestAccess:
    async def test_anonymous(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/admin/users")
        assert response.status_code == 401

    async def test_missing_permission(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        response = await client.get("/admin/users", headers=await bearer_headers(client, "carol"))
        assert response.status_code == 403
        assert response.json()["code"] == "permission_denied"


class TestCreate:
    async def test_created_account_must_change_its_password_first(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        headers = await admin_headers(client, session_factory)
        created = await client.post(
            "/admin/users",
            json={
                "username": "Dana",
                "display_name": "Dr Dana",
                "email": "dana@example.org",
                "roles": ["clinician"],
            },
            headers=headers,
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["user"]["username"] == "dana"
        assert body["user"]["must_change_password"] is True
        temporary = body["temporary_password"]
        assert len(temporary) >= 20
        dana = await bearer_headers(client, "dana", temporary)
        assert (await client.get("/auth/me", headers=dana)).json()["must_change_password"] is True
        blocked = await client.get("/settings/user", headers=dana)
        assert blocked.status_code == 403
        assert blocked.json()["code"] == "password_change_required"
        changed = await client.post(
            "/auth/password", json={"current_password": temporary, "new_password": NEW_PASSWORD}, headers=dana
        )
        assert changed.status_code == 204
        dana = await bearer_headers(client, "dana", NEW_PASSWORD)
        assert (await client.get("/settings/user", headers=dana)).status_code == 200
        assert ("admin.user_create", "success") in await audit_actions(session_factory)

    async def test_initial_password_follows_the_policy(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        headers = await admin_headers(client, session_factory)
        body = {
            "username": "dana",
            "display_name": "Dana",
            "roles": ["clinician"],
            "initial_password": "password123",
        }
        response = await client.post("/admin/users", json=body, headers=headers)
        assert response.status_code == 422
        assert response.json()["code"] == "weak_password"
        response = await client.post(
            "/admin/users", json={**body, "initial_password": NEW_PASSWORD}, headers=headers
        )
        assert response.status_code == 201
        assert response.json()["temporary_password"] is None

    async def test_duplicate_username_or_email_is_409(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        headers = await admin_headers(client, session_factory)
        body = {"username": "dana", "display_name": "Dana", "email": "d@example.org", "roles": ["clinician"]}
        assert (await client.post("/admin/users", json=body, headers=headers)).status_code == 201
        again = await client.post("/admin/users", json=body, headers=headers)
        assert again.json()["code"] == "username_taken"
        other = await client.post(
            "/admin/users", json={**body, "username": "dana2", "email": "D@example.org"}, headers=headers
        )
        assert other.status_code == 409
        assert other.json()["code"] == "email_taken"

    async def test_admin_cannot_grant_roles_they_do_not_hold(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        headers = await admin_headers(client, session_factory, "admin")
        response = await client.post(
            "/admin/users",
            json={"username": "dana", "display_name": "Dana", "roles": ["clinician"]},
            headers=headers,
        )
        assert response.status_code == 403
        assert response.json()["code"] == "role_escalation"
        assert ("admin.user_create", "denied") in await audit_actions(session_factory)

    async def test_bad_bodies_are_422(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        headers = await admin_headers(client, session_factory)
        for body in [
            {"username": "a", "display_name": "A", "roles": ["clinician"]},
            {"username": "dana", "display_name": "Dana", "roles": []},
            {"username": "dana", "display_name": "Dana", "roles": ["superuser"]},
            {"username": "dana", "display_name": "Dana", "roles": ["clinician"], "email": "not-an-email"},
        ]:
            response = await client.post("/admin/users", json=body, headers=headers)
            assert response.status_code == 422, body


class TestUpdate:
    async def test_promotion_beyond_own_roles_is_refused(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        headers = await admin_headers(client, session_factory, "admin")
        dana = await create_user(session_factory, username="dana", roles=["admin"])
        response = await client.patch(
            f"/admin/users/{dana.id}", json={"roles": ["admin", "clinician"]}, headers=headers
        )
        assert response.status_code == 403
        assert response.json()["code"] == "role_escalation"

    async def test_update_name_email_and_roles(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        headers = await admin_headers(client, session_factory)
        dana = await create_user(session_factory, username="dana", roles=["clinician"])
        response = await client.patch(
            f"/admin/users/{dana.id}",
            json={"display_name": "Dr Dana", "email": "dana@example.org", "roles": ["admin", "clinician"]},
            headers=headers,
        )
        assert response.status_code == 200
        assert response.json()["roles"] == ["admin", "clinician"]
        assert response.json()["email"] == "dana@example.org"
        read = await client.get(f"/admin/users/{dana.id}", headers=headers)
        assert read.json()["display_name"] == "Dr Dana"

    async def test_unknown_user_is_404(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        headers = await admin_headers(client, session_factory)
        response = await client.get("/admin/users/00000000-0000-0000-0000-000000000000", headers=headers)
        assert response.status_code == 404
        assert response.json()["code"] == "user_not_found"
        assert (await client.get("/admin/users/not-a-uuid", headers=headers)).status_code == 422


class TestLastAdmin:
    async def test_the_last_active_admin_cannot_be_disabled_or_demoted(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        headers = await admin_headers(client, session_factory)
        me = (await client.get("/auth/me", headers=headers)).json()
        disable = await client.post(f"/admin/users/{me['id']}/disable", headers=headers)
        assert disable.status_code == 409
        assert disable.json()["code"] == "last_admin"
        demote = await client.patch(
            f"/admin/users/{me['id']}", json={"roles": ["clinician"]}, headers=headers
        )
        assert demote.status_code == 409
        assert demote.json()["code"] == "last_admin"
        async with session_factory() as session:
            denied = (
                await session.exec(
                    select(AuditEvent).where(AuditEvent.outcome == "denied").order_by(col(AuditEvent.id))
                )
            ).all()
        assert [(e.action, e.target_id, e.reason) for e in denied] == [
            ("admin.user_disable", me["id"], "last active administrator"),
            ("admin.user_update", me["id"], None),
        ]
        assert denied[1].details == {"roles": ["clinician"]}

    async def test_with_a_second_admin_one_can_be_disabled_but_not_both(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        headers = await admin_headers(client, session_factory)
        other = await create_user(session_factory, username="second", roles=["admin"])
        me = (await client.get("/auth/me", headers=headers)).json()
        assert (await client.post(f"/admin/users/{other.id}/disable", headers=headers)).status_code == 200
        assert (await client.post(f"/admin/users/{me['id']}/disable", headers=headers)).status_code == 409
        # A disabled admin does not count: enabling brings them back.
        assert (await client.post(f"/admin/users/{other.id}/enable", headers=headers)).status_code == 200
        assert (await client.post(f"/admin/users/{me['id']}/disable", headers=headers)).status_code == 200

    async def test_two_admins_disabling_each_other_at_once_leave_one_active(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        first = await create_user(session_factory, username="first", roles=["admin"])
        second = await create_user(session_factory, username="second", roles=["admin"])
        first_headers = await bearer_headers(client, "first")
        second_headers = await bearer_headers(client, "second")
        results = await asyncio.gather(
            client.post(f"/admin/users/{second.id}/disable", headers=first_headers),
            client.post(f"/admin/users/{first.id}/disable", headers=second_headers),
        )
        assert sorted(r.status_code for r in results) != [200, 200]
        async with session_factory() as session:
            active = (await session.exec(select(User).where(col(User.is_active).is_(True)))).all()
        assert len(active) == 1


class TestDisableAndSessions:
    async def test_disabling_ends_sessions_at_once(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        headers = await admin_headers(client, session_factory)
        dana = await create_user(session_factory, username="dana", roles=["clinician"])
        dana_headers = await bearer_headers(client, "dana")
        response = await client.post(f"/admin/users/{dana.id}/disable", headers=headers)
        assert response.json()["is_active"] is False
        refused = await client.get("/auth/me", headers=dana_headers)
        assert refused.status_code == 401
        assert refused.json()["code"] == "session_ended"
        login = await client.post("/auth/login", json={"username": "dana", "password": DEFAULT_PASSWORD})
        assert login.json()["code"] == "invalid_credentials"

    async def test_list_and_end_sessions(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        headers = await admin_headers(client, session_factory)
        dana = await create_user(session_factory, username="dana", roles=["clinician"])
        tokens = [await login_tokens(client, "dana") for _ in range(2)]
        listed = await client.get(f"/admin/users/{dana.id}/sessions", headers=headers)
        assert len(listed.json()) == 2
        assert listed.json()[0]["client_addr"] == "203.0.113.10"
        ended = await client.delete(f"/admin/users/{dana.id}/sessions", headers=headers)
        assert ended.json() == {"sessions_ended": 2}
        for token in tokens:
            me = await client.get("/auth/me", headers={"Authorization": f"Bearer {token['access_token']}"})
            assert me.status_code == 401
        assert (await client.get(f"/admin/users/{dana.id}/sessions", headers=headers)).json() == []
        assert ("admin.sessions_end", "success") in await audit_actions(session_factory)


class TestUnlock:
    async def test_admin_can_lift_a_lockout(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        headers = await admin_headers(client, session_factory)
        dana = await create_user(session_factory, username="dana", roles=["clinician"])
        for _ in range(5):
            await client.post("/auth/login", json={"username": "dana", "password": "wrong-password-x"})
        body = {"username": "dana", "password": DEFAULT_PASSWORD}
        assert (await client.post("/auth/login", json=body)).status_code == 429
        assert (await client.post(f"/admin/users/{dana.id}/unlock", headers=headers)).status_code == 200
        assert (await client.post("/auth/login", json=body)).status_code == 200
        assert ("admin.user_unlock", "success") in await audit_actions(session_factory)


class TestResetPassword:
    async def test_reset_sets_a_temporary_password_and_ends_sessions(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        headers = await admin_headers(client, session_factory)
        dana = await create_user(session_factory, username="dana", roles=["clinician"])
        old = await bearer_headers(client, "dana")
        response = await client.post(f"/admin/users/{dana.id}/reset-password", json={}, headers=headers)
        assert response.status_code == 200
        temporary = response.json()["temporary_password"]
        assert response.json()["sessions_ended"] == 1
        assert (await client.get("/auth/me", headers=old)).status_code == 401
        new = await bearer_headers(client, "dana", temporary)
        assert (await client.get("/auth/me", headers=new)).json()["must_change_password"] is True

    async def test_reset_of_an_account_with_more_roles_is_refused(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        headers = await admin_headers(client, session_factory, "admin")
        doctor = await create_user(session_factory, username="doctor", roles=["admin", "clinician"])
        response = await client.post(f"/admin/users/{doctor.id}/reset-password", json={}, headers=headers)
        assert response.status_code == 403
        assert response.json()["code"] == "role_escalation"
        totp = await client.post(f"/admin/users/{doctor.id}/totp/reset", headers=headers)
        assert totp.json()["code"] == "role_escalation"
        actions = await audit_actions(session_factory)
        assert {("admin.password_reset", "denied"), ("admin.totp_reset", "denied")} <= set(actions)
        assert ("admin.password_reset", "success") not in actions


class TestList:
    async def test_filter_and_paging(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        headers = await admin_headers(client, session_factory)
        for name in ["anna", "bert", "cora", "dirk"]:
            await create_user(session_factory, username=name, roles=["clinician"])
        await create_user(session_factory, username="eve", roles=["clinician"], is_active=False)
        page = (await client.get("/admin/users", params={"limit": 2, "offset": 1}, headers=headers)).json()
        assert page["total"] == 6
        assert [u["username"] for u in page["items"]] == ["bert", "cora"]
        admins = (await client.get("/admin/users", params={"role": "admin"}, headers=headers)).json()
        assert [u["username"] for u in admins["items"]] == ["root"]
        inactive = (await client.get("/admin/users", params={"active": "false"}, headers=headers)).json()
        assert [u["username"] for u in inactive["items"]] == ["eve"]
        search = (await client.get("/admin/users", params={"q": "OR"}, headers=headers)).json()
        assert [u["username"] for u in search["items"]] == ["cora"]
        wildcard = (await client.get("/admin/users", params={"q": "%"}, headers=headers)).json()
        assert wildcard["total"] == 0
        assert (await client.get("/admin/users", params={"limit": 0}, headers=headers)).status_code == 422

    async def test_cursor_paging_walks_every_account_once(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        headers = await admin_headers(client, session_factory)
        for name in ["anna", "bert", "cora", "dirk"]:
            await create_user(session_factory, username=name, roles=["clinician"])
        seen: list[str] = []
        params: dict[str, object] = {"limit": 2}
        while True:
            page = (await client.get("/admin/users", params=params, headers=headers)).json()
            seen += [u["username"] for u in page["items"]]
            if page["next"] is None:
                break
            params = {"limit": 2, "cursor": page["next"]}
        assert seen == ["anna", "bert", "cora", "dirk", "root"]
        forged = await client.get("/admin/users", params={"cursor": "x.y"}, headers=headers)
        assert forged.json()["code"] == "invalid_cursor"

    async def test_audit_records_never_hold_passwords(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        headers = await admin_headers(client, session_factory)
        await client.post(
            "/admin/users",
            json={
                "username": "dana",
                "display_name": "Dana",
                "roles": ["clinician"],
                "initial_password": NEW_PASSWORD,
            },
            headers=headers,
        )
        async with session_factory() as session:
            events = (await session.exec(select(AuditEvent))).all()
        assert events
        assert all(NEW_PASSWORD not in repr(event.model_dump()) for event in events)
        assert all(DEFAULT_PASSWORD not in repr(event.model_dump()) for event in events)
