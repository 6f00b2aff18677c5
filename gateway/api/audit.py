"""The audit trail for administrators: filtered pages and a streaming FHIR AuditEvent export."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from gateway.audit import Outcome
from gateway.deps import AuditDep, SessionFactoryDep, SettingsDep
from gateway.errors import problem_responses
from gateway.schemas.access import AuditEventOut, AuditPage
from gateway.security.access import FHIR_ID_PATTERN
from gateway.security.deps import require
from gateway.security.principal import Permission, Principal
from gateway.services import audit_query
from gateway.services.cursors import SignedCursor, invalid_cursor

router = APIRouter(prefix="/admin/audit", tags=["audit (admin)"])
Admin = Annotated[Principal, Depends(require(Permission.audit_read))]


async def _filter(
    user: uuid.UUID | None = None,
    patient: Annotated[str | None, Query(pattern=FHIR_ID_PATTERN)] = None,
    action: Annotated[str | None, Query(max_length=64, pattern=r"^[a-z_]+(\.[a-z_]+)*$")] = None,
    outcome: Literal["success", "failure", "denied", "error"] | None = None,
    since: Annotated[datetime | None, Query(alias="from")] = None,
    until: Annotated[datetime | None, Query(alias="to")] = None,
) -> audit_query.AuditFilter:
    return audit_query.AuditFilter(user, patient, action, outcome, since, until).check()


Filter = Annotated[audit_query.AuditFilter, Depends(_filter)]


@router.get(
    "",
    response_model=AuditPage,
    summary="Audit events, newest first",
    responses=problem_responses(401, 403, 422),
)
async def list_audit(
    admin: Admin,
    where: Filter,
    factory: SessionFactoryDep,
    settings: SettingsDep,
    audit: AuditDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> AuditPage:
    codec = SignedCursor(settings, "audit")
    after = None
    if cursor is not None:
        data = codec.decode(cursor, bound_to=str(admin.user_id))
        try:
            after = (datetime.fromisoformat(str(data["t"])), int(data["i"]))
        except (KeyError, ValueError):
            raise invalid_cursor() from None
    rows, position = await audit_query.page(factory, where, limit=limit, after=after)
    await audit.record(action="audit.read", outcome=Outcome.success, actor=admin.actor)
    next_cursor = (
        codec.encode({"t": position[0].isoformat(), "i": position[1]}, bound_to=str(admin.user_id))
        if position
        else None
    )
    return AuditPage(
        items=[AuditEventOut.model_validate(row, from_attributes=True) for row in rows], next=next_cursor
    )


@router.get(
    "/export",
    summary="Stream matching events as FHIR R4 AuditEvent resources (NDJSON)",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/fhir+ndjson": {"schema": {"type": "string"}}},
            "description": "One AuditEvent per line.",
        },
        **problem_responses(401, 403, 422),
    },
)
async def export_audit(
    admin: Admin, where: Filter, factory: SessionFactoryDep, audit: AuditDep
) -> StreamingResponse:
    await audit.record(action="audit.export", outcome=Outcome.success, actor=admin.actor)
    return StreamingResponse(
        audit_query.export_ndjson(factory, where),
        media_type="application/fhir+ndjson",
        headers={"Content-Disposition": 'attachment; filename="audit-events.ndjson"'},
    )
