"""Clinical letters: write, list, read, amend and delete compositions of our letter template.

Each operation runs after :func:`gateway.security.access.patient_access` allowed the user to touch the
patient, and writes an audit record with the patient id, EHR id and composition uid(s) — never letter
text. The composer is always the authenticated user. A letter is looked up **inside this patient's
EHR** only (EHRbase scopes ``/ehr/{ehr_id}/composition/{uid}`` to that EHR), and must be of our
template, so a letter id of another patient is simply not found.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from auth_db.engine import SessionFactory
from gateway.audit import AuditLog, Outcome
from gateway.errors import (
    ApiError,
    Conflict,
    NotFound,
    PreconditionFailed,
    UnprocessableEntity,
    UpstreamError,
)
from gateway.openehr import aql
from gateway.openehr.composition import (
    Composer,
    CompositionShapeError,
    Letter,
    LetterContent,
    LetterStatus,
    build_composition,
    parse_composition,
    template_of,
)
from gateway.security.access import PatientAccess
from gateway.services import ehr as ehr_service
from gateway.services import idempotency
from gateway.services.ehr import PatientReader
from gateway.services.letter_audit import LetterAudit
from gateway.services.letter_cursor import CursorCodec
from gateway.services.letter_ids import if_match_version, parse_letter_id, stale_version
from gateway.settings import Settings
from gateway.upstream.ehrbase import EhrbaseClient

#: Namespace of the composition uids derived from (user, Idempotency-Key).
IDEMPOTENT_UID_NAMESPACE = uuid.UUID("0b7f4c1e-5a8d-4f7b-9a39-6f0f6f2b8e21")


@dataclass(frozen=True, slots=True)
class StoredLetter:
    """A letter with the ids the API returns (``version_uid`` is the ``ETag``)."""

    letter: Letter
    letter_id: str
    version_uid: str
    ehr_id: str


@dataclass(frozen=True, slots=True)
class LetterPageResult:
    summaries: list[aql.LetterRow]
    next_cursor: str | None


class LetterService:
    """Use-cases on letters; one per request (holds the request's audit log)."""

    def __init__(
        self,
        *,
        settings: Settings,
        factory: SessionFactory,
        ehrbase: EhrbaseClient,
        fhir: PatientReader,
        audit: AuditLog,
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.ehrbase = ehrbase
        self.fhir = fhir
        self.events = LetterAudit(audit)
        self.cursors = CursorCodec(settings)

    # --- helpers --------------------------------------------------------------------------------
    async def _ehr_id(self, access: PatientAccess) -> str | None:
        if access.ehr_id is not None:  # read along with the authorisation check
            return access.ehr_id
        return await ehr_service.find_ehr_id(
            self.factory,
            self.ehrbase,
            patient_id=access.patient_id,
            namespace=self.settings.ehrbase_subject_namespace,
        )

    async def _read(self, ehr_id: str, uid: str) -> StoredLetter:
        found = await self.ehrbase.get_composition(ehr_id, uid)
        if found is None or found.body is None or template_of(found.body) != self.settings.letter_template_id:
            raise NotFound("No such letter for this patient.", code="letter_not_found")
        try:
            letter = parse_composition(found.body, uid=found.version_uid)
        except CompositionShapeError:
            raise NotFound("No such letter for this patient.", code="letter_not_found") from None
        return StoredLetter(letter, found.version_uid.split("::", 1)[0], found.version_uid, ehr_id)

    def _composition(self, access: PatientAccess, content: LetterContent) -> dict[str, Any]:
        return build_composition(
            content,
            composer=Composer(access.principal.user_id, access.principal.display_name),
            template_id=self.settings.letter_template_id,
            time=datetime.now(UTC),
        )

    # --- create ---------------------------------------------------------------------------------
    async def create(
        self, access: PatientAccess, content: LetterContent, *, idempotency_key: str | None
    ) -> tuple[StoredLetter, bool]:
        """Write a new letter (the composer is the authenticated user).

        Returns:
            The stored letter, and True when this was a replay of an earlier request with the same key.
        """
        claim: idempotency.Claim | None = None
        if idempotency_key is not None:
            scope = f"POST /patients/{access.patient_id}/letters"
            claim = await idempotency.claim(
                self.factory,
                user_id=access.principal.user_id,
                key=idempotency_key,
                scope=scope,
                hash_=idempotency.request_hash(scope, _content_fingerprint(content)),
                in_progress_for=idempotency.in_progress_ttl(self.settings),
            )
            if claim.replay is not None:
                stored = await self._read(str(claim.replay["ehr_id"]), str(claim.replay["version_uid"]))
                await self.events.record(
                    access,
                    "letter.create",
                    Outcome.success,
                    ehr_id=stored.ehr_id,
                    resource_ids=[stored.version_uid],
                    details={"idempotent_replay": True},
                )
                return stored, True
        ehr_id: str | None = access.ehr_id
        try:
            if ehr_id is None:
                ehr_id = await ehr_service.get_or_create_ehr_id(
                    self.factory,
                    self.ehrbase,
                    self.fhir,
                    patient_id=access.patient_id,
                    namespace=self.settings.ehrbase_subject_namespace,
                )
            stored = await self._write_new(access, ehr_id, content, idempotency_key)
        except ApiError as error:
            if claim is not None:
                await idempotency.release(self.factory, claim)
            await self.events.failed(access, "letter.create", error, ehr_id=ehr_id)
            raise
        except Exception:
            if claim is not None:
                await idempotency.release(self.factory, claim)
            raise
        if claim is not None:
            ref = {"ehr_id": ehr_id, "letter_id": stored.letter_id, "version_uid": stored.version_uid}
            await idempotency.complete(self.factory, claim, status=201, ref=ref)
        await self.events.record(
            access, "letter.create", Outcome.success, ehr_id=ehr_id, resource_ids=[stored.version_uid]
        )
        return stored, False

    async def _write_new(
        self, access: PatientAccess, ehr_id: str, content: LetterContent, key: str | None
    ) -> StoredLetter:
        composition = self._composition(access, content)
        if key is None:
            written = await self.ehrbase.create_composition(ehr_id, composition, idempotent=False)
            if written.body is None:
                return await self._read(ehr_id, written.version_uid)
            letter = _parse_written(written.body, written.version_uid)
            return StoredLetter(letter, written.version_uid.split("::", 1)[0], written.version_uid, ehr_id)
        # A uid derived from (user, key): a retry after a lost answer cannot write a second letter;
        # EHRbase refuses a known uid with 412, and the first write is read back instead.
        object_id = uuid.uuid5(
            IDEMPOTENT_UID_NAMESPACE, f"{access.principal.user_id}:{access.patient_id}:{key}"
        )
        version_uid = f"{object_id}::{await self.ehrbase.system_id(ehr_id)}::1"
        composition["uid"] = {"_type": "OBJECT_VERSION_ID", "value": version_uid}
        try:
            written = await self.ehrbase.create_composition(ehr_id, composition, idempotent=True)
        except PreconditionFailed:
            stored = await self._read(ehr_id, version_uid)
            if _content_of(stored.letter) != content or stored.letter.author_id != str(
                access.principal.user_id
            ):
                raise UnprocessableEntity(
                    "This Idempotency-Key was already used for a different request.",
                    code="idempotency_key_reused",
                ) from None
            return stored
        if written.body is None:
            return await self._read(ehr_id, written.version_uid)
        letter = _parse_written(written.body, written.version_uid)
        return StoredLetter(letter, str(object_id), written.version_uid, ehr_id)

    # --- list / read ----------------------------------------------------------------------------
    async def list_page(self, access: PatientAccess, *, cursor: str | None, limit: int) -> LetterPageResult:
        """One page of letter summaries, newest first (offset paging with a signed cursor)."""
        offset = self.cursors.decode(cursor, patient_id=access.patient_id) if cursor else 0
        ehr_id: str | None = None
        try:
            ehr_id = await self._ehr_id(access)
            if ehr_id is None:
                await self.events.record(access, "letter.list", Outcome.success, resource_ids=[])
                return LetterPageResult([], None)
            result = await self.ehrbase.query(
                aql.list_letters_request(
                    ehr_id=ehr_id,
                    template_id=self.settings.letter_template_id,
                    offset=offset,
                    fetch=limit + 1,
                )
            )
            summaries = aql.parse_summaries(result)
        except aql.ResultSetError:
            error = UpstreamError("EHRbase sent an unexpected result set.")
            await self.events.failed(access, "letter.list", error, ehr_id=ehr_id)
            raise error from None
        except ApiError as error:
            await self.events.failed(access, "letter.list", error, ehr_id=ehr_id)
            raise
        page = summaries[:limit]
        next_cursor = (
            self.cursors.encode(offset + limit, patient_id=access.patient_id)
            if len(summaries) > limit
            else None
        )
        await self.events.record(
            access, "letter.list", Outcome.success, ehr_id=ehr_id, resource_ids=[s.uid for s in page]
        )
        return LetterPageResult(page, next_cursor)

    async def get(self, access: PatientAccess, letter_id: str) -> StoredLetter:
        """One letter (latest version, or the exact version when the id is a version uid)."""
        object_id, version_uid = parse_letter_id(letter_id)
        ehr_id: str | None = None
        try:
            ehr_id = await self._ehr_id(access)
            if ehr_id is None:
                raise NotFound("No such letter for this patient.", code="letter_not_found")
            stored = await self._read(ehr_id, version_uid or object_id)
        except ApiError as error:
            await self.events.failed(access, "letter.read", error, ehr_id=ehr_id, resource_ids=[letter_id])
            raise
        await self.events.record(
            access, "letter.read", Outcome.success, ehr_id=ehr_id, resource_ids=[stored.version_uid]
        )
        return stored

    # --- amend / delete -------------------------------------------------------------------------
    async def _current(self, ehr_id: str | None, object_id: str, expected: str) -> StoredLetter:
        """The letter's latest version, which must be the one the client names in ``If-Match``."""
        if ehr_id is None:
            raise NotFound("No such letter for this patient.", code="letter_not_found")
        current = await self._read(ehr_id, object_id)
        if current.version_uid != expected:
            raise stale_version(current_version=current.version_uid)
        return current

    async def amend(
        self,
        access: PatientAccess,
        letter_id: str,
        *,
        if_match: str | None,
        content: LetterContent,
        reason: str | None,
    ) -> StoredLetter:
        """Write a new version of a letter. A final letter needs a ``reason`` (kept in the audit trail)."""
        object_id, _ = parse_letter_id(letter_id)
        expected = if_match_version(if_match)
        ehr_id: str | None = None
        try:
            ehr_id = await self._ehr_id(access)
            current = await self._current(ehr_id, object_id, expected)
            if current.letter.status == "final" and content.status == "draft":
                raise UnprocessableEntity(
                    "A final letter cannot become a draft again; amend it as final.",
                    code="letter_already_final",
                )
            if current.letter.status == "final" and not reason:
                raise UnprocessableEntity(
                    "Amending a final letter needs a reason.", code="amend_reason_required"
                )
            composition = self._composition(access, content)
            written = await self.ehrbase.update_composition(
                current.ehr_id, object_id, if_match=expected, composition=composition
            )
        except PreconditionFailed as error:
            if error.code == "precondition_failed":
                error = stale_version(
                    current_version=error.current_version, upstream_issues=error.upstream_issues
                )
            await self.events.failed(
                access, "letter.amend", error, ehr_id=ehr_id, resource_ids=[expected], reason=reason
            )
            raise error from None
        except ApiError as error:
            await self.events.failed(
                access, "letter.amend", error, ehr_id=ehr_id, resource_ids=[expected], reason=reason
            )
            raise
        letter = (
            _parse_written(written.body, written.version_uid)
            if written.body is not None
            else (await self._read(current.ehr_id, written.version_uid)).letter
        )
        await self.events.record(
            access,
            "letter.amend",
            Outcome.success,
            ehr_id=current.ehr_id,
            resource_ids=[written.version_uid, expected],
            reason=reason,
        )
        return StoredLetter(
            replace(letter, uid=written.version_uid), object_id, written.version_uid, current.ehr_id
        )

    async def delete(self, access: PatientAccess, letter_id: str, *, if_match: str | None) -> None:
        """Delete a draft letter (final letters are amended, never deleted)."""
        object_id, _ = parse_letter_id(letter_id)
        expected = if_match_version(if_match)
        ehr_id: str | None = None
        try:
            ehr_id = await self._ehr_id(access)
            current = await self._current(ehr_id, object_id, expected)
            if current.letter.status != "draft":
                raise Conflict("Only draft letters can be deleted.", code="letter_not_draft")
            try:
                await self.ehrbase.delete_composition(current.ehr_id, expected)
            except Conflict as stale:  # EHRbase answers a stale delete with 409
                raise stale_version(upstream_issues=stale.upstream_issues) from None
        except ApiError as error:
            await self.events.failed(access, "letter.delete", error, ehr_id=ehr_id, resource_ids=[expected])
            raise
        await self.events.record(
            access, "letter.delete", Outcome.success, ehr_id=ehr_id, resource_ids=[expected]
        )


def _content_fingerprint(content: LetterContent) -> dict[str, Any]:
    return {
        "title": content.title,
        "body": content.body,
        "status": content.status,
        "recipients": list(content.recipients),
    }


def _content_of(letter: Letter) -> LetterContent:
    status: LetterStatus = "final" if letter.status == "final" else "draft"
    return LetterContent(title=letter.title, body=letter.body, status=status, recipients=letter.recipients)


def _parse_written(body: dict[str, Any], version_uid: str) -> Letter:
    """The letter EHRbase echoed after a write; an unreadable echo is EHRbase's fault (502)."""
    try:
        return parse_composition(body, uid=version_uid)
    except CompositionShapeError:
        raise UpstreamError("EHRbase returned a letter the gateway cannot read.") from None
