"""Break-glass: time-limited emergency access to one patient, with a mandatory reason."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, status
from sqlmodel import col, select

from auth_db.models import BreakGlassGrant
from auth_db.types import utcnow
from gateway.audit import Outcome
from gateway.deps import AuditDep, SessionDep, SessionFactoryDep, SettingsDep
from gateway.errors import problem_responses
from gateway.schemas.access import BreakGlassGrantOut, BreakGlassPage, BreakGlassRequest
from gateway.security.access import FHIR_ID_PATTERN, PatientIdPath
from gateway.security.deps import require
from gateway.security.principal import Permission, Principal
from gateway.services.cursors import SignedCursor, newest_first_by_id
from gateway.system_settings import get_system_setting
from gateway.upstream.fhir import FhirDep

router = APIRouter(tags=["break-glass"])

Clinician = Annotated[Principal, Depends(require(Permission.break_glass))]
Admin = Annotated[Principal, Depends(require(Permission.audit_read))]


def _out(grant: BreakGlassGrant) -> BreakGlassGrantOut:
    return BreakGlassGrantOut(
        id=int(grant.id or 0),
        user_id=grant.user_id,
        patient_id=grant.patient_id,
        reason=grant.reason,
        granted_at=grant.granted_at,
        expires_at=grant.expires_at,
        active=grant.revoked_at is None and grant.expires_at > utcnow(),
    )


@router.post(
    "/patients/{patient_id}/break-glass",
    response_model=BreakGlassGrantOut,
    status_code=status.HTTP_201_CREATED,
    summary="Open emergency access to a patient (recorded prominently in the audit trail)",
    responses=problem_responses(401, 403, 404, 410, 422, 502, 503, 504),
)
async def open_break_glass(
    patient_id: PatientIdPath,
    body: BreakGlassRequest,
    principal: Clinician,
    session: SessionDep,
    fhir: FhirDep,
    audit: AuditDep,
) -> BreakGlassGrantOut:
    await fhir.read_patient(patient_id)  # 404/410 for a patient that does not exist
    minutes = await get_system_setting(session, "break_glass_duration_minutes")
    now = utcnow()
    grant = BreakGlassGrant(
        user_id=principal.user_id,
        patient_id=patient_id,
        reason=body.reason,
        granted_at=now,
        expires_at=now + timedelta(minutes=int(minutes)),
    )
    session.add(grant)
    await session.flush()
    audit.stage(
        session,
        action="break_glass.open",
        outcome=Outcome.success,
        actor=principal.actor,
        patient_id=patient_id,
        reason=body.reason,
        break_glass=True,
        details={"expires_at": grant.expires_at.isoformat(), "grant_id": grant.id},
    )
    return _out(grant)


@router.get(
    "/admin/break-glass",
    response_model=BreakGlassPage,
    summary="List break-glass grants, newest first",
    tags=["break-glass (admin)"],
    responses=problem_responses(401, 403, 422),
)
async def list_break_glass(
    admin: Admin,
    factory: SessionFactoryDep,
    settings: SettingsDep,
    audit: AuditDep,
    active: bool | None = None,
    user: uuid.UUID | None = None,
    patient: Annotated[str | None, Query(pattern=FHIR_ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> BreakGlassPage:
    codec = SignedCursor(settings, "break-glass")
    statement = select(BreakGlassGrant)
    now = utcnow()
    if active is True:
        statement = statement.where(
            col(BreakGlassGrant.expires_at) > now, col(BreakGlassGrant.revoked_at).is_(None)
        )
    elif active is False:
        statement = statement.where(col(BreakGlassGrant.expires_at) <= now)
    if user is not None:
        statement = statement.where(col(BreakGlassGrant.user_id) == user)
    if patient is not None:
        statement = statement.where(col(BreakGlassGrant.patient_id) == patient)
    rows, next_cursor = await newest_first_by_id(
        factory,
        statement,
        col(BreakGlassGrant.id),
        codec=codec,
        cursor=cursor,
        bound_to=str(admin.user_id),
        limit=limit,
    )
    await audit.record(action="break_glass.list", outcome=Outcome.success, actor=admin.actor)
    return BreakGlassPage(items=[_out(row) for row in rows], next=next_cursor)
