"""``Idempotency-Key`` handling on the auth database (shared by every replica).

A key belongs to one user. The first request with a key inserts an ``in_progress`` row (committed at
once, in its own transaction, so concurrent replicas see it); when the write succeeds the row becomes
``completed`` with the ids of what was written (never PHI). A repeat with the same key and the same
body gets the first result; with a different body it is refused (422 ``idempotency_key_reused``);
while the first is still running it is refused (409 ``idempotency_in_progress``). Keys expire.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select

from auth_db.engine import SessionFactory
from auth_db.models import IdempotencyKey
from auth_db.types import utcnow
from gateway.errors import Conflict, UnprocessableEntity
from gateway.settings import Settings

#: How long a completed key replays its result.
KEY_TTL = timedelta(hours=24)
#: A key left ``in_progress`` this long may be taken over, unless the caller says how long a claim can run.
IN_PROGRESS_TTL = timedelta(minutes=5)


def in_progress_ttl(settings: Settings) -> timedelta:
    """How long a claim stays ``in_progress`` before a retry may take the key over.

    About as long as a claimed write can still be running on a live replica: its upstream call ends within
    ``UPSTREAM_TOTAL_TIMEOUT``, and a stopping replica gives it ``SHUTDOWN_DRAIN_SECONDS``. After that the
    replica that claimed the key has most likely died or lost the auth database, and a retry on any replica
    takes it over (40 s with the defaults, instead of 5 minutes). Taking over is safe even if the first
    write is still running: the letter's composition uid derives from the key, so EHRbase refuses a second
    copy and the retry reads the first back.
    """
    return timedelta(seconds=settings.upstream_total_timeout + settings.shutdown_drain_seconds)


KEY_PATTERN = r"^[A-Za-z0-9_\-:.]{8,128}$"


def request_hash(scope: str, payload: Any) -> str:
    """SHA-256 of the canonical JSON of ``payload`` within ``scope`` (method + route + patient)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{scope}\n{canonical}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of :func:`claim`: either ours to execute, or a replay of the first result."""

    user_id: uuid.UUID
    key: str
    replay: dict[str, Any] | None = None
    replay_status: int | None = None


async def claim(
    factory: SessionFactory,
    *,
    user_id: uuid.UUID,
    key: str,
    scope: str,
    hash_: str,
    in_progress_for: timedelta = IN_PROGRESS_TTL,
) -> Claim:
    """Reserve ``key`` for this request, or return the stored result of its first use.

    Args:
        in_progress_for: how long the claim blocks retries before they may take the key over
            (:func:`in_progress_ttl`).

    Raises:
        UnprocessableEntity: ``idempotency_key_reused`` — same key, different request.
        Conflict: ``idempotency_in_progress`` — the first request with this key is still running.
    """
    for _ in range(3):
        now = utcnow()
        async with factory() as session:
            session.add(
                IdempotencyKey(
                    user_id=user_id,
                    key=key,
                    scope=scope,
                    request_hash=hash_,
                    state="in_progress",
                    created_at=now,
                    expires_at=now + in_progress_for,
                )
            )
            try:
                await session.commit()
                return Claim(user_id, key)
            except IntegrityError:
                await session.rollback()
            row = (
                await session.exec(
                    select(IdempotencyKey).where(IdempotencyKey.user_id == user_id, IdempotencyKey.key == key)
                )
            ).first()
            if row is None:
                continue
            if row.expires_at <= now:
                await session.exec(
                    delete(IdempotencyKey).where(
                        col(IdempotencyKey.user_id) == user_id,
                        col(IdempotencyKey.key) == key,
                        col(IdempotencyKey.expires_at) <= now,
                    )
                )
                await session.commit()
                continue
            if row.request_hash != hash_ or row.scope != scope:
                raise UnprocessableEntity(
                    "This Idempotency-Key was already used for a different request.",
                    code="idempotency_key_reused",
                )
            if row.state != "completed":
                raise Conflict(
                    "A request with this Idempotency-Key is still being processed; retry shortly.",
                    code="idempotency_in_progress",
                    retry_after=2,
                )
            return Claim(user_id, key, replay=dict(row.response_ref or {}), replay_status=row.response_status)
    raise Conflict(
        "A request with this Idempotency-Key is still being processed; retry shortly.",
        code="idempotency_in_progress",
        retry_after=2,
    )


async def complete(factory: SessionFactory, claimed: Claim, *, status: int, ref: dict[str, Any]) -> None:
    """Mark the key completed with the ids of the result (``ref`` must hold ids only)."""
    async with factory() as session:
        row = await session.get(IdempotencyKey, (claimed.user_id, claimed.key))
        if row is None:
            return
        row.state = "completed"
        row.response_status = status
        row.response_ref = ref
        row.expires_at = utcnow() + KEY_TTL
        session.add(row)
        await session.commit()


async def release(factory: SessionFactory, claimed: Claim) -> None:
    """Forget an unfinished key so the client may retry (the write did not complete)."""
    async with factory() as session:
        await session.exec(
            delete(IdempotencyKey).where(
                col(IdempotencyKey.user_id) == claimed.user_id,
                col(IdempotencyKey.key) == claimed.key,
                col(IdempotencyKey.state) == "in_progress",
            )
        )
        await session.commit()
