"""Failed-login throttling kept in the auth database, so every replica sees the same counters.

Failures are counted per account (key ``user:<lower-case username>``, whether or not the account
exists) and per client address (``ip:<address>``) within a window. Reaching a threshold locks the
key for a while: attempts are then refused with ``429 too_many_attempts`` and ``Retry-After``
before the password is even checked. A successful login resets the account counter (not the
address counter). Thresholds and durations are system settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from auth_db.models import LoginThrottle
from gateway.errors import TooManyRequests
from gateway.system_settings import get_system_setting


class TooManyAttempts(TooManyRequests):
    code = "too_many_attempts"
    title = "Too many login attempts"


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """Thresholds and durations of login throttling."""

    account_threshold: int
    address_threshold: int
    window: timedelta
    lockout: timedelta


async def throttle_policy(session: AsyncSession) -> ThrottlePolicy:
    """The policy from the ``lockout_*`` system settings."""
    return ThrottlePolicy(
        account_threshold=await get_system_setting(session, "lockout_threshold"),
        address_threshold=await get_system_setting(session, "lockout_ip_threshold"),
        window=timedelta(minutes=await get_system_setting(session, "lockout_window_minutes")),
        lockout=timedelta(minutes=await get_system_setting(session, "lockout_duration_minutes")),
    )


def account_key(username: str) -> str:
    """The throttle key of a (possibly non-existent) account."""
    return f"user:{username.strip().lower()}"[:200]


def address_key(client_addr: str | None) -> str:
    """The throttle key of a client address."""
    return f"ip:{client_addr or 'unknown'}"[:200]


async def seconds_locked(session: AsyncSession, keys: list[str], *, now: datetime) -> int | None:
    """Seconds until the last of ``keys`` is unlocked, or ``None`` when none is locked."""
    statement = select(LoginThrottle.locked_until).where(
        col(LoginThrottle.key).in_(keys), col(LoginThrottle.locked_until) > now
    )
    until = [value for value in (await session.exec(statement)).all() if value is not None]
    if not until:
        return None
    return max(1, math.ceil((max(until) - now).total_seconds()))


async def register_failure(
    session: AsyncSession, key: str, *, threshold: int, policy: ThrottlePolicy, now: datetime
) -> bool:
    """Count one failure for ``key`` (row-locked, safe across replicas); True if it now became locked."""
    dialect = session.bind.dialect.name if session.bind is not None else "postgresql"
    insert = sqlite_insert if dialect == "sqlite" else pg_insert
    await session.exec(
        insert(LoginThrottle)
        .values(key=key, failures=0, window_started_at=now, locked_until=None)
        .on_conflict_do_nothing(index_elements=["key"])
    )
    statement = (
        select(LoginThrottle)
        .where(LoginThrottle.key == key)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    row = (await session.exec(statement)).one()
    if row.window_started_at + policy.window <= now:
        row.failures, row.window_started_at = 0, now
    row.failures += 1
    became_locked = False
    if row.failures >= threshold and (row.locked_until is None or row.locked_until <= now):
        row.locked_until = now + policy.lockout
        row.failures, row.window_started_at = 0, now
        became_locked = True
    session.add(row)
    await session.flush()
    return became_locked


async def reset(session: AsyncSession, key: str) -> None:
    """Forget the failures of ``key`` (after a successful login)."""
    row = await session.get(LoginThrottle, key)
    if row is not None:
        await session.delete(row)
        await session.flush()
