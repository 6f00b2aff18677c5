"""Care-team links (who may access which patient): admin grant/revoke/list and the caller's own patients."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status
from sqlmodel import col, select

from auth_db.models import CareTeamLink, User
from auth_db.types import utcnow
from gateway.audit import Outcome
from gateway.deps import AuditDep, SessionDep, SessionFactoryDep, SettingsDep
from gateway.errors import NotFound, problem_responses
from gateway.schemas.access import CareTeamGrant, CareTeamLinkOut, CareTeamPage, MyPatients
from gateway.security.access import FHIR_ID_PATTERN, grant_care_team
from gateway.security.deps import require
from gateway.security.principal import Permission, Principal
from gateway.services.cursors import SignedCursor, newest_first_by_id
from gateway.services.patients import summary
from gateway.upstream.fhir import FhirDep

admin_router = APIRouter(prefix="/admin/care-team", tags=["care team (admin)"])
me_router = APIRouter(prefix="/me", tags=["care team"])

Admin = Annotated[Principal, Depends(require(Permission.care_team_admin))]
Clinician = Annotated[Principal, Depends(require(Permission.patient_read))]
MAX_MY_PATIENTS = 200


def _out(link: CareTeamLink) -> CareTeamLinkOut:
    return CareTeamLinkOut.model_validate(link, from_attributes=True)


@admin_router.post(
    "",
    response_model=CareTeamLinkOut,
    status_code=status.HTTP_201_CREATED,
    summary="Link a user to a patient",
    responses=problem_responses(401, 403, 404, 422),
)
async def grant(body: CareTeamGrant, admin: Admin, session: SessionDep, audit: AuditDep) -> CareTeamLinkOut:
    user = await session.get(User, body.user_id)
    if user is None or not user.is_active:
        raise NotFound("No active user with this id.", code="user_not_found")
    link = await grant_care_team(
        session, user_id=body.user_id, patient_id=body.patient_id, granted_by=admin.user_id
    )
    audit.stage(
        session,
        action="care_team.grant",
        outcome=Outcome.success,
        actor=admin.actor,
        target_type="user",
        target_id=str(body.user_id),
        patient_id=body.patient_id,
    )
    return _out(link)


@admin_router.delete(
    "/{link_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke a care-team link (effective at once; on other workers within AUTHZ_CACHE_MS)",
    responses=problem_responses(401, 403, 404, 422),
)
async def revoke(
    link_id: Annotated[int, Path(ge=1, le=2**31 - 1)], admin: Admin, session: SessionDep, audit: AuditDep
) -> Response:
    link = await session.get(CareTeamLink, link_id)
    if link is None or link.revoked_at is not None:
        raise NotFound("No active care-team link with this id.", code="care_team_link_not_found")
    link.revoked_at = utcnow()
    link.revoked_by = admin.user_id
    session.add(link)
    audit.stage(
        session,
        action="care_team.revoke",
        outcome=Outcome.success,
        actor=admin.actor,
        target_type="user",
        target_id=str(link.user_id),
        patient_id=link.patient_id,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@admin_router.get(
    "",
    response_model=CareTeamPage,
    summary="List care-team links",
    responses=problem_responses(401, 403, 422),
)
async def list_links(
    admin: Admin,
    factory: SessionFactoryDep,
    settings: SettingsDep,
    user: uuid.UUID | None = None,
    patient: Annotated[str | None, Query(pattern=FHIR_ID_PATTERN)] = None,
    active: bool = True,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> CareTeamPage:
    codec = SignedCursor(settings, "care-team")
    statement = select(CareTeamLink)
    if user is not None:
        statement = statement.where(col(CareTeamLink.user_id) == user)
    if patient is not None:
        statement = statement.where(col(CareTeamLink.patient_id) == patient)
    if active:
        statement = statement.where(col(CareTeamLink.revoked_at).is_(None))
    rows, next_cursor = await newest_first_by_id(
        factory,
        statement,
        col(CareTeamLink.id),
        codec=codec,
        cursor=cursor,
        bound_to=str(admin.user_id),
        limit=limit,
    )
    return CareTeamPage(items=[_out(row) for row in rows], next=next_cursor)


@me_router.get(
    "/patients",
    response_model=MyPatients,
    summary="My patients (active care-team links), resolved in one FHIR search",
    responses=problem_responses(401, 403, 502, 503, 504),
)
async def my_patients(
    principal: Clinician, factory: SessionFactoryDep, fhir: FhirDep, audit: AuditDep
) -> MyPatients:
    async with factory() as session:
        ids = list(
            await session.exec(
                select(CareTeamLink.patient_id)
                .where(col(CareTeamLink.user_id) == principal.user_id, col(CareTeamLink.revoked_at).is_(None))
                .order_by(col(CareTeamLink.granted_at).desc())
                .limit(MAX_MY_PATIENTS)
            )
        )
    resources = await fhir.read_patients(ids)
    found = {str(r.get("id")): r for r in resources}
    await audit.record(
        action="patient.list_mine",
        outcome=Outcome.success,
        actor=principal.actor,
        resource_ids=list(found),
    )
    return MyPatients(
        items=[summary(found[i]) for i in ids if i in found], missing=[i for i in ids if i not in found]
    )
