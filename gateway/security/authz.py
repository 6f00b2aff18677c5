"""The per-request authorisation check, in one round trip, with a bounded positive cache.

Every authenticated request asks the auth database one question (:meth:`auth_db.hotpath.HotStore.authorize`):
is the token's session family alive, is the account active, which roles does it hold, and — when the
request names a patient — has the user a care-team link or an unexpired break-glass grant for that patient
(plus the patient's cached EHR id).

A **positive** answer may be reused by this process for at most ``AUTHZ_CACHE_MS`` milliseconds, counted
from the moment the statement was sent (0 turns the cache off). So logout, session revocation, disabling an
account, a password reset, a revoked care-team link or an expired break-glass grant are seen by every
worker within that bound; this process also forgets its cached answers as soon as it commits such a change
itself (:func:`watch_authorisation_changes`). Negative answers are never cached: a refused request asks
again next time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from cachetools import TLRUCache
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from auth_db.hotpath import AuthzRow, HotStore
from auth_db.types import utcnow

#: Tables whose changes can take a permission away; a commit touching one clears the cache of this process.
AUTHORISATION_TABLES = frozenset(
    {"user", "user_role", "session", "care_team", "break_glass_grant", "system_setting"}
)
#: Cached answers per process at most (a few hundred bytes each).
CACHE_ENTRIES = 10_000
_INFO_KEY = "authorisation_cache"
_TOUCHED_KEY = "authorisation_touched"


@dataclass(frozen=True, slots=True)
class _Entry:
    row: AuthzRow
    expires_at: float


class Authoriser:
    """Runs the authorisation statement, reusing a positive answer for at most ``cache_ms``."""

    def __init__(
        self,
        store: HotStore,
        *,
        cache_ms: int,
        max_entries: int = CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl = cache_ms / 1000
        self._clock = clock
        self._cache: TLRUCache[Hashable, _Entry] | None = (
            TLRUCache(maxsize=max_entries, ttu=lambda _key, entry, _now: entry.expires_at, timer=clock)
            if cache_ms > 0
            else None
        )
        self._pending: dict[Hashable, asyncio.Future[AuthzRow | None]] = {}

    async def check(
        self, *, user_id: uuid.UUID, family_id: uuid.UUID, patient_id: str | None
    ) -> AuthzRow | None:
        """The answer for this session (and patient); None when the session is not alive.

        Raises:
            auth_db.hotpath.HotStoreUnavailable: the auth database did not answer.
        """
        key = (family_id, user_id, patient_id)
        if self._cache is None:  # no reuse at all: every request asks
            return await self.store.authorize(
                user_id=user_id, family_id=family_id, patient_id=patient_id, now=utcnow()
            )
        entry = self._cache.get(key)
        if entry is not None:
            return entry.row
        # One question per key at a time: requests arriving while it is asked share its answer (an answer
        # younger than the cache bound), instead of all asking when a cached answer has just expired.
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = asyncio.get_running_loop().create_future()
        self._pending[key] = pending
        try:
            asked_at = self._clock()
            row = await self.store.authorize(
                user_id=user_id, family_id=family_id, patient_id=patient_id, now=utcnow()
            )
        except asyncio.CancelledError:
            pending.cancel()
            raise
        except Exception as error:
            pending.set_exception(error)
            pending.exception()  # retrieved: no "never retrieved" warning when nobody shared it
            raise
        finally:
            del self._pending[key]
        if row is not None:
            # the bound counts from when the question was asked, not from when the answer came back
            self._cache[key] = _Entry(row, asked_at + self.ttl)
        pending.set_result(row)
        return row

    def clear(self) -> None:
        """Forget every cached answer (after a change that may take a permission away)."""
        if self._cache is not None:
            self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache) if self._cache is not None else 0


def watch_authorisation_changes(session_info: dict[str, Any], authoriser: Authoriser) -> None:
    """Make sessions created with ``session_info`` clear ``authoriser``'s cache when they commit a change
    to a table the authorisation check reads (pass the dict as the session factory's ``info``)."""
    session_info[_INFO_KEY] = authoriser


def _touches(table_name: str | None) -> bool:
    return table_name in AUTHORISATION_TABLES


@event.listens_for(Session, "do_orm_execute")
def _on_execute(state: ORMExecuteState) -> None:
    if (state.is_update or state.is_delete) and _INFO_KEY in state.session.info:
        table = getattr(state.statement, "table", None)
        if _touches(getattr(table, "name", None)):
            state.session.info[_TOUCHED_KEY] = True


@event.listens_for(Session, "after_flush")
def _on_flush(session: Session, _context: UOWTransaction) -> None:
    if _INFO_KEY not in session.info:
        return
    for instance in (*session.new, *session.dirty, *session.deleted):
        if _touches(getattr(type(instance), "__tablename__", None)):
            session.info[_TOUCHED_KEY] = True
            return


@event.listens_for(Session, "after_commit")
def _on_commit(session: Session) -> None:
    if session.info.pop(_TOUCHED_KEY, False):
        authoriser = session.info.get(_INFO_KEY)
        if isinstance(authoriser, Authoriser):
            authoriser.clear()


@event.listens_for(Session, "after_rollback")
def _on_rollback(session: Session) -> None:
    session.info.pop(_TOUCHED_KEY, None)
