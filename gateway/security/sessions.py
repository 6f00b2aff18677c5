"""Login sessions in the auth database: refresh-token families, rotation, reuse detection, revocation.

A login starts a *family*. Each refresh token is one ``session`` row of that family, stored as a
SHA-256 hash. A refresh marks the presented row used (a conditional ``UPDATE … WHERE used_at IS
NULL``, so of two concurrent refreshes with the same token at most one wins) and adds a new row.
Presenting a token that was already used means it was copied: the whole family is revoked.

A family is *alive* while its newest row is unused, unrevoked and unexpired; access tokens name
their family (``sid``) and :func:`load_session_user` checks it on every request, so logout,
password change, disabling an account and reuse detection take effect immediately.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from auth_db.models import AuthSession, User, UserRole
from gateway.security.tokens import hash_token, new_refresh_token
from gateway.system_settings import get_system_setting


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """How long a session may stay idle, and how long it may live at most."""

    idle: timedelta
    absolute: timedelta

    def expiry(self, family_created_at: datetime, now: datetime) -> datetime:
        """When a refresh token issued ``now`` expires."""
        return min(now + self.idle, family_created_at + self.absolute)


async def session_policy(session: AsyncSession) -> SessionPolicy:
    """The policy from the system settings ``session_idle_timeout_minutes`` / ``…absolute_lifetime…``."""
    idle = await get_system_setting(session, "session_idle_timeout_minutes")
    absolute = await get_system_setting(session, "session_absolute_lifetime_minutes")
    return SessionPolicy(idle=timedelta(minutes=idle), absolute=timedelta(minutes=absolute))


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
) -> tuple[AuthSession, str]:
    """Start a new session family for ``user_id``; returns its first row and the refresh token.

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
        expires_at=policy.expiry(now, now),
        client_addr=client_addr[:64] if client_addr else None,
        user_agent=user_agent[:256] if user_agent else None,
    )
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


async def rotate(
    session: AsyncSession, token: str, *, policy: SessionPolicy, now: datetime
) -> tuple[AuthSession, str]:
    """Use ``token`` once and issue its successor in the same family.

    Raises:
        RefreshRejected: unknown, revoked, expired or already used (``reason="reuse"``; the caller
            then revokes the family in a transaction of its own), or the account is disabled.
    """
    row = await find_by_token(session, token)
    if row is None:
        raise RefreshRejected("unknown token")
    if row.revoked_at is not None:
        raise RefreshRejected("session revoked", row)
    if row.used_at is not None:
        raise RefreshRejected("reuse", row)
    if row.expires_at <= now:
        raise RefreshRejected("session expired", row)
    user = await session.get(User, row.user_id)
    if user is None or not user.is_active:
        raise RefreshRejected("account disabled", row)
    claimed = await session.exec(
        update(AuthSession)
        .where(
            col(AuthSession.id) == row.id,
            col(AuthSession.used_at).is_(None),
            col(AuthSession.revoked_at).is_(None),
        )
        .values(used_at=now)
    )
    if _rowcount(claimed) != 1:
        raise RefreshRejected("concurrent refresh", row)
    new_token = new_refresh_token()
    successor = AuthSession(
        family_id=row.family_id,
        user_id=row.user_id,
        refresh_token_hash=hash_token(new_token),
        created_at=now,
        family_created_at=row.family_created_at,
        expires_at=policy.expiry(row.family_created_at, now),
        client_addr=row.client_addr,
        user_agent=row.user_agent,
    )
    if successor.expires_at <= now:
        raise RefreshRejected("session expired", row)
    session.add(successor)
    await session.flush()
    return successor, new_token


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


async def purge_dead_sessions(session: AsyncSession, *, policy: SessionPolicy, now: datetime) -> int:
    """Delete every session row whose family is past its absolute lifetime; returns how many."""
    result = await session.exec(
        delete(AuthSession).where(col(AuthSession.family_created_at) < now - policy.absolute)
    )
    return _rowcount(result)
