"""Recording to the append-only audit trail.

Audit records are written in their **own** short transaction, committed before the handler
goes on: a denial is kept even when the request's own transaction rolls back, and a PHI
response is only produced after its audit record is durable (fail closed: if the insert
fails, the request fails with 503 and no PHI leaves the gateway).
"""

from __future__ import annotations

import logging
import uuid
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
from gateway.errors import ServiceUnavailable

logger = logging.getLogger("gateway.audit")


class Outcome(StrEnum):
    success = "success"
    failure = "failure"
    denied = "denied"
    error = "error"


class AuditUnavailable(ServiceUnavailable):
    code = "audit_unavailable"
    title = "Audit trail unavailable"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted: a user id and username (both may be unknown, e.g. a failed login)."""

    user_id: uuid.UUID | None
    username: str | None


@dataclass(frozen=True, slots=True)
class AuditLog:
    """Writes audit events; bound per request to its client address and request id."""

    session_factory: SessionFactory
    client_addr: str | None = None
    request_id: str | None = None

    def for_request(self, request: Request) -> AuditLog:
        client = request.client.host if request.client else None
        request_id = getattr(request.state, "request_id", None)
        return replace(self, client_addr=client, request_id=request_id)

    def build(
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
    ) -> AuditEvent:
        """One audit event for this request (not yet written)."""
        return AuditEvent(
            occurred_at=utcnow(),
            actor_user_id=actor.user_id if actor else None,
            actor_username=actor.username if actor else None,
            action=action,
            outcome=str(outcome),
            target_type=target_type,
            target_id=target_id,
            patient_id=patient_id,
            ehr_id=ehr_id,
            resource_ids=list(resource_ids) if resource_ids is not None else None,
            reason=reason,
            break_glass=break_glass,
            client_addr=self.client_addr,
            request_id=self.request_id,
            details=details,
        )

    def stage(self, session: AsyncSession, **fields: Any) -> AuditEvent:
        """Add an audit event to ``session``: it commits atomically with the change it records.

        Use this for a *successful* change made in the request's transaction (the embedded SQLite
        database also needs it: a second connection cannot write while the request holds the write
        lock). Denials and failures go through :meth:`record`, which survives a rollback.
        """
        event = self.build(**fields)
        session.add(event)
        return event

    async def record(self, **fields: Any) -> AuditEvent:
        """Insert one audit event in a transaction of its own and commit it.

        Takes the keyword arguments of :meth:`build`.

        Raises:
            AuditUnavailable: the record could not be written; the caller must not return PHI.
        """
        event = self.build(**fields)
        try:
            async with self.session_factory() as session:
                session.add(event)
                await session.commit()
        except SQLAlchemyError as exc:
            logger.error("audit write failed: %s (action=%s)", type(exc).__name__, fields.get("action"))
            raise AuditUnavailable(
                "The audit trail cannot be written; the request was not completed."
            ) from None
        return event
