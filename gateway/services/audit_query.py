"""Reading the audit trail: filtered keyset pages (newest first) and the FHIR AuditEvent export."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import and_, col, or_, select
from sqlmodel.sql.expression import SelectOfScalar

from auth_db.engine import SessionFactory
from auth_db.models import AuditEvent
from gateway.errors import UnprocessableEntity

EXPORT_BATCH = 1000
BALP_ACTIONS = {
    "search": "E",
    "list": "R",
    "read": "R",
    "create": "C",
    "update": "U",
    "amend": "U",
    "delete": "D",
}
OUTCOME_CODES = {"success": "0", "failure": "4", "denied": "4", "error": "8"}


@dataclass(frozen=True, slots=True)
class AuditFilter:
    user: uuid.UUID | None = None
    patient: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def check(self) -> AuditFilter:
        for name, value in (("from", self.since), ("to", self.until)):
            if value is not None and value.tzinfo is None:
                raise UnprocessableEntity(
                    f"'{name}' needs a timezone, e.g. 2026-11-22T08:00:00Z.", code="invalid_range"
                )
        if self.since and self.until and self.since > self.until:
            raise UnprocessableEntity("'from' is after 'to'.", code="invalid_range")
        return self


def _query(where: AuditFilter) -> SelectOfScalar[AuditEvent]:
    statement = select(AuditEvent)
    if where.user is not None:
        statement = statement.where(col(AuditEvent.actor_user_id) == where.user)
    if where.patient is not None:
        statement = statement.where(col(AuditEvent.patient_id) == where.patient)
    if where.action is not None:
        statement = statement.where(col(AuditEvent.action) == where.action)
    if where.outcome is not None:
        statement = statement.where(col(AuditEvent.outcome) == where.outcome)
    if where.since is not None:
        statement = statement.where(col(AuditEvent.occurred_at) >= where.since)
    if where.until is not None:
        statement = statement.where(col(AuditEvent.occurred_at) <= where.until)
    return statement


def _before(
    statement: SelectOfScalar[AuditEvent], after: tuple[datetime, int] | None
) -> SelectOfScalar[AuditEvent]:
    if after is not None:
        at, event_id = after
        statement = statement.where(
            or_(
                col(AuditEvent.occurred_at) < at,
                and_(col(AuditEvent.occurred_at) == at, col(AuditEvent.id) < event_id),
            )
        )
    return statement.order_by(col(AuditEvent.occurred_at).desc(), col(AuditEvent.id).desc())


async def page(
    factory: SessionFactory, where: AuditFilter, *, limit: int, after: tuple[datetime, int] | None
) -> tuple[list[AuditEvent], tuple[datetime, int] | None]:
    """One page, newest first, and the keyset position of the next page (None at the end)."""
    async with factory() as session:
        rows = list(await session.exec(_before(_query(where), after).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if rows else None
    return rows, ((last.occurred_at, int(last.id or 0)) if more and last else None)


async def export_ndjson(factory: SessionFactory, where: AuditFilter) -> AsyncIterator[bytes]:
    """Every matching event as one FHIR R4 AuditEvent per line, read in keyset batches (memory stays flat).

    Rows are read as plain tuples rather than ORM objects: an export touches every row once.
    """
    after: tuple[datetime, int] | None = None
    table = AuditEvent.__table__  # type: ignore[attr-defined]
    while True:
        statement = _before(_query(where), after).with_only_columns(*table.columns).limit(EXPORT_BATCH)
        async with factory() as session:
            connection = await session.connection()
            rows = (await connection.execute(statement)).all()
        if not rows:
            return
        yield b"".join(json.dumps(to_fhir(row), separators=(",", ":")).encode() + b"\n" for row in rows)
        if len(rows) < EXPORT_BATCH:
            return
        after = (rows[-1].occurred_at, rows[-1].id)


def to_fhir(event: Any) -> dict[str, Any]:
    """An audit row (ORM object or row tuple) as a FHIR R4 AuditEvent shaped after IHE BALP."""
    return _to_fhir(event)


def _to_fhir(event: Any) -> dict[str, Any]:
    verb = event.action.rsplit(".", 1)[-1]
    who: dict[str, Any] = {}
    if event.actor_user_id:
        who["identifier"] = {"system": "urn:fhir-openehr-gateway:user", "value": str(event.actor_user_id)}
    if event.actor_username:
        who["display"] = event.actor_username
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(event.id),
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "Restful Operation",
        },
        "subtype": [{"system": "urn:fhir-openehr-gateway:audit-action", "code": event.action}],
        "action": BALP_ACTIONS.get(verb, "E"),
        "recorded": event.occurred_at.isoformat().replace("+00:00", "Z"),
        "outcome": OUTCOME_CODES.get(event.outcome, "8"),
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "IRCP",
                            "display": "information recipient",
                        }
                    ]
                },
                "who": who,
                "requestor": True,
            }
        ],
        "source": {
            "observer": {"display": "fhir-openehr-gateway"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}],
        },
        "entity": [],
    }
    if event.client_addr:
        resource["agent"][0]["network"] = {"address": event.client_addr, "type": "2"}
    if event.outcome != "success":
        resource["outcomeDesc"] = event.outcome + (f": {event.reason}" if event.reason else "")
    if event.break_glass:
        resource["purposeOfEvent"] = [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": "BTG",
                        "display": "break the glass",
                    }
                ]
            }
        ]
    entities: list[dict[str, Any]] = resource["entity"]
    if event.patient_id:
        entities.append(
            {
                "what": {"reference": f"Patient/{event.patient_id}"},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
            }
        )
    if event.ehr_id:
        entities.append({"what": {"identifier": {"system": "urn:openehr:ehr_id", "value": event.ehr_id}}})
    for resource_id in event.resource_ids or []:
        entities.append({"what": {"identifier": {"value": resource_id}}})
    if event.request_id:
        entities.append(
            {
                "what": {
                    "identifier": {"system": "urn:fhir-openehr-gateway:request-id", "value": event.request_id}
                },
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "4"},
            }
        )
    return resource
