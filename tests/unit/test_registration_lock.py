"""The in-process registration lock (embedded SQLite): serialises one identifier, stays bounded."""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace
from typing import cast

from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.services import patients as service


def _sqlite_session() -> AsyncSession:
    """A stand-in session: the lock only asks which dialect the session is bound to."""
    bind = SimpleNamespace(dialect=SimpleNamespace(name="sqlite"))
    return cast(AsyncSession, SimpleNamespace(get_bind=lambda: bind))


async def test_locks_of_many_identifiers_do_not_accumulate() -> None:
    session = _sqlite_session()
    for number in range(2000):
        async with service.registration_lock(session, f"urn:test|{number}"):
            pass
    gc.collect()
    assert len(service._local_locks) == 0


async def test_concurrent_registrations_of_one_identifier_are_serialised() -> None:
    session = _sqlite_session()
    inside = 0
    most_inside = 0
    order: list[str] = []

    async def register(name: str) -> None:
        nonlocal inside, most_inside
        async with service.registration_lock(session, "urn:test|same"):
            inside += 1
            most_inside = max(most_inside, inside)
            order.append(f"{name} in")
            await asyncio.sleep(0.01)
            order.append(f"{name} out")
            inside -= 1

    await asyncio.gather(register("a"), register("b"))
    assert most_inside == 1
    assert order == ["a in", "a out", "b in", "b out"]
    gc.collect()
    assert len(service._local_locks) == 0


async def test_registrations_of_different_identifiers_run_side_by_side() -> None:
    session = _sqlite_session()
    both_inside = asyncio.Event()
    inside = 0

    async def register(identifier: str) -> None:
        nonlocal inside
        async with service.registration_lock(session, identifier):
            inside += 1
            if inside == 2:
                both_inside.set()
            await asyncio.wait_for(both_inside.wait(), timeout=2)

    await asyncio.gather(register("urn:test|one"), register("urn:test|two"))
    assert both_inside.is_set()
