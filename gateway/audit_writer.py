"""Group commit of audit records: concurrent requests' rows are written together, each request waiting
for the commit that holds its row.

A request that must be audited hands its row to :meth:`AuditWriter.write` and awaits it. One background
task per process takes every row waiting at that moment (up to ``AUDIT_BATCH_MAX``), inserts them in one
transaction (:meth:`auth_db.hotpath.HotStore.insert_audit`) and then wakes their requests. While one
batch is being committed the next one gathers, so under load a commit carries many rows; alone, a
request's row is committed at once (there is no waiting for company).

Fail closed: if the batch's transaction fails, **every** request whose row was in it gets
:class:`gateway.audit.AuditUnavailable` (503 ``audit_unavailable``), so no PHI leaves without its
record being durable. A request cancelled while waiting (client gone) does not stop its row from
being written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from auth_db.hotpath import HotStore, HotStoreUnavailable
from gateway.errors import ServiceUnavailable

logger = logging.getLogger("gateway.audit")

#: Rows per transaction at most.
DEFAULT_BATCH_MAX = 500


class AuditUnavailable(ServiceUnavailable):
    code = "audit_unavailable"
    title = "Audit trail unavailable"


def audit_unavailable() -> AuditUnavailable:
    """The one answer to a request whose audit record could not be made durable."""
    return AuditUnavailable(
        "The audit trail cannot be written; the request was not completed.", retry_after=5
    )


BatchObserver = Callable[[int, float, bool], None]


class AuditWriter:
    """Writes audit rows in batches, one transaction per batch, from one background task."""

    def __init__(
        self,
        store: HotStore,
        *,
        batch_max: int = DEFAULT_BATCH_MAX,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self.store = store
        self.batch_max = batch_max
        self.on_batch = on_batch
        self._pending: list[tuple[Mapping[str, Any], asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        #: Batches committed and rows written since start (for tests and metrics).
        self.batches = 0
        self.rows = 0
        #: Rows of the batch being committed now.
        self.in_flight = 0

    @property
    def waiting(self) -> int:
        """Rows handed in and not yet taken into a batch."""
        return len(self._pending)

    def start(self) -> None:
        """Start the background task (in the running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-writer")

    async def close(self) -> None:
        """Commit every row handed in (also those handed in while this waits), then stop.

        The app's shutdown calls it once the server has drained its requests and before it closes the
        auth DB pools; a :meth:`write` after it has returned is refused (503).
        """
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def write(self, row: Mapping[str, Any]) -> None:
        """Return once ``row`` is committed.

        Raises:
            AuditUnavailable: the transaction holding the row failed (or the writer is stopped).
        """
        if self._task is None or self._task.done():
            raise audit_unavailable()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        self._wakeup.set()
        await future  # cancelled with the request if the client goes; the row is written all the same

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self.batch_max]
                del self._pending[: self.batch_max]
                await self._commit(batch)
            if self._closing:
                return

    async def _commit(self, batch: list[tuple[Mapping[str, Any], asyncio.Future[None]]]) -> None:
        started = time.perf_counter()
        failure: BaseException | None = None
        self.in_flight = len(batch)
        try:
            await self.store.insert_audit([row for row, _ in batch])
        except HotStoreUnavailable as exc:
            failure = exc
            logger.error("audit batch of %d rows failed: %s", len(batch), exc)
        except Exception as exc:  # never let the writer die: fail this batch closed and go on
            failure = exc
            logger.exception("audit batch of %d rows failed unexpectedly", len(batch))
        finally:
            self.in_flight = 0
        if self.on_batch is not None:
            self.on_batch(len(batch), time.perf_counter() - started, failure is None)
        if failure is None:
            self.batches += 1
            self.rows += len(batch)
        for _, future in batch:
            if future.done():
                continue
            if failure is None:
                future.set_result(None)
            else:
                future.set_exception(audit_unavailable())
