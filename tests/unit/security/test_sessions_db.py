"""The session store on PostgreSQL: the conditional claim that lets only one refresh win a race."""

from __future__ import annotations

from datetime import timedelta

import pytest

from auth_db.engine import SessionFactory
from auth_db.types import utcnow
from gateway.security import sessions
from tests.factories import create_user

POLICY = sessions.SessionPolicy(idle=timedelta(minutes=30), absolute=timedelta(hours=8))


async def test_a_refresh_that_read_the_token_before_a_concurrent_winner_committed_loses(
    session_factory: SessionFactory,
) -> None:
    user = await create_user(session_factory, username="carol", roles=["clinician"])
    now = utcnow()
    async with session_factory() as session:
        _, token = await sessions.start_session(
            session, user_id=user.id, policy=POLICY, now=now, client_addr=None, user_agent=None
        )
        await session.commit()
    async with session_factory() as late, session_factory() as early:
        # `late` reads the token while it is still unused ...
        seen = await sessions.find_by_token(late, token)
        assert seen is not None
        assert seen.used_at is None
        # ... then `early` rotates it and commits first.
        await sessions.rotate(early, token, policy=POLICY, now=now)
        await early.commit()
        with pytest.raises(sessions.RefreshRejected) as rejected:
            await sessions.rotate(late, token, policy=POLICY, now=now)
        await late.rollback()
    assert rejected.value.reason == "concurrent refresh"


async def test_expiry_is_capped_by_the_absolute_lifetime() -> None:
    now = utcnow()
    assert POLICY.expiry(now, now) == now + timedelta(minutes=30)
    started = now - timedelta(hours=8) + timedelta(minutes=10)
    assert POLICY.expiry(started, now) == started + timedelta(hours=8)
