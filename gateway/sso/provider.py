"""Talking to one identity provider: discovery, the key set, the code exchange and UserInfo.

One :class:`ProviderClient` per configured provider, all sharing the process's one ``httpx.AsyncClient``
for identity providers (created in the lifespan; bounded timeouts; redirects never followed). Every URL
comes from configuration or from the provider's own discovery document, whose ``issuer`` must equal the
configured one exactly; nothing a browser sends picks a URL.

The key set is cached for :data:`JWKS_TTL_SECONDS`. A token naming an unknown ``kid`` triggers a refetch
(single flight), so a key rotation at the provider needs no restart and fails no login; a refetch that
does not find the key blocks further ones for :data:`JWKS_REFETCH_MIN_SECONDS`, so a flood of forged ``kid``
values cannot make the gateway hammer the provider.

Client authentication at the token endpoint is Authlib's (``client_secret_basic``, ``client_secret_post``
or ``private_key_jwt`` as an httpx ``Auth``); PKCE's S256 challenge is Authlib's too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.sso.config import ClientAuthMethod, OidcProvider
from gateway.sso.tokens import TokenRejected, UnknownKey, validate_id_token, validate_logout_token

logger = logging.getLogger("gateway.sso")

METADATA_TTL_SECONDS = 3600.0
JWKS_TTL_SECONDS = 300.0
JWKS_REFETCH_MIN_SECONDS = 30.0
#: Bounds of every call to an identity provider.
IDP_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
MAX_DOCUMENT_BYTES = 262_144


class IdpUnavailable(Exception):
    """The provider could not be reached, timed out or answered badly (the login cannot go on)."""


class ProviderMetadata(BaseModel):
    """The parts of the discovery document (OpenID Connect Discovery 1.0) the gateway uses."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None = None
    end_session_endpoint: str | None = None
    authorization_response_iss_parameter_supported: bool = False
    backchannel_logout_supported: bool = False


def create_idp_http_client() -> httpx.AsyncClient:
    """The process's one HTTP client towards identity providers (closed by the lifespan)."""
    return httpx.AsyncClient(
        timeout=IDP_TIMEOUT,
        follow_redirects=False,
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=5),
        headers={"Accept": "application/json"},
    )


