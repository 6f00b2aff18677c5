"""Login sessions in the auth database: refresh-token families, rotation, reuse detection, revocation.

A login starts a *family*. Each refresh token is one ``session`` row of that family, stored as a
SHA-256 hash. A refresh locks the presented row (``SELECT … FOR UPDATE`` on PostgreSQL), marks it
used and adds its successor. The successor token is not random: it is derived from the presented
token with a key only the gateway holds (HMAC-SHA256), so the database still keeps nothing but
hashes, and yet the gateway can hand out the *same* successor again.

That is what the reuse grace is for. Two tabs of one browser that refresh at the same moment
present the same token; the second one, arriving within ``refresh_reuse_grace_seconds`` of the
first use, gets the successor the first one got (following the chain if it has moved on since), so
the family keeps exactly one live row and both tabs end up with the same cookies. A used token
presented after the grace means it was copied: the whole family is revoked.

A family is *alive* while its newest row is unused, unrevoked and unexpired. Access tokens name their
family (``sid``), and every request checks that it is alive, not here but in the one authorisation
statement (:mod:`gateway.security.authz` over :mod:`auth_db.hotpath`): logout, password change, disabling
an account and reuse detection take effect at once on the worker that made the change and within
``AUTHZ_CACHE_MS`` on the others. :func:`load_session_user` is the same check through the ORM, used once
right after a login.

A session started by single sign-on also remembers the identity provider's session (:class:`IdpLink`:
issuer, subject, ``sid``, the encrypted ID token); its lifetime may be capped (``not_after``, from the
provider's ``session_max_minutes``), and the provider's back-channel logout ends it
(:func:`revoke_idp_sessions`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, delete, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from auth_db.models import AuthSession, User, UserRole
from gateway.security.tokens import hash_token, new_refresh_token
from gateway.system_settings import get_system_setting


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """How long a session may stay idle, how long it may live at most, and the refresh reuse grace."""

    idle: timedelta
    absolute: timedelta
    #: A used refresh token presented again within this interval gets its successor (0: never).
    reuse_grace: timedelta = timedelta(0)

    def expiry(
        self, family_created_at: datetime, now: datetime, not_after: datetime | None = None
    ) -> datetime:
        """When a refresh token issued ``now`` expires (never past ``not_after``, an SSO session's cap)."""
        limit = min(now + self.idle, family_created_at + self.absolute)
        return limit if not_after is None else min(limit, not_after)


@dataclass(frozen=True, slots=True)
class IdpLink:
    """What a session started by single sign-on remembers of the identity provider's session."""

    issuer: str
    subject: str
    sid: str | None
    id_token_encrypted: str | None
    not_after: datetime | None


async def session_policy(session: AsyncSession) -> SessionPolicy:
    """The policy from the system settings ``session_idle_timeout_minutes``, ``…absolute_lifetime…``
    and ``refresh_reuse_grace_seconds``."""
    idle = await get_system_setting(session, "session_idle_timeout_minutes")
    absolute = await get_system_setting(session, "session_absolute_lifetime_minutes")
    grace = await get_system_setting(session, "refresh_reuse_grace_seconds")
    return SessionPolicy(
        idle=timedelta(minutes=idle),
        absolute=timedelta(minutes=absolute),
        reuse_grace=timedelta(seconds=grace),
    )


def _rowcount(result: object) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


async def start_session(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    policy: SessionPolicy,
    now: datetime,
    client_addr: str | None,
    user_agent: str | None,
    idp: IdpLink | None = None,
) -> tuple[AuthSession, str]:
    """Start a new session family for ``user_id``; returns its first row and the refresh token.

    ``idp`` ties a session started by single sign-on to the provider's session (back-channel logout)
    and caps its lifetime.

    The user's families past their absolute lifetime are deleted on the way (they can never be used
    again, and keeping them would let the table grow with every refresh).
    """
    await session.exec(
        delete(AuthSession).where(
            col(AuthSession.user_id) == user_id, col(AuthSession.family_created_at) < now - policy.absolute
        )
    )
    token = new_refresh_token()
    row = AuthSession(
        family_id=uuid.uuid4(),
        user_id=user_id,
        refresh_token_hash=hash_token(token),
        created_at=now,
        family_created_at=now,
        expires_at=policy.expiry(now, now, idp.not_after if idp else None),
        client_addr=client_addr[:64] if client_addr else None,
        user_agent=user_agent[:256] if user_agent else None,
    )
    if idp is not None:
        row.idp_issuer = idp.issuer
        row.idp_subject = idp.subject
        row.idp_sid = idp.sid
        row.id_token_encrypted = idp.id_token_encrypted
        row.not_after = idp.not_after
    if row.expires_at <= now:
        raise ValueError("the session would end before it starts (the provider's cap has passed)")
    session.add(row)
    await session.flush()
    return row, token


class RefreshRejected(Exception):
    """The refresh token cannot be used; ``reason`` is for the audit trail only."""

    def __init__(self, reason: str, row: AuthSession | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        # Plain values: the row is expired when the transaction rolls back.
        self.user_id = row.user_id if row is not None else None
        self.family_id = row.family_id if row is not None else None


async def find_by_token(session: AsyncSession, token: str) -> AuthSession | None:
    """The session row of a refresh token, if any."""
    statement = select(AuthSession).where(AuthSession.refresh_token_hash == hash_token(token))
    return (await session.exec(statement)).first()


def successor_token(key: bytes, token: str) -> str:
    """The refresh token that follows ``token`` in its family: HMAC-SHA256 under ``key``, base64url.

    Only the presented token (which the database never holds) and the gateway's key give it, so a
    copy of the database cannot produce a successor, while a concurrent replay gets the same one.
    """
    digest = hmac.new(key, token.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class Rotation:
    """The live row and refresh token a refresh hands out."""

    row: AuthSession
    token: str
    #: True when ``token`` was issued before: a concurrent replay within the reuse grace.
    replayed: bool


#: How many rotations a replay within the grace follows to reach the family's live row.
MAX_REPLAY_CHAIN = 8


async def _lock_by_token(session: AsyncSession, token: str) -> AuthSession | None:
    """The row of ``token``, locked for this transaction (PostgreSQL) and read fresh."""
    statement = (
        select(AuthSession)
        .where(AuthSession.refresh_token_hash == hash_token(token))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.exec(statement)).first()


async def rotate(
    session: AsyncSession, token: str, *, policy: SessionPolicy, key: bytes, now: datetime
) -> Rotation:
    """Use ``token`` once and issue its successor in the same family.

    The presented row is locked first, so concurrent refreshes with one token are decided one
    after the other: the first rotates, and each later one is a replay. A replay within
    ``policy.reuse_grace`` of the first use gets the family's live row and its token (the one
    already issued; nothing is added, so exactly one row stays live and no limit is extended).

    Args:
        key: the gateway's key for :func:`successor_token`.

    Raises:
        RefreshRejected: unknown, revoked or expired token, disabled account, or a used token
            past the grace (``reason="reuse"``; the caller then revokes the family in a
            transaction of its own).
    """
    row = await _lock_by_token(session, token)
    if row is None:
        raise RefreshRejected("unknown token")
    if row.revoked_at is not None:
        raise RefreshRejected("session revoked", row)
    user = await session.get(User, row.user_id)
    if user is None or not user.is_active:
        raise RefreshRejected("account disabled", row)
    if row.used_at is not None:
        return await _replay(session, row, token, policy=policy, key=key, now=now)
    if row.expires_at <= now:
        raise RefreshRejected("session expired", row)
    claimed = await session.exec(
        update(AuthSession)
        .where(
            col(AuthSession.id) == row.id,
            col(AuthSession.used_at).is_(None),
            col(AuthSession.revoked_at).is_(None),
        )
        .values(used_at=now)
    )
    if _rowcount(claimed) != 1:  # only without row locks (SQLite): another refresh won
        raise RefreshRejected("concurrent refresh", row)
    new_token = successor_token(key, token)
    successor = AuthSession(
        family_id=row.family_id,
        user_id=row.user_id,
        refresh_token_hash=hash_token(new_token),
        created_at=now,
        family_created_at=row.family_created_at,
        expires_at=policy.expiry(row.family_created_at, now, row.not_after),
        client_addr=row.client_addr,
        user_agent=row.user_agent,
        idp_issuer=row.idp_issuer,
        idp_sid=row.idp_sid,
        idp_subject=row.idp_subject,
        id_token_encrypted=row.id_token_encrypted,
        not_after=row.not_after,
    )
    if successor.expires_at <= now:
        raise RefreshRejected("session expired", row)
    session.add(successor)
    await session.flush()
    return Rotation(successor, new_token, replayed=False)


async def _replay(
    session: AsyncSession, row: AuthSession, token: str, *, policy: SessionPolicy, key: bytes, now: datetime
) -> Rotation:
    """A used token presented again: its family's live row within the grace, else reuse."""
    assert row.used_at is not None
    if policy.reuse_grace <= timedelta(0) or now - row.used_at > policy.reuse_grace:
        raise RefreshRejected("reuse", row)
    current = token
    for _ in range(MAX_REPLAY_CHAIN):
        current = successor_token(key, current)
        following = await _lock_by_token(session, current)
        if following is None or following.family_id != row.family_id:
            # Issued under another key (GATEWAY_SECRET_KEY changed): nothing to hand out again.
            raise RefreshRejected("concurrent refresh", row)
        if following.revoked_at is not None:
            raise RefreshRejected("session revoked", row)
        if following.used_at is None:
            if following.expires_at <= now:
                raise RefreshRejected("session expired", row)
            return Rotation(following, current, replayed=True)
    raise RefreshRejected("concurrent refresh", row)


async def revoke_family(session: AsyncSession, family_id: uuid.UUID, *, reason: str, now: datetime) -> int:
    """Revoke every row of a session family; returns how many rows changed."""
    result = await session.exec(
        update(AuthSession)
        .where(col(AuthSession.family_id) == family_id, col(AuthSession.revoked_at).is_(None))
        .values(revoked_at=now, revoked_reason=reason[:64])
    )
    return _rowcount(result)


async def revoke_user_sessions(
    session: AsyncSession, user_id: uuid.UUID, *, reason: str, now: datetime
) -> int:
    """Revoke every session of ``user_id``; returns how many live sessions ended."""
    live = len(await active_sessions(session, user_id, now=now))
    await session.exec(
        update(AuthSession)
        .where(col(AuthSession.user_id) == user_id, col(AuthSession.revoked_at).is_(None))
        .values(revoked_at=now, revoked_reason=reason[:64])
    )
    return live


async def active_sessions(session: AsyncSession, user_id: uuid.UUID, *, now: datetime) -> list[AuthSession]:
    """The live sessions of ``user_id`` (the current row of each live family), newest login first."""
    statement = (
        select(AuthSession)
        .where(
            AuthSession.user_id == user_id,
            col(AuthSession.used_at).is_(None),
            col(AuthSession.revoked_at).is_(None),
            AuthSession.expires_at > now,
        )
        .order_by(col(AuthSession.family_created_at).desc())
    )
    return list((await session.exec(statement)).all())


async def load_session_user(
    session: AsyncSession, *, user_id: uuid.UUID, family_id: uuid.UUID, now: datetime
) -> tuple[User, frozenset[str]] | None:
    """The active user and their roles if the session family is alive; one indexed query.

    Returns ``None`` when the family is revoked, expired or rotated away by reuse detection, or the
    account is disabled.
    """
    statement = (
        select(User, UserRole.role)
        .join(AuthSession, col(AuthSession.user_id) == col(User.id))
        .outerjoin(UserRole, col(UserRole.user_id) == col(User.id))
        .where(
            User.id == user_id,
            col(User.is_active).is_(True),
            AuthSession.family_id == family_id,
            col(AuthSession.used_at).is_(None),
            col(AuthSession.revoked_at).is_(None),
            AuthSession.expires_at > now,
        )
    )
    rows = (await session.exec(statement)).all()
    if not rows:
        return None
    user = rows[0][0]
    return user, frozenset(role for _, role in rows if role is not None)


async def revoke_idp_sessions(
    session: AsyncSession,
    *,
    issuer: str,
    sid: str | None,
    subject: str | None,
    reason: str,
    now: datetime,
    user_id: uuid.UUID | None = None,
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Revoke every live session started by ``issuer`` with this ``sid`` (or, without one, this subject).

    ``user_id`` narrows it to the sessions of that user.

    Returns:
        The (user id, session family) of each session that was still live.
    """
    condition = (
        col(AuthSession.idp_sid) == sid if sid is not None else col(AuthSession.idp_subject) == subject
    )
    if user_id is not None:
        condition = and_(condition, col(AuthSession.user_id) == user_id)
    live = await session.exec(
        select(AuthSession.user_id, AuthSession.family_id)
        .where(
            col(AuthSession.idp_issuer) == issuer,
            condition,
            col(AuthSession.used_at).is_(None),
            col(AuthSession.revoked_at).is_(None),
            AuthSession.expires_at > now,
        )
        .distinct()
    )
    ended = [(user_id, family_id) for user_id, family_id in live.all()]
    for _, family_id in ended:
        await revoke_family(session, family_id, reason=reason, now=now)
    return ended


async def purge_dead_sessions(session: AsyncSession, *, policy: SessionPolicy, now: datetime) -> int:
    """Delete every session row whose family is past its absolute lifetime; returns how many."""
    result = await session.exec(
        delete(AuthSession).where(col(AuthSession.family_created_at) < now - policy.absolute)
    )
    return _rowcount(result)
