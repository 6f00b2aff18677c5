"""An Idempotency-Key left ``in_progress`` by a replica that died is taken over after its claim runs out."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from auth_db.engine import SessionFactory
from gateway.errors import Conflict
from gateway.services import idempotency
from gateway.settings import Settings
from tests.factories import create_user


def test_the_claim_lasts_one_upstream_call_and_one_drain() -> None:
    settings = Settings(upstream_total_timeout=20, shutdown_drain_seconds=20)
    assert idempotency.in_progress_ttl(settings) == timedelta(seconds=40)


async def test_a_running_claim_blocks_and_an_expired_one_is_taken_over(
    session_factory: SessionFactory,
) -> None:
    user = await create_user(session_factory, username=f"idem-{uuid.uuid4().hex[:8]}", roles=["clinician"])
    args = {"user_id": user.id, "key": "letter-key-0001", "scope": "POST /patients/1/letters", "hash_": "h"}
    await idempotency.claim(session_factory, **args, in_progress_for=timedelta(minutes=1))
    with pytest.raises(Conflict) as refused:
        await idempotency.claim(session_factory, **args)
    assert refused.value.code == "idempotency_in_progress"
    other = {**args, "key": "letter-key-0002"}
    await idempotency.claim(session_factory, **other, in_progress_for=timedelta(0))  # its replica died
    taken = await idempotency.claim(session_factory, **other)
    assert taken.replay is None  # ours to execute now
