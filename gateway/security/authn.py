"""Authentication use-cases: log in (password + optional second factor), refresh, log out.

Each step runs in short transactions of its own, so throttling counters, reuse-detection
revocations and audit records are kept even when the request then fails.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from auth_db.engine import SessionFactory, transaction
from auth_db.models import User
from auth_db.types import utcnow
from gateway.audit import Actor, AuditLog, Outcome
from gateway.errors import NotAuthenticated
from gateway.security import sessions as session_store
from gateway.security import throttle
from gateway.security.keys import derive_key
from gateway.security.passwords import PasswordService
from gateway.security.tokens import issue_access_token
from gateway.security.totp import TotpCipher, use_recovery_code, verify_code
from gateway.settings import Settings


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client presented to log in."""

    username: str
    password: str
    totp_code: str | None = None
    recovery_code: str | None = None


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Where a request came from (for sessions, throttling and audit)."""

    addr: str | None
    user_agent: str | None


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    """The result of a login or a refresh."""

    user_id: uuid.UUID
    username: str
    session_family: uuid.UUID
    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_at: datetime


#: The purpose under which the key deriving successor refresh tokens is derived from the master secret.
SUCCESSOR_KEY_PURPOSE = "refresh-successor"

#: One failed login in this many also deletes stale throttle counters (``gateway users purge`` does all).
PURGE_ONE_IN = 100


def invalid_credentials() -> NotAuthenticated:
    """The one answer to a wrong username, wrong password or disabled account."""
    return NotAuthenticated("The username or password is wrong.", code="invalid_credentials")


def invalid_refresh_token() -> NotAuthenticated:
    """The one answer to an unusable refresh token."""
    return NotAuthenticated(
        "The refresh token is not valid or the session has ended; sign in again.",
        code="invalid_refresh_token",
    )


async def start_gateway_session(
    settings: Settings,
    session: AsyncSession,
    user: User,
    client: ClientInfo,
    now: datetime,
    idp: session_store.IdpLink | None = None,
) -> IssuedTokens:
    """Start a session for ``user`` in the caller's transaction and issue its first tokens.

    The one way in for a password login and a single sign-on alike (``idp`` ties the session to the
    identity provider's, see :mod:`gateway.services.sso`).
    """
    policy = await session_store.session_policy(session)
    row, refresh = await session_store.start_session(
        session,
        user_id=user.id,
        policy=policy,
        now=now,
        client_addr=client.addr,
        user_agent=client.user_agent,
        idp=idp,
    )
    access, ttl = issue_access_token(settings, user_id=user.id, session_family=row.family_id, now=now)
    return IssuedTokens(user.id, user.username, row.family_id, access, ttl, refresh, row.expires_at)


class Authenticator:
    """Logs users in and out and refreshes their sessions."""

    def __init__(
        self, settings: Settings, factory: SessionFactory, audit: AuditLog, passwords: PasswordService
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.audit = audit
        self.passwords = passwords
        self.cipher = TotpCipher(settings)

    async def login(self, credentials: Credentials, client: ClientInfo) -> IssuedTokens:
        """Check the credentials (throttled) and start a session.

        Raises:
            TooManyAttempts: ``too_many_attempts`` (429, ``Retry-After``) while the account or the
                client address is locked, whether or not the account exists.
            NotAuthenticated: ``invalid_credentials``, ``totp_required`` or ``invalid_totp_code``.
        """
        username = credentials.username.strip().lower()
        now = utcnow()
        async with transaction(self.factory) as session:
            policy = await throttle.throttle_policy(session)
            limits = [
                (throttle.account_key(username), policy.account_threshold),
                (throttle.address_key(client.addr), policy.address_threshold),
            ]
            locked = await throttle.begin_attempt(session, limits, policy=policy, now=now)
            user = (await session.exec(select(User).where(User.username == username))).first()
        actor = Actor(user.id if user else None, username[:64])
        if locked is not None:
            await self.audit.record(
                action="auth.login_throttled", outcome=Outcome.denied, actor=actor, reason="locked out"
            )
            raise throttle.TooManyAttempts("Too many failed attempts; try again later.", retry_after=locked)
        # An SSO-only account has no usable local password: checked against the dummy hash, so that the
        # answer and its timing are those of an unknown account.
        local = user is not None and not user.sso_only
        valid, new_hash = await self.passwords.verify_and_update(
            credentials.password, user.password_hash if user is not None and local else None
        )
        if user is None or not local or not valid or not user.is_active:
            reason = (
                "unknown account"
                if user is None
                else "sso-only account"
                if not local
                else "wrong password"
                if not valid
                else "disabled"
            )
            await self._fail(limits, policy, actor, reason)
            raise invalid_credentials()
        if user.totp_enabled:
            await self._second_factor(user, credentials, limits, policy, actor)
        async with transaction(self.factory) as session:
            await throttle.attempt_succeeded(session, reset=limits[0][0], release=[limits[1][0]])
            fresh = await session.get(User, user.id)
            assert fresh is not None
            if new_hash is not None:
                fresh.password_hash = new_hash
            fresh.last_login_at = now
            session.add(fresh)
            issued = await start_gateway_session(self.settings, session, fresh, client, now)
        await self.audit.record(
            action="auth.login",
            outcome=Outcome.success,
            actor=actor,
            target_type="session",
            target_id=str(issued.session_family),
            details={"rehashed": new_hash is not None, "second_factor": user.totp_enabled},
        )
        return issued

    async def _second_factor(
        self,
        user: User,
        credentials: Credentials,
        limits: list[tuple[str, int]],
        policy: throttle.ThrottlePolicy,
        actor: Actor,
    ) -> None:
        if not credentials.totp_code and not credentials.recovery_code:
            await self.audit.record(
                action="auth.login_failed",
                outcome=Outcome.failure,
                actor=actor,
                reason="second factor missing",
            )
            raise NotAuthenticated(
                "This account uses two-factor authentication; send totp_code or recovery_code.",
                code="totp_required",
            )
        now = utcnow()
        async with transaction(self.factory) as session:
            if credentials.totp_code:
                ok = await verify_code(session, self.cipher, user, credentials.totp_code, now=now)
                method = "totp"
            else:
                ok = await use_recovery_code(session, user.id, credentials.recovery_code or "", now=now)
                method = "recovery_code"
        if not ok:
            await self._fail(limits, policy, actor, f"invalid {method}")
            raise NotAuthenticated(
                "The two-factor code is wrong or was already used.", code="invalid_totp_code"
            )
        if method == "recovery_code":
            await self.audit.record(
                action="auth.recovery_code_used",
                outcome=Outcome.success,
                actor=actor,
                target_type="user",
                target_id=str(user.id),
            )

    async def _fail(
        self, limits: list[tuple[str, int]], policy: throttle.ThrottlePolicy, actor: Actor, reason: str
    ) -> None:
        async with transaction(self.factory) as session:
            locked_keys = await throttle.attempt_failed(session, limits, policy=policy, now=utcnow())
            if secrets.randbelow(PURGE_ONE_IN) == 0:  # keep sprayed usernames from piling up
                await throttle.purge_stale(session, policy=policy, now=utcnow())
        locked = [key.split(":", 1)[0] for key in locked_keys]
        await self.audit.record(
            action="auth.login_failed", outcome=Outcome.failure, actor=actor, reason=reason
        )
        if locked:
            await self.audit.record(
                action="auth.lockout",
                outcome=Outcome.denied,
                actor=actor,
                reason="threshold reached: "
                + ", ".join("account" if k == "user" else "address" for k in locked),
                details={"lockout_seconds": int(policy.lockout.total_seconds())},
            )

    async def refresh(self, refresh_token: str) -> IssuedTokens:
        """Rotate a refresh token: the old one is spent, a new pair is issued in the same session.

        The same token presented again within ``refresh_reuse_grace_seconds`` (two tabs refreshing
        at once) gets the successor already issued for it, with a new access token; it is audited
        as ``auth.refresh`` with ``concurrent_replay: true``.

        Raises:
            NotAuthenticated: ``invalid_refresh_token``. A token that was already used, presented
                after the grace, revokes its whole session family (an ``auth.refresh_reuse`` audit
                record is written).
        """
        now = utcnow()
        key = derive_key(self.settings, SUCCESSOR_KEY_PURPOSE)
        try:
            try:
                rotation, user = await self._rotate(refresh_token, key, now)
            except session_store.RefreshRejected as rejected:
                if rejected.reason != "concurrent refresh" or rejected.family_id is None:
                    raise
                # Without row locks (SQLite) a concurrent refresh can lose the claim; once the winner
                # has committed, the token reads as used and this becomes a replay within the grace.
                rotation, user = await self._rotate(refresh_token, key, now)
        except session_store.RefreshRejected as rejected:
            await self._refresh_rejected(rejected, now)
            raise invalid_refresh_token() from None
        row = rotation.row
        access, ttl = issue_access_token(
            self.settings, user_id=user.id, session_family=row.family_id, now=now
        )
        await self.audit.record(
            action="auth.refresh",
            outcome=Outcome.success,
            actor=Actor(user.id, user.username),
            target_type="session",
            target_id=str(row.family_id),
            details={"concurrent_replay": True} if rotation.replayed else None,
        )
        return IssuedTokens(
            user.id, user.username, row.family_id, access, ttl, rotation.token, row.expires_at
        )

    async def _rotate(
        self, refresh_token: str, key: bytes, now: datetime
    ) -> tuple[session_store.Rotation, User]:
        async with transaction(self.factory) as session:
            policy = await session_store.session_policy(session)
            rotation = await session_store.rotate(session, refresh_token, policy=policy, key=key, now=now)
            user = await session.get(User, rotation.row.user_id)
            assert user is not None
        return rotation, user

    async def _refresh_rejected(self, rejected: session_store.RefreshRejected, now: datetime) -> None:
        actor = Actor(rejected.user_id, None) if rejected.user_id else None
        family = rejected.family_id
        target_type, target_id = ("session", str(family)) if family else (None, None)
        if rejected.reason == "reuse" and family is not None:
            async with transaction(self.factory) as session:
                await session_store.revoke_family(session, family, reason="refresh_reuse", now=now)
            await self.audit.record(
                action="auth.refresh_reuse",
                outcome=Outcome.denied,
                actor=actor,
                reason="an already used refresh token was presented; session family revoked",
                target_type=target_type,
                target_id=target_id,
            )
            return
        await self.audit.record(
            action="auth.refresh",
            outcome=Outcome.failure,
            actor=actor,
            reason=rejected.reason,
            target_type=target_type,
            target_id=target_id,
        )

    async def logout(self, *, user_id: uuid.UUID, username: str, session_family: uuid.UUID | None) -> None:
        """Revoke the caller's session server-side."""
        if session_family is not None:
            async with transaction(self.factory) as session:
                await session_store.revoke_family(session, session_family, reason="logout", now=utcnow())
        await self.audit.record(
            action="auth.logout",
            outcome=Outcome.success,
            actor=Actor(user_id, username),
            target_type="session",
            target_id=str(session_family) if session_family else None,
        )
