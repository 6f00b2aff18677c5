"""``/fhir/DocumentReference`` and ``/fhir/Binary``: letters on the FHIR face. See ``docs/fhir.md``.

Thin router: parameters are checked by :mod:`gateway.r4.search`, access by
:func:`gateway.security.access.authorize_patient` (the same care-team/break-glass rule and denial audit
as the JSON API), the work by :class:`gateway.services.documents.DocumentService`.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request, Response

from gateway.api.fhir import FHIR_RESPONSE, Prefer, fhir_base, fhir_response
from gateway.api.http_headers import version_headers
from gateway.audit import AuditLog
from gateway.deps import AuditDep, SettingsDep
from gateway.errors import BadRequest
from gateway.r4 import search as params
from gateway.r4.documents import LetterVersion, binary_url
from gateway.r4.ids import LetterAddress
from gateway.r4.outcome import FHIR_JSON, outcome_responses
from gateway.security.access import FHIR_ID_PATTERN, PatientAccess, authorize_patient
from gateway.security.deps import CurrentPrincipal, check_permission
from gateway.security.principal import Permission
from gateway.services.cursors import SignedCursor, invalid_cursor
from gateway.services.documents import DocumentQuery, DocumentService
from gateway.settings import Settings

router = APIRouter(prefix="/fhir", tags=["fhir"])
FormatHeader = Annotated[str | None, Header(alias="Accept", include_in_schema=False)]
DocumentId = Annotated[str, Path(pattern=FHIR_ID_PATTERN, description="A DocumentReference id.")]
VersionId = Annotated[str, Path(pattern=r"^[0-9]{1,9}$", description="A version number (meta.versionId).")]
_TEXT_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            FHIR_JSON: {"schema": {"type": "object"}},
        },
        "description": "The letter's text, or a Binary resource when FHIR JSON is asked for.",
    },
    **outcome_responses(),
}


async def get_documents(request: Request, audit: AuditDep) -> DocumentService:
    """The DocumentReference use-cases bound to this request."""
    return documents_for(request, audit)


def documents_for(request: Request, audit: AuditLog) -> DocumentService:
    """The use-cases built from the app's state (the search builds them inline: fewer dependency nodes)."""
    state = request.app.state
    return DocumentService(
        settings=state.settings,
        factory=state.autocommit_session_factory,
        ehrbase=state.ehrbase,
        audit=audit,
        ids=state.document_ids,
        cache=state.document_cache,
    )


Documents = Annotated[DocumentService, Depends(get_documents)]


def _document_query(used: list[tuple[str, str]], count: int, base: str) -> DocumentQuery:
    patient = params.single(used, "patient")
    subject = params.single(used, "subject")
    if patient is None and subject is None:
        raise BadRequest(
            "Search DocumentReference by 'patient' (or 'subject'): letters are only searched within one "
            "patient's record.",
            code="patient_required",
        )
    ids = {params.patient_reference(value, base) for value in (patient, subject) if value is not None}
    if len(ids) > 1:
        raise BadRequest("'patient' and 'subject' name different patients.", code="patient_mismatch")
    date_from, date_to = params.date_bounds([value for key, value in used if key == "date"])
    nothing = not params.status_matches(params.single(used, "status")) or not params.type_matches(
        params.single(used, "type")
    )
    if date_from is not None and date_to is not None and date_from >= date_to:
        nothing = True
    return DocumentQuery(ids.pop(), date_from, date_to, nothing, count)


@router.get("/DocumentReference", summary="Search letters", responses=FHIR_RESPONSE, response_class=Response)
async def search_documents(
    request: Request, principal: CurrentPrincipal, audit: AuditDep, prefer: Prefer = None
) -> Response:
    """One patient's letters as DocumentReferences (latest versions, newest first)."""
    check_permission(principal, Permission.letter_read)
    settings: Settings = request.app.state.settings
    documents = documents_for(request, audit)
    query = params.split_query(
        list(request.query_params.multi_items()),
        params.DOCUMENT_PARAMETERS,
        lenient=params.is_lenient(prefer),
    )
    base = fhir_base(settings)
    codec = SignedCursor(settings, "fhir-documents")
    bound_to = str(principal.user_id)
    offset = 0
    used = query.params
    count = query.count
    if query.cursor is not None:
        data = codec.decode(query.cursor, bound_to=bound_to)
        try:
            used = [(str(k), str(v)) for k, v in data["q"]]
            offset, count = int(data["o"]), int(data["c"])
        except (KeyError, TypeError, ValueError):
            raise invalid_cursor() from None
    search = _document_query(used, count, base)
    access = await authorize_patient(
        request, principal, audit, search.patient_id, Permission.letter_read, "letter.list"
    )
    resources, more = await documents.search(access, search, offset=offset)
    next_url = None
    if more:
        cursor = codec.encode({"q": used, "o": offset + count, "c": count}, bound_to=bound_to)
        next_url = f"{base}/DocumentReference?_cursor={cursor}"
    bundle = params.searchset(
        self_url=params.search_url(base, "DocumentReference", [*used, ("_count", str(count))]),
        entries=[(f"{base}/DocumentReference/{r['id']}", r) for r in resources],
        next_url=next_url,
        ignored=query.ignored,
    )
    return fhir_response(bundle)


