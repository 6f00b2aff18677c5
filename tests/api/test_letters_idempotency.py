"""Idempotency-Key storage on the auth database (real PostgreSQL)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlmodel import select

from auth_db.engine import SessionFactory
from auth_db.models import IdempotencyKey
from auth_db.types import utcnow
from gateway.errors import Conflict, UnprocessableEntity
from gateway.security.principal import Role
from gateway.services import idempotency
from tests.factories import create_user

SCOPE = "POST /patients/p1/letters"


async def _user(session_factory: SessionFactory) -> uuid.UUID:
    user = await create_user(session_factory, username=f"clin{uuid.uuid4().hex[:6]}", roles=[Role.clinician])
    return user.id


async def test_first_use_claims_then_replays_the_stored_ids(session_factory: SessionFactory) -> None:
    user_id = await _user(session_factory)
    hash_ = idempotency.request_hash(SCOPE, {"title": "a"})
    first = await idempotency.claim(
        session_factory, user_id=user_id, key="key-00000001", scope=SCOPE, hash_=hash_
    )
    assert first.replay is None
    await idempotency.complete(session_factory, first, status=201, ref={"ehr_id": "e", "version_uid": "v"})
    again = await idempotency.claim(
        session_factory, user_id=user_id, key="key-00000001", scope=SCOPE, hash_=hash_
    )
    assert again.replay == {"ehr_id": "e", "version_uid": "v"}
    assert again.replay_status == 201


async def test_same_key_other_body_is_refused(session_factory: SessionFactory) -> None:
    user_id = await _user(session_factory)
    claimed = await idempotency.claim(
        session_factory,
        user_id=user_id,
        key="key-00000002",
        scope=SCOPE,
        hash_=idempotency.request_hash(SCOPE, {"title": "a"}),
    )
    await idempotency.complete(session_factory, claimed, status=201, ref={})
    with pytest.raises(UnprocessableEntity) as caught:
        await idempotency.claim(
            session_factory,
            user_id=user_id,
            key="key-00000002",
            scope=SCOPE,
            hash_=idempotency.request_hash(SCOPE, {"title": "b"}),
        )
    assert caught.value.code == "idempotency_key_reused"


async def test_concurrent_use_while_in_progress_is_409(session_factory: SessionFactory) -> None:
    user_id = await _user(session_factory)
    hash_ = idempotency.request_hash(SCOPE, {})
    await idempotency.claim(session_factory, user_id=user_id, key="key-00000003", scope=SCOPE, hash_=hash_)
    with pytest.raises(Conflict) as caught:
        await idempotency.claim(
            session_factory, user_id=user_id, key="key-00000003", scope=SCOPE, hash_=hash_
        )
    assert caught.value.code == "idempotency_in_progress"


async def test_keys_are_per_user(session_factory: SessionFactory) -> None:
    alice, bob = await _user(session_factory), await _user(session_factory)
    hash_ = idempotency.request_hash(SCOPE, {})
    await idempotency.claim(session_factory, user_id=alice, key="key-00000004", scope=SCOPE, hash_=hash_)
    claimed = await idempotency.claim(
        session_factory, user_id=bob, key="key-00000004", scope=SCOPE, hash_=hash_
    )
    assert claimed.replay is None


async def test_released_and_expired_keys_can_be_used_again(session_factory: SessionFactory) -> None:
    user_id = await _user(session_factory)
    hash_ = idempotency.request_hash(SCOPE, {})
    claimed = await idempotency.claim(
        session_factory, user_id=user_id, key="key-00000005", scope=SCOPE, hash_=hash_
    )
    await idempotency.release(session_factory, claimed)
    claimed = await idempotency.claim(
        session_factory, user_id=user_id, key="key-00000005", scope=SCOPE, hash_=hash_
    )
    await idempotency.complete(session_factory, claimed, status=201, ref={"version_uid": "old"})
    async with session_factory() as session:
        row = (await session.exec(select(IdempotencyKey).where(IdempotencyKey.key == "key-00000005"))).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
        session.add(row)
        await session.commit()
    fresh = await idempotency.claim(
        session_factory,
        user_id=user_id,
        key="key-00000005",
        scope=SCOPE,
        hash_=idempotency.request_hash(SCOPE, {"other": True}),
    )
    assert fresh.replay is None


async def test_stored_reference_holds_ids_only(session_factory: SessionFactory) -> None:
    user_id = await _user(session_factory)
    claimed = await idempotency.claim(
        session_factory,
        user_id=user_id,
        key="key-00000006",
        scope=SCOPE,
        hash_=idempotency.request_hash(SCOPE, {}),
    )
    await idempotency.complete(session_factory, claimed, status=201, ref={"ehr_id": "e", "letter_id": "l"})
    async with session_factory() as session:
        row = (await session.exec(select(IdempotencyKey).where(IdempotencyKey.key == "key-00000006"))).one()
    assert row.state == "completed"
    assert row.expires_at > utcnow() + timedelta(hours=23)
    assert set(row.response_ref or {}) == {"ehr_id", "letter_id"}
