"""Audit records written in the request's own transaction, for successful account changes.

:meth:`gateway.audit.AuditLog.record` commits in a transaction of its own, which is right for
denials and failures (they must survive the request's rollback). A *successful* change, though,
should be recorded atomically with the change itself: :func:`record_in` adds the event to the
request's session, so the change and its audit record commit together or not at all. (It also
keeps the embedded SQLite database usable: a second connection could not write while the request
holds the write lock.)
"""

from __future__ import annotations

from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from auth_db.models import AuditEvent
from auth_db.types import utcnow
from gateway.audit import Actor, AuditLog, Outcome


def record_in(
    session: AsyncSession,
    audit: AuditLog,
    *,
    action: str,
    outcome: Outcome | str,
    actor: Actor | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Add one audit event to ``session``; it commits with the request's transaction."""
    session.add(
        AuditEvent(
            occurred_at=utcnow(),
            actor_user_id=actor.user_id if actor else None,
            actor_username=actor.username if actor else None,
            action=action,
            outcome=str(outcome),
            target_type=target_type,
            target_id=target_id,
            reason=reason,
            client_addr=audit.client_addr,
            request_id=audit.request_id,
            details=details,
        )
    )
