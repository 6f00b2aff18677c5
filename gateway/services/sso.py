"""Single sign-on use-cases: start a login, complete the callback, back-channel and RP-initiated logout.

The gateway is the OpenID Connect client (a backend-for-frontend): the authorization-code flow with PKCE,
state and nonce runs here, and the browser only ever receives the gateway's own session cookies. No token
of the identity provider reaches the browser, the logs or HAPI FHIR / EHRbase.

Each step writes in short transactions of its own (the login transaction is spent before the code is
redeemed; the session, the roles and the identity's last login commit together), and every outcome is
audited as ``auth.sso_login`` (success) or ``auth.sso_login_failed`` with a stable reason.
"""

from __future__ import annotations

import base64
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from cryptography.fernet import Fernet, InvalidToken
from sqlmodel import col, select

from auth_db.engine import SessionFactory, transaction
from auth_db.models import AuthSession, OidcLogin, UserIdentity
from auth_db.types import utcnow
from gateway.audit import Actor, AuditLog, Outcome
from gateway.errors import ApiError
from gateway.security import sessions as session_store
from gateway.security.authn import ClientInfo, IssuedTokens, start_gateway_session
from gateway.security.keys import derive_key
from gateway.services.accounts import set_roles
from gateway.services.cursors import SignedCursor
from gateway.services.identities import LinkRefused, resolve_account
from gateway.settings import Settings
from gateway.sso.config import OidcProvider, Provisioning
from gateway.sso.logins import (
    LoginRejected,
    consume_login,
    create_login,
    open_invite,
    remember_logout_token,
)
from gateway.sso.provider import IdpUnavailable, ProviderClient
from gateway.sso.roles import mapped_roles
from gateway.sso.tokens import TokenRejected

logger = logging.getLogger("gateway.sso")

#: How long the link from ``POST /auth/sso/logout`` on to the provider's logout stays valid.
LOGOUT_LINK_TTL_SECONDS = 120


