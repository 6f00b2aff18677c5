"""Single sign-on through the API, against a fake provider (respx at httpcore; real keys and PKCE checks).

The same flows against a real Keycloak: ``tests/e2e/test_sso_e2e.py``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
from sqlmodel import select

from auth_db.engine import SessionFactory, transaction
from auth_db.models import AuditEvent, AuthSession, OidcLogin, SsoInvite, User, UserIdentity
from auth_db.types import utcnow
from gateway.settings import Settings
from tests.conftest import running_app
from tests.factories import DEFAULT_PASSWORD, audit_actions, bearer_headers, create_user
from tests.oidc_fake import CLIENT_ID, ISSUER, FakeIdp, provider_config

FRONTEND = "http://frontend.test"
#: A compact JWS/JWT (three base64url parts, header and payload JSON objects).
JWT = re.compile(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+")
GATEWAY = "http://gateway.test"


@pytest.fixture
def idp() -> Iterator[FakeIdp]:
    # httpcore: the identity-provider client is httpx on its default transport; the test client talks to
    # the app through ASGITransport, which this mocker does not touch.
    with respx.mock(using="httpcore", assert_all_called=False) as router:
        yield FakeIdp(router)


def sso_settings(make_settings: Callable[..., Settings], pg_url: str, *providers: dict[str, Any]) -> Settings:
    return make_settings(
        auth_database_url=pg_url,
        oidc_providers=json.dumps(list(providers) or [provider_config()]),
        gateway_public_url=GATEWAY,
        frontend_url=FRONTEND,
    )


@pytest.fixture
async def sso_client(
    pg_engine: Any, pg_url: str, make_settings: Callable[..., Settings], idp: FakeIdp
) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(sso_settings(make_settings, pg_url)) as http:
        yield http


async def linked_user(
    factory: SessionFactory, username: str = "dr.sso", subject: str = "kc-user-1", **kwargs: Any
) -> uuid.UUID:
    user_id = (await create_user(factory, username=username, roles=["clinician"], **kwargs)).id
    async with transaction(factory) as session:
        session.add(UserIdentity(user_id=user_id, provider_id="hospital", issuer=ISSUER, subject=subject))
    return user_id


def clinician_claims(**extra: Any) -> dict[str, Any]:
    return {
        "sub": "kc-user-1",
        "preferred_username": "dr.sso",
        "name": "Dr Sso",
        "email": "dr.sso@hospital.test",
        "realm_access": {"roles": ["gateway-clinician", "offline_access"]},
        **extra,
    }


async def start(client: httpx.AsyncClient, return_to: str | None = "/patients/42") -> str:
    params = {"return_to": return_to} if return_to is not None else {}
    response = await client.get("/auth/sso/hospital/login", params=params)
    assert response.status_code == 303, response.text
    return response.headers["location"]


async def sign_in(
    client: httpx.AsyncClient, idp: FakeIdp, claims: dict[str, Any], return_to: str | None = "/patients/42"
) -> httpx.Response:
    authorize = await start(client, return_to)
    return await client.get("/auth/sso/hospital/callback", params=idp.approve(authorize, claims))


def sso_error(response: httpx.Response) -> str | None:
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith(FRONTEND + "/")
    return parse_qs(urlsplit(location).query).get("sso_error", [None])[0]


class TestProviders:
    async def test_lists_the_configured_providers_without_secrets(
        self, sso_client: httpx.AsyncClient
    ) -> None:
        response = await sso_client.get("/auth/sso/providers")
        assert response.status_code == 200
        assert response.json() == [
            {
                "id": "hospital",
                "display_name": "Hospital login",
                "login_url": f"{GATEWAY}/auth/sso/hospital/login",
            }
        ]

    async def test_without_sso_the_list_is_empty_and_login_is_404(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/auth/sso/providers")).json() == []
        response = await client.get("/auth/sso/hospital/login")
        assert response.status_code == 404
        assert response.json()["code"] == "sso_not_configured"

    async def test_unknown_provider(self, sso_client: httpx.AsyncClient) -> None:
        response = await sso_client.get("/auth/sso/elsewhere/login")
        assert response.status_code == 404
        assert response.json()["code"] == "sso_provider_unknown"


class TestLoginStart:
    async def test_redirects_with_pkce_state_nonce_and_binds_the_browser(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        response = await sso_client.get("/auth/sso/hospital/login", params={"return_to": "/x"})
        assert response.status_code == 303
        assert response.headers["cache-control"] == "no-store"
        location = response.headers["location"]
        assert location.startswith(f"{ISSUER}/protocol/openid-connect/auth?")
        request = idp.parse_authorize(location)
        assert request.params["response_type"] == "code"
        assert request.params["client_id"] == CLIENT_ID
        assert request.params["code_challenge_method"] == "S256"
        assert request.params["scope"] == "openid profile email"
        assert request.redirect_uri == f"{GATEWAY}/auth/sso/hospital/callback"
        assert len(request.state) >= 43
        assert len(request.nonce) >= 43
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("gw_sso=")
        assert "HttpOnly" in cookie
        assert "SameSite=lax" in cookie
        assert "Max-Age=600" in cookie
        async with transaction(session_factory) as session:
            rows = (await session.exec(select(OidcLogin))).all()
        assert len(rows) == 1
        # Only hashes of the state and the browser binding are stored.
        assert request.state not in {rows[0].state_hash, rows[0].binding_hash}
        assert rows[0].return_to == "/x"

    @pytest.mark.parametrize(
        "return_to",
        ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)", "/\x00", ""],
    )
    async def test_no_open_redirect(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory, return_to: str
    ) -> None:
        await linked_user(session_factory)
        response = await sign_in(sso_client, idp, clinician_claims(), return_to=return_to)
        assert response.headers["location"] == FRONTEND + "/"

    async def test_provider_unreachable(self, sso_client: httpx.AsyncClient, idp: FakeIdp) -> None:
        idp.discovery.mock(side_effect=httpx.ConnectError("refused"))
        response = await sso_client.get("/auth/sso/hospital/login")
        assert sso_error(response) == "idp_unavailable"


class TestCallback:
    async def test_happy_path_sets_the_gateway_session_and_no_idp_token(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        user_id = await linked_user(session_factory)
        response = await sign_in(sso_client, idp, clinician_claims())
        assert response.status_code == 303
        assert response.headers["location"] == f"{FRONTEND}/patients/42"
        names = {c.split("=", 1)[0] for c in response.headers.get_list("set-cookie")}
        assert {"gw_access", "gw_refresh", "gw_csrf"} <= names
        assert 'gw_sso=""' in response.headers["set-cookie"] or any(
            c.startswith('gw_sso="";') or c.startswith("gw_sso=;")
            for c in response.headers.get_list("set-cookie")
        )
        # Nothing the provider issued travels to the browser.
        raw = str(response.headers) + response.text
        assert "idp-access-" not in raw
        assert "idp-refresh-" not in raw
        assert "eyJ" not in response.headers["location"]
        me = await sso_client.get("/auth/me")
        assert me.status_code == 200
        assert me.json()["id"] == str(user_id)
        assert me.json()["roles"] == ["clinician"]
        assert "eyJ" not in me.text
        async with transaction(session_factory) as session:
            row = (await session.exec(select(AuthSession).where(AuthSession.user_id == user_id))).one()
            identity = (await session.exec(select(UserIdentity))).one()
        assert (row.idp_issuer, row.idp_subject, row.idp_sid) == (ISSUER, "kc-user-1", "kc-session-1")
        assert row.id_token_encrypted
        # Encrypted (Fernet, URL-safe base64 without dots), not the JWT itself (which has two dots). A check
        # for "eyJ" would fail now and then: random ciphertext contains those three characters by chance.
        assert "." not in row.id_token_encrypted
        assert identity.last_login_at is not None
        assert ("auth.sso_login", "success") in await audit_actions(session_factory)

    async def test_roles_are_re_evaluated_at_every_login(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        await linked_user(session_factory)
        claims = clinician_claims(realm_access={"roles": ["gateway-admin", "gateway-clinician"]})
        await sign_in(sso_client, idp, claims)
        assert (await sso_client.get("/auth/me")).json()["roles"] == ["admin", "clinician"]
        await sign_in(sso_client, idp, clinician_claims(realm_access={"roles": ["gateway-admin"]}))
        assert (await sso_client.get("/auth/me")).json()["roles"] == ["admin"]

    async def test_zero_mapped_roles_is_denied_and_explained(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        await linked_user(session_factory)
        response = await sign_in(
            sso_client, idp, clinician_claims(realm_access={"roles": ["other-app-user"]})
        )
        assert sso_error(response) == "no_roles"
        assert not any(c.startswith("gw_access=") for c in response.headers.get_list("set-cookie"))
        assert ("auth.sso_login_failed", "denied") in await audit_actions(session_factory)

    async def test_unlinked_identity_is_refused_and_never_linked_by_email(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        # A local account with the very email the provider asserts: still not linked.
        await create_user(
            session_factory, username="local", roles=["clinician"], email="dr.sso@hospital.test"
        )
        response = await sign_in(sso_client, idp, clinician_claims(sub="someone-new"))
        assert sso_error(response) == "account_not_linked"
        async with transaction(session_factory) as session:
            assert (await session.exec(select(UserIdentity))).all() == []
            assert len((await session.exec(select(User))).all()) == 1

    async def test_disabled_account(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        user_id = await linked_user(session_factory)
        async with transaction(session_factory) as session:
            user = await session.get(User, user_id)
            assert user is not None
            user.is_active = False
            session.add(user)
        assert sso_error(await sign_in(sso_client, idp, clinician_claims())) == "account_disabled"

    async def test_replayed_state_is_refused_before_the_code_is_redeemed(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        await linked_user(session_factory)
        authorize = await start(sso_client)
        query = idp.approve(authorize, clinician_claims())
        first = await sso_client.get("/auth/sso/hospital/callback", params=query)
        assert first.headers["location"] == f"{FRONTEND}/patients/42"
        sso_client.cookies.set("gw_sso", "irrelevant")
        replay = await sso_client.get("/auth/sso/hospital/callback", params=query)
        assert sso_error(replay) == "state_replayed"
        assert idp.token_calls == 1

    async def test_a_forged_callback_does_not_break_the_login_in_flight(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        await linked_user(session_factory)
        authorize = await start(sso_client)
        forged = await sso_client.get("/auth/sso/hospital/callback", params={"state": "forged", "code": "x"})
        assert sso_error(forged) == "invalid_state"
        real = await sso_client.get(
            "/auth/sso/hospital/callback", params=idp.approve(authorize, clinician_claims())
        )
        assert real.headers["location"] == f"{FRONTEND}/patients/42"

    async def test_unknown_and_missing_state(self, sso_client: httpx.AsyncClient, idp: FakeIdp) -> None:
        await start(sso_client)
        for params in ({"state": "forged", "code": "c"}, {"code": "c"}):
            response = await sso_client.get("/auth/sso/hospital/callback", params=params)
            assert sso_error(response) == "invalid_state"
        assert idp.token_calls == 0

    async def test_expired_state(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        await linked_user(session_factory)
        authorize = await start(sso_client)
        async with transaction(session_factory) as session:
            row = (await session.exec(select(OidcLogin))).one()
            row.expires_at = utcnow() - timedelta(seconds=1)
            session.add(row)
        response = await sso_client.get(
            "/auth/sso/hospital/callback", params=idp.approve(authorize, clinician_claims())
        )
        assert sso_error(response) == "state_expired"
        assert idp.token_calls == 0

    async def test_another_browser_cannot_complete_the_login(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        await linked_user(session_factory)
        authorize = await start(sso_client)
        sso_client.cookies.clear()  # the victim's browser: no binding cookie
        response = await sso_client.get(
            "/auth/sso/hospital/callback", params=idp.approve(authorize, clinician_claims())
        )
        assert sso_error(response) == "browser_mismatch"

    async def test_iss_parameter_of_another_issuer(self, sso_client: httpx.AsyncClient, idp: FakeIdp) -> None:
        authorize = await start(sso_client)
        query = idp.approve(authorize, clinician_claims()) | {"iss": "https://evil.test/realms/x"}
        assert (
            sso_error(await sso_client.get("/auth/sso/hospital/callback", params=query)) == "issuer_mismatch"
        )
        query = idp.approve(await start(sso_client), clinician_claims())
        del query["iss"]  # the provider advertises RFC 9207: an answer without iss is not its own
        assert (
            sso_error(await sso_client.get("/auth/sso/hospital/callback", params=query)) == "issuer_mismatch"
        )
        assert idp.token_calls == 0

    @pytest.mark.parametrize(
        ("claims", "code"),
        [
            ({"nonce": "another-nonce"}, "nonce_mismatch"),
            ({"aud": "other-service", "azp": "other-service"}, "wrong_audience"),
            ({"azp": "other-service"}, "wrong_audience"),
            ({"iss": "https://evil.test/realms/hospital"}, "wrong_issuer"),
            ({"exp": 1_000_000_000}, "expired"),
        ],
    )
    async def test_id_token_claims(
        self,
        sso_client: httpx.AsyncClient,
        idp: FakeIdp,
        session_factory: SessionFactory,
        claims: dict[str, Any],
        code: str,
    ) -> None:
        await linked_user(session_factory)
        response = await sign_in(sso_client, idp, clinician_claims(**claims))
        assert sso_error(response) == code
        rows = await audit_actions(session_factory)
        assert ("auth.sso_login_failed", "failure") in rows
        assert ("auth.sso_login", "success") not in rows

    async def test_provider_error_answer(self, sso_client: httpx.AsyncClient, idp: FakeIdp) -> None:
        request = idp.parse_authorize(await start(sso_client))
        response = await sso_client.get(
            "/auth/sso/hospital/callback", params={"state": request.state, "error": "access_denied"}
        )
        assert sso_error(response) == "idp_error"

    async def test_code_refused_by_the_provider(self, sso_client: httpx.AsyncClient, idp: FakeIdp) -> None:
        request = idp.parse_authorize(await start(sso_client))
        response = await sso_client.get(
            "/auth/sso/hospital/callback",
            params={"state": request.state, "code": "not-issued", "iss": ISSUER},
        )
        assert sso_error(response) == "code_rejected"

    async def test_token_endpoint_down(self, sso_client: httpx.AsyncClient, idp: FakeIdp) -> None:
        idp.token.mock(side_effect=httpx.ReadTimeout("slow"))
        response = await sign_in(sso_client, idp, clinician_claims())
        assert sso_error(response) == "idp_unavailable"

    async def test_userinfo_about_another_subject(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        await linked_user(session_factory)
        idp.userinfo_overrides = {"sub": "someone-else"}
        assert sso_error(await sign_in(sso_client, idp, clinician_claims())) == "userinfo_mismatch"


class TestKeyRotation:
    async def test_a_new_key_is_fetched_without_a_restart(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        await linked_user(session_factory)
        await sign_in(sso_client, idp, clinician_claims())
        assert idp.jwks.call_count == 1
        idp.rotate(keep_old=True)
        assert (
            (await sign_in(sso_client, idp, clinician_claims())).headers["location"].endswith("/patients/42")
        )
        idp.rotate(keep_old=False)  # the old keys withdrawn
        assert (
            (await sign_in(sso_client, idp, clinician_claims())).headers["location"].endswith("/patients/42")
        )
        assert idp.jwks.call_count == 3

    async def test_unknown_kids_do_not_hammer_the_provider(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        await linked_user(session_factory)
        await sign_in(sso_client, idp, clinician_claims())
        # A token signed with a key the provider never published, twice in a row.
        idp.rotate(keep_old=True)
        idp.published = idp.published[:-1]
        for _ in range(2):
            assert sso_error(await sign_in(sso_client, idp, clinician_claims())) == "unknown_key"
        assert idp.jwks.call_count == 2  # one refetch, then the rate limit holds


class TestJustInTime:
    async def test_creates_an_sso_only_account_with_at_most_the_jit_roles(
        self,
        pg_engine: Any,
        pg_url: str,
        make_settings: Callable[..., Settings],
        idp: FakeIdp,
        session_factory: SessionFactory,
    ) -> None:
        settings = sso_settings(make_settings, pg_url, provider_config(provisioning="jit"))
        async with running_app(settings) as client:
            claims = clinician_claims(realm_access={"roles": ["gateway-admin", "gateway-clinician"]})
            response = await sign_in(client, idp, claims)
            assert response.headers["location"].endswith("/patients/42")
            me = (await client.get("/auth/me")).json()
            assert me["roles"] == ["clinician"]  # admin is never granted just in time
            assert me["sso_only"] is True
            assert me["username"] == "hospital.dr.sso"
            assert me["email"] is None
            # Its password login is refused like a wrong password.
            login = await client.post(
                "/auth/login", json={"username": "hospital.dr.sso", "password": "!sso-only"}
            )
            assert login.status_code == 401
            assert login.json()["code"] == "invalid_credentials"
            # An identity whose claims map to no role gets no account at all.
            other = await sign_in(client, idp, clinician_claims(sub="kc-user-2", realm_access={"roles": []}))
            assert sso_error(other) == "no_roles"
        async with transaction(session_factory) as session:
            assert len((await session.exec(select(User))).all()) == 1


class TestBackChannelLogout:
    async def test_ends_the_gateway_session_of_that_provider_session(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        await linked_user(session_factory)
        await sign_in(sso_client, idp, clinician_claims())
        assert (await sso_client.get("/auth/me")).status_code == 200
        token = idp.logout_token({})
        cookies = dict(sso_client.cookies)
        sso_client.cookies.clear()  # the provider calls without cookies
        response = await sso_client.post(
            "/auth/sso/hospital/backchannel-logout", data={"logout_token": token}
        )
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        sso_client.cookies.update(cookies)
        me = await sso_client.get("/auth/me")
        assert me.status_code == 401
        assert me.json()["code"] == "session_ended"
        # The same token again is a replay.
        replay = await sso_client.post("/auth/sso/hospital/backchannel-logout", data={"logout_token": token})
        assert replay.status_code == 400
        assert replay.json()["error"] == "invalid_request"
        rows = await audit_actions(session_factory)
        assert ("auth.sso_backchannel_logout", "success") in rows
        assert ("auth.sso_backchannel_logout", "denied") in rows

    async def test_by_subject_ends_every_session_of_the_user(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        await linked_user(session_factory)
        await sign_in(sso_client, idp, clinician_claims())
        token = idp.logout_token({"sid": None})
        response = await sso_client.post(
            "/auth/sso/hospital/backchannel-logout", data={"logout_token": token}
        )
        assert response.status_code == 200
        assert (await sso_client.get("/auth/me")).status_code == 401

    @pytest.mark.parametrize(
        ("claims", "header"),
        [
            ({"nonce": "n"}, {}),
            ({"events": {}}, {}),
            ({"sid": None, "sub": None}, {}),
            ({"jti": None}, {}),
            ({"aud": "other-service"}, {}),
            ({}, {"typ": "JWT"}),
            ({"iat": 4_000_000_000}, {}),
        ],
    )
    async def test_invalid_logout_tokens_end_nothing(
        self,
        sso_client: httpx.AsyncClient,
        idp: FakeIdp,
        session_factory: SessionFactory,
        claims: dict[str, Any],
        header: dict[str, Any],
    ) -> None:
        await linked_user(session_factory)
        await sign_in(sso_client, idp, clinician_claims())
        token = idp.logout_token(claims, **header)
        response = await sso_client.post(
            "/auth/sso/hospital/backchannel-logout", data={"logout_token": token}
        )
        assert response.status_code == 400
        assert (await sso_client.get("/auth/me")).status_code == 200


class TestRpInitiatedLogout:
    async def test_ends_the_session_and_points_at_the_provider_logout(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        await linked_user(session_factory)
        await sign_in(sso_client, idp, clinician_claims())
        csrf = sso_client.cookies["gw_csrf"]
        response = await sso_client.post("/auth/sso/logout", headers={"X-CSRF-Token": csrf})
        assert response.status_code == 200
        link = response.json()["end_session_url"]
        # The page gets a link of the gateway's, with no token of the provider in it.
        assert link.startswith(f"{GATEWAY}/auth/sso/logout/continue?handle=")
        assert not JWT.search(response.text)
        assert (await sso_client.get("/auth/me")).status_code == 401
        # Following it is a redirect to the provider's logout, with the ID token as the hint.
        onward = await sso_client.get(link.removeprefix(GATEWAY))
        assert onward.status_code == 303
        assert onward.headers["cache-control"] == "no-store"
        url = onward.headers["location"]
        assert url.startswith(f"{ISSUER}/protocol/openid-connect/logout?")
        params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        assert params["client_id"] == CLIENT_ID
        assert params["post_logout_redirect_uri"] == FRONTEND + "/"
        assert params["id_token_hint"].count(".") == 2

    async def test_a_forged_or_early_logout_link_goes_back_to_the_frontend(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        await linked_user(session_factory)
        await sign_in(sso_client, idp, clinician_claims())
        for handle in ("forged", "eyJmIjoiMSJ9.AAAA", ""):
            response = await sso_client.get("/auth/sso/logout/continue", params={"handle": handle})
            assert response.status_code == 303
            assert response.headers["location"] == FRONTEND + "/"
        # A valid link of a session that has not ended here yet does not reveal the ID token either.
        service = sso_client.app.state.sso  # type: ignore[attr-defined]
        async with transaction(session_factory) as session:
            family = (await session.exec(select(AuthSession.family_id))).first()
        link = await service.logout_link(family)
        response = await sso_client.get(link.removeprefix(GATEWAY))
        assert response.headers["location"] == FRONTEND + "/"

    async def test_a_local_session_has_no_provider_logout(
        self, sso_client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="local", roles=["clinician"])
        headers = await bearer_headers(sso_client, "local")
        response = await sso_client.post("/auth/sso/logout", headers=headers)
        assert response.status_code == 200
        assert response.json() == {"end_session_url": None}


class TestLinking:
    async def test_admin_pre_provisions_an_sso_only_account(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="root", roles=["admin", "clinician"])
        admin = await bearer_headers(sso_client, "root")
        created = await sso_client.post(
            "/admin/users",
            json={"username": "dr.new", "display_name": "Dr New", "roles": ["clinician"], "sso_only": True},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        assert created.json()["temporary_password"] is None
        user_id = created.json()["user"]["id"]
        link = await sso_client.post(
            f"/admin/users/{user_id}/identities",
            json={"provider": "hospital", "subject": "kc-user-1"},
            headers=admin,
        )
        assert link.status_code == 201, link.text
        again = await sso_client.post(
            f"/admin/users/{user_id}/identities",
            json={"provider": "hospital", "subject": "kc-user-1"},
            headers=admin,
        )
        assert again.status_code == 409
        assert again.json()["code"] == "identity_taken"
        unknown = await sso_client.post(
            f"/admin/users/{user_id}/identities", json={"provider": "nope", "subject": "x"}, headers=admin
        )
        assert unknown.status_code == 422
        assert unknown.json()["code"] == "sso_provider_unknown"
        response = await sign_in(sso_client, idp, clinician_claims())
        assert response.headers["location"].endswith("/patients/42")
        assert (await sso_client.get("/auth/me")).json()["username"] == "dr.new"
        # Unlinking ends the sessions it started.
        listed = await sso_client.get(f"/admin/users/{user_id}/identities", headers=admin)
        identity_id = listed.json()[0]["id"]
        removed = await sso_client.delete(f"/admin/users/{user_id}/identities/{identity_id}", headers=admin)
        assert removed.status_code == 204
        assert (await sso_client.get("/auth/me")).status_code == 401
        actions = await audit_actions(session_factory)
        assert ("admin.identity_link", "success") in actions
        assert ("admin.identity_link", "denied") in actions
        assert ("admin.identity_unlink", "success") in actions

    async def test_sso_only_needs_a_linked_identity(
        self, sso_client: httpx.AsyncClient, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="root", roles=["admin", "clinician"])
        user_id = (await create_user(session_factory, username="local", roles=["clinician"])).id
        admin = await bearer_headers(sso_client, "root")
        response = await sso_client.patch(f"/admin/users/{user_id}", json={"sso_only": True}, headers=admin)
        assert response.status_code == 409
        assert response.json()["code"] == "no_identity_linked"

    async def test_a_local_user_links_their_own_identity_with_the_password(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        user_id = (await create_user(session_factory, username="local", roles=["clinician"])).id
        headers = await bearer_headers(sso_client, "local")
        wrong = await sso_client.post("/auth/sso/hospital/link", json={"password": "wrong"}, headers=headers)
        assert wrong.status_code == 403
        assert wrong.json()["code"] == "invalid_current_password"
        started = await sso_client.post(
            "/auth/sso/hospital/link",
            json={"password": DEFAULT_PASSWORD, "return_to": "/me"},
            headers=headers,
        )
        assert started.status_code == 200, started.text
        query = idp.approve(started.json()["authorize_url"], clinician_claims(sub="kc-local"))
        response = await sso_client.get("/auth/sso/hospital/callback", params=query)
        assert response.headers["location"] == f"{FRONTEND}/me"
        async with transaction(session_factory) as session:
            identity = (await session.exec(select(UserIdentity))).one()
        assert (identity.user_id, identity.subject) == (user_id, "kc-local")
        events = await audit_rows(session_factory, "auth.sso_login")
        assert events[-1].details is not None
        assert events[-1].details["linked"] is True


async def audit_rows(factory: SessionFactory, action: str) -> list[AuditEvent]:
    async with transaction(factory) as session:
        rows = await session.exec(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
        )  # type: ignore[arg-type]
        return list(rows.all())


class TestInvites:
    async def test_an_invite_binds_the_first_sign_in_once(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="root", roles=["admin", "clinician"])
        admin = await bearer_headers(sso_client, "root")
        created = await sso_client.post(
            "/admin/users",
            json={
                "username": "dr.invited",
                "display_name": "Dr Invited",
                "roles": ["clinician"],
                "sso_only": True,
            },
            headers=admin,
        )
        user_id = created.json()["user"]["id"]
        invite = await sso_client.post(
            f"/admin/users/{user_id}/sso-invites", json={"provider": "hospital"}, headers=admin
        )
        assert invite.status_code == 201, invite.text
        link = invite.json()["invite_url"]
        assert link.startswith(f"{GATEWAY}/auth/sso/hospital/login?invite=")
        async with transaction(session_factory) as session:
            stored = (await session.exec(select(SsoInvite))).one()
        assert parse_qs(urlsplit(link).query)["invite"][0] not in stored.token_hash  # only a hash is kept
        # The invited person signs in; the identity the provider names is bound to the invited account.
        start = await sso_client.get(link.removeprefix(GATEWAY))
        assert start.status_code == 303
        query = idp.approve(start.headers["location"], clinician_claims(sub="kc-invited"))
        response = await sso_client.get("/auth/sso/hospital/callback", params=query)
        assert response.headers["location"] == FRONTEND + "/"
        assert (await sso_client.get("/auth/me")).json()["id"] == user_id
        async with transaction(session_factory) as session:
            identity = (await session.exec(select(UserIdentity))).one()
        assert (str(identity.user_id), identity.subject) == (user_id, "kc-invited")
        # Spent: a second use is refused before anyone is sent to the provider.
        again = await sso_client.get(link.removeprefix(GATEWAY))
        assert sso_error(again) == "invite_invalid"
        actions = await audit_actions(session_factory)
        assert ("admin.sso_invite", "success") in actions
        assert ("auth.sso_login_failed", "denied") in actions

    async def test_an_invite_is_spent_by_the_sign_in_not_by_opening_the_link(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="root", roles=["admin", "clinician"])
        target = await create_user(session_factory, username="dr.x", roles=["clinician"])
        admin = await bearer_headers(sso_client, "root")
        invite = await sso_client.post(
            f"/admin/users/{target.id}/sso-invites",
            json={"provider": "hospital", "valid_days": 1},
            headers=admin,
        )
        link = invite.json()["invite_url"].removeprefix(GATEWAY)
        first = await sso_client.get(link)
        second = await sso_client.get(link)  # opened twice (e.g. a reload): both logins may go on
        assert first.status_code == second.status_code == 303
        # The first to come back binds; the other finds the invite spent.
        done = await sso_client.get(
            "/auth/sso/hospital/callback",
            params=idp.approve(second.headers["location"], clinician_claims(sub="a")),
        )
        assert done.headers["location"] == FRONTEND + "/"
        late = await sso_client.get(
            "/auth/sso/hospital/callback",
            params=idp.approve(first.headers["location"], clinician_claims(sub="b")),
        )
        assert sso_error(late) in {"invite_invalid", "browser_mismatch"}

    async def test_expired_unknown_and_another_providers_invites(
        self, sso_client: httpx.AsyncClient, idp: FakeIdp, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="root", roles=["admin", "clinician"])
        target = await create_user(session_factory, username="dr.y", roles=["clinician"])
        admin = await bearer_headers(sso_client, "root")
        invite = await sso_client.post(
            f"/admin/users/{target.id}/sso-invites", json={"provider": "hospital"}, headers=admin
        )
        token = parse_qs(urlsplit(invite.json()["invite_url"]).query)["invite"][0]
        unknown = await sso_client.get("/auth/sso/hospital/login", params={"invite": "forged"})
        assert sso_error(unknown) == "invite_invalid"
        async with transaction(session_factory) as session:
            row = (await session.exec(select(SsoInvite))).one()
            row.expires_at = utcnow() - timedelta(seconds=1)
            session.add(row)
        expired = await sso_client.get("/auth/sso/hospital/login", params={"invite": token})
        assert sso_error(expired) == "invite_invalid"
        refused = await sso_client.post(
            f"/admin/users/{target.id}/sso-invites", json={"provider": "elsewhere"}, headers=admin
        )
        assert refused.status_code == 422
        assert refused.json()["code"] == "sso_provider_unknown"
        assert idp.token_calls == 0