class ProviderClient:
    """Discovery, keys, code exchange and UserInfo of one provider (cached, safe under concurrency)."""

    def __init__(self, provider: OidcProvider, http: httpx.AsyncClient) -> None:
        self.provider = provider
        self._http = http
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None
        self._keys_at = 0.0
        self._fruitless_at = -JWKS_REFETCH_MIN_SECONDS
        self._lock = asyncio.Lock()

    # --- documents ------------------------------------------------------------------------------
    async def _get_json(self, url: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.get(url, **kwargs)
        except httpx.HTTPError as exc:
            raise IdpUnavailable(f"{type(exc).__name__} from {self.provider.id}") from None
        if response.status_code != 200 or len(response.content) > MAX_DOCUMENT_BYTES:
            raise IdpUnavailable(f"{self.provider.id} answered {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise IdpUnavailable(f"{self.provider.id} answered with no JSON") from None

    def _check_url(self, url: str) -> None:
        parts = urlsplit(url)
        loopback = parts.hostname in {"127.0.0.1", "localhost", "::1"}
        if parts.scheme != "https" and not (loopback or self.provider.allow_insecure_http):
            raise IdpUnavailable(f"{self.provider.id}: discovery names a non-https endpoint")

    async def metadata(self) -> ProviderMetadata:
        """The discovery document (cached for an hour).

        Raises:
            IdpUnavailable: unreachable, or a document that is not the configured issuer's.
        """
        if self._metadata is not None and time.monotonic() - self._metadata_at < METADATA_TTL_SECONDS:
            return self._metadata
        url = self.provider.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._get_json(url)
        try:
            metadata = ProviderMetadata.model_validate(document)
        except ValidationError:
            raise IdpUnavailable(f"{self.provider.id}: discovery document lacks required fields") from None
        if metadata.issuer != self.provider.issuer:  # Discovery 1.0, 4.3: exact match
            raise IdpUnavailable(f"{self.provider.id}: discovery issuer differs from the configured one")
        for endpoint in (metadata.authorization_endpoint, metadata.token_endpoint, metadata.jwks_uri):
            self._check_url(endpoint)
        self._metadata, self._metadata_at = metadata, time.monotonic()
        return metadata

    async def keys(self, *, missing_kid: str | None = None) -> KeySet:
        """The provider's signing keys, cached for :data:`JWKS_TTL_SECONDS`.

        ``missing_kid``: a token names this key and the cached set lacks it. The set is fetched again
        unless another fetch found it meanwhile, or a fetch for a missing key came back without it less
        than :data:`JWKS_REFETCH_MIN_SECONDS` ago (so forged ``kid`` values cost one fetch per interval).
        """
        async with self._lock:  # single flight: concurrent logins after a rotation fetch once
            now = time.monotonic()
            cached = self._keys
            if cached is not None and now - self._keys_at < JWKS_TTL_SECONDS:
                if missing_kid is None or missing_kid in {key.kid for key in cached}:
                    return cached
                if now - self._fruitless_at < JWKS_REFETCH_MIN_SECONDS:
                    return cached
            metadata = await self.metadata()
            document = await self._get_json(metadata.jwks_uri)
            try:
                keys = KeySet.import_key_set(document)
            except (JoseError, KeyError, TypeError, ValueError):
                raise IdpUnavailable(f"{self.provider.id}: the key set cannot be read") from None
            self._keys, self._keys_at = keys, time.monotonic()
            if missing_kid is not None and missing_kid not in {key.kid for key in keys}:
                self._fruitless_at = self._keys_at
            logger.info("sso: %s key set loaded (%d keys)", self.provider.id, len(keys.keys))
            return keys

    # --- tokens ---------------------------------------------------------------------------------
    async def validate_id_token(self, token: str, *, nonce: str) -> dict[str, Any]:
        """The ID token's claims (see :func:`gateway.sso.tokens.validate_id_token`); refetches keys once."""
        try:
            return validate_id_token(
                token, await self.keys(), provider=self.provider, nonce=nonce, now=int(time.time())
            )
        except UnknownKey as unknown:
            keys = await self.keys(missing_kid=unknown.kid)
        return validate_id_token(token, keys, provider=self.provider, nonce=nonce, now=int(time.time()))

    async def validate_logout_token(self, token: str) -> dict[str, Any]:
        """A back-channel logout token's claims; refetches keys once for an unknown ``kid``."""
        try:
            return validate_logout_token(
                token, await self.keys(), provider=self.provider, now=int(time.time())
            )
        except UnknownKey as unknown:
            keys = await self.keys(missing_kid=unknown.kid)
        return validate_logout_token(token, keys, provider=self.provider, now=int(time.time()))

    # --- the authorization-code flow ------------------------------------------------------------
    async def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, code_verifier: str
    ) -> str:
        """Where to send the browser: the authorization endpoint with PKCE (S256), state and nonce."""
        metadata = await self.metadata()
        params = {
            "response_type": "code",
            "client_id": self.provider.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.provider.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": create_s256_code_challenge(code_verifier),
            "code_challenge_method": "S256",
        }
        if self.provider.required_acr:
            params["acr_values"] = " ".join(self.provider.required_acr)
        separator = "&" if urlsplit(metadata.authorization_endpoint).query else "?"
        return metadata.authorization_endpoint + separator + urlencode(params)

    def _client_auth(self, token_endpoint: str) -> ClientAuth:
        provider = self.provider
        if provider.token_auth_method is ClientAuthMethod.private_key_jwt:
            method = PrivateKeyJWT(
                token_endpoint,
                headers={"kid": provider.private_key_kid} if provider.private_key_kid else None,
            )
            return ClientAuth(provider.client_id, provider.private_key_pem(), method)
        secret = provider.client_secret.get_secret_value() if provider.client_secret else ""
        return ClientAuth(provider.client_id, secret, provider.token_auth_method.value)

    async def exchange_code(self, *, code: str, code_verifier: str, redirect_uri: str) -> dict[str, Any]:
        """Redeem the authorization code at the token endpoint (never retried: a code is single use).

        Raises:
            TokenRejected: ``code_rejected`` — the provider refused the code (expired, reused, wrong client).
            IdpUnavailable: unreachable, timed out, or not a token response.
        """
        metadata = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        # Authlib adds the client's credentials (Basic header, form fields or a signed assertion).
        url, headers, body = self._client_auth(metadata.token_endpoint).prepare(
            "POST",
            metadata.token_endpoint,
            {"Content-Type": "application/x-www-form-urlencoded"},
            urlencode(form),
        )
        try:
            response = await self._http.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise IdpUnavailable(
                f"{type(exc).__name__} at the token endpoint of {self.provider.id}"
            ) from None
        if 400 <= response.status_code < 500:
            error = _oauth_error(response)
            raise TokenRejected("code_rejected", error)
        if response.status_code != 200:
            raise IdpUnavailable(f"{self.provider.id} token endpoint answered {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise IdpUnavailable(f"{self.provider.id} token endpoint answered with no JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("id_token"), str):
            raise TokenRejected("missing_claim", "the token response has no id_token")
        return body

    async def userinfo(self, access_token: str, *, subject: str) -> dict[str, Any]:
        """The UserInfo claims, whose ``sub`` must be the ID token's (Core 1.0, 5.3.4); ``{}`` if none."""
        metadata = await self.metadata()
        if not self.provider.use_userinfo or not metadata.userinfo_endpoint:
            return {}
        self._check_url(metadata.userinfo_endpoint)
        document = await self._get_json(
            metadata.userinfo_endpoint, headers={"Authorization": f"Bearer {access_token}"}
        )
        if not isinstance(document, dict) or document.get("sub") != subject:
            raise TokenRejected("userinfo_mismatch", "UserInfo is about another subject")
        return document


def _oauth_error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    error = body.get("error") if isinstance(body, dict) else None
    return str(error)[:64] if error else f"HTTP {response.status_code}"
