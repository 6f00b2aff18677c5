"""Patient demographics: search, read, register, correct (FHIR R4 ``Patient`` in HAPI FHIR)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from gateway.api.http_headers import version_headers
from gateway.audit import Outcome
from gateway.deps import AuditDep, SessionDep, SettingsDep
from gateway.errors import OrjsonResponse, problem_responses
from gateway.schemas.paging import page_size
from gateway.schemas.patients import PatientPage, PatientResource
from gateway.security.access import PatientAccess, grant_care_team, patient_access
from gateway.security.deps import require
from gateway.security.principal import Permission, Principal
from gateway.services import patients as service
from gateway.services.cursors import SignedCursor
from gateway.upstream.fhir import FhirDep, FhirResource, PageRef

router = APIRouter(prefix="/patients", tags=["patients"])
FHIR_JSON = "application/fhir+json"

Searcher = Annotated[Principal, Depends(require(Permission.patient_search))]
Registrar = Annotated[Principal, Depends(require(Permission.patient_write))]
Reader = Annotated[PatientAccess, Depends(patient_access(Permission.patient_read, "patient.read"))]
Writer = Annotated[PatientAccess, Depends(patient_access(Permission.patient_write, "patient.update"))]

_RESOURCE_RESPONSE: dict[str, Any] = {
    "model": PatientResource,
    "headers": {
        "ETag": {"description": 'Version of the patient, e.g. W/"3"; send it back as If-Match.'},
        "Last-Modified": {"description": "When this version was stored."},
    },
}


def _resource_response(
    resource: FhirResource, status: int = 200, location: str | None = None
) -> JSONResponse:
    headers = version_headers(
        resource.version_id, weak=True, last_modified=resource.last_modified, location=location
    )
    return OrjsonResponse(resource.body, status_code=status, headers=headers)


@router.get(
    "",
    response_model=PatientPage,
    summary="Find patients (identifying demographics only)",
    responses=problem_responses(401, 403, 422, 502, 503, 504),
)
async def search_patients(
    principal: Searcher,
    fhir: FhirDep,
    audit: AuditDep,
    settings: SettingsDep,
    name: Annotated[str | None, Query(max_length=100)] = None,
    family: Annotated[str | None, Query(max_length=100)] = None,
    given: Annotated[str | None, Query(max_length=100)] = None,
    birthdate: Annotated[str | None, Query(max_length=12)] = None,
    gender: Literal["male", "female", "other", "unknown"] | None = None,
    identifier: Annotated[str | None, Query(max_length=300, description="system|value")] = None,
    limit: Annotated[int | None, Query(ge=1, le=100, description="Page size (default 20).")] = None,
    cursor: Annotated[str | None, Query(max_length=2048, description="From `next`.")] = None,
    count: Annotated[
        int | None, Query(ge=1, le=100, deprecated=True, description="Deprecated name of `limit`.")
    ] = None,
) -> PatientPage:
    codec = SignedCursor(settings, "patients")
    bound_to = str(principal.user_id)
    if cursor is not None:
        data = codec.decode(cursor, bound_to=bound_to)
        page = await fhir.search_page(PageRef(str(data["s"]), int(data["o"]), int(data["c"])))
    else:
        params = service.search_params(
            name=name, family=family, given=given, birthdate=birthdate, gender=gender, identifier=identifier
        )
        page = await fhir.search_patients(params, page_size(limit, count, default=20, name="count"))
    items = [service.summary(resource) for resource in page.resources]
    await audit.record(
        action="patient.search",
        outcome=Outcome.success,
        actor=principal.actor,
        resource_ids=[item.id for item in items],
        details={"page": "next" if cursor else "first", "results": len(items)},
    )
    next_cursor = (
        codec.encode(
            {"s": page.next.search_id, "o": page.next.offset, "c": page.next.count}, bound_to=bound_to
        )
        if page.next
        else None
    )
    return PatientPage(items=items, next=next_cursor, total=page.total)


@router.get(
    "/{patient_id}",
    summary="Read a patient (FHIR R4 Patient)",
    response_class=JSONResponse,
    responses={200: _RESOURCE_RESPONSE, **problem_responses(401, 403, 404, 410, 422, 502, 503, 504)},
)
async def read_patient(access: Reader, fhir: FhirDep, audit: AuditDep) -> Response:
    """The Patient exactly as HAPI FHIR sent it (checked to be this Patient, not re-serialised)."""
    resource = await service.read_patient_audited(fhir, audit, access)
    headers = version_headers(resource.version_id, weak=True, last_modified=resource.last_modified)
    return Response(resource.content, media_type="application/json", headers=headers)


@router.post(
    "",
    summary="Register a patient (conditional create on its identifier)",
    status_code=201,
    response_class=JSONResponse,
    responses={
        201: {**_RESOURCE_RESPONSE, "description": "Registered; Location names the new patient."},
        200: {
            **_RESOURCE_RESPONSE,
            "description": "Already registered with this identifier; nothing created.",
        },
        **problem_responses(401, 403, 409, 413, 422, 502, 503, 504),
    },
)
async def register_patient(
    request: Request,
    principal: Registrar,
    session: SessionDep,
    fhir: FhirDep,
    audit: AuditDep,
    patient: Annotated[PatientResource, Body(media_type="application/json")],
) -> JSONResponse:
    body = service.validate_patient(patient.model_dump(mode="json", exclude_unset=True), path_id=None)
    identifier = service.business_identifier(body)
    async with service.registration_lock(session, identifier):
        resource, created = await fhir.create_patient(body, if_none_exist=f"identifier={identifier}")
        await grant_care_team(
            session, user_id=principal.user_id, patient_id=resource.id, granted_by=principal.user_id
        )
        audit.stage(
            session,
            action="patient.create",
            outcome=Outcome.success,
            actor=principal.actor,
            patient_id=resource.id,
            details={"created": created, "version": resource.version_id},
        )
        await session.flush()
    location = str(request.url_for("read_patient", patient_id=resource.id).path)
    return _resource_response(resource, 201 if created else 200, location)


@router.put(
    "/{patient_id}",
    summary="Correct a patient (full update; needs If-Match)",
    response_class=JSONResponse,
    responses={
        200: _RESOURCE_RESPONSE,
        **problem_responses(401, 403, 404, 410, 412, 413, 422, 428, 502, 503, 504),
    },
)
async def update_patient(
    access: Writer,
    fhir: FhirDep,
    audit: AuditDep,
    patient: Annotated[PatientResource, Body(media_type="application/json")],
    if_match: Annotated[str | None, Header(description='The ETag of your last read, e.g. W/"3"')] = None,
) -> Response:
    version = service.version_from_if_match(if_match)
    body = service.validate_patient(
        patient.model_dump(mode="json", exclude_unset=True), path_id=access.patient_id
    )
    try:
        resource = await fhir.update_patient(access.patient_id, body, version_id=version)
    except Exception:
        await audit.record(
            action="patient.update",
            outcome=Outcome.failure,
            actor=access.actor,
            patient_id=access.patient_id,
            break_glass=access.break_glass,
            details={"if_match": version},
        )
        raise
    await audit.record(
        action="patient.update",
        outcome=Outcome.success,
        actor=access.actor,
        patient_id=access.patient_id,
        break_glass=access.break_glass,
        details={"from_version": version, "version": resource.version_id},
    )
    return _resource_response(resource)
