"""The authorisation cache: positive answers only, for at most the bound, counted from the question."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

from auth_db.hotpath import AuthzRow
from gateway.security.authz import Authoriser

ROW = AuthzRow(
    username="ada",
    display_name="Ada",
    must_change_password=False,
    totp_enabled=False,
    roles=frozenset({"clinician"}),
    require_2fa_for_admins=None,
    care_team=True,
    break_glass=False,
    ehr_id=None,
)
USER, FAMILY = uuid.uuid4(), uuid.uuid4()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountingStore:
    """Answers ``answer`` and counts questions; ``delay`` advances the clock while "querying"."""

    def __init__(self, clock: Clock, answer: AuthzRow | None = ROW, delay: float = 0.0) -> None:
        self.clock = clock
        self.answer = answer
        self.delay = delay
        self.asked: list[str | None] = []

    async def authorize(
        self, *, user_id: uuid.UUID, family_id: uuid.UUID, patient_id: str | None, now: datetime
    ) -> AuthzRow | None:
        self.asked.append(patient_id)
        self.clock.now += self.delay
        await asyncio.sleep(0)
        return self.answer


async def check(authoriser: Authoriser, patient: str | None = "1001") -> AuthzRow | None:
    return await authoriser.check(user_id=USER, family_id=FAMILY, patient_id=patient)


async def test_a_positive_answer_is_reused_within_the_bound_and_asked_again_after() -> None:
    clock = Clock()
    store = CountingStore(clock)
    authoriser = Authoriser(store, cache_ms=500, clock=clock)  # type: ignore[arg-type]
    assert await check(authoriser) == ROW
    clock.now += 0.499
    assert await check(authoriser) == ROW
    assert len(store.asked) == 1
    clock.now += 0.002  # 501 ms after the question
    assert await check(authoriser) == ROW
    assert len(store.asked) == 2


async def test_the_bound_counts_from_the_question_not_the_answer() -> None:
    clock = Clock()
    store = CountingStore(clock, delay=0.4)  # the database took 400 ms to answer
    authoriser = Authoriser(store, cache_ms=500, clock=clock)  # type: ignore[arg-type]
    await check(authoriser)
    clock.now += 0.101  # 501 ms after the question, 101 ms after the answer
    await check(authoriser)
    assert len(store.asked) == 2


async def test_negative_answers_are_never_cached() -> None:
    clock = Clock()
    store = CountingStore(clock, answer=None)
    authoriser = Authoriser(store, cache_ms=1000, clock=clock)  # type: ignore[arg-type]
    assert await check(authoriser) is None
    assert await check(authoriser) is None
    assert len(store.asked) == 2


async def test_each_patient_and_session_is_its_own_answer() -> None:
    clock = Clock()
    store = CountingStore(clock)
    authoriser = Authoriser(store, cache_ms=1000, clock=clock)  # type: ignore[arg-type]
    await check(authoriser, "1001")
    await check(authoriser, "1002")
    await check(authoriser, None)
    await authoriser.check(user_id=USER, family_id=uuid.uuid4(), patient_id="1001")
    assert store.asked == ["1001", "1002", None, "1001"]


async def test_zero_turns_the_cache_off() -> None:
    clock = Clock()
    store = CountingStore(clock)
    authoriser = Authoriser(store, cache_ms=0, clock=clock)  # type: ignore[arg-type]
    await check(authoriser)
    await check(authoriser)
    assert len(store.asked) == 2
    assert len(authoriser) == 0


async def test_clear_forgets_everything() -> None:
    clock = Clock()
    store = CountingStore(clock)
    authoriser = Authoriser(store, cache_ms=1000, clock=clock)  # type: ignore[arg-type]
    await check(authoriser)
    authoriser.clear()
    await check(authoriser)
    assert len(store.asked) == 2


async def test_the_cache_holds_a_bounded_number_of_answers() -> None:
    clock = Clock()
    store = CountingStore(clock)
    authoriser = Authoriser(store, cache_ms=1000, max_entries=3, clock=clock)  # type: ignore[arg-type]
    for patient in ("a", "b", "c", "d", "e"):
        await check(authoriser, patient)
    assert len(authoriser) == 3


class FailingStore(CountingStore):
    async def authorize(
        self, *, user_id: uuid.UUID, family_id: uuid.UUID, patient_id: str | None, now: datetime
    ) -> AuthzRow | None:
        self.asked.append(patient_id)
        await asyncio.sleep(0)
        raise ConnectionError("down")


async def test_concurrent_requests_for_one_key_share_one_question() -> None:
    clock = Clock()
    store = CountingStore(clock)
    authoriser = Authoriser(store, cache_ms=500, clock=clock)  # type: ignore[arg-type]
    answers = await asyncio.gather(*(check(authoriser) for _ in range(20)), check(authoriser, "2002"))
    assert answers == [ROW] * 21
    assert store.asked == ["1001", "2002"]  # one question per key, not one per request


async def test_a_shared_question_that_fails_fails_every_request_and_is_asked_again_next_time() -> None:
    clock = Clock()
    store = FailingStore(clock)
    authoriser = Authoriser(store, cache_ms=500, clock=clock)  # type: ignore[arg-type]
    results = await asyncio.gather(*(check(authoriser) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results)
    assert len(store.asked) == 1
    await asyncio.gather(check(authoriser), return_exceptions=True)
    assert len(store.asked) == 2


async def test_without_a_cache_every_request_asks() -> None:
    clock = Clock()
    store = CountingStore(clock)
    authoriser = Authoriser(store, cache_ms=0, clock=clock)  # type: ignore[arg-type]
    await asyncio.gather(*(check(authoriser) for _ in range(3)))
    assert len(store.asked) == 3