@dataclass(frozen=True, slots=True)
class OpenedLetter:
    """A DocumentReference id resolved to its letter, with the access decision that allows reading it."""

    access: PatientAccess
    address: LetterAddress


def _opened(action: str) -> Callable[..., Awaitable[OpenedLetter]]:
    """A dependency resolving ``{document_id}`` and checking the caller may read it (audit: ``action``)."""

    async def dependency(
        request: Request,
        principal: CurrentPrincipal,
        audit: AuditDep,
        documents: Documents,
        document_id: DocumentId,
    ) -> OpenedLetter:
        params.check_format(request.query_params.get("_format"))
        check_permission(principal, Permission.letter_read)
        patient_id, address = await documents.locate(document_id)
        access = await authorize_patient(
            request, principal, audit, patient_id, Permission.letter_read, action
        )
        return OpenedLetter(access, address)

    dependency.__name__ = f"opened_{action.replace('.', '_')}"
    return dependency


ReadLetter = Annotated[OpenedLetter, Depends(_opened("letter.read"))]
LetterHistory = Annotated[OpenedLetter, Depends(_opened("letter.history"))]


def _document_response(documents: DocumentService, version: LetterVersion) -> Response:
    return fhir_response(documents.resource(version), version_headers(version.version, weak=True))


@router.get(
    "/DocumentReference/{document_id}",
    summary="Read a letter",
    responses=FHIR_RESPONSE,
    response_class=Response,
)
async def read_document(letter: ReadLetter, documents: Documents) -> Response:
    """The letter's latest version as a DocumentReference."""
    return _document_response(documents, await documents.read(letter.access, letter.address))


@router.get(
    "/DocumentReference/{document_id}/_history/{version_id}",
    summary="Read one version of a letter",
    responses=FHIR_RESPONSE,
    response_class=Response,
)
async def vread_document(letter: ReadLetter, documents: Documents, version_id: VersionId) -> Response:
    """One version (``status`` superseded unless it is the latest)."""
    return _document_response(documents, await documents.read(letter.access, letter.address, version_id))


@router.get(
    "/DocumentReference/{document_id}/_history",
    summary="Every version of a letter",
    responses=FHIR_RESPONSE,
    response_class=Response,
)
async def document_history(
    letter: LetterHistory, documents: Documents, document_id: DocumentId, settings: SettingsDep
) -> Response:
    """A ``history`` Bundle of the letter's versions, newest first."""
    versions = await documents.history(letter.access, letter.address)
    base = fhir_base(settings)
    entries = []
    for version in versions:
        first = version.version == "1"
        entries.append(
            {
                "fullUrl": f"{base}/DocumentReference/{version.document_id}",
                "resource": documents.resource(version),
                "request": {
                    "method": "POST" if first else "PUT",
                    "url": "DocumentReference" if first else f"DocumentReference/{version.document_id}",
                },
                "response": {
                    "status": "201 Created" if first else "200 OK",
                    "etag": f'W/"{version.version}"',
                    "lastModified": version.date,
                },
            }
        )
    bundle = {
        "resourceType": "Bundle",
        "type": "history",
        "total": len(entries),
        "link": [{"relation": "self", "url": f"{base}/DocumentReference/{document_id}/_history"}],
        "entry": entries,
    }
    return fhir_response(bundle)


# --- Binary ---------------------------------------------------------------------------------------
def _binary(request: Request, version: LetterVersion, accept: str | None, settings: Settings) -> Response:
    text = (version.body or "").encode()
    headers = version_headers(version.version, weak=True)
    if (accept and FHIR_JSON in accept) or request.query_params.get("_format") is not None:
        body = {
            "resourceType": "Binary",
            "id": version.document_id,
            "meta": {"versionId": version.version, "lastUpdated": version.date},
            "contentType": "text/plain",
            "securityContext": {"reference": f"DocumentReference/{version.document_id}"},
            "data": base64.b64encode(text).decode(),
        }
        return fhir_response(body, headers)
    headers["Content-Location"] = binary_url(fhir_base(settings), version)
    return Response(text, media_type="text/plain; charset=utf-8", headers=headers)


@router.get(
    "/Binary/{document_id}", summary="A letter's text", responses=_TEXT_RESPONSE, response_class=Response
)
async def read_binary(
    request: Request,
    letter: ReadLetter,
    documents: Documents,
    settings: SettingsDep,
    accept: FormatHeader = None,
) -> Response:
    """The letter's text (``text/plain``), or a ``Binary`` resource when FHIR JSON is asked for."""
    return _binary(request, await documents.read(letter.access, letter.address), accept, settings)


@router.get(
    "/Binary/{document_id}/_history/{version_id}",
    summary="One version's text",
    responses=_TEXT_RESPONSE,
    response_class=Response,
)
async def vread_binary(
    request: Request,
    letter: ReadLetter,
    documents: Documents,
    version_id: VersionId,
    settings: SettingsDep,
    accept: FormatHeader = None,
) -> Response:
    """The text of one version of a letter."""
    version = await documents.read(letter.access, letter.address, version_id)
    return _binary(request, version, accept, settings)
