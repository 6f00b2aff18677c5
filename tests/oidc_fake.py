"""A fake OpenID Connect provider for unit and API tests: real keys, real signatures, respx routes.

Shaped like Keycloak 26 (the provider the e2e suite runs for real): its discovery fields, ``realm_access``
roles, ``sid`` in the ID token, ``iss`` in the authorization response, and logout tokens with
``typ: logout+jwt``. Tokens are signed with joserfc; the token endpoint checks the client's secret, the
redirect URI and the PKCE verifier against the challenge of the authorization request, as a provider does.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import respx
from joserfc import jwt
from joserfc.jwk import RSAKey

ISSUER = "https://idp.test/realms/hospital"
CLIENT_ID = "gateway"
CLIENT_SECRET = "idp-client-secret-for-tests"
LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"


def provider_config(**overrides: Any) -> dict[str, Any]:
    """One ``OIDC_PROVIDERS`` entry for the fake provider."""
    config: dict[str, Any] = {
        "id": "hospital",
        "display_name": "Hospital login",
        "issuer": ISSUER,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "role_map": {"gateway-clinician": ["clinician"], "gateway-admin": ["admin"]},
    }
    config.update(overrides)
    return config


@dataclass
class AuthRequest:
    """What the gateway put in the authorization URL."""

    state: str
    nonce: str
    code_challenge: str
    redirect_uri: str
    params: dict[str, str]


@dataclass
class FakeIdp:
    """Keys, routes and token minting of the fake provider."""

    router: respx.MockRouter
    issuer: str = ISSUER
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "key-1"}))
    published: list[RSAKey] = field(default_factory=list)
    codes: dict[str, tuple[AuthRequest, dict[str, Any]]] = field(default_factory=dict)
    token_calls: int = 0
    #: What UserInfo answers: the claims of the last code redeemed, with these on top.
    userinfo_overrides: dict[str, Any] = field(default_factory=dict)
    last_claims: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.published = [self.key]
        base = self.issuer
        self.discovery = self.router.get(f"{base}/.well-known/openid-configuration").mock(
            side_effect=lambda request: httpx.Response(200, json=self.metadata())
        )
        self.jwks = self.router.get(f"{base}/protocol/openid-connect/certs").mock(
            side_effect=lambda request: httpx.Response(
                200, json={"keys": [k.as_dict(private=False, use="sig", alg="RS256") for k in self.published]}
            )
        )
        self.token = self.router.post(f"{base}/protocol/openid-connect/token").mock(side_effect=self._token)
        self.userinfo = self.router.get(f"{base}/protocol/openid-connect/userinfo").mock(
            side_effect=self._userinfo
        )

    def metadata(self) -> dict[str, Any]:
        base = self.issuer
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/protocol/openid-connect/auth",
            "token_endpoint": f"{base}/protocol/openid-connect/token",
            "jwks_uri": f"{base}/protocol/openid-connect/certs",
            "userinfo_endpoint": f"{base}/protocol/openid-connect/userinfo",
            "end_session_endpoint": f"{base}/protocol/openid-connect/logout",
            "authorization_response_iss_parameter_supported": True,
            "backchannel_logout_supported": True,
            "backchannel_logout_session_supported": True,
            "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256"],
            "code_challenge_methods_supported": ["plain", "S256"],
        }

    # --- the user at the provider ------------------------------------------------------------------
    @staticmethod
    def parse_authorize(url: str) -> AuthRequest:
        """The gateway's authorization request, from the Location it redirected the browser to."""
        params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        return AuthRequest(
            params["state"], params["nonce"], params["code_challenge"], params["redirect_uri"], params
        )

    def approve(self, authorize_url: str, claims: dict[str, Any]) -> dict[str, str]:
        """The user signed in at the provider: the query the provider sends back to the callback."""
        request = self.parse_authorize(authorize_url)
        code = secrets.token_urlsafe(24)
        self.codes[code] = (request, claims)
        return {"state": request.state, "code": code, "iss": self.issuer, "session_state": "x"}

    def id_token(self, request: AuthRequest | None, claims: dict[str, Any], **header: Any) -> str:
        """A signed ID token for ``claims`` (defaults shaped like Keycloak's)."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "azp": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "auth_time": now,
            "typ": "ID",
            "sid": "kc-session-1",
            "acr": "1",
        }
        if request is not None:
            payload["nonce"] = request.nonce
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode({"alg": "RS256", "kid": self.key.kid, **header}, payload, self.key)

    def logout_token(self, claims: dict[str, Any], **header: Any) -> str:
        """A signed back-channel logout token (defaults shaped like Keycloak's)."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "jti": secrets.token_hex(16),
            "events": {LOGOUT_EVENT: {}},
            "sid": "kc-session-1",
            "sub": "kc-user-1",
            "typ": "Logout",
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(
            {"alg": "RS256", "kid": self.key.kid, "typ": "logout+jwt", **header}, payload, self.key
        )

    def rotate(self, *, keep_old: bool) -> None:
        """Sign with a new key from now on (published beside the old one, or instead of it)."""
        new = RSAKey.generate_key(2048, parameters={"kid": f"key-{len(self.published) + 1}"})
        self.published = [*self.published, new] if keep_old else [new]
        self.key = new

    # --- endpoints ---------------------------------------------------------------------------------
    def _token(self, request: httpx.Request) -> httpx.Response:
        self.token_calls += 1
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("authorization") != f"Basic {expected}":
            return httpx.Response(401, json={"error": "unauthorized_client"})
        entry = self.codes.pop(form.get("code", ""), None)
        if entry is None or form.get("grant_type") != "authorization_code":
            return httpx.Response(400, json={"error": "invalid_grant", "error_description": "Code not valid"})
        auth_request, claims = entry
        self.last_claims = claims
        challenge = base64.urlsafe_b64encode(hashlib.sha256(form.get("code_verifier", "").encode()).digest())
        if challenge.rstrip(b"=").decode() != auth_request.code_challenge:
            return httpx.Response(
                400, json={"error": "invalid_grant", "error_description": "PKCE verification failed"}
            )
        if form.get("redirect_uri") != auth_request.redirect_uri:
            return httpx.Response(
                400, json={"error": "invalid_grant", "error_description": "Incorrect redirect_uri"}
            )
        token = self.id_token(auth_request, claims)
        return httpx.Response(
            200,
            json={
                "access_token": "idp-access-" + secrets.token_hex(8),
                "expires_in": 300,
                "refresh_expires_in": 1800,
                "refresh_token": "idp-refresh-" + secrets.token_hex(8),
                "token_type": "Bearer",
                "id_token": token,
                "not-before-policy": 0,
                "session_state": "kc-session-1",
                "scope": "openid profile email",
            },
        )

    def _userinfo(self, request: httpx.Request) -> httpx.Response:
        if not request.headers.get("authorization", "").startswith("Bearer idp-access-"):
            return httpx.Response(401)
        return httpx.Response(200, json={**self.last_claims, **self.userinfo_overrides})
