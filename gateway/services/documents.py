"""Letters as FHIR ``DocumentReference``: search, read, vread, history and the text as ``Binary``.

The same rules as the JSON letters API (:mod:`gateway.services.letters`): the caller's access to the
patient is checked first (:func:`gateway.security.access.authorize_patient`, care team or break-glass,
a ``denied`` record on refusal), letters are looked up inside that patient's EHR only and must be of
our template, and every outcome is audited (``letter.list`` for a search, ``letter.read`` for reads,
``letter.history`` for a history) with the version uids touched, never letter text.

A DocumentReference id names (EHR, composition) (:mod:`gateway.r4.ids`); the patient of the EHR comes
from the auth database's ``patient_ehr`` cache, which the gateway fills whenever it looks a patient's
EHR up (it must have done so to hand out the id), so the access check happens before EHRbase is asked.

``docStatus`` amended is not stored anywhere: a letter's status goes draft → final and never back, so a
final version is an amendment exactly when the version before it is final too. That costs one read of the
previous version for a final letter past its first version (only when its mapping is not cached).

The JSON of one letter version never changes (openEHR versions are immutable), so mapped resources are
kept in a small in-process cache (:class:`DocumentCache`: bounded, expiring, memory only) keyed by
version uid; it saves the mapping's cost on repeated searches and reads, never an access check or
an EHRbase call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

from cachetools import TTLCache
from sqlmodel import select

from auth_db.engine import SessionFactory
from auth_db.models import PatientEhr
from gateway.audit import AuditLog, Outcome
from gateway.errors import ApiError, NotFound, UpstreamError
from gateway.openehr import aql
from gateway.openehr.composition import CompositionShapeError, Letter, parse_composition, template_of
from gateway.r4.documents import LetterVersion, document_reference
from gateway.r4.ids import DocumentIds, LetterAddress
from gateway.security.access import PatientAccess
from gateway.services import ehr as ehr_service
from gateway.services.letter_audit import LetterAudit
from gateway.settings import Settings
from gateway.upstream.ehrbase import EhrbaseClient

#: Versions read at most for one history (newest first).
MAX_HISTORY = 100


def document_not_found() -> NotFound:
    return NotFound("No such DocumentReference.", code="document_not_found")


@dataclass(frozen=True, slots=True)
class DocumentQuery:
    """A checked DocumentReference search (see :mod:`gateway.r4.search`)."""

    patient_id: str
    date_from: str | None
    date_to: str | None
    #: A criterion no letter can match (e.g. ``status=superseded``, another ``type``): no upstream call.
    matches_nothing: bool
    count: int


class DocumentCache:
    """Mapped DocumentReference JSON by (version uid, latest), bounded and expiring; memory only."""

    def __init__(self, size: int, ttl_seconds: float) -> None:
        self._cache: TTLCache[tuple[str, bool], dict[str, Any]] | None = (
            TTLCache(maxsize=size, ttl=ttl_seconds) if size > 0 else None
        )

    def get(self, key: tuple[str, bool]) -> dict[str, Any] | None:
        return self._cache.get(key) if self._cache is not None else None

    def put(self, key: tuple[str, bool], value: dict[str, Any]) -> None:
        if self._cache is not None:
            self._cache[key] = value


class DocumentService:
    """DocumentReference use-cases; one per request (holds the request's audit log)."""

    def __init__(
        self,
        *,
        settings: Settings,
        factory: SessionFactory,
        ehrbase: EhrbaseClient,
        audit: AuditLog,
        ids: DocumentIds,
        cache: DocumentCache,
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.ehrbase = ehrbase
        self.events = LetterAudit(audit, via="fhir")
        self.ids = ids
        self.cache = cache
        self.fhir_base = f"{settings.public_base}/fhir"

    # --- locating -------------------------------------------------------------------------------
    async def locate(self, document_id: str) -> tuple[str, LetterAddress]:
        """The patient and the EHRbase address of a DocumentReference id.

        Raises:
            NotFound: ``document_not_found`` — not an id this gateway made, or an EHR it never saw.
        """
        address = self.ids.decode(document_id)
        if address is None:
            raise document_not_found()
        async with self.factory() as session:
            statement = select(PatientEhr.patient_id).where(PatientEhr.ehr_id == address.ehr_id)
            patient_id = (await session.exec(statement)).first()
        if patient_id is None:
            raise document_not_found()
        return patient_id, address

    # --- mapping --------------------------------------------------------------------------------
    def resource(self, version: LetterVersion) -> dict[str, Any]:
        """The DocumentReference JSON of one version (from the cache when mapped before)."""
        key = (version.version_uid, version.latest)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        mapped = document_reference(
            version, fhir_base=self.fhir_base, inline_max_bytes=self.settings.fhir_inline_attachment_max_bytes
        )
        result: dict[str, Any] = mapped.model_dump(mode="json", exclude_none=True)
        self.cache.put(key, result)
        return result

    def _version(
        self, access: PatientAccess, address: LetterAddress, letter: Letter, *, latest: bool
    ) -> LetterVersion:
        return LetterVersion(
            document_id=self.ids.encode(address),
            version_uid=letter.uid,
            patient_id=access.patient_id,
            title=letter.title,
            status=letter.status,
            author_name=letter.author_name,
            author_id=letter.author_id,
            date=letter.date,
            body=letter.body,
            latest=latest,
        )

    async def _previous_is_final(self, address: LetterAddress, version_uid: str) -> bool:
        object_id, system_id, number = version_uid.split("::")
        previous = await self._read(address, f"{object_id}::{system_id}::{int(number) - 1}")
        return previous.status == "final"

    async def _with_amended(
        self, versions: list[LetterVersion], addresses: list[LetterAddress]
    ) -> list[LetterVersion]:
        """``versions`` with ``amended`` set where the previous version is final (unless mapped before)."""
        needed = [
            index
            for index, version in enumerate(versions)
            if version.status == "final"
            and version.version != "1"
            and self.cache.get((version.version_uid, version.latest)) is None
        ]
        if not needed:
            return versions
        flags = await asyncio.gather(
            *(self._previous_is_final(addresses[i], versions[i].version_uid) for i in needed)
        )
        result = list(versions)
        for index, flag in zip(needed, flags, strict=True):
            result[index] = replace(result[index], amended=flag)
        return result

    # --- search ---------------------------------------------------------------------------------
    async def search(
        self, access: PatientAccess, query: DocumentQuery, *, offset: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page of the patient's letters as DocumentReferences (latest versions, newest first).

        Returns:
            The resources, and whether there are more.
        """
        if query.matches_nothing:
            await self.events.record(access, "letter.list", Outcome.success, ehr_id=None, resource_ids=[])
            return [], False
        ehr_id: str | None = access.ehr_id
        try:
            if ehr_id is None:
                ehr_id = await ehr_service.find_ehr_id(
                    self.factory,
                    self.ehrbase,
                    patient_id=access.patient_id,
                    namespace=self.settings.ehrbase_subject_namespace,
                )
            if ehr_id is None:
                await self.events.record(access, "letter.list", Outcome.success, ehr_id=None, resource_ids=[])
                return [], False
            result = await self.ehrbase.query(
                aql.list_documents_request(
                    ehr_id=ehr_id,
                    template_id=self.settings.letter_template_id,
                    date_from=query.date_from,
                    date_to=query.date_to,
                    offset=offset,
                    fetch=query.count + 1,
                )
            )
            rows = aql.parse_summaries(result)
        except aql.ResultSetError:
            error = UpstreamError("EHRbase sent an unexpected result set.")
            await self.events.failed(access, "letter.list", error, ehr_id=ehr_id, resource_ids=[])
            raise error from None
        except ApiError as error:
            await self.events.failed(access, "letter.list", error, ehr_id=ehr_id, resource_ids=[])
            raise
        page = rows[: query.count]
        # A mapped version is taken from the cache as it is (its id sealed, its docStatus known).
        resources: list[dict[str, Any] | None] = [self.cache.get((row.uid, True)) for row in page]
        missing = [index for index, resource in enumerate(resources) if resource is None]
        if missing:
            addresses = [LetterAddress(ehr_id, page[i].uid.split("::", 1)[0]) for i in missing]
            versions = [
                _latest_version(page[i], self.ids.encode(address), access.patient_id)
                for i, address in zip(missing, addresses, strict=True)
            ]
            try:
                versions = await self._with_amended(versions, addresses)
            except ApiError as error:
                await self.events.failed(access, "letter.list", error, ehr_id=ehr_id, resource_ids=[])
                raise
            for index, version in zip(missing, versions, strict=True):
                resources[index] = self.resource(version)
        await self.events.record(
            access, "letter.list", Outcome.success, ehr_id=ehr_id, resource_ids=[row.uid for row in page]
        )
        return [resource for resource in resources if resource is not None], len(rows) > query.count

    # --- reads ----------------------------------------------------------------------------------
    async def _read(self, address: LetterAddress, uid: str) -> Letter:
        found = await self.ehrbase.get_composition(address.ehr_id, uid)
        if found is None or found.body is None or template_of(found.body) != self.settings.letter_template_id:
            raise document_not_found()
        try:
            return parse_composition(found.body, uid=found.version_uid)
        except CompositionShapeError:
            raise document_not_found() from None

    async def read(
        self, access: PatientAccess, address: LetterAddress, version: str | None = None
    ) -> LetterVersion:
        """The latest version of a letter, or the given version number (``vread``)."""
        try:
            latest = await self._read(address, address.composition_id)
            latest_number = int(latest.uid.rsplit("::", 1)[-1])
            letter = latest
            if version is not None and int(version) != latest_number:
                if not 1 <= int(version) < latest_number:
                    raise NotFound("No such version of this DocumentReference.", code="version_not_found")
                system_id = await self.ehrbase.system_id(address.ehr_id)
                letter = await self._read(address, f"{address.composition_id}::{system_id}::{int(version)}")
            [found] = await self._with_amended(
                [self._version(access, address, letter, latest=letter is latest)], [address]
            )
        except ApiError as error:
            await self.events.failed(
                access, "letter.read", error, ehr_id=address.ehr_id, resource_ids=[address.composition_id]
            )
            raise
        await self.events.record(
            access, "letter.read", Outcome.success, ehr_id=address.ehr_id, resource_ids=[letter.uid]
        )
        return found

    async def history(self, access: PatientAccess, address: LetterAddress) -> list[LetterVersion]:
        """Every version of a letter, newest first (at most :data:`MAX_HISTORY`)."""
        try:
            latest = await self._read(address, address.composition_id)
            number = int(latest.uid.rsplit("::", 1)[-1])
            system_id = await self.ehrbase.system_id(address.ehr_id)
            older = range(number - 1, max(number - MAX_HISTORY, 0), -1)
            earlier = await asyncio.gather(
                *(self._read(address, f"{address.composition_id}::{system_id}::{n}") for n in older)
            )
            letters = [latest, *earlier]
        except ApiError as error:
            await self.events.failed(
                access, "letter.history", error, ehr_id=address.ehr_id, resource_ids=[address.composition_id]
            )
            raise
        await self.events.record(
            access,
            "letter.history",
            Outcome.success,
            ehr_id=address.ehr_id,
            resource_ids=[letter.uid for letter in letters],
        )
        versions = [self._version(access, address, letter, latest=letter is latest) for letter in letters]
        # Newest first: each version's predecessor is the next one in the list.
        return [
            replace(version, amended=index + 1 < len(letters) and letters[index + 1].status == "final")
            for index, version in enumerate(versions)
        ]


def _latest_version(row: aql.LetterRow, document_id: str, patient_id: str) -> LetterVersion:
    """The current version of a letter, from its row of the search."""
    return LetterVersion(
        document_id=document_id,
        version_uid=row.uid,
        patient_id=patient_id,
        title=row.title,
        status=row.status,
        author_name=row.author,
        author_id=row.author_id,
        date=row.date,
        body=row.body,
        latest=True,
    )
