"""Sign-ins in flight (``oidc_login``) and the back-channel logout replay guard (``oidc_logout_jti``).

A login transaction holds what the callback needs (state, nonce, PKCE verifier, provider, return path)
for at most ``OIDC_LOGIN_TTL_SECONDS``. It is bound to the browser that started it: the row stores the
hash of a random value sent only in the ``SameSite=Lax`` binding cookie, and the state only as a hash
too. It is single use: :func:`consume_login` marks it used in a statement of its own, committed before
the code is redeemed, so a replayed callback is refused before anything reaches the provider.
"""

from __future__ import annotations

import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from auth_db.engine import SessionFactory, transaction
from auth_db.models import OidcLogin, OidcLogoutReplay, SsoInvite
from gateway.security.tokens import hash_token

#: A return path the browser may ask to come back to: one absolute path on the frontend, no scheme, no
#: host, no ``//`` or ``/\\`` (which browsers read as another host), printable ASCII only.
RETURN_PATH = re.compile(r"^/(?![/\\])[A-Za-z0-9\-._~!$&'()*+,;=:@%/?#]{0,510}$")


class LoginRejected(Exception):
    """The callback's state cannot be used; ``reason`` is a stable code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class NewLogin:
    """What starting a login hands back: the values for the authorization request and the cookie."""

    state: str
    binding: str
    nonce: str
    code_verifier: str


def safe_return_path(value: str | None) -> str:
    """``value`` if it is an allowed return path, else ``/`` (never an open redirect)."""
    if value and RETURN_PATH.fullmatch(value):
        return value
    return "/"


async def create_login(
    factory: SessionFactory,
    *,
    provider_id: str,
    return_to: str,
    ttl: timedelta,
    now: datetime,
    link_user_id: uuid.UUID | None = None,
    invite_hash: str | None = None,
) -> NewLogin:
    """Store a new login transaction (and drop expired ones); returns its secrets."""
    login = NewLogin(
        state=secrets.token_urlsafe(32),
        binding=secrets.token_urlsafe(32),
        nonce=secrets.token_urlsafe(32),
        code_verifier=secrets.token_urlsafe(64),  # 86 characters (RFC 7636: 43 to 128)
    )
    async with transaction(factory) as session:
        await session.exec(delete(OidcLogin).where(col(OidcLogin.expires_at) < now))
        session.add(
            OidcLogin(
                state_hash=hash_token(login.state),
                binding_hash=hash_token(login.binding),
                provider_id=provider_id,
                nonce=login.nonce,
                code_verifier=login.code_verifier,
                return_to=safe_return_path(return_to),
                link_user_id=link_user_id,
                invite_hash=invite_hash,
                created_at=now,
                expires_at=now + ttl,
            )
        )
    return login


async def consume_login(
    factory: SessionFactory, *, state: str, binding: str | None, provider_id: str, now: datetime
) -> OidcLogin:
    """The login transaction of ``state``, marked used (committed before this returns).

    Raises:
        LoginRejected: ``invalid_state`` (unknown, or another provider's), ``state_replayed``,
            ``state_expired`` or ``browser_mismatch`` (the binding cookie is missing or another one).
    """
    if not state or len(state) > 128:
        raise LoginRejected("invalid_state")
    async with transaction(factory) as session:
        row = await session.get(OidcLogin, hash_token(state))
        if row is None or row.provider_id != provider_id:
            raise LoginRejected("invalid_state")
        if row.used_at is not None:
            raise LoginRejected("state_replayed")
        if row.expires_at <= now:
            raise LoginRejected("state_expired")
        if not binding or not hmac.compare_digest(row.binding_hash, hash_token(binding)):
            raise LoginRejected("browser_mismatch")
        claimed = await session.exec(
            update(OidcLogin)
            .where(col(OidcLogin.state_hash) == row.state_hash, col(OidcLogin.used_at).is_(None))
            .values(used_at=now)
        )
        if cast(CursorResult[Any], claimed).rowcount != 1:
            raise LoginRejected("state_replayed")
        session.expunge(row)
    return row


async def remember_logout_token(
    factory: SessionFactory, *, issuer: str, jti: str, expires_at: datetime, now: datetime
) -> bool:
    """Record a logout token's ``jti``; ``False`` if it was seen before (a replay)."""
    try:
        async with transaction(factory) as session:
            await session.exec(delete(OidcLogoutReplay).where(col(OidcLogoutReplay.expires_at) < now))
            if await session.get(OidcLogoutReplay, (issuer, jti[:255])) is not None:
                return False
            session.add(OidcLogoutReplay(issuer=issuer, jti=jti[:255], expires_at=expires_at))
    except IntegrityError:  # a concurrent delivery of the same token won the insert
        return False
    return True


async def create_invite(
    factory: SessionFactory,
    *,
    user_id: uuid.UUID,
    provider_id: str,
    created_by: uuid.UUID | None,
    ttl: timedelta,
    now: datetime,
) -> tuple[str, SsoInvite]:
    """A new single-use invite for ``user_id`` at ``provider_id``; returns its token (shown once) and row."""
    token = secrets.token_urlsafe(32)
    invite = SsoInvite(
        token_hash=hash_token(token),
        user_id=user_id,
        provider_id=provider_id,
        created_by=created_by,
        created_at=now,
        expires_at=now + ttl,
    )
    async with transaction(factory) as session:
        session.add(invite)
    return token, invite


async def open_invite(factory: SessionFactory, *, token: str, provider_id: str, now: datetime) -> str:
    """The stored hash of a usable invite for ``provider_id`` (it is spent only when the sign-in binds).

    Raises:
        LoginRejected: ``invite_invalid`` (unknown, another provider's, used or expired).
    """
    if not token or len(token) > 128:
        raise LoginRejected("invite_invalid")
    async with transaction(factory) as session:
        invite = await session.get(SsoInvite, hash_token(token))
    if (
        invite is None
        or invite.provider_id != provider_id
        or invite.used_at is not None
        or invite.expires_at <= now
    ):
        raise LoginRejected("invite_invalid")
    return invite.token_hash
