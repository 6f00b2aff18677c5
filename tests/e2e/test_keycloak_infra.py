"""The Keycloak of the e2e stack as the SSO tests rely on it, without the gateway.

Needs only ``E2E_KEYCLOAK_URL``, ``E2E_KEYCLOAK_ADMIN_USER`` and ``E2E_KEYCLOAK_ADMIN_PASSWORD``
(``eval "$(E2E_SERVICES=keycloak bash tests/e2e/infra/up.sh)"``). Proves the realm files
(``tests/e2e/infra/keycloak/``): discovery, the authorization code flow with PKCE and the claims of its ID
token, the roles, the second realm, a client whose tokens are for another audience; and the helpers of
``tests/e2e/keycloak.py``: the cookie jar, the sign-in, and the admin calls (back-channel logout URL, a
server-side logout and its logout token, users and roles, a key rotation, a wrong ``aud``). Whatever a test
changes in Keycloak it undoes, since the suites share one Keycloak.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from tests.e2e.keycloak import KeycloakAdmin, browser_client, idp_login

REDIRECT_URI = "http://127.0.0.1:9/callback"  # never contacted: idp_login stops at the redirect
SECRETS = {"hospital": "gateway-e2e-secret", "clinic": "clinic-e2e-secret"}
GATEWAY_ROLES = {"gateway-clinician", "gateway-admin"}
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"


@pytest.fixture(scope="module")
def kc_url() -> str:
    """Keycloak's base URL."""
    return os.environ["E2E_KEYCLOAK_URL"].rstrip("/")


@pytest.fixture(scope="module")
def admin() -> Iterator[KeycloakAdmin]:
    """The admin API client."""
    with KeycloakAdmin() as client:
        yield client


def claims(jwt: str) -> dict[str, Any]:
    """A JWT's payload, not verified (the tests only look at what Keycloak put in it)."""
    payload = jwt.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


