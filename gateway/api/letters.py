"""``/patients/{patient_id}/letters``: clinical letters stored as openEHR compositions in EHRbase.

Thin router: access control is the ``patient_access`` dependency (care-team link or break-glass,
checked before any upstream call); the work is in :mod:`gateway.services.letters`. See
``docs/api/letters.md``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status

from gateway.api.http_headers import version_headers
from gateway.deps import AuditDep
from gateway.errors import problem_responses
from gateway.openehr.aql import LetterRow
from gateway.schemas.letters import Author, LetterAmend, LetterOut, LetterPage, LetterSummary, LetterWrite
from gateway.security.access import PatientAccess, patient_access
from gateway.security.principal import Permission
from gateway.services.ehr import PatientReader
from gateway.services.idempotency import KEY_PATTERN
from gateway.services.letters import LetterService, StoredLetter

router = APIRouter(prefix="/patients/{patient_id}/letters", tags=["letters"])
UPSTREAM = (502, 503, 504)
ETAG: dict[str, Any] = {"ETag": {"description": "The version uid, quoted.", "schema": {"type": "string"}}}
LOCATION: dict[str, Any] = {"Location": {"description": "The letter's URL.", "schema": {"type": "string"}}}


async def get_patient_reader(request: Request) -> PatientReader:
    """The FHIR client opened by the lifespan (confirms a patient exists before an EHR is created)."""
    reader: PatientReader = request.app.state.fhir
    return reader


async def get_letter_service(
    request: Request, fhir: Annotated[PatientReader, Depends(get_patient_reader)], audit: AuditDep
) -> LetterService:
    """The letter use-cases bound to this request (settings, sessions and EHRbase client from the app)."""
    state = request.app.state
    return LetterService(
        settings=state.settings,
        factory=state.session_factory,
        ehrbase=state.ehrbase,
        fhir=fhir,
        audit=audit,
    )


Letters = Annotated[LetterService, Depends(get_letter_service)]
ReadList = Annotated[PatientAccess, Depends(patient_access(Permission.letter_read, "letter.list"))]
Read = Annotated[PatientAccess, Depends(patient_access(Permission.letter_read, "letter.read"))]
Write = Annotated[PatientAccess, Depends(patient_access(Permission.letter_write, "letter.create"))]
Amend = Annotated[PatientAccess, Depends(patient_access(Permission.letter_write, "letter.amend"))]
Delete = Annotated[PatientAccess, Depends(patient_access(Permission.letter_write, "letter.delete"))]
#: The service checks the exact form and answers 422 ``invalid_letter_id`` with a precise message.
LetterIdPath = Annotated[
    str,
    Path(
        max_length=300,
        description="A letter id (UUID: latest version) or a version uid `<uuid>::<system id>::<version>`.",
        examples=["8849182c-82ad-4088-a07f-48ead4180515"],
    ),
]
IfMatch = Annotated[
    str | None,
    Header(alias="If-Match", description="The letter's current ETag (its version uid)."),
]


def _with_headers(
    status_code: int, headers: dict[str, Any], responses: dict[int | str, dict[str, Any]]
) -> dict[int | str, dict[str, Any]]:
    return {status_code: {"headers": headers}, **responses}


def _summary(row: LetterRow) -> LetterSummary:
    return LetterSummary(
        id=row.uid.split("::", 1)[0],
        version_uid=row.uid,
        title=row.title,
        status=row.status,
        author=Author(name=row.author, id=row.author_id),
        date=row.date,
    )


def _out(patient_id: str, stored: StoredLetter) -> LetterOut:
    letter = stored.letter
    return LetterOut(
        id=stored.letter_id,
        version_uid=stored.version_uid,
        patient_id=patient_id,
        title=letter.title,
        status=letter.status,
        author=Author(name=letter.author_name, id=letter.author_id),
        date=letter.date,
        body=letter.body,
        recipients=list(letter.recipients),
    )


def _headers(response: Response, patient_id: str, stored: StoredLetter, *, location: bool) -> None:
    url = f"/patients/{patient_id}/letters/{stored.letter_id}" if location else None
    response.headers.update(version_headers(stored.version_uid, weak=False, location=url))


@router.post(
    "",
    response_model=LetterOut,
    status_code=status.HTTP_201_CREATED,
    responses=_with_headers(201, ETAG | LOCATION, problem_responses(401, 403, 404, 409, 410, 422, *UPSTREAM)),
    summary="Write a letter",
)
async def create_letter(
    body: LetterWrite,
    access: Write,
    letters: Letters,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=KEY_PATTERN,
            description="Client-chosen key (8-128 of A-Z a-z 0-9 _ - : .); "
            "a retry with it never writes twice.",
        ),
    ] = None,
) -> LetterOut:
    """Create a letter in the patient's EHR (created on first use). The author is the signed-in user."""
    stored, replayed = await letters.create(access, body.content(), idempotency_key=idempotency_key)
    _headers(response, access.patient_id, stored, location=True)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return _out(access.patient_id, stored)


@router.get(
    "",
    response_model=LetterPage,
    responses=problem_responses(401, 403, 422, *UPSTREAM),
    summary="List letters",
)
async def list_letters(
    access: ReadList,
    letters: Letters,
    cursor: Annotated[str | None, Query(max_length=512, description="From `next`.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> LetterPage:
    """Letter summaries of the patient, newest first."""
    page = await letters.list_page(access, cursor=cursor, limit=limit)
    items = [_summary(row) for row in page.summaries]
    return LetterPage(items=items, next=page.next_cursor, next_cursor=page.next_cursor)


@router.get(
    "/{letter_id}",
    response_model=LetterOut,
    responses=_with_headers(200, ETAG, problem_responses(401, 403, 404, 410, 422, *UPSTREAM)),
    summary="Read a letter",
)
async def read_letter(
    letter_id: LetterIdPath, access: Read, letters: Letters, response: Response
) -> LetterOut:
    """The letter's latest version (letter id = UUID) or one version (letter id = version uid)."""
    stored = await letters.get(access, letter_id)
    _headers(response, access.patient_id, stored, location=False)
    return _out(access.patient_id, stored)


@router.put(
    "/{letter_id}",
    response_model=LetterOut,
    responses=_with_headers(200, ETAG, problem_responses(401, 403, 404, 410, 412, 422, 428, *UPSTREAM)),
    summary="Amend a letter",
)
async def amend_letter(
    letter_id: LetterIdPath,
    body: LetterAmend,
    access: Amend,
    letters: Letters,
    response: Response,
    if_match: IfMatch = None,
) -> LetterOut:
    """Write a new version. Needs `If-Match`; a final letter also needs a `reason` (audited)."""
    stored = await letters.amend(
        access, letter_id, if_match=if_match, content=body.content(), reason=body.reason
    )
    _headers(response, access.patient_id, stored, location=False)
    return _out(access.patient_id, stored)


@router.delete(
    "/{letter_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 403, 404, 409, 410, 412, 422, 428, *UPSTREAM),
    summary="Delete a draft letter",
)
async def delete_letter(
    letter_id: LetterIdPath, access: Delete, letters: Letters, if_match: IfMatch = None
) -> Response:
    """Delete a draft (final letters can only be amended). Needs `If-Match`."""
    await letters.delete(access, letter_id, if_match=if_match)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
