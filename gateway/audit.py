"""Recording to the append-only audit trail.

Two ways in:

- :meth:`AuditLog.record` — denials, failures and PHI access. In the gateway process the row goes
  through the group commit of :class:`gateway.audit_writer.AuditWriter` (one transaction for the rows of
  concurrent requests, each request waiting for the commit that holds its row); elsewhere (the command
  line) it is inserted in a transaction of its own. Either way it is durable when ``record`` returns, and
  it survives a rollback of the request's own transaction. Fail closed: if it cannot be written the call
  raises :class:`AuditUnavailable` (503) and the caller must not return PHI.
- :meth:`AuditLog.stage` — a *successful* change made in the request's transaction: the record commits
  atomically with the change it records.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from fastapi import Request
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel.ext.asyncio.session import AsyncSession

from auth_db.engine import SessionFactory
from auth_db.models import AuditEvent
from auth_db.types import utcnow
from gateway.audit_writer import AuditUnavailable, AuditWriter, audit_unavailable
from gateway.security.principal import Actor

__all__ = ["Actor", "AuditLog", "AuditUnavailable", "Outcome"]

logger = logging.getLogger("gateway.audit")

#: Column widths of ``audit_event`` (longer values are cut and NUL characters dropped, so that one odd value
#: cannot fail the whole group-commit batch it travels in).
_LIMITS = {
    "actor_username": 64,
    "action": 64,
    "outcome": 16,
    "target_type": 32,
    "target_id": 200,
    "patient_id": 64,
    "ehr_id": 64,
    "reason": 1000,
    "client_addr": 64,
    "request_id": 128,
}


def _without_nul(value: Any) -> Any:
    """``value`` (JSON-like) with NUL characters dropped from every string in it."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    return value


class Outcome(StrEnum):
    success = "success"
    failure = "failure"
    denied = "denied"
    error = "error"


@dataclass(frozen=True, slots=True)
class AuditLog:
    """Writes audit events; bound per request to its client address and request id."""

    session_factory: SessionFactory
    client_addr: str | None = None
    request_id: str | None = None
    #: The group-commit writer of the gateway process; None (command line): one transaction per record.
    writer: AuditWriter | None = None

    def for_request(self, request: Request) -> AuditLog:
        client = request.client.host if request.client else None
        request_id = getattr(request.state, "request_id", None)
        return replace(self, client_addr=client, request_id=request_id)

    def row(
        self,
        *,
        action: str,
        outcome: Outcome | str,
        actor: Actor | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        patient_id: str | None = None,
        ehr_id: str | None = None,
        resource_ids: Sequence[str] | None = None,
        reason: str | None = None,
        break_glass: bool = False,
        details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One audit event for this request, as the column values of ``audit_event`` (not yet written)."""
        values: dict[str, Any] = {
            "occurred_at": utcnow(),
            "actor_user_id": actor.user_id if actor else None,
            "actor_username": actor.username if actor else None,
            "action": action,
            "outcome": str(outcome),
            "target_type": target_type,
            "target_id": target_id,
            "patient_id": patient_id,
            "ehr_id": ehr_id,
            "resource_ids": list(resource_ids) if resource_ids is not None else None,
            "reason": reason,
            "break_glass": break_glass,
            "client_addr": self.client_addr,
            "request_id": self.request_id,
            "details": details,
        }
        for column in ("resource_ids", "details"):
            if values[column] is not None:
                values[column] = _without_nul(values[column])
        for column, limit in _LIMITS.items():
            value = values[column]
            if value is not None:  # PostgreSQL text cannot hold NUL; one such value must not fail a batch
                values[column] = _without_nul(value)[:limit]
        return values

    def build(self, **fields: Any) -> AuditEvent:
        """One audit event as a table row object (takes the keyword arguments of :meth:`row`)."""
        return AuditEvent(**self.row(**fields))

    def stage(self, session: AsyncSession, **fields: Any) -> AuditEvent:
        """Add an audit event to ``session``: it commits atomically with the change it records.

        Use this for a *successful* change made in the request's transaction (the embedded SQLite
        database also needs it: a second connection cannot write while the request holds the write
        lock). Denials and failures go through :meth:`record`, which survives a rollback.
        """
        event = self.build(**fields)
        session.add(event)
        return event

    async def record(self, **fields: Any) -> None:
        """Write one audit event durably before returning (takes the keyword arguments of :meth:`row`).

        Raises:
            AuditUnavailable: the record could not be written; the caller must not return PHI.
        """
        values = self.row(**fields)
        if self.writer is not None:
            await self.writer.write(values)
            return
        try:
            async with self.session_factory() as session:
                session.add(AuditEvent(**values))
                await session.commit()
        except SQLAlchemyError as exc:
            logger.error("audit write failed: %s (action=%s)", type(exc).__name__, fields.get("action"))
            raise audit_unavailable() from None
