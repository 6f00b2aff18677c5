"""Per-patient access control: may this user touch this patient?

A user may access a patient's record through an active care-team link or an unexpired
break-glass grant. :func:`patient_access` is the dependency every PHI route that names a
patient uses; it decides **before** any upstream call and writes a denial audit record when
it refuses. The answer normally comes from the same statement that authenticated the request
(:func:`gateway.security.deps.authenticated_principal`), so a PHI request asks the auth database
once; only when the principal was supplied another way (a dependency override) is it asked here.
"""

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Path, Request
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from auth_db.engine import SessionFactory
from auth_db.models import BreakGlassGrant, CareTeamLink
from auth_db.types import utcnow
from gateway.audit import Actor, AuditLog, Outcome
from gateway.deps import AuditDep
from gateway.errors import Forbidden
from gateway.security.deps import FHIR_ID_PATTERN, CurrentPrincipal, Relationship, check_permission

__all__ = [
    "FHIR_ID_PATTERN",
    "PatientAccess",
    "PatientIdPath",
    "authorize_patient",
    "grant_care_team",
    "patient_access",
    "related_patients",
]
from gateway.security.principal import Permission, Principal

PatientIdPath = Annotated[
    str,
    Path(pattern=FHIR_ID_PATTERN, description="FHIR Patient id", examples=["a1b2c3"]),
]


@dataclass(frozen=True, slots=True)
class PatientAccess:
    """The decision that let a request through: who, which patient, and on what basis."""

    principal: Principal
    patient_id: str
    break_glass: bool
    #: The patient's EHR id as cached in the auth database, when the authorisation statement saw one.
    ehr_id: str | None = None

    @property
    def actor(self) -> Actor:
        return self.principal.actor


async def grant_care_team(
    session: AsyncSession, *, user_id: uuid.UUID, patient_id: str, granted_by: uuid.UUID | None
) -> CareTeamLink:
    """Give ``user_id`` a care-team link to ``patient_id`` (idempotent: an active link is returned as is).

    The caller's transaction commits it.
    """
    statement = select(CareTeamLink).where(
        CareTeamLink.user_id == user_id,
        CareTeamLink.patient_id == patient_id,
        col(CareTeamLink.revoked_at).is_(None),
    )
    existing = (await session.exec(statement)).first()
    if existing is not None:
        return existing
    link = CareTeamLink(user_id=user_id, patient_id=patient_id, granted_by=granted_by)
    session.add(link)
    await session.flush()
    return link


def patient_access(permission: Permission, action: str) -> Callable[..., Awaitable[PatientAccess]]:
    """A dependency granting access to the patient named by the ``patient_id`` path parameter.

    Args:
        permission: the role permission the route needs (checked first: 403 ``permission_denied``).
        action: the audit action recorded on a denial, e.g. ``patient.read``.

    Raises:
        Forbidden: ``no_patient_relationship`` when the user has neither a care-team link nor an
            active break-glass grant; a ``denied`` audit record is written first.
    """

    async def dependency(
        request: Request, patient_id: PatientIdPath, principal: CurrentPrincipal, audit: AuditDep
    ) -> PatientAccess:
        return await authorize_patient(request, principal, audit, patient_id, permission, action)

    dependency.__name__ = f"patient_access_{permission.name}"
    return dependency


async def authorize_patient(
    request: Request,
    principal: Principal,
    audit: AuditLog,
    patient_id: str,
    permission: Permission,
    action: str,
) -> PatientAccess:
    """The check :func:`patient_access` makes, for routes that learn the patient another way (``/fhir``).

    Raises:
        Forbidden: ``permission_denied`` or ``no_patient_relationship`` (a ``denied`` record written).
    """
    check_permission(principal, permission)
    found: Relationship | None = getattr(request.state, "relationship", None)
    if found is None or found.user_id != principal.user_id or found.patient_id != patient_id:
        found = await _ask(request, principal.user_id, patient_id)
    if found.care_team:
        return PatientAccess(principal, patient_id, break_glass=False, ehr_id=found.ehr_id)
    if found.break_glass:
        return PatientAccess(principal, patient_id, break_glass=True, ehr_id=found.ehr_id)
    await audit.record(
        action=action,
        outcome=Outcome.denied,
        actor=principal.actor,
        patient_id=patient_id,
        reason="no care-team link or active break-glass grant",
    )
    raise Forbidden(
        "You have no care relationship with this patient. Ask an administrator for a care-team "
        "link, or use break-glass in an emergency.",
        code="no_patient_relationship",
    )


async def relationships(
    factory: SessionFactory, user_id: uuid.UUID, patient_ids: list[str]
) -> dict[str, bool]:
    """The user's relationship with each of ``patient_ids``, asked in one go (outside the hot path).

    The per-request answer comes from the authorisation statement (:mod:`auth_db.hotpath`); this is the same
    rule for several patients at once, and for principals that did not come through that statement.

    Returns:
        Patient id → True for an active care-team link, False for an unexpired break-glass grant only;
        patients with neither are absent.
    """
    if not patient_ids:
        return {}
    care = select(CareTeamLink.patient_id).where(
        CareTeamLink.user_id == user_id,
        col(CareTeamLink.patient_id).in_(patient_ids),
        col(CareTeamLink.revoked_at).is_(None),
    )
    grants = select(BreakGlassGrant.patient_id).where(
        BreakGlassGrant.user_id == user_id,
        col(BreakGlassGrant.patient_id).in_(patient_ids),
        BreakGlassGrant.expires_at > utcnow(),
        col(BreakGlassGrant.revoked_at).is_(None),
    )
    async with factory() as session:
        found = dict.fromkeys((await session.exec(grants)).all(), False)
        found.update(dict.fromkeys((await session.exec(care)).all(), True))
    return found


async def related_patients(factory: SessionFactory, user_id: uuid.UUID, patient_ids: list[str]) -> set[str]:
    """Which of ``patient_ids`` the user may open: an active care-team link or break-glass grant."""
    return set(await relationships(factory, user_id, patient_ids))


async def _ask(request: Request, user_id: uuid.UUID, patient_id: str) -> Relationship:
    factory: SessionFactory = request.app.state.autocommit_session_factory
    found = (await relationships(factory, user_id, [patient_id])).get(patient_id)
    return Relationship(user_id, patient_id, found is True, found is False, None)
