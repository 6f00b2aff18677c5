"""Audit records of the letter use-cases, for the JSON API and the FHIR face alike.

Each record names the patient, the EHR and the composition version uids touched, whether break-glass
allowed it and, for a failure, the error code; never letter text. Records of the FHIR face carry
``details.via = "fhir"``.
"""

from __future__ import annotations

from typing import Any

from gateway.audit import AuditLog, Outcome
from gateway.errors import ApiError
from gateway.security.access import PatientAccess


class LetterAudit:
    """Writes the audit records of one request's letter use-case."""

    def __init__(self, audit: AuditLog, *, via: str | None = None) -> None:
        self.audit = audit
        self.via = via

    async def record(
        self,
        access: PatientAccess,
        action: str,
        outcome: Outcome,
        *,
        ehr_id: str | None = None,
        resource_ids: list[str] | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """One record about ``access.patient_id``'s letters (the first resource id is the target)."""
        if self.via is not None:
            details = {"via": self.via, **(details or {})}
        await self.audit.record(
            action=action,
            outcome=outcome,
            actor=access.actor,
            target_type="letter",
            target_id=resource_ids[0] if resource_ids else None,
            patient_id=access.patient_id,
            ehr_id=ehr_id,
            resource_ids=resource_ids,
            reason=reason,
            break_glass=access.break_glass,
            details=details,
        )

    async def failed(self, access: PatientAccess, action: str, error: ApiError, **kwargs: Any) -> None:
        """A failure (``failure`` for a 4xx, ``error`` for a 5xx) with the error's code."""
        outcome = Outcome.error if error.status >= 500 else Outcome.failure
        await self.record(access, action, outcome, details={"code": error.code}, **kwargs)