class SsoFailed(Exception):
    """A sign-in that cannot complete; ``code`` is stable (docs/sso.md) and safe to show the browser."""

    def __init__(self, code: str, detail: str = "", *, actor: Actor | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail
        self.actor = actor


@dataclass(frozen=True, slots=True)
class SsoLogin:
    """A completed sign-in: the gateway session and where the browser goes next."""

    issued: IssuedTokens
    return_to: str


@dataclass(frozen=True, slots=True)
class CallbackParams:
    """The query of the provider's redirect back to the gateway."""

    state: str | None
    code: str | None
    iss: str | None
    error: str | None


class SsoService:
    """The gateway's side of OpenID Connect, for every configured provider."""

    def __init__(
        self, settings: Settings, factory: SessionFactory, clients: dict[str, ProviderClient]
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.clients = clients
        self._fernet = Fernet(base64.urlsafe_b64encode(derive_key(settings, "sso-id-token")))
        self._logout_links = SignedCursor(settings, "sso-logout", ttl_seconds=LOGOUT_LINK_TTL_SECONDS)

    def client(self, provider_id: str) -> ProviderClient | None:
        """The client of a configured provider, or ``None``."""
        return self.clients.get(provider_id)

    def redirect_uri(self, provider_id: str) -> str:
        """The callback registered at the provider: one per provider (a mix-up defence of its own)."""
        return f"{self.settings.public_base}/auth/sso/{provider_id}/callback"

    # --- login ----------------------------------------------------------------------------------
    async def start(
        self,
        client: ProviderClient,
        *,
        return_to: str | None,
        link_user_id: uuid.UUID | None = None,
        invite: str | None = None,
    ) -> tuple[str, str]:
        """Open a login transaction; returns the authorization URL and the browser-binding value.

        Raises:
            IdpUnavailable: the provider's discovery document cannot be read.
            SsoFailed: ``invite_invalid`` — the invite is unknown, another provider's, used or expired.
        """
        now = utcnow()
        invite_hash = None
        if invite is not None:
            try:
                invite_hash = await open_invite(
                    self.factory, token=invite, provider_id=client.provider.id, now=now
                )
            except LoginRejected as rejected:
                raise SsoFailed(rejected.reason) from None
        login = await create_login(
            self.factory,
            provider_id=client.provider.id,
            return_to=return_to or "/",
            ttl=timedelta(seconds=self.settings.oidc_login_ttl_seconds),
            now=now,
            link_user_id=link_user_id,
            invite_hash=invite_hash,
        )
        url = await client.authorization_url(
            redirect_uri=self.redirect_uri(client.provider.id),
            state=login.state,
            nonce=login.nonce,
            code_verifier=login.code_verifier,
        )
        return url, login.binding

    async def complete(
        self,
        audit: AuditLog,
        client: ProviderClient,
        params: CallbackParams,
        binding: str | None,
        info: ClientInfo,
    ) -> SsoLogin:
        """Finish a sign-in from the provider's redirect (see the module docstring).

        Raises:
            SsoFailed: with the stable code of the first check that failed (audited here).
        """
        provider = client.provider
        try:
            return await self._complete(client, params, binding, info, audit)
        except SsoFailed as failed:
            await audit.record(
                action="auth.sso_login_failed",
                outcome=Outcome.denied if failed.code in DENIALS else Outcome.failure,
                actor=failed.actor,
                reason=failed.code,
                details={"provider": provider.id, "detail": failed.detail[:200]}
                if failed.detail
                else {"provider": provider.id},
            )
            raise

    async def _complete(
        self,
        client: ProviderClient,
        params: CallbackParams,
        binding: str | None,
        info: ClientInfo,
        audit: AuditLog,
    ) -> SsoLogin:
        provider = client.provider
        now = utcnow()
        try:
            login = await consume_login(
                self.factory, state=params.state or "", binding=binding, provider_id=provider.id, now=now
            )
        except LoginRejected as rejected:
            raise SsoFailed(rejected.reason) from None
        if params.error:
            raise SsoFailed("idp_error", params.error[:64])
        try:
            metadata = await client.metadata()
            if params.iss is not None and params.iss != provider.issuer:
                raise SsoFailed("issuer_mismatch", "the iss parameter names another issuer")
            if params.iss is None and metadata.authorization_response_iss_parameter_supported:
                raise SsoFailed("issuer_mismatch", "the provider sends iss, and this answer lacks it")
            if not params.code:
                raise SsoFailed("invalid_request", "no code")
            tokens = await client.exchange_code(
                code=params.code,
                code_verifier=login.code_verifier,
                redirect_uri=self.redirect_uri(provider.id),
            )
            claims = await client.validate_id_token(tokens["id_token"], nonce=login.nonce)
            access_token = tokens.get("access_token")
            userinfo = (
                await client.userinfo(access_token, subject=claims["sub"])
                if isinstance(access_token, str)
                else {}
            )
        except TokenRejected as rejected:
            raise SsoFailed(rejected.reason, rejected.detail) from None
        except IdpUnavailable as exc:
            logger.warning("sso: %s", exc)
            raise SsoFailed("idp_unavailable") from None
        merged = {**userinfo, **claims}
        issued = await self._sign_in(provider, merged, tokens["id_token"], login, info, now)
        await audit.record(
            action="auth.sso_login",
            outcome=Outcome.success,
            actor=Actor(issued.user_id, issued.username),
            target_type="session",
            target_id=str(issued.session_family),
            details={
                "provider": provider.id,
                "acr": claims.get("acr"),
                "linked": login.link_user_id is not None,
                "invite": login.invite_hash is not None,
            },
        )
        return SsoLogin(issued, login.return_to)

    async def _sign_in(
        self,
        provider: OidcProvider,
        claims: dict[str, Any],
        id_token: str,
        login: OidcLogin,
        info: ClientInfo,
        now: datetime,
    ) -> IssuedTokens:
        issuer, subject = provider.issuer, str(claims["sub"])
        roles = mapped_roles(provider, claims)
        if provider.provisioning is Provisioning.jit:
            roles = roles & frozenset(provider.jit_roles)
        async with transaction(self.factory) as session:
            identity = (
                await session.exec(
                    select(UserIdentity).where(UserIdentity.issuer == issuer, UserIdentity.subject == subject)
                )
            ).first()
            try:
                user = await resolve_account(
                    session,
                    provider,
                    identity,
                    claims,
                    link_user_id=login.link_user_id,
                    invite_hash=login.invite_hash,
                    roles=roles,
                    now=now,
                )
            except LinkRefused as refused:
                raise SsoFailed(refused.code, refused.detail) from None
            actor = Actor(user.id, user.username)
            if not user.is_active:
                raise SsoFailed("account_disabled", actor=actor)
            if not roles:
                raise SsoFailed("no_roles", "the provider's claims map to no gateway role", actor=actor)
            await set_roles(session, user.id, roles)
            user.last_login_at = now
            session.add(user)
            link = session_store.IdpLink(
                issuer=issuer,
                subject=subject,
                sid=claims.get("sid") if isinstance(claims.get("sid"), str) else None,
                id_token_encrypted=self._fernet.encrypt(id_token.encode()).decode(),
                not_after=_not_after(provider, claims, now),
            )
            return await start_gateway_session(self.settings, session, user, info, now, idp=link)

    # --- logout ---------------------------------------------------------------------------------
    async def backchannel_logout(self, audit: AuditLog, client: ProviderClient, logout_token: str) -> int:
        """End every session the provider's logout token names; returns how many ended.

        Raises:
            SsoFailed: ``invalid_logout_token`` (any validation failure, or a replayed ``jti``).
        """
        provider = client.provider
        now = utcnow()
        try:
            claims = await client.validate_logout_token(logout_token)
        except (TokenRejected, IdpUnavailable) as exc:
            reason = exc.reason if isinstance(exc, TokenRejected) else "idp_unavailable"
            await audit.record(
                action="auth.sso_backchannel_logout",
                outcome=Outcome.denied,
                reason=reason,
                details={"provider": provider.id},
            )
            raise SsoFailed("invalid_logout_token", reason) from None
        expires = claims.get("exp")
        keep_until = (
            datetime.fromtimestamp(expires, UTC)
            if isinstance(expires, int | float)
            else now + timedelta(days=1)
        ) + timedelta(seconds=provider.leeway_seconds)
        if not await remember_logout_token(
            self.factory, issuer=provider.issuer, jti=str(claims["jti"]), expires_at=keep_until, now=now
        ):
            await audit.record(
                action="auth.sso_backchannel_logout",
                outcome=Outcome.denied,
                reason="jti_replayed",
                details={"provider": provider.id},
            )
            raise SsoFailed("invalid_logout_token", "jti_replayed")
        sid = claims.get("sid") if isinstance(claims.get("sid"), str) else None
        sub = claims.get("sub") if isinstance(claims.get("sub"), str) else None
        async with transaction(self.factory) as session:
            ended = await session_store.revoke_idp_sessions(
                session, issuer=provider.issuer, sid=sid, subject=sub, reason="idp_logout", now=now
            )
        details = {"provider": provider.id, "sessions_ended": len(ended), "by": "sid" if sid else "sub"}
        if not ended:
            await audit.record(action="auth.sso_backchannel_logout", outcome=Outcome.success, details=details)
        for user_id, family in ended:
            await audit.record(
                action="auth.sso_backchannel_logout",
                outcome=Outcome.success,
                actor=Actor(user_id, None),
                target_type="session",
                target_id=str(family),
                details=details,
            )
        return len(ended)

    async def _sso_session_row(self, session_family: uuid.UUID) -> AuthSession | None:
        async with transaction(self.factory) as session:
            row: AuthSession | None = (
                await session.exec(
                    select(AuthSession)
                    .where(col(AuthSession.family_id) == session_family)
                    .order_by(col(AuthSession.created_at).desc())
                )
            ).first()
        return row if row is not None and row.idp_issuer is not None else None

    async def logout_link(self, session_family: uuid.UUID) -> str | None:
        """The gateway's link that takes the browser on to the provider's logout (RP-Initiated Logout 1.0).

        The link itself holds no token: it names the session family, signed and valid for
        :data:`LOGOUT_LINK_TTL_SECONDS`; :meth:`provider_logout_url` turns it into the provider's URL with
        ``id_token_hint`` as a redirect, which page scripts cannot read. ``None`` when the session was not
        started by SSO.
        """
        if await self._sso_session_row(session_family) is None:
            return None
        handle = self._logout_links.encode({"f": str(session_family)}, bound_to="sso-logout")
        return f"{self.settings.public_base}/auth/sso/logout/continue?{urlencode({'handle': handle})}"

    async def provider_logout_url(self, handle: str) -> str | None:
        """The provider's ``end_session_endpoint`` with ``id_token_hint``, for a link of :meth:`logout_link`.

        Only for a session that has already ended here. ``None`` when the link is not valid (forged,
        expired) or the provider has no logout endpoint: the browser then just goes back to the frontend.
        """
        try:
            family = uuid.UUID(str(self._logout_links.decode(handle, bound_to="sso-logout")["f"]))
        except (ApiError, KeyError, ValueError):
            return None
        row = await self._sso_session_row(family)
        if row is None or row.revoked_at is None:
            return None
        client = next((c for c in self.clients.values() if c.provider.issuer == row.idp_issuer), None)
        if client is None:
            return None
        try:
            metadata = await client.metadata()
        except IdpUnavailable:
            return None
        if not metadata.end_session_endpoint:
            return None
        params = {
            "client_id": client.provider.client_id,
            "post_logout_redirect_uri": self.settings.frontend_base + "/",
        }
        id_token = self._decrypt(row.id_token_encrypted)
        if id_token is not None:
            params["id_token_hint"] = id_token
        separator = "&" if "?" in metadata.end_session_endpoint else "?"
        return metadata.end_session_endpoint + separator + urlencode(params)

    def _decrypt(self, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return self._fernet.decrypt(value.encode()).decode()
        except InvalidToken:  # GATEWAY_SECRET_KEY changed since the login
            return None


#: Failure codes that are refusals of an identified user (audited as ``denied``, not ``failure``).
DENIALS = frozenset(
    {
        "account_disabled",
        "no_roles",
        "account_not_linked",
        "identity_taken",
        "state_replayed",
        "invite_invalid",
    }
)


def _not_after(provider: OidcProvider, claims: dict[str, Any], now: datetime) -> datetime | None:
    if provider.session_max_minutes is None:
        return None
    auth_time = claims.get("auth_time")
    start = datetime.fromtimestamp(auth_time, UTC) if isinstance(auth_time, int | float) else now
    return min(start, now) + timedelta(minutes=provider.session_max_minutes)
