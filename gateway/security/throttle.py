"""Failed-login throttling kept in the auth database, so every replica sees the same counters.

Failures are counted per account (key ``user:<lower-case username>``, whether or not the account
exists) and per client address (``ip:<address>``) within a window. Reaching a threshold locks the
key for a while: attempts are then refused with ``429 too_many_attempts`` and ``Retry-After``
before the password is even checked. Attempts are counted before the password check (so parallel
guesses cannot overshoot a threshold); a successful login gives its attempt back and resets the
account counter. Thresholds and durations are system settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, or_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from auth_db.models import LoginThrottle
from gateway.errors import TooManyRequests
from gateway.metrics import record_lockout, record_login_failure
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


async def _locked_row(session: AsyncSession, key: str, now: datetime) -> LoginThrottle:
    """The throttle row of ``key``, created if missing and locked until the transaction ends.

    A successful login deletes its account's row. When that happens between this insert (which then found
    the row and did nothing) and this lock (which then finds no row once the delete commits), the row is
    created again: the loop runs at most twice in practice.
    """
    dialect = session.bind.dialect.name if session.bind is not None else "postgresql"
    insert = sqlite_insert if dialect == "sqlite" else pg_insert
    statement = (
        select(LoginThrottle)
        .where(LoginThrottle.key == key)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    for _ in range(5):
        await session.exec(
            insert(LoginThrottle)
            .values(key=key, failures=0, window_started_at=now, locked_until=None)
            .on_conflict_do_nothing(index_elements=["key"])
        )
        row = (await session.exec(statement)).first()
        if row is not None:
            return row
    raise RuntimeError(f"the throttle row {key!r} keeps disappearing")


def _seconds_until(moment: datetime, now: datetime) -> int:
    return max(1, math.ceil((moment - now).total_seconds()))


async def begin_attempt(
    session: AsyncSession, limits: list[tuple[str, int]], *, policy: ThrottlePolicy, now: datetime
) -> int | None:
    """Count a login attempt **before** checking the password, for each ``(key, threshold)``.

    Counting up front means that parallel attempts cannot slip past a threshold while earlier ones
    are still being checked: at most ``threshold`` attempts per key are in flight or failed within
    the window. :func:`attempt_succeeded` gives the count back; :func:`attempt_failed` keeps it.
    The rows are locked in the order given (always account, then address), so replicas cannot
    deadlock.

    Returns:
        ``None`` to go on, else the seconds to wait (a key is locked or has too many attempts).
    """
    wait: int | None = None
    for key, threshold in limits:
        row = await _locked_row(session, key, now)
        if row.locked_until is not None and row.locked_until > now:
            wait = max(wait or 0, _seconds_until(row.locked_until, now))
            continue
        if row.window_started_at + policy.window <= now:
            row.failures, row.window_started_at = 0, now
        if row.failures >= threshold:
            row.locked_until, row.failures, row.window_started_at = now + policy.lockout, 0, now
            record_lockout(_scope(key))
            wait = max(wait or 0, _seconds_until(row.locked_until, now))
        else:
            row.failures += 1
        session.add(row)
    await session.flush()
    return wait


def _scope(key: str) -> str:
    return "account" if key.startswith("user:") else "address"


async def attempt_failed(
    session: AsyncSession, limits: list[tuple[str, int]], *, policy: ThrottlePolicy, now: datetime
) -> list[str]:
    """Keep the failed attempt counted; lock the keys that reached their threshold (returned)."""
    locked: list[str] = []
    record_login_failure()
    for key, threshold in limits:
        row = await _locked_row(session, key, now)
        if row.failures >= threshold and (row.locked_until is None or row.locked_until <= now):
            row.locked_until, row.failures, row.window_started_at = now + policy.lockout, 0, now
            record_lockout(_scope(key))
            locked.append(key)
            session.add(row)
    await session.flush()
    return locked


async def attempt_succeeded(session: AsyncSession, *, reset: str, release: list[str]) -> None:
    """After a successful login: forget the ``reset`` key's failures, give back one attempt of ``release``."""
    row = await session.get(LoginThrottle, reset)
    if row is not None:
        await session.delete(row)
    for key in release:
        other = await session.get(LoginThrottle, key, with_for_update=True)
        if other is not None and other.failures > 0:
            other.failures -= 1
            session.add(other)
    await session.flush()


async def reset(session: AsyncSession, key: str) -> None:
    """Forget the failures and any lockout of ``key`` (an administrator's unlock)."""
    row = await session.get(LoginThrottle, key)
    if row is not None:
        await session.delete(row)
        await session.flush()


async def purge_stale(session: AsyncSession, *, policy: ThrottlePolicy, now: datetime) -> int:
    """Delete counters whose window has passed and that hold no lockout; returns how many."""
    result = await session.exec(
        delete(LoginThrottle).where(
            col(LoginThrottle.window_started_at) < now - policy.window,
            or_(col(LoginThrottle.locked_until).is_(None), col(LoginThrottle.locked_until) < now),
        )
    )
    return int(cast(CursorResult[Any], result).rowcount)