def sign_in(
    kc_url: str, client: httpx.Client, realm: str, username: str, password: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The authorization code flow with PKCE for client ``gateway``, as the gateway will run it.

    Returns:
        The token response and the claims of its ID token, after checking ``state``, ``iss``, ``nonce``.
    """
    issuer = f"{kc_url}/realms/{realm}"
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    authorize = f"{issuer}/protocol/openid-connect/auth?" + urlencode(
        {
            "response_type": "code",
            "client_id": "gateway",
            "redirect_uri": REDIRECT_URI,
            "scope": "openid",
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    response = idp_login(client, authorize, username, password)
    location = response.headers["location"]
    assert location.startswith(REDIRECT_URI + "?"), location
    params = {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}
    assert params["state"] == state
    assert params["iss"] == issuer  # RFC 9207
    token = httpx.post(
        f"{issuer}/protocol/openid-connect/token",
        data={
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        },
        auth=("gateway", SECRETS[realm]),
        timeout=30.0,
    )
    assert token.status_code == 200, token.text
    tokens: dict[str, Any] = token.json()
    id_claims = claims(tokens["id_token"])
    assert id_claims["iss"] == issuer
    assert id_claims["nonce"] == nonce
    return tokens, id_claims


@pytest.mark.parametrize("realm", ["hospital", "clinic"])
def test_discovery_documents(kc_url: str, realm: str) -> None:
    """Both realms publish what the gateway's relying party needs."""
    response = httpx.get(f"{kc_url}/realms/{realm}/.well-known/openid-configuration", timeout=30.0)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["issuer"] == f"{kc_url}/realms/{realm}"
    assert "S256" in doc["code_challenge_methods_supported"]
    assert "client_secret_basic" in doc["token_endpoint_auth_methods_supported"]
    assert doc["backchannel_logout_supported"] is True
    assert doc["backchannel_logout_session_supported"] is True
    assert doc["end_session_endpoint"] == f"{kc_url}/realms/{realm}/protocol/openid-connect/logout"
    assert doc["authorization_response_iss_parameter_supported"] is True
    jwks = httpx.get(doc["jwks_uri"], timeout=30.0).json()
    assert any(key["alg"] == "RS256" and key["use"] == "sig" for key in jwks["keys"])


def test_code_flow_with_pkce(kc_url: str) -> None:
    """dr.sso signs in: the ID token is for ``gateway``, carries the nonce, ``sid`` and the realm roles."""
    with browser_client() as client:
        tokens, id_claims = sign_in(kc_url, client, "hospital", "dr.sso", "Sso-Clinician-1")
        assert id_claims["aud"] == "gateway"
        assert id_claims["azp"] == "gateway"
        assert id_claims["sid"]
        assert id_claims["preferred_username"] == "dr.sso"
        assert id_claims["email"] == "dr.sso@hospital.example"
        assert "gateway-clinician" in id_claims["realm_access"]["roles"]
        assert "gateway-clinician" in claims(tokens["access_token"])["realm_access"]["roles"]
        userinfo = httpx.get(
            f"{kc_url}/realms/hospital/protocol/openid-connect/userinfo",
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
            timeout=30.0,
        ).json()
        assert userinfo["sub"] == id_claims["sub"]
        assert "gateway-clinician" in userinfo["realm_access"]["roles"]

        # The browser keeps Keycloak's (Secure) cookies: a second authorization request signs in at once,
        # in the same SSO session, without a login form (the password is not used).
        _, again = sign_in(kc_url, client, "hospital", "dr.sso", "not-asked-for")
        assert again["sid"] == id_claims["sid"]
        assert again["sub"] == id_claims["sub"]


def test_user_without_gateway_roles(kc_url: str) -> None:
    """nurse.noroles signs in fine, with only the other application's role."""
    with browser_client() as client:
        _, id_claims = sign_in(kc_url, client, "hospital", "nurse.noroles", "Sso-Noroles-1")
    roles = set(id_claims["realm_access"]["roles"])
    assert "other-app-user" in roles
    assert not roles & GATEWAY_ROLES


def test_clinic_realm(kc_url: str) -> None:
    """The second realm: its own issuer and secret, the same client id and roles."""
    with browser_client() as client:
        _, id_claims = sign_in(kc_url, client, "clinic", "gp.jit", "Sso-Jit-1")
    assert id_claims["iss"] == f"{kc_url}/realms/clinic"
    assert id_claims["aud"] == "gateway"
    assert "gateway-clinician" in id_claims["realm_access"]["roles"]


def test_wrong_password_is_reported(kc_url: str) -> None:
    """idp_login fails with the login page's own message."""
    with browser_client() as client, pytest.raises(AssertionError, match="Invalid username or password"):
        sign_in(kc_url, client, "hospital", "dr.sso", "not-the-password")


def test_other_service_tokens_are_for_another_audience(kc_url: str) -> None:
    """other-service's client-credentials token: signed by the same realm, but not for ``gateway``."""
    response = httpx.post(
        f"{kc_url}/realms/hospital/protocol/openid-connect/token",
        data={"grant_type": "client_credentials"},
        auth=("other-service", "other-service-secret"),
        timeout=30.0,
    )
    assert response.status_code == 200, response.text
    access = claims(response.json()["access_token"])
    audience = access["aud"] if isinstance(access["aud"], list) else [access["aud"]]
    assert "other-service" in audience
    assert "gateway" not in audience
    assert access["azp"] == "other-service"


def test_audience_override(kc_url: str, admin: KeycloakAdmin) -> None:
    """add_audience_override replaces the ID token's ``aud`` (not ``azp``); removing the mapper undoes it."""
    mapper = admin.add_audience_override("hospital", "gateway", "other-service")
    try:
        with browser_client() as client:
            _, id_claims = sign_in(kc_url, client, "hospital", "dr.sso", "Sso-Clinician-1")
        assert id_claims["aud"] == "other-service"
        assert id_claims["azp"] == "gateway"
    finally:
        admin.remove_protocol_mapper("hospital", "gateway", mapper)
    with browser_client() as client:
        _, id_claims = sign_in(kc_url, client, "hospital", "dr.sso", "Sso-Clinician-1")
    assert id_claims["aud"] == "gateway"


def test_browser_client_keeps_secure_and_host_cookies() -> None:
    """Secure and ``__Host-`` cookies set over http on 127.0.0.1 go back to 127.0.0.1, not elsewhere."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/set":
            keycloak_style = "KEYCLOAK_IDENTITY=xyz;Version=1;Path=/realms/r/;Secure;HttpOnly;SameSite=None"
            return httpx.Response(
                200,
                headers=[
                    ("set-cookie", "__Host-gw_session=abc; Path=/; Secure; HttpOnly; SameSite=Lax"),
                    ("set-cookie", keycloak_style),
                ],
            )
        return httpx.Response(200, json={"cookie": request.headers.get("cookie", "")})

    with browser_client(transport=httpx.MockTransport(handler)) as client:
        client.get("http://127.0.0.1:8000/set")
        assert client.get("http://127.0.0.1:8000/echo").json()["cookie"] == "__Host-gw_session=abc"
        both = client.get("http://127.0.0.1:8001/realms/r/x").json()["cookie"]
        assert sorted(both.split("; ")) == ["KEYCLOAK_IDENTITY=xyz", "__Host-gw_session=abc"]
        # a redirect httpx follows itself carries them too
        assert client.get("http://127.0.0.1:8000/echo", follow_redirects=True).json()["cookie"]
    with browser_client(transport=httpx.MockTransport(handler)) as client:
        client.get("http://192.0.2.1/set")
        assert client.get("http://192.0.2.1/echo").json()["cookie"] == ""


class _LogoutReceiver(BaseHTTPRequestHandler):
    """Collects the back-channel logout requests Keycloak sends."""

    received: queue.Queue[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
        self.received.put({"path": self.path, "content_type": self.headers.get("content-type"), "body": body})
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_backchannel_logout(kc_url: str, admin: KeycloakAdmin) -> None:
    """The admin helper sets the back-channel logout URL; logging a user out sends a logout token there."""
    received: queue.Queue[dict[str, Any]] = queue.Queue()
    handler = type("Receiver", (_LogoutReceiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/auth/oidc/backchannel-logout"
    before = admin.client_attributes("hospital", "gateway").get("backchannel.logout.url", "")
    # Sessions left by earlier runs against a Keycloak kept running would get logout tokens of their own.
    admin.logout_user("hospital", "dr.second")
    try:
        admin.set_client_attributes("hospital", "gateway", {"backchannel.logout.url": url})
        assert admin.client_attributes("hospital", "gateway")["backchannel.logout.url"] == url

        with browser_client() as client:
            _, id_claims = sign_in(kc_url, client, "hospital", "dr.second", "Sso-Second-1")
        sessions = admin.sessions("hospital", "dr.second")
        assert id_claims["sid"] in {session["id"] for session in sessions}
        assert "gateway" in sessions[0]["clients"].values()

        admin.logout_user("hospital", "dr.second")
        request = received.get(timeout=30)
        assert request["path"] == "/auth/oidc/backchannel-logout"
        assert request["content_type"].startswith("application/x-www-form-urlencoded")
        logout_token = parse_qs(request["body"])["logout_token"][0]
        logout = claims(logout_token)
        assert logout["iss"] == f"{kc_url}/realms/hospital"
        assert logout["aud"] == "gateway"
        assert logout["sub"] == id_claims["sub"]
        assert logout["sid"] == id_claims["sid"]  # backchannel.logout.session.required
        assert BACKCHANNEL_EVENT in logout["events"]
        assert "nonce" not in logout
        header = json.loads(base64.urlsafe_b64decode(logout_token.split(".")[0] + "=="))
        assert header["typ"] == "logout+jwt"
        assert admin.sessions("hospital", "dr.second") == []
    finally:
        admin.set_client_attributes("hospital", "gateway", {"backchannel.logout.url": before})
        server.shutdown()
        server.server_close()


def test_signing_key_rotation(kc_url: str, admin: KeycloakAdmin) -> None:
    """A new RSA key of higher priority signs at once and is in the JWKS; removed, it leaves the JWKS."""
    certs = f"{kc_url}/realms/hospital/protocol/openid-connect/certs"
    original = admin.active_kids("hospital")["RS256"]
    name = f"e2e-rotation-{secrets.token_hex(4)}"
    # Above every key provider there is (a suite run against a Keycloak kept running may have added some).
    top = max(int(p["config"].get("priority", ["0"])[0]) for p in admin.key_providers("hospital"))
    kid = admin.add_rsa_key("hospital", name, priority=top + 100)
    try:
        assert kid != original
        assert admin.active_kids("hospital")["RS256"] == kid
        kids = {key["kid"] for key in httpx.get(certs, timeout=30.0).json()["keys"]}
        assert {kid, original} <= kids
        with browser_client() as client:
            tokens, _ = sign_in(kc_url, client, "hospital", "dr.sso", "Sso-Clinician-1")
        header = json.loads(base64.urlsafe_b64decode(tokens["id_token"].split(".")[0] + "=="))
        assert header["kid"] == kid
    finally:
        admin.remove_key_provider("hospital", name)
    assert kid not in {key["kid"] for key in httpx.get(certs, timeout=30.0).json()["keys"]}
    assert admin.active_kids("hospital")["RS256"] == original


def test_users_roles_and_disabling(kc_url: str, admin: KeycloakAdmin) -> None:
    """create_user, set_realm_roles, set_enabled: what they change shows in the next sign-in."""
    username = f"e2e.user.{secrets.token_hex(4)}"
    password = "E2e-" + secrets.token_urlsafe(12)
    user_id = admin.create_user("hospital", username, password, ["gateway-clinician"])
    try:
        assert admin.user_id("hospital", username) == user_id
        assert admin.realm_roles("hospital", username) == ["gateway-clinician"]
        admin.set_realm_roles("hospital", username, ["gateway-admin", "other-app-user"])
        assert admin.realm_roles("hospital", username) == ["gateway-admin", "other-app-user"]
        with pytest.raises(ValueError, match="no-such-role"):
            admin.set_realm_roles("hospital", username, ["no-such-role"])
        with browser_client() as client:
            _, id_claims = sign_in(kc_url, client, "hospital", username, password)
        assert id_claims["sub"] == user_id
        assert set(id_claims["realm_access"]["roles"]) == {"gateway-admin", "other-app-user"}
        admin.logout_user("hospital", username)

        admin.set_enabled("hospital", username, False)
        assert admin.user("hospital", username)["enabled"] is False
        with browser_client() as client, pytest.raises(AssertionError, match=r"(?i)disabled"):
            sign_in(kc_url, client, "hospital", username, password)
        admin.set_enabled("hospital", username, True)
        with browser_client() as client:
            sign_in(kc_url, client, "hospital", username, password)
    finally:
        admin.delete_user("hospital", username)
