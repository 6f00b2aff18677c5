"""``/settings``: per-user and system settings declared in code; unknown keys and wrong types are 422."""

from __future__ import annotations

import httpx

from auth_db.engine import SessionFactory
from gateway.system_settings import get_system_setting
from tests.factories import audit_actions, bearer_headers, create_user


class TestUserSettings:
    async def test_defaults_then_override_then_reset(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        headers = await bearer_headers(client, "carol")
        items = {item["key"]: item for item in (await client.get("/settings/user", headers=headers)).json()}
        assert items["page_size"]["value"] == 25
        assert items["page_size"]["is_default"] is True
        assert items["page_size"]["type"] == "int"
        assert items["page_size"]["description"]
        put = await client.put("/settings/user/page_size", json={"value": 50}, headers=headers)
        assert put.status_code == 200
        assert put.json()["value"] == 50
        items = {item["key"]: item for item in (await client.get("/settings/user", headers=headers)).json()}
        assert items["page_size"] == {**items["page_size"], "value": 50, "is_default": False}
        reset = await client.delete("/settings/user/page_size", headers=headers)
        assert reset.json()["value"] == 25

    async def test_settings_are_per_user(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        await create_user(session_factory, username="dave", roles=["clinician"])
        carol = await bearer_headers(client, "carol")
        dave = await bearer_headers(client, "dave")
        await client.put("/settings/user/theme", json={"value": "dark"}, headers=carol)
        theirs = {i["key"]: i["value"] for i in (await client.get("/settings/user", headers=dave)).json()}
        assert theirs["theme"] == "system"

    async def test_unknown_key_and_wrong_types_are_422(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        headers = await bearer_headers(client, "carol")
        unknown = await client.put("/settings/user/no_such_key", json={"value": 1}, headers=headers)
        assert unknown.status_code == 422
        assert unknown.json()["code"] == "unknown_setting"
        assert (await client.delete("/settings/user/no_such_key", headers=headers)).json()["code"] == (
            "unknown_setting"
        )
        for key, value in [
            ("page_size", "50"),
            ("page_size", True),
            ("page_size", 100000),
            ("theme", "purple"),
            ("theme", 3),
        ]:
            response = await client.put(f"/settings/user/{key}", json={"value": value}, headers=headers)
            assert response.status_code == 422, (key, value)
            assert response.json()["code"] == "invalid_setting_value", (key, value)
        for body in [{}, {"value": 1.5}, {"value": None}, {"value": [1]}, {"value": 1, "extra": 2}]:
            response = await client.put("/settings/user/page_size", json=body, headers=headers)
            assert response.status_code == 422, body

    async def test_system_key_is_not_a_user_key(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        headers = await bearer_headers(client, "carol")
        response = await client.put("/settings/user/lockout_threshold", json={"value": 100}, headers=headers)
        assert response.json()["code"] == "unknown_setting"


class TestSystemSettings:
    async def test_clinicians_cannot_read_or_write(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="carol", roles=["clinician"])
        headers = await bearer_headers(client, "carol")
        assert (await client.get("/settings/system", headers=headers)).status_code == 403
        put = await client.put("/settings/system/lockout_threshold", json={"value": 100}, headers=headers)
        assert put.status_code == 403

    async def test_admin_overrides_take_effect_and_are_audited(
        self, client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="root", roles=["admin"])
        headers = await bearer_headers(client, "root")
        items = {i["key"]: i for i in (await client.get("/settings/system", headers=headers)).json()}
        assert items["break_glass_duration_minutes"]["value"] == 480
        assert items["require_2fa_for_admins"]["type"] == "bool"
        put = await client.put(
            "/settings/system/break_glass_duration_minutes", json={"value": 60}, headers=headers
        )
        assert put.status_code == 200
        async with session_factory() as session:
            assert await get_system_setting(session, "break_glass_duration_minutes") == 60
        bad = await client.put(
            "/settings/system/require_2fa_for_admins", json={"value": "yes"}, headers=headers
        )
        assert bad.json()["code"] == "invalid_setting_value"
        too_small = await client.put("/settings/system/lockout_threshold", json={"value": 0}, headers=headers)
        assert too_small.json()["code"] == "invalid_setting_value"
        unknown = await client.put("/settings/system/page_size", json={"value": 10}, headers=headers)
        assert unknown.json()["code"] == "unknown_setting"
        reset = await client.delete("/settings/system/break_glass_duration_minutes", headers=headers)
        assert reset.json()["value"] == 480
        async with session_factory() as session:
            assert await get_system_setting(session, "break_glass_duration_minutes") == 480
        assert ("admin.setting_update", "success") in await audit_actions(session_factory)
