"""The session store on PostgreSQL: row locks decide concurrent refreshes, and the reuse grace."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlmodel import col, select

from auth_db.engine import SessionFactory, transaction
from auth_db.models import AuthSession
from auth_db.types import utcnow
from gateway.security import sessions
from tests.factories import create_user

POLICY = sessions.SessionPolicy(
    idle=timedelta(minutes=30), absolute=timedelta(hours=8), reuse_grace=timedelta(seconds=5)
)
NO_GRACE = sessions.SessionPolicy(idle=timedelta(minutes=30), absolute=timedelta(hours=8))
KEY = b"k" * 32


async def _login(session_factory: SessionFactory) -> str:
    user = await create_user(session_factory, username="carol", roles=["clinician"])
    async with transaction(session_factory) as session:
        _, token = await sessions.start_session(
            session, user_id=user.id, policy=POLICY, now=utcnow(), client_addr=None, user_agent=None
        )
    return token


async def _rotate(
    session_factory: SessionFactory,
    token: str,
    *,
    policy: sessions.SessionPolicy = POLICY,
    key: bytes = KEY,
    after: timedelta = timedelta(0),
) -> sessions.Rotation:
    async with transaction(session_factory) as session:
        return await sessions.rotate(session, token, policy=policy, key=key, now=utcnow() + after)


async def _live(session_factory: SessionFactory) -> list[AuthSession]:
    async with session_factory() as session:
        statement = select(AuthSession).where(
            col(AuthSession.used_at).is_(None), col(AuthSession.revoked_at).is_(None)
        )
        return list((await session.exec(statement)).all())


async def test_concurrent_rotations_in_separate_transactions_hand_out_one_successor(
    session_factory: SessionFactory,
) -> None:
    token = await _login(session_factory)
    rotations = await asyncio.gather(*[_rotate(session_factory, token) for _ in range(10)])
    assert len({rotation.token for rotation in rotations}) == 1
    assert sorted(rotation.replayed for rotation in rotations) == [False] + [True] * 9
    live = await _live(session_factory)
    assert [row.id for row in live] == [rotations[0].row.id]


async def _wait_for_a_lock_wait(session_factory: SessionFactory) -> None:
    """Return once another backend of this database waits for a row lock (bounded)."""
    statement = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    for _ in range(200):
        async with session_factory() as session:
            if (await session.exec(statement)).scalar_one() > 0:
                return
        await asyncio.sleep(0.05)
    raise AssertionError("the second refresh never waited for the first one's row lock")


async def test_a_refresh_waits_for_the_one_holding_the_token_and_then_replays(
    session_factory: SessionFactory,
) -> None:
    token = await _login(session_factory)
    async with session_factory() as first:
        won = await sessions.rotate(first, token, policy=POLICY, key=KEY, now=utcnow())
        # Not committed yet: a second refresh must wait for this transaction, not race past it.
        second = asyncio.create_task(_rotate(session_factory, token))
        await _wait_for_a_lock_wait(session_factory)
        await first.commit()
    replayed = await second
    assert replayed.replayed
    assert replayed.token == won.token
    assert len(await _live(session_factory)) == 1


async def test_a_refresh_that_read_the_token_before_a_concurrent_winner_committed_replays(
    session_factory: SessionFactory,
) -> None:
    token = await _login(session_factory)
    async with session_factory() as late, session_factory() as early:
        # `late` reads the token while it is still unused ...
        seen = await sessions.find_by_token(late, token)
        assert seen is not None
        assert seen.used_at is None
        # ... then `early` rotates it and commits first: `late` reads it again under its lock.
        won = await sessions.rotate(early, token, policy=POLICY, key=KEY, now=utcnow())
        await early.commit()
        replayed = await sessions.rotate(late, token, policy=POLICY, key=KEY, now=utcnow())
        await late.commit()
    assert replayed.replayed
    assert replayed.token == won.token
    assert len(await _live(session_factory)) == 1


async def test_without_grace_the_late_refresh_is_reuse(session_factory: SessionFactory) -> None:
    token = await _login(session_factory)
    await _rotate(session_factory, token, policy=NO_GRACE)
    with pytest.raises(sessions.RefreshRejected) as rejected:
        await _rotate(session_factory, token, policy=NO_GRACE)
    assert rejected.value.reason == "reuse"


async def test_a_replay_past_the_grace_is_reuse(session_factory: SessionFactory) -> None:
    token = await _login(session_factory)
    await _rotate(session_factory, token)
    with pytest.raises(sessions.RefreshRejected) as rejected:
        await _rotate(session_factory, token, after=timedelta(seconds=6))
    assert rejected.value.reason == "reuse"
    assert rejected.value.family_id is not None


async def test_a_replay_under_another_key_is_refused_but_not_taken_for_reuse(
    session_factory: SessionFactory,
) -> None:
    token = await _login(session_factory)
    await _rotate(session_factory, token)
    with pytest.raises(sessions.RefreshRejected) as rejected:
        await _rotate(session_factory, token, key=b"x" * 32)
    assert rejected.value.reason == "concurrent refresh"
    assert len(await _live(session_factory)) == 1


async def test_a_replay_never_revives_an_expired_successor(session_factory: SessionFactory) -> None:
    token = await _login(session_factory)
    rotation = await _rotate(session_factory, token)
    async with transaction(session_factory) as session:
        row = await session.get(AuthSession, rotation.row.id)
        assert row is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
        session.add(row)
    with pytest.raises(sessions.RefreshRejected) as rejected:
        await _rotate(session_factory, token)
    assert rejected.value.reason == "session expired"


async def test_successor_tokens_depend_on_the_token_and_the_key() -> None:
    assert sessions.successor_token(KEY, "a") == sessions.successor_token(KEY, "a")
    assert sessions.successor_token(KEY, "a") != sessions.successor_token(KEY, "b")
    assert sessions.successor_token(KEY, "a") != sessions.successor_token(b"x" * 32, "a")
    assert len(sessions.successor_token(KEY, "a")) == 43


async def test_expiry_is_capped_by_the_absolute_lifetime() -> None:
    now = utcnow()
    assert POLICY.expiry(now, now) == now + timedelta(minutes=30)
    started = now - timedelta(hours=8) + timedelta(minutes=10)
    assert POLICY.expiry(started, now) == started + timedelta(hours=8)
