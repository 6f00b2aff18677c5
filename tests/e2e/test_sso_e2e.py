"""Single sign-on end to end: the gateway process against a real Keycloak 26.7.3 (docs/sso.md).

Realms ``hospital`` (pre-provisioned accounts) and ``clinic`` (just-in-time accounts) come from
``tests/e2e/infra/keycloak``; the gateway process of ``conftest.py`` is configured with both. A "browser" is
an httpx client with a cookie jar that treats 127.0.0.1 as a secure origin, as browsers do; the user types
the password into Keycloak's own login form (:func:`tests.e2e.keycloak.idp_login`).
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest

from tests.e2e.conftest import ADMIN_PASSWORD, ADMIN_USER, Stack
from tests.e2e.keycloak import KeycloakAdmin, browser_client, idp_login

PASSWORDS = {
    "dr.sso": "Sso-Clinician-1",
    "admin.sso": "Sso-Admin-1",
    "nurse.noroles": "Sso-Noroles-1",
    "dr.second": "Sso-Second-1",
    "gp.jit": "Sso-Jit-1",
    "gp.known": "Sso-Known-1",
}
REALM_OF = {"hospital": "hospital", "clinic": "clinic"}
#: How long a revocation may take to reach the gateway (AUTHZ_CACHE_MS is 500 ms; plus Keycloak's call).
REVOCATION_WAIT = 10.0


@pytest.fixture(scope="module")
def keycloak(stack: Stack) -> Iterator[KeycloakAdmin]:
    """Keycloak's admin API; the gateway's back-channel logout URL registered in both realms."""
    with KeycloakAdmin() as admin:
        for provider, realm in REALM_OF.items():
            admin.set_client_attributes(
                realm,
                "gateway",
                {"backchannel.logout.url": f"{stack.gateway_url}/auth/sso/{provider}/backchannel-logout"},
            )
        yield admin


@pytest.fixture(scope="module")
def admin_headers(stack: Stack) -> dict[str, str]:
    response = httpx.post(
        f"{stack.gateway_url}/auth/token",
        data={"username": ADMIN_USER, "password": ADMIN_PASSWORD},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture(scope="module")
def sso_accounts(stack: Stack, keycloak: KeycloakAdmin, admin_headers: dict[str, str]) -> dict[str, str]:
    """Pre-provisioned SSO-only accounts linked to their Keycloak identities: username -> gateway user id."""
    accounts: dict[str, str] = {}
    with httpx.Client(base_url=stack.gateway_url, headers=admin_headers, timeout=30) as admin:
        for username in ("dr.sso", "admin.sso", "nurse.noroles", "dr.second"):
            created = admin.post(
                "/admin/users",
                json={
                    "username": f"{username}.{stack.run_id}",
                    "display_name": username,
                    "roles": ["clinician"],
                    "sso_only": True,
                },
            )
            assert created.status_code == 201, created.text
            user_id = created.json()["user"]["id"]
            linked = admin.post(
                f"/admin/users/{user_id}/identities",
                json={"provider": "hospital", "subject": keycloak.user_id("hospital", username)},
            )
            assert linked.status_code == 201, linked.text
            accounts[username] = user_id
    return accounts


def sign_in(
    stack: Stack,
    browser: httpx.Client,
    username: str,
    *,
    provider: str = "hospital",
    return_to: str = "/start",
) -> httpx.Response:
    """The browser signs in: gateway → Keycloak's form → the callback; returns the callback's answer."""
    start = browser.get(f"{stack.gateway_url}/auth/sso/{provider}/login", params={"return_to": return_to})
    assert start.status_code == 303, start.text
    back = idp_login(browser, start.headers["location"], username, PASSWORDS[username])
    callback = back.headers["location"]
    assert callback.startswith(f"{stack.gateway_url}/auth/sso/{provider}/callback?"), callback
    return browser.get(callback)


def sso_error(response: httpx.Response) -> str | None:
    assert response.status_code == 303, response.text
    return parse_qs(urlsplit(response.headers["location"]).query).get("sso_error", [None])[0]


def csrf(browser: httpx.Client) -> str:
    return next(c.value for c in browser.cookies.jar if c.name == "__Host-gw_csrf" and c.value)


def me(stack: Stack, browser: httpx.Client) -> httpx.Response:
    return browser.get(f"{stack.gateway_url}/auth/me")


def jwt_issuers(text: str) -> set[str]:
    """The ``iss`` of every JWT-looking string in ``text`` (tokens of the gateway and of Keycloak alike)."""
    issuers: set[str] = set()
    for match in re.finditer(r"eyJ[A-Za-z0-9_-]+\.(eyJ[A-Za-z0-9_-]+)\.[A-Za-z0-9_-]*", text):
        payload = match.group(1)
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        issuers.add(str(claims.get("iss")))
    return issuers


def wait_until_signed_out(stack: Stack, browser: httpx.Client) -> float:
    started = time.monotonic()
    while time.monotonic() - started < REVOCATION_WAIT:
        response = me(stack, browser)
        if response.status_code == 401:
            assert response.json()["code"] == "session_ended"
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError("the gateway session outlived the logout")


def audit(stack: Stack, admin_headers: dict[str, str], action: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{stack.gateway_url}/admin/audit",
        params={"action": action, "limit": 200},
        headers=admin_headers,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


# --- the happy path ----------------------------------------------------------------------------------


def test_sign_in_with_keycloak_reads_patients_and_no_keycloak_token_reaches_the_browser(
    stack: Stack, sso_accounts: dict[str, str], admin_headers: dict[str, str]
) -> None:
    seen: list[str] = []

    def from_gateway(response: httpx.Response) -> None:
        if str(response.url).startswith(stack.gateway_url):
            response.read()
            seen.append(f"{response.headers}\n{response.text}")

    with browser_client(event_hooks={"response": [from_gateway]}) as browser:
        response = sign_in(stack, browser, "dr.sso")
        assert response.headers["location"] == f"{stack.gateway_url}/start"
        gateway_cookies = [c for c in browser.cookies.jar if not c.path.startswith("/realms/")]
        assert {"__Host-gw_access", "__Host-gw_csrf", "__Secure-gw_refresh"} <= {
            c.name for c in gateway_cookies
        }
        account = me(stack, browser)
        assert account.status_code == 200, account.text
        assert account.json()["id"] == sso_accounts["dr.sso"]
        assert account.json()["roles"] == ["clinician"]
        found = browser.get(f"{stack.gateway_url}/patients", params={"family": f"Nobody{stack.run_id}"})
        assert found.status_code == 200, found.text
        # Every answer of the gateway (headers, bodies, cookies it set): its own tokens, none of Keycloak's.
        gateway_text = "".join(seen) + "".join(f"{c.value};" for c in gateway_cookies)
    issuers = jwt_issuers(gateway_text)
    assert issuers  # the gateway's own access token is there
    assert not any("/realms/" in issuer for issuer in issuers), issuers
    rows = audit(stack, admin_headers, "auth.sso_login")
    assert any(row["actor_user_id"] == sso_accounts["dr.sso"] and row["outcome"] == "success" for row in rows)


def test_local_and_sso_accounts_side_by_side(stack: Stack, sso_accounts: dict[str, str]) -> None:
    with browser_client() as browser:
        assert sso_error(sign_in(stack, browser, "dr.sso")) is None
        assert me(stack, browser).status_code == 200
    local = httpx.post(
        f"{stack.gateway_url}/auth/token",
        data={"username": ADMIN_USER, "password": ADMIN_PASSWORD},
        timeout=30,
    )
    assert local.status_code == 200
    # The SSO-only account has no local password at all.
    refused = httpx.post(
        f"{stack.gateway_url}/auth/token",
        data={"username": f"dr.sso.{stack.run_id}", "password": PASSWORDS["dr.sso"]},
        timeout=30,
    )
    assert refused.status_code == 401
    assert refused.json()["code"] == "invalid_credentials"


# --- the state -----------------------------------------------------------------------------------------


def test_forged_replayed_and_expired_state(
    stack: Stack, sso_accounts: dict[str, str], admin_headers: dict[str, str]
) -> None:
    with browser_client() as browser:
        start = browser.get(f"{stack.gateway_url}/auth/sso/hospital/login")
        back = idp_login(browser, start.headers["location"], "dr.sso", PASSWORDS["dr.sso"])
        callback = back.headers["location"]
        query = parse_qs(urlsplit(callback).query)
        forged = browser.get(
            f"{stack.gateway_url}/auth/sso/hospital/callback",
            params={
                "state": "forged-" + query["state"][0][:20],
                "code": query["code"][0],
                "iss": query["iss"][0],
            },
        )
        assert sso_error(forged) == "invalid_state"
        assert sso_error(browser.get(callback)) is None  # the real one still works
        assert sso_error(browser.get(callback)) == "state_replayed"
        # Expired: a login whose transaction is older than OIDC_LOGIN_TTL_SECONDS.
        start = browser.get(f"{stack.gateway_url}/auth/sso/hospital/login")
        back = idp_login(browser, start.headers["location"], "dr.sso", PASSWORDS["dr.sso"])
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE oidc_login SET expires_at = now() - interval '1 second' WHERE used_at IS NULL"
            )
        assert sso_error(browser.get(back.headers["location"])) == "state_expired"
    reasons = {row["reason"] for row in audit(stack, admin_headers, "auth.sso_login_failed")}
    assert {"invalid_state", "state_replayed", "state_expired"} <= reasons


def test_a_callback_for_another_browser_is_refused(stack: Stack, sso_accounts: dict[str, str]) -> None:
    with browser_client() as attacker, browser_client() as victim:
        start = attacker.get(f"{stack.gateway_url}/auth/sso/hospital/login")
        back = idp_login(attacker, start.headers["location"], "dr.sso", PASSWORDS["dr.sso"])
        assert sso_error(victim.get(back.headers["location"])) == "browser_mismatch"
        assert me(stack, victim).status_code == 401


def test_wrong_issuer_and_an_injected_code(stack: Stack, sso_accounts: dict[str, str]) -> None:
    with browser_client() as browser, browser_client() as attacker:
        start = browser.get(f"{stack.gateway_url}/auth/sso/hospital/login")
        back = idp_login(browser, start.headers["location"], "dr.sso", PASSWORDS["dr.sso"])
        query = {k: v[0] for k, v in parse_qs(urlsplit(back.headers["location"]).query).items()}
        # The iss parameter (RFC 9207, which Keycloak sends) naming the other realm: a mix-up.
        mixed = query | {"iss": query["iss"].replace("/realms/hospital", "/realms/clinic")}
        assert sso_error(browser.get(f"{stack.gateway_url}/auth/sso/hospital/callback", params=mixed)) == (
            "issuer_mismatch"
        )
        # A code the attacker got for their own login, injected into the victim's login: PKCE (and the
        # nonce behind it) refuse it; Keycloak answers invalid_grant.
        start = browser.get(f"{stack.gateway_url}/auth/sso/hospital/login")
        victim_state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
        own = attacker.get(f"{stack.gateway_url}/auth/sso/hospital/login")
        stolen = idp_login(attacker, own.headers["location"], "dr.second", PASSWORDS["dr.second"])
        code = parse_qs(urlsplit(stolen.headers["location"]).query)["code"][0]
        injected = browser.get(
            f"{stack.gateway_url}/auth/sso/hospital/callback",
            params={"state": victim_state, "code": code, "iss": query["iss"]},
        )
        assert sso_error(injected) == "code_rejected"
        assert me(stack, browser).status_code == 401


def test_wrong_audience(stack: Stack, sso_accounts: dict[str, str], keycloak: KeycloakAdmin) -> None:
    """An ID token whose aud is another client (a misconfigured audience mapper at the IdP)."""
    mapper = keycloak.add_audience_override("hospital", "gateway", "other-service")
    try:
        with browser_client() as browser:
            assert sso_error(sign_in(stack, browser, "dr.sso")) == "wrong_audience"
            assert me(stack, browser).status_code == 401
    finally:
        keycloak.remove_protocol_mapper("hospital", "gateway", mapper)


# --- accounts and roles -------------------------------------------------------------------------------


def test_roles_follow_keycloak_at_every_login_and_none_is_denied(
    stack: Stack, sso_accounts: dict[str, str], keycloak: KeycloakAdmin, admin_headers: dict[str, str]
) -> None:
    try:
        keycloak.set_realm_roles("hospital", "dr.second", ["gateway-clinician", "gateway-admin"])
        with browser_client() as browser:
            sign_in(stack, browser, "dr.second")
            assert me(stack, browser).json()["roles"] == ["admin", "clinician"]
        keycloak.set_realm_roles("hospital", "dr.second", ["other-app-user"])
        with browser_client() as browser:
            assert sso_error(sign_in(stack, browser, "dr.second")) == "no_roles"
            assert me(stack, browser).status_code == 401
    finally:
        keycloak.set_realm_roles("hospital", "dr.second", ["gateway-clinician"])
    with browser_client() as browser:
        assert sso_error(sign_in(stack, browser, "nurse.noroles")) == "no_roles"
    rows = audit(stack, admin_headers, "auth.sso_login_failed")
    assert any(row["reason"] == "no_roles" and row["outcome"] == "denied" for row in rows)


def test_a_disabled_account_is_refused(
    stack: Stack, sso_accounts: dict[str, str], admin_headers: dict[str, str]
) -> None:
    user_id = sso_accounts["admin.sso"]
    with httpx.Client(base_url=stack.gateway_url, headers=admin_headers, timeout=30) as admin:
        assert admin.post(f"/admin/users/{user_id}/disable").status_code == 200
        try:
            with browser_client() as browser:
                assert sso_error(sign_in(stack, browser, "admin.sso")) == "account_disabled"
        finally:
            assert admin.post(f"/admin/users/{user_id}/enable").status_code == 200


def test_unknown_users_refused_where_jit_is_off_and_created_where_it_is_on(
    stack: Stack, keycloak: KeycloakAdmin, admin_headers: dict[str, str]
) -> None:
    username = f"walk.in.{stack.run_id}"
    keycloak.create_user("hospital", username, "Sso-Walkin-1", ["gateway-clinician"])
    PASSWORDS[username] = "Sso-Walkin-1"
    with browser_client() as browser:
        assert sso_error(sign_in(stack, browser, username)) == "account_not_linked"
    with browser_client() as browser:
        assert sso_error(sign_in(stack, browser, "gp.jit", provider="clinic")) is None
        account = me(stack, browser).json()
        assert account["roles"] == ["clinician"]
        assert account["sso_only"] is True
        assert account["username"].startswith("clinic.gp.jit")
    rows = audit(stack, admin_headers, "auth.sso_login_failed")
    assert any(row["reason"] == "account_not_linked" for row in rows)


# --- keys -------------------------------------------------------------------------------------------------


def test_key_rotation_fails_no_login(
    stack: Stack, sso_accounts: dict[str, str], keycloak: KeycloakAdmin
) -> None:
    before = keycloak.active_kids("hospital")
    with browser_client() as browser:
        assert sso_error(sign_in(stack, browser, "dr.sso")) is None  # the gateway holds the current keys
    # A new key with the highest priority: Keycloak signs with it from now on. The gateway has not seen it.
    old = [p for p in keycloak.key_providers("hospital") if p["providerId"] == "rsa-generated"]
    top = max(int(p["config"].get("priority", ["0"])[0]) for p in old)
    new_kid = keycloak.add_rsa_key("hospital", f"rotated-{stack.run_id}", priority=top + 100)
    assert keycloak.active_kids("hospital")["RS256"] == new_kid != before["RS256"]
    with browser_client() as browser:
        assert sso_error(sign_in(stack, browser, "dr.sso")) is None
    # The old keys withdrawn: only the new one is published.
    for provider in old:
        keycloak.remove_key_provider("hospital", provider["id"])
    with browser_client() as browser:
        assert sso_error(sign_in(stack, browser, "dr.sso")) is None
        assert me(stack, browser).status_code == 200


# --- logout -----------------------------------------------------------------------------------------------


def test_rp_initiated_logout(stack: Stack, sso_accounts: dict[str, str], keycloak: KeycloakAdmin) -> None:
    with browser_client() as browser:
        sign_in(stack, browser, "dr.sso")
        assert keycloak.sessions("hospital", "dr.sso")
        response = browser.post(
            f"{stack.gateway_url}/auth/sso/logout", headers={"X-CSRF-Token": csrf(browser)}
        )
        assert response.status_code == 200, response.text
        link = response.json()["end_session_url"]
        assert link.startswith(f"{stack.gateway_url}/auth/sso/logout/continue?")
        assert not jwt_issuers(response.text)  # no token at all for the page
        assert me(stack, browser).status_code == 401
        onward = browser.get(link)  # the navigation: a redirect, which no page script reads
        assert onward.status_code == 303
        url = onward.headers["location"]
        assert url.startswith(f"{keycloak.base_url}/realms/hospital/protocol/openid-connect/logout?")
        assert "id_token_hint=" in url
        # Keycloak ends its own session (no confirmation page: the hint names it) and sends the browser back.
        answer = browser.get(url)
        assert answer.status_code in {302, 303}, answer.text[:500]
        assert answer.headers["location"] == f"{stack.gateway_url}/"
        # The next sign-in asks for the password again (no SSO session left at Keycloak).
        start = browser.get(f"{stack.gateway_url}/auth/sso/hospital/login")
        page = browser.get(start.headers["location"])
        assert page.status_code == 200
        assert "kc-form-login" in page.text


def test_back_channel_logout_ends_the_gateway_session(
    stack: Stack, sso_accounts: dict[str, str], keycloak: KeycloakAdmin, admin_headers: dict[str, str]
) -> None:
    # (Again here: another suite against the same Keycloak, the browser suite, registers its own gateway.)
    keycloak.set_client_attributes(
        "hospital",
        "gateway",
        {"backchannel.logout.url": f"{stack.gateway_url}/auth/sso/hospital/backchannel-logout"},
    )
    with browser_client() as browser:
        sign_in(stack, browser, "dr.sso")
        assert me(stack, browser).status_code == 200
        keycloak.logout_user("hospital", "dr.sso")  # an IdP administrator ends the user's sessions
        took = wait_until_signed_out(stack, browser)
    assert took < REVOCATION_WAIT
    rows = audit(stack, admin_headers, "auth.sso_backchannel_logout")
    assert any(row["outcome"] == "success" and row["actor_user_id"] == sso_accounts["dr.sso"] for row in rows)


def test_admin_end_sessions_ends_an_sso_session(
    stack: Stack, sso_accounts: dict[str, str], admin_headers: dict[str, str]
) -> None:
    with browser_client() as browser:
        sign_in(stack, browser, "dr.sso")
        assert me(stack, browser).status_code == 200
        ended = httpx.delete(
            f"{stack.gateway_url}/admin/users/{sso_accounts['dr.sso']}/sessions",
            headers=admin_headers,
            timeout=30,
        )
        assert ended.status_code == 200, ended.text
        assert ended.json()["sessions_ended"] >= 1
        wait_until_signed_out(stack, browser)


def test_nothing_of_keycloaks_answers_reaches_the_gateway_log(
    stack: Stack, sso_accounts: dict[str, str]
) -> None:
    """Runs last: the client secrets, Keycloak's tokens and the users' passwords never appear in the log."""
    log = stack.log_path.read_text(errors="replace")
    assert "sso: hospital key set loaded" in log  # the log does hold the SSO activity
    for secret in ("gateway-e2e-secret", "clinic-e2e-secret", *PASSWORDS.values()):
        assert secret not in log
    assert not any("/realms/" in issuer for issuer in jwt_issuers(log))
