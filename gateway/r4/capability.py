"""The FHIR face's ``CapabilityStatement``: exactly what ``/fhir`` supports, and the scopes it needs.

Access follows SMART on FHIR's scope syntax (v2 ``.rs`` = read + search). The gateway's own sessions carry
the scopes of their roles (:data:`ROLE_SCOPES`); the permission checks behind every route are the same ones
the JSON API makes, plus the per-patient care-team/break-glass check.
"""

from __future__ import annotations

from typing import Any

from gateway.r4.search import DOCUMENT_PARAMETERS, MAX_COUNT, PATIENT_PARAMETERS
from gateway.security.principal import Permission

#: SMART on FHIR scope → the gateway permission that grants it.
SCOPES: dict[str, Permission] = {
    "user/Patient.rs": Permission.patient_read,
    "user/DocumentReference.rs": Permission.letter_read,
    "user/Binary.r": Permission.letter_read,
}
_PARAM_TYPES = {
    "name": "string",
    "family": "string",
    "given": "string",
    "birthdate": "date",
    "gender": "token",
    "identifier": "token",
    "patient": "reference",
    "subject": "reference",
    "date": "date",
    "status": "token",
    "type": "token",
}
_SECURITY = (
    "Authenticate with the gateway's bearer token (POST /auth/login or single sign-on; see docs/fhir.md). "
    "Scopes, in SMART on FHIR syntax, follow the user's roles: a clinician holds "
    + ", ".join(sorted(SCOPES))
    + ". Every read of a patient's data also needs a care-team link or an active break-glass grant for "
    "that patient, and is audited. Patient search returns full resources for those patients and "
    "identifying demographics only (meta.tag SUBSETTED) for others; DocumentReference search needs "
    "'patient' or 'subject' and is refused for a patient outside the caller's care."
)


def _params(names: set[str]) -> list[dict[str, Any]]:
    return [{"name": name, "type": _PARAM_TYPES[name]} for name in sorted(names)]


def capability_statement(*, fhir_base: str, version: str, date: str) -> dict[str, Any]:
    """The CapabilityStatement JSON (validated by the fhir.resources model)."""
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    statement = CapabilityStatement.model_validate(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": date,
            "publisher": "FHIR/openEHR gateway",
            "kind": "instance",
            "software": {"name": "fhir-openehr-gateway", "version": version},
            "implementation": {
                "description": "Patients from HAPI FHIR; clinical letters from EHRbase as DocumentReference",
                "url": fhir_base,
            },
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [
                {
                    "mode": "server",
                    "documentation": f"Read-only. Pages hold at most {MAX_COUNT} entries (_count).",
                    "security": {"cors": True, "description": _SECURITY},
                    "resource": [
                        {
                            "type": "Patient",
                            "interaction": [{"code": "read"}, {"code": "search-type"}],
                            "versioning": "versioned",
                            "readHistory": False,
                            "searchParam": _params(PATIENT_PARAMETERS),
                        },
                        {
                            "type": "DocumentReference",
                            "interaction": [
                                {"code": "read"},
                                {"code": "vread"},
                                {"code": "history-instance"},
                                {"code": "search-type"},
                            ],
                            "versioning": "versioned",
                            "readHistory": True,
                            "searchParam": _params(DOCUMENT_PARAMETERS),
                        },
                        {
                            "type": "Binary",
                            "interaction": [{"code": "read"}, {"code": "vread"}],
                            "versioning": "versioned",
                            "readHistory": True,
                        },
                    ],
                }
            ],
        }
    )
    body: dict[str, Any] = statement.model_dump(mode="json", exclude_none=True)
    return body
