"""FHIR↔openEHR link integrity: what ``gateway check links`` finds (read-only).

The two clinical stores are linked by the EHR's ``EHR_STATUS.subject.external_ref`` (the FHIR Patient id in
``EHRBASE_SUBJECT_NAMESPACE``), and the auth database caches that link (``patient_ehr``). This module finds
where the link is broken:

- **orphan EHRs**: EHRs of our namespace whose subject HAPI FHIR does not hold (404, 410, or an id that is
  no FHIR id), with the number of compositions each holds: those letters belong to no patient;
- **duplicated subjects**: one subject with more than one EHR (the gateway reads only one of them);
- **stale cache rows**: ``patient_ehr`` rows whose EHR no longer exists, or belongs to another subject.

EHRs whose subject is in another namespace (or has no external reference) are not looked at.

It reads in bounded pieces: EHRs by AQL, ``page_size`` at a time (``offset``/``fetch``, ordered by EHR id);
patients by ``_id`` searches of at most ``fhir_batch`` ids (and a URL of bounded length), following HAPI's
paging; cache rows ``page_size`` at a time by key. What it holds for the whole run is one entry per subject
(the subject id and its EHR id, about 200 to 300 bytes) — needed to see duplicates and to check the cache —
plus the problems found.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from sqlmodel import col, func, select

from auth_db.engine import SessionFactory
from auth_db.models import PatientEhr
from gateway.errors import Gone, NotFound
from gateway.openehr.aql import (
    EHR_SUBJECT_COLUMNS,
    count_compositions_request,
    ehr_subject_request,
    list_subject_ehrs_request,
    named_rows,
)
from gateway.upstream.fhir import PageRef, SearchPage

#: A FHIR logical id (R4 ``id`` datatype): anything else cannot be a Patient id.
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
#: Bounds of the options.
MAX_PAGE_SIZE = 10_000
MAX_FHIR_BATCH = 100
#: Longest ``_id=a,b,c`` value sent in one search: keeps the request line well under the 8 KB that Jetty
#: and Tomcat accept by default, whatever the length of the ids.
MAX_ID_PARAM_CHARS = 3_000


class AqlRunner(Protocol):
    """What the check needs from the EHRbase client (:class:`gateway.upstream.ehrbase.EhrbaseClient`)."""

    async def query(self, body: dict[str, Any]) -> dict[str, Any]: ...


class PatientStore(Protocol):
    """What the check needs from the FHIR client (:class:`gateway.upstream.fhir.FhirClient`)."""

    async def search_patients(self, params: list[tuple[str, str]], count: int) -> SearchPage: ...

    async def search_page(self, ref: PageRef) -> SearchPage: ...

    async def read_patient(self, patient_id: str) -> Any: ...


class LinkCheckError(Exception):
    """The check cannot go on: a store answered in a way that makes its result meaningless."""


class OrphanReason(StrEnum):
    not_found = "not_found"  # HAPI FHIR answers 404 for the subject
    deleted = "deleted"  # HAPI FHIR answers 410 (the patient was deleted)
    invalid_id = "invalid_id"  # the subject id is no FHIR id (or is missing)


class StaleReason(StrEnum):
    ehr_missing = "ehr_missing"  # EHRbase holds no EHR of the cached id
    other_subject = "other_subject"  # the cached EHR's subject is another patient (or namespace)


@dataclass(frozen=True, slots=True)
class OrphanEhr:
    """An EHR of our namespace whose subject is no patient in HAPI FHIR."""

    ehr_id: str
    subject_id: str | None
    reason: OrphanReason
    #: Compositions the EHR holds (letters left without a patient); None when not counted.
    compositions: int | None


@dataclass(frozen=True, slots=True)
class DuplicateSubject:
    """A subject with more than one EHR in our namespace."""

    subject_id: str
    ehr_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StaleCacheRow:
    """A ``patient_ehr`` row that does not match EHRbase."""

    patient_id: str
    ehr_id: str
    reason: StaleReason
    #: The subject of the cached EHR, when it exists and is another one.
    actual_subject_id: str | None = None
    actual_namespace: str | None = None
    #: The EHR(s) EHRbase holds for this patient in our namespace (the row's correct value, if one).
    patient_ehr_ids: tuple[str, ...] = ()


@dataclass
class LinkReport:
    """The outcome of one check."""

    namespace: str
    ehrs_checked: int = 0
    subjects_checked: int = 0
    cache_rows_checked: int = 0
    orphans: list[OrphanEhr] = field(default_factory=list)
    duplicates: list[DuplicateSubject] = field(default_factory=list)
    stale_cache: list[StaleCacheRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not (self.orphans or self.duplicates or self.stale_cache)

    def as_dict(self) -> dict[str, Any]:
        """The report as one document for ``json.dumps`` (counts and lists; reasons are strings)."""
        return {
            "status": "ok" if self.ok else "problems",
            "namespace": self.namespace,
            "other_namespaces": "not checked",
            "counts": {
                "ehrs": self.ehrs_checked,
                "subjects": self.subjects_checked,
                "cache_rows": self.cache_rows_checked,
                "orphan_ehrs": len(self.orphans),
                "orphaned_compositions": sum(o.compositions or 0 for o in self.orphans),
                "duplicate_subjects": len(self.duplicates),
                "stale_cache_rows": len(self.stale_cache),
            },
            "orphan_ehrs": [asdict(o) for o in self.orphans],
            "duplicate_subjects": [asdict(d) for d in self.duplicates],
            "stale_cache_rows": [asdict(s) for s in self.stale_cache],
        }


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def id_batches(ids: list[str], size: int) -> list[list[str]]:
    """``ids`` cut into batches of at most ``size`` ids and :data:`MAX_ID_PARAM_CHARS` characters."""
    batches: list[list[str]] = []
    current: list[str] = []
    length = 0
    for patient_id in ids:
        if current and (len(current) >= size or length + 1 + len(patient_id) > MAX_ID_PARAM_CHARS):
            batches.append(current)
            current, length = [], 0
        current.append(patient_id)
        length += len(patient_id) + 1
    if current:
        batches.append(current)
    return batches


class LinkChecker:
    """One run of the check: scan the EHRs, then the cache rows; :attr:`report` holds the findings."""

    def __init__(
        self,
        ehrbase: AqlRunner,
        fhir: PatientStore,
        *,
        namespace: str,
        page_size: int = 500,
        fhir_batch: int = 50,
        count_compositions: bool = True,
    ) -> None:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}")
        if not 1 <= fhir_batch <= MAX_FHIR_BATCH:
            raise ValueError(f"fhir_batch must be 1..{MAX_FHIR_BATCH}")
        self.ehrbase = ehrbase
        self.fhir = fhir
        self.page_size = page_size
        self.fhir_batch = fhir_batch
        self.count_compositions = count_compositions
        self.report = LinkReport(namespace=namespace)
        #: subject id → its first EHR id; the only state that grows with the number of EHRs.
        self._first_ehr: dict[str, str] = {}
        #: subject id → its further EHR ids (duplicates only).
        self._more_ehrs: dict[str, list[str]] = {}
        #: subjects HAPI FHIR does not hold, and why.
        self._missing: dict[str, OrphanReason] = {}

    # --- EHRs ---------------------------------------------------------------------------------------
    async def scan_ehrs(self) -> None:
        """Walk every EHR of the namespace, page by page; record orphans and duplicated subjects.

        Raises:
            ApiError: a store failed (after the client's retries).
            ResultSetError / LinkCheckError: EHRbase answered something the check cannot use.
        """
        offset = 0
        while True:
            result = await self.ehrbase.query(
                list_subject_ehrs_request(
                    namespace=self.report.namespace, offset=offset, fetch=self.page_size
                )
            )
            rows = named_rows(result, EHR_SUBJECT_COLUMNS)
            if len(rows) > self.page_size:
                raise LinkCheckError(
                    f"EHRbase returned {len(rows)} rows for fetch={self.page_size}: it does not page this "
                    "query, so the check would not be bounded"
                )
            fresh = await self._take_page(rows)
            if len(rows) < self.page_size:
                break
            if not fresh:
                raise LinkCheckError(
                    "EHRbase returned a full page of EHRs already seen: it does not honour offset"
                )
            offset += self.page_size
        self.report.duplicates = [
            DuplicateSubject(subject, (self._first_ehr[subject], *more))
            for subject, more in sorted(self._more_ehrs.items())
        ]
        self.report.subjects_checked = len(self._first_ehr)

    async def _take_page(self, rows: list[dict[str, Any]]) -> int:
        """Record one page of EHRs; returns how many of them were not seen before."""
        page: list[tuple[str, str | None]] = []
        new_subjects: list[str] = []
        for row in rows:
            ehr_id = _text(row["ehr_id"])
            if ehr_id is None:
                raise LinkCheckError("EHRbase returned an EHR row without ehr_id")
            subject = _text(row["subject_id"])
            if subject is None:
                page.append((ehr_id, None))
                continue
            first = self._first_ehr.get(subject)
            if first is None:
                self._first_ehr[subject] = ehr_id
                new_subjects.append(subject)
            elif ehr_id == first or ehr_id in self._more_ehrs.get(subject, ()):
                continue  # seen on an earlier page (EHRs created meanwhile shift the pages)
            else:
                self._more_ehrs.setdefault(subject, []).append(ehr_id)
            page.append((ehr_id, subject))
        self.report.ehrs_checked += len(page)
        await self._find_missing(new_subjects)
        for ehr_id, subject in page:
            reason = OrphanReason.invalid_id if subject is None else self._missing.get(subject)
            if reason is not None:
                self.report.orphans.append(
                    OrphanEhr(ehr_id, subject, reason, await self._compositions(ehr_id))
                )
        return len(page)

    async def _find_missing(self, subjects: list[str]) -> None:
        """Look ``subjects`` up in HAPI FHIR; remember those it does not hold."""
        valid = [s for s in subjects if FHIR_ID.fullmatch(s)]
        for subject in subjects:
            if not FHIR_ID.fullmatch(subject):
                self._missing[subject] = OrphanReason.invalid_id
        for batch in id_batches(valid, self.fhir_batch):
            found = await self._found(batch)
            for subject in batch:
                if subject not in found:
                    reason = await self._confirm_missing(subject)
                    if reason is not None:
                        self._missing[subject] = reason

    async def _found(self, batch: list[str]) -> set[str]:
        """The ids of ``batch`` that a ``_id`` search finds (every page of it)."""
        page = await self.fhir.search_patients([("_id", ",".join(batch))], count=len(batch))
        found = {str(resource.get("id")) for resource in page.resources}
        while page.next is not None:
            page = await self.fhir.search_page(page.next)
            found |= {str(resource.get("id")) for resource in page.resources}
        return found

    async def _confirm_missing(self, subject: str) -> OrphanReason | None:
        """Read one patient the search did not find: 404 and 410 tell why; found means it exists."""
        try:
            await self.fhir.read_patient(subject)
        except NotFound:
            return OrphanReason.not_found
        except Gone:
            return OrphanReason.deleted
        return None

    async def _compositions(self, ehr_id: str) -> int | None:
        if not self.count_compositions:
            return None
        rows = named_rows(
            await self.ehrbase.query(count_compositions_request(ehr_id=ehr_id)), ("compositions",)
        )
        if not rows:
            return 0
        value = rows[0]["compositions"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise LinkCheckError("EHRbase returned a composition count that is not a number")
        return int(value)

    # --- cache ----------------------------------------------------------------------------------------
    async def check_cache(self, rows: AsyncIterable[tuple[str, str]]) -> None:
        """Compare ``(patient_id, ehr_id)`` cache rows with the EHRs seen by :meth:`scan_ehrs` (run first).

        A row whose EHR was not seen under its patient is looked up in EHRbase by EHR id (one query per
        such row), which also clears EHRs created since the scan.
        """
        async for patient_id, ehr_id in rows:
            self.report.cache_rows_checked += 1
            known = self._ehrs_of(patient_id)
            if ehr_id in known:
                continue
            stale = await self._stale(patient_id, ehr_id, known)
            if stale is not None:
                self.report.stale_cache.append(stale)

    def _ehrs_of(self, subject: str) -> tuple[str, ...]:
        first = self._first_ehr.get(subject)
        return () if first is None else (first, *self._more_ehrs.get(subject, ()))

    async def _stale(self, patient_id: str, ehr_id: str, known: tuple[str, ...]) -> StaleCacheRow | None:
        if not _is_uuid(ehr_id):  # EHRbase's EHR ids are UUIDs: no need to ask
            return StaleCacheRow(patient_id, ehr_id, StaleReason.ehr_missing, patient_ehr_ids=known)
        rows = named_rows(await self.ehrbase.query(ehr_subject_request(ehr_id=ehr_id)), EHR_SUBJECT_COLUMNS)
        if not rows:
            return StaleCacheRow(patient_id, ehr_id, StaleReason.ehr_missing, patient_ehr_ids=known)
        subject, namespace = _text(rows[0]["subject_id"]), _text(rows[0]["namespace"])
        if subject == patient_id and namespace == self.report.namespace:
            return None  # created after the scan reached it
        return StaleCacheRow(
            patient_id,
            ehr_id,
            StaleReason.other_subject,
            actual_subject_id=subject,
            actual_namespace=namespace,
            patient_ehr_ids=known,
        )


async def count_cache_rows(factory: SessionFactory) -> int:
    """How many rows ``patient_ehr`` holds (also proves the auth database is usable before the scan)."""
    async with factory() as session:
        return int((await session.exec(select(func.count()).select_from(PatientEhr))).one())


async def cache_rows(factory: SessionFactory, *, page_size: int) -> AsyncIterator[tuple[str, str]]:
    """Every ``patient_ehr`` row as ``(patient_id, ehr_id)``, read by key ``page_size`` rows at a time."""
    after = ""
    while True:
        async with factory() as session:
            page = (
                await session.exec(
                    select(PatientEhr.patient_id, PatientEhr.ehr_id)
                    .where(col(PatientEhr.patient_id) > after)
                    .order_by(col(PatientEhr.patient_id))
                    .limit(page_size)
                )
            ).all()
        for patient_id, ehr_id in page:
            yield patient_id, ehr_id
        if len(page) < page_size:
            return
        after = page[-1][0]


async def check_links(
    ehrbase: AqlRunner,
    fhir: PatientStore,
    factory: SessionFactory | None,
    *,
    namespace: str,
    page_size: int = 500,
    fhir_batch: int = 50,
    count_compositions: bool = True,
) -> LinkReport:
    """Run the whole check: EHRs of ``namespace`` against HAPI FHIR, then the cache (unless no ``factory``).

    Raises:
        ApiError: a store failed. ResultSetError / LinkCheckError: EHRbase answered unusably.
        SQLAlchemyError: the auth database cannot be read.
    """
    checker = LinkChecker(
        ehrbase,
        fhir,
        namespace=namespace,
        page_size=page_size,
        fhir_batch=fhir_batch,
        count_compositions=count_compositions,
    )
    if factory is not None:
        await count_cache_rows(factory)  # fail early, not after a long scan
    await checker.scan_ehrs()
    if factory is not None:
        await checker.check_cache(cache_rows(factory, page_size=page_size))
    return checker.report
