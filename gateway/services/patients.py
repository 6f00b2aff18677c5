"""Patient use-cases on HAPI FHIR: search, validation, safe registration, update.

Registration is a conditional create on the patient's business identifier. HAPI's conditional
create is not safe under concurrent identical requests, so registrations of one identifier are
serialised: on PostgreSQL with a transaction-scoped advisory lock (held across replicas until the
request's transaction ends), on the embedded SQLite database (one process) with an in-process
lock. The identifier itself is never stored in the auth database.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydantic import ValidationError
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.audit import AuditLog, Outcome
from gateway.errors import FieldError, UnprocessableEntity
from gateway.schemas.patients import HumanName, Identifier, PatientSummary
from gateway.security.access import PatientAccess
from gateway.services.if_match import parse_if_match
from gateway.upstream.fhir import FhirClient, RawResource

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
_DATE_RE = re.compile(r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)?\d{4}(-\d{2}(-\d{2})?)?$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_VERSION_RE = re.compile(r"[A-Za-z0-9\-\.]{1,64}")
#: The in-process locks (SQLite), by identifier digest. Weak values: a lock lives only while a
#: registration holds or awaits it, so the mapping never outgrows the registrations in flight.
_local_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def is_valid_nhs_number(value: str) -> bool:
    """The NHS number modulus-11 check (10 digits, the last one a check digit)."""
    digits = value.replace(" ", "")
    if not re.fullmatch(r"\d{10}", digits):
        return False
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


def search_params(
    *,
    name: str | None,
    family: str | None,
    given: str | None,
    birthdate: str | None,
    gender: str | None,
    identifier: str | None,
) -> list[tuple[str, str]]:
    """FHIR search parameters from the checked query; at least one criterion is required."""
    params: list[tuple[str, str]] = []
    for key, value in (("name", name), ("family", family), ("given", given)):
        if value is not None:
            _check_text(key, value, 100)
            params.append((key, value))
    if birthdate is not None:
        if not _DATE_RE.fullmatch(birthdate):
            raise _invalid(
                "birthdate", "use YYYY, YYYY-MM or YYYY-MM-DD, optionally prefixed by ge/le/gt/lt/eq"
            )
        params.append(("birthdate", birthdate))
    if gender is not None:
        params.append(("gender", gender))
    if identifier is not None:
        _check_text("identifier", identifier, 300)
        system, sep, value = identifier.rpartition("|")
        if not sep or not value:
            raise _invalid(
                "identifier", "use system|value, e.g. https://fhir.nhs.uk/Id/nhs-number|9434765919"
            )
        params.append(("identifier", f"{system}|{value}"))
    if not params:
        raise UnprocessableEntity(
            "Give at least one search criterion (name, family, given, birthdate, gender or identifier).",
            code="search_criteria_required",
        )
    return params


def _check_text(field: str, value: str, limit: int) -> None:
    if not value.strip() or len(value) > limit or _CONTROL_RE.search(value):
        raise _invalid(field, f"must be 1 to {limit} printable characters")


def _invalid(field: str, message: str) -> UnprocessableEntity:
    return UnprocessableEntity(
        f"Invalid '{field}': {message}.",
        errors=[FieldError(loc=["query", field], msg=message, type="value_error")],
    )


def summary(resource: dict[str, Any]) -> PatientSummary:
    """The identifying demographics of a Patient, nothing more."""
    return PatientSummary(
        id=str(resource.get("id")),
        name=[HumanName.model_validate(n) for n in resource.get("name") or [] if isinstance(n, dict)],
        birthDate=resource.get("birthDate"),
        gender=resource.get("gender"),
        identifier=[
            Identifier(system=i.get("system"), value=i.get("value"))
            for i in resource.get("identifier") or []
            if isinstance(i, dict)
        ],
    )


def validate_patient(body: dict[str, Any], *, path_id: str | None) -> dict[str, Any]:
    """Validate a Patient against FHIR R4 and return the JSON to send.

    On create (``path_id`` None) a client-chosen id is refused; on update the body's id, when
    present, must equal the id in the path. Server-managed ``meta`` is dropped.

    Raises:
        UnprocessableEntity: with one error per invalid element.
    """
    from fhir.resources.R4B.patient import Patient  # imported on first use: only writes validate

    body = dict(body)
    body.pop("meta", None)
    if path_id is None and body.get("id") is not None:
        raise UnprocessableEntity(
            "The FHIR server assigns patient ids; leave out 'id' when registering.",
            code="client_id_not_allowed",
        )
    if path_id is not None:
        if body.get("id", path_id) != path_id:
            raise UnprocessableEntity("The body's id differs from the id in the path.", code="id_mismatch")
        body["id"] = path_id
    try:
        patient = Patient.model_validate(body)
    except ValidationError as exc:
        raise UnprocessableEntity(
            "The body is not a valid FHIR R4 Patient.",
            code="invalid_fhir_resource",
            errors=[
                FieldError(loc=["body", *map(_loc, err["loc"])], msg=err["msg"], type=err["type"])
                for err in exc.errors()
            ],
        ) from None
    for ident in patient.identifier or []:
        if ident.system == NHS_NUMBER_SYSTEM and not is_valid_nhs_number(ident.value or ""):
            raise UnprocessableEntity("The NHS number fails its modulus-11 check.", code="invalid_nhs_number")
    result: dict[str, Any] = patient.model_dump(mode="json", exclude_none=True)
    return result


def _loc(part: Any) -> str | int:
    return part if isinstance(part, int) else str(part)


def business_identifier(resource: dict[str, Any]) -> str:
    """The ``system|value`` that makes a registration unique: the NHS number if present, else the first.

    Raises:
        UnprocessableEntity: ``identifier_required`` when no identifier has both a system and a value.
    """
    candidates = [
        i
        for i in resource.get("identifier") or []
        if isinstance(i, dict) and i.get("system") and i.get("value")
    ]
    if not candidates:
        raise UnprocessableEntity(
            "Registration needs an identifier with a system and a value (e.g. the NHS number), so that a "
            "repeated registration finds the same patient.",
            code="identifier_required",
        )
    chosen = next((i for i in candidates if i["system"] == NHS_NUMBER_SYSTEM), candidates[0])
    return f"{chosen['system']}|{chosen['value']}"


@asynccontextmanager
async def registration_lock(session: AsyncSession, identifier: str) -> AsyncIterator[None]:
    """Serialise registrations of one identifier (see the module docstring)."""
    digest = hashlib.sha256(identifier.encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        connection = await session.connection()
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        yield
        return
    lock = _local_locks.get(digest.hex())
    if lock is None:
        lock = asyncio.Lock()
        _local_locks[digest.hex()] = lock
    async with lock:
        yield


def version_from_if_match(value: str | None) -> str:
    """The FHIR version id in an ``If-Match`` header (``W/"3"``, ``"3"`` or ``3``).

    Raises:
        PreconditionRequired: the header is missing (428 ``if_match_required``).
        UnprocessableEntity: it is malformed (422 ``invalid_if_match``).
    """
    return parse_if_match(value, version=_VERSION_RE, what="the patient", example='W/"3"')


async def read_patient_audited(
    fhir: FhirClient, audit: AuditLog, access: PatientAccess, *, via: str | None = None
) -> RawResource:
    """Read a Patient the caller was allowed to open, and record the read (``patient.read``).

    Args:
        via: where the read came from, kept in the record's details (``"fhir"`` for the FHIR face).
    """
    resource = await fhir.read_patient_raw(access.patient_id)
    details: dict[str, Any] = {"version": resource.version_id}
    if via is not None:
        details["via"] = via
    await audit.record(
        action="patient.read",
        outcome=Outcome.success,
        actor=access.actor,
        patient_id=access.patient_id,
        break_glass=access.break_glass,
        details=details,
    )
    return resource
