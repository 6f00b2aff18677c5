"""Bodies of the care-team, break-glass and audit routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator

from gateway.schemas.paging import Page
from gateway.schemas.patients import PatientSummary
from gateway.security.access import FHIR_ID_PATTERN


class CareTeamGrant(BaseModel):
    user_id: uuid.UUID
    patient_id: str = Field(pattern=FHIR_ID_PATTERN)


class CareTeamLinkOut(BaseModel):
    id: int
    user_id: uuid.UUID
    patient_id: str
    granted_by: uuid.UUID | None
    granted_at: datetime
    revoked_at: datetime | None
    revoked_by: uuid.UUID | None


class CareTeamPage(Page[CareTeamLinkOut]):
    """A page of care-team links, newest first."""


class MyPatients(BaseModel):
    """The caller's patients (care-team links), with identifying demographics from FHIR."""

    items: list[PatientSummary]
    missing: list[str] = Field(
        default_factory=list, description="Linked patient ids the FHIR server no longer returns."
    )


class BreakGlassRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=1000, description="Why emergency access is needed.")

    @field_validator("reason")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        value = value.strip()
        if len(value) < 10:
            raise ValueError("give a reason of at least 10 characters")
        if any(ord(c) < 32 and c not in "\n\t" for c in value):
            raise ValueError("control characters are not allowed")
        return value


class BreakGlassGrantOut(BaseModel):
    id: int
    user_id: uuid.UUID
    patient_id: str
    reason: str
    granted_at: datetime
    expires_at: datetime
    active: bool


class BreakGlassPage(Page[BreakGlassGrantOut]):
    """A page of break-glass grants, newest first."""


class AuditEventOut(BaseModel):
    id: int
    occurred_at: datetime
    actor_user_id: uuid.UUID | None
    actor_username: str | None
    action: str
    outcome: str
    target_type: str | None
    target_id: str | None
    patient_id: str | None
    ehr_id: str | None
    resource_ids: list[str] | None
    reason: str | None
    break_glass: bool
    client_addr: str | None
    request_id: str | None
    details: dict[str, Any] | None


class AuditPage(Page[AuditEventOut]):
    """A page of audit events, newest first."""
