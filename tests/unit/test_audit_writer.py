"""The audit group commit, with a store whose commits the test opens and fails at will (no database).

The same behaviour on a real PostgreSQL, through the API, is in tests/api/test_audit_group_commit.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from auth_db.hotpath import HotStoreUnavailable
from gateway.audit_writer import AuditUnavailable, AuditWriter


class GatedStore:
    """Records each batch; every insert waits for the gate, then fails if ``fail`` is set."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.fail = False
        self.started = asyncio.Event()

    async def insert_audit(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self.started.set()
        await self.gate.wait()
        if self.fail:
            raise HotStoreUnavailable("OperationalError")
        self.batches.append([str(row["request_id"]) for row in rows])

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def wait_until(condition: Any) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0)


@pytest.fixture
async def store_and_writer() -> Any:
    store = GatedStore()
    writer = AuditWriter(store)  # type: ignore[arg-type]
    writer.start()
    yield store, writer
    store.gate.set()
    store.fail = False
    await writer.close()


async def test_rows_waiting_behind_a_commit_share_the_next_transaction(store_and_writer: Any) -> None:
    store, writer = store_and_writer
    first = asyncio.create_task(writer.write({"request_id": "r0"}))
    await store.started.wait()  # r0's transaction is open and not yet committed
    rest = [asyncio.create_task(writer.write({"request_id": f"r{i}"})) for i in range(1, 6)]
    await wait_until(lambda: writer.waiting == 5)
    assert not first.done(), "a request must not return before its row is committed"
    store.gate.set()
    await asyncio.gather(first, *rest)
    assert store.batches == [["r0"], ["r1", "r2", "r3", "r4", "r5"]]
    assert (writer.batches, writer.rows) == (2, 6)


async def test_a_failed_commit_fails_every_request_of_its_batch(store_and_writer: Any) -> None:
    store, writer = store_and_writer
    store.fail = True
    tasks = [asyncio.create_task(writer.write({"request_id": f"r{i}"})) for i in range(4)]
    await wait_until(lambda: writer.in_flight + writer.waiting == 4)
    store.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(result, AuditUnavailable) for result in results), results
    assert all(result.status == 503 for result in results if isinstance(result, AuditUnavailable))
    assert store.batches == []
    # the writer lives on: the next row is written once the store is healthy again
    store.fail = False
    await writer.write({"request_id": "after"})
    assert store.batches == [["after"]]


async def test_batches_are_capped() -> None:
    store = GatedStore()
    writer = AuditWriter(store, batch_max=2)  # type: ignore[arg-type]
    writer.start()
    try:
        tasks = [asyncio.create_task(writer.write({"request_id": f"r{i}"})) for i in range(5)]
        await wait_until(lambda: writer.in_flight + writer.waiting == 5)
        store.gate.set()
        await asyncio.gather(*tasks)
        assert [len(batch) for batch in store.batches] == [2, 2, 1]
    finally:
        await writer.close()


async def test_a_request_gone_while_waiting_still_has_its_row_written(store_and_writer: Any) -> None:
    store, writer = store_and_writer
    task = asyncio.create_task(writer.write({"request_id": "gone"}))
    await store.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    store.gate.set()
    await writer.write({"request_id": "next"})
    assert ["gone"] in store.batches


async def test_a_stopped_writer_refuses_at_once() -> None:
    writer = AuditWriter(GatedStore())  # type: ignore[arg-type]
    with pytest.raises(AuditUnavailable):
        await writer.write({"request_id": "never"})


async def test_close_writes_what_is_waiting(store_and_writer: Any) -> None:
    store, writer = store_and_writer
    tasks = [asyncio.create_task(writer.write({"request_id": f"r{i}"})) for i in range(3)]
    await wait_until(lambda: writer.in_flight + writer.waiting == 3)
    store.gate.set()
    await writer.close()
    await asyncio.gather(*tasks)
    assert sorted(row for batch in store.batches for row in batch) == ["r0", "r1", "r2"]


async def test_close_commits_rows_handed_in_while_a_batch_is_in_flight_then_refuses(
    store_and_writer: Any,
) -> None:
    """The shutdown order: requests still hand in rows while the writer closes; none is lost."""
    store, writer = store_and_writer
    first = asyncio.create_task(writer.write({"request_id": "r0"}))
    await store.started.wait()  # r0's transaction is open
    closing = asyncio.create_task(writer.close())
    late = [asyncio.create_task(writer.write({"request_id": f"late{i}"})) for i in range(2)]
    await wait_until(lambda: writer.waiting == 2)
    store.gate.set()
    await asyncio.gather(first, *late, closing)
    assert store.batches == [["r0"], ["late0", "late1"]]
    with pytest.raises(AuditUnavailable):
        await writer.write({"request_id": "after-close"})
