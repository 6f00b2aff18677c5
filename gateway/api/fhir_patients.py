"""``/fhir/Patient``: HAPI FHIR's Patients on the FHIR face (search and read). See ``docs/fhir.md``.

Search shows full resources for patients in the caller's care and identifying demographics (``SUBSETTED``)
for the others, as the JSON API's search does; a read needs the care relationship.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from gateway.api.fhir import FHIR_RESPONSE, Prefer, fhir_base, fhir_response
from gateway.api.http_headers import version_headers
from gateway.audit import Outcome
from gateway.deps import AuditDep, SettingsDep
from gateway.r4 import search as params
from gateway.r4.outcome import FHIR_JSON
from gateway.security.access import FHIR_ID_PATTERN, authorize_patient, related_patients
from gateway.security.deps import CurrentPrincipal, check_permission
from gateway.security.principal import Permission
from gateway.services import patients as patient_rules
from gateway.services.cursors import SignedCursor, invalid_cursor
from gateway.upstream.fhir import FhirDep, PageRef

router = APIRouter(prefix="/fhir", tags=["fhir"])
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}


def _subset(resource: dict[str, Any]) -> dict[str, Any]:
    """A Patient reduced to identifying demographics, tagged SUBSETTED."""
    meta = dict(resource.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), SUBSETTED]
    reduced: dict[str, Any] = {"resourceType": "Patient", "id": resource.get("id"), "meta": meta}
    for key in ("identifier", "name", "gender", "birthDate"):
        if resource.get(key) is not None:
            reduced[key] = resource[key]
    return reduced


@router.get("/Patient", summary="Search patients", responses=FHIR_RESPONSE, response_class=Response)
async def search_patients(
    request: Request,
    principal: CurrentPrincipal,
    fhir: FhirDep,
    audit: AuditDep,
    settings: SettingsDep,
    prefer: Prefer = None,
) -> Response:
    """HAPI FHIR's Patients: full for patients in the caller's care, identifying demographics for others."""
    check_permission(principal, Permission.patient_search)
    query = params.split_query(
        list(request.query_params.multi_items()),
        params.PATIENT_PARAMETERS,
        lenient=params.is_lenient(prefer),
    )
    codec = SignedCursor(settings, "fhir-patients")
    bound_to = str(principal.user_id)
    base = fhir_base(settings)
    if query.cursor is not None:
        data = codec.decode(query.cursor, bound_to=bound_to)
        try:
            ref = PageRef(str(data["s"]), int(data["o"]), int(data["c"]))
            used: list[tuple[str, str]] = [(str(k), str(v)) for k, v in data["q"]]
        except (KeyError, TypeError, ValueError):
            raise invalid_cursor() from None
        page = await fhir.search_page(ref)
    else:
        used = query.params
        for name, _ in used:
            params.single(used, name)
        found = {name: value for name, value in used}
        upstream = patient_rules.search_params(
            name=found.get("name"),
            family=found.get("family"),
            given=found.get("given"),
            birthdate=found.get("birthdate"),
            gender=found.get("gender"),
            identifier=found.get("identifier"),
        )
        page = await fhir.search_patients(upstream, query.count)
        used = [*used, ("_count", str(query.count))]
    ids = [str(resource.get("id")) for resource in page.resources]
    visible = await related_patients(request.app.state.autocommit_session_factory, principal.user_id, ids)
    entries = [
        (f"{base}/Patient/{pid}", resource if pid in visible else _subset(resource))
        for pid, resource in zip(ids, page.resources, strict=True)
    ]
    next_url = None
    if page.next is not None:
        cursor = codec.encode(
            {"s": page.next.search_id, "o": page.next.offset, "c": page.next.count, "q": used},
            bound_to=bound_to,
        )
        next_url = f"{base}/Patient?_cursor={cursor}"
    await audit.record(
        action="patient.search",
        outcome=Outcome.success,
        actor=principal.actor,
        resource_ids=ids,
        details={
            "via": "fhir",
            "page": "next" if query.cursor else "first",
            "results": len(ids),
            "full": sorted(visible),
        },
    )
    bundle = params.searchset(
        self_url=params.search_url(base, "Patient", used),
        entries=entries,
        next_url=next_url,
        total=page.total,
        ignored=query.ignored,
    )
    return fhir_response(bundle)


@router.get(
    "/Patient/{patient_id}", summary="Read a patient", responses=FHIR_RESPONSE, response_class=Response
)
async def read_patient(
    request: Request,
    principal: CurrentPrincipal,
    fhir: FhirDep,
    audit: AuditDep,
    patient_id: Annotated[str, Path(pattern=FHIR_ID_PATTERN)],
) -> Response:
    """The Patient exactly as HAPI FHIR sent it (care team or break-glass needed)."""
    params.check_format(request.query_params.get("_format"))
    access = await authorize_patient(
        request, principal, audit, patient_id, Permission.patient_read, "patient.read"
    )
    resource = await patient_rules.read_patient_audited(fhir, audit, access, via="fhir")
    headers = version_headers(resource.version_id, weak=True, last_modified=resource.last_modified)
    return Response(resource.content, media_type=FHIR_JSON, headers=headers)
