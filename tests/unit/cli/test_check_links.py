"""``gateway check links``: what it finds, how it pages, and its exit statuses.

EHRbase and HAPI FHIR are faked at the transport boundary by small in-memory stores that answer like the
real ones (AQL result sets with ``meta``/``q``/``columns``/``rows``, HAPI searchset Bundles with paging links
and OperationOutcomes); the auth database is the embedded SQLite file, migrated, as the other CLI tests use.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from typer.testing import CliRunner, Result

from auth_db import migrate
from auth_db.engine import SessionFactory, create_engine, create_session_factory
from auth_db.models import PatientEhr
from gateway.cli import app
from gateway.openehr import aql
from gateway.services.link_check import MAX_ID_PARAM_CHARS, cache_rows, count_cache_rows, id_batches
from tests import ehrbase_payloads as eb
from tests import fhir_payloads as fb

NAMESPACE = "fhir-patient"
#: Named as EHRbase 2.x names them: ``e/ehr_status/…`` becomes ``CONTAINS EHR_STATUS s`` (seen end to end).
EHR_COLUMNS = [
    ("ehr_id", "e/ehr_id/value"),
    ("subject_id", "s/subject/external_ref/id/value"),
    ("namespace", "s/subject/external_ref/namespace"),
]


def ehr_id(n: int) -> str:
    """A stable EHR id whose order follows ``n`` (EHRbase orders the pages by EHR id)."""
    return str(uuid.UUID(int=n))


@dataclass
class FakeEhrbase:
    """EHRbase's ``POST /query/aql`` for the three queries of the check, over a list of EHRs."""

    #: (ehr_id, subject id, namespace)
    ehrs: list[tuple[str, str | None, str]] = field(default_factory=list)
    compositions: dict[str, int] = field(default_factory=dict)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    #: EHRs created once the EHR scan is over (they appear with the first look-up by EHR id).
    created_after_scan: list[tuple[str, str | None, str]] = field(default_factory=list)

    def add(self, n: int, subject: str | None, namespace: str = NAMESPACE, compositions: int = 0) -> str:
        ehr = ehr_id(n)
        self.ehrs.append((ehr, subject, namespace))
        self.compositions[ehr] = compositions
        return ehr

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        q, parameters = body["q"], body["query_parameters"]
        if q == aql.LIST_SUBJECT_EHRS:
            offset, fetch = body["offset"], body["fetch"]
            rows = sorted([list(e) for e in self.ehrs if e[2] == parameters["namespace"]])
            return httpx.Response(
                200, json=eb.result_set(q, EHR_COLUMNS, rows[offset : offset + fetch], offset, fetch)
            )
        if q == aql.EHR_SUBJECT:
            self.ehrs += self.created_after_scan
            self.created_after_scan = []
            rows = [list(e) for e in self.ehrs if e[0] == parameters["ehr_id"]]
            return httpx.Response(200, json=unpaged(eb.result_set(q, EHR_COLUMNS, rows, 0, 0)))
        if q == aql.COUNT_COMPOSITIONS:
            count = self.compositions.get(parameters["ehr_id"], 0)  # one row, also for none (seen end to end)
            result = unpaged(eb.result_set(q, [], [[count]], 0, 0))
            result["columns"] = [{"name": "compositions"}]  # an aggregate's column has no path
            return httpx.Response(200, json=result)
        return eb.error(400, f"Could not process query/stored-query, reason: {q}")

    def queries(self, q: str) -> list[dict[str, Any]]:
        return [body for body in self.bodies if body["q"] == q]


def unpaged(result_set: dict[str, Any]) -> dict[str, Any]:
    """EHRbase reports ``fetch``/``offset`` in ``meta`` only when the request limited the rows."""
    del result_set["meta"]["fetch"], result_set["meta"]["offset"]
    return result_set


@dataclass
class FakeHapi:
    """HAPI FHIR's Patient read, ``_id`` search (pages of at most ``max_page``) and ``_getpages``."""

    patients: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    max_page: int = 1000
    searched: list[list[str]] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)
    _searches: dict[str, list[str]] = field(default_factory=dict)

    def _page(self, search_id: str, offset: int, count: int) -> httpx.Response:
        matches = self._searches[search_id]
        size = min(count, self.max_page)
        more = offset + size < len(matches)
        return fb.searchset(
            [fb.patient(pid) for pid in matches[offset : offset + size]],
            next_offset=offset + size if more else None,
            search_id=search_id,
            count=size,
        )

    def search(self, request: httpx.Request) -> httpx.Response:
        ids = request.url.params["_id"].split(",")
        self.searched.append(ids)
        search_id = str(uuid.uuid4())
        self._searches[search_id] = [pid for pid in ids if pid in self.patients]
        return self._page(search_id, 0, int(request.url.params["_count"]))

    def get_pages(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        return self._page(params["_getpages"], int(params["_getpagesoffset"]), int(params["_count"]))

    def read(self, request: httpx.Request, pid: str) -> httpx.Response:
        self.reads.append(pid)
        if pid in self.patients:
            return fb.resource_response(fb.patient(pid))
        if pid in self.deleted:
            return fb.gone()
        return fb.not_found(pid)


@pytest.fixture
def auth_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment of the command, with a migrated embedded auth database."""
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "auth.db"
    for name, value in {
        "AUTH_DB_SQLITE_PATH": str(db),
        "FHIR_SERVER_URL": fb.BASE,
        "EHRBASE_URL": "http://ehrbase.test/ehrbase",
        "EHRBASE_API_USER": "ehrbase-user",
        "EHRBASE_API_PASSWORD": "ehrbase-user-secret",
        "UPSTREAM_RETRY_MAX_WAIT": "0.01",
        "LOG_JSON": "false",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ["AUTH_DATABASE_URL", "AUTH_DB_HOST", "GATEWAY_ENV", "EHRBASE_SUBJECT_NAMESPACE"]:
        monkeypatch.delenv(name, raising=False)
    migrate.upgrade(f"sqlite+aiosqlite:///{db}")
    return db


def cache(db: Path, *rows: tuple[str, str]) -> None:
    """Put ``(patient_id, ehr_id)`` rows into ``patient_ehr``."""

    async def write() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{db}")
        try:
            async with create_session_factory(engine)() as session:
                for patient_id, ehr in rows:
                    session.add(PatientEhr(patient_id=patient_id, ehr_id=ehr))
                await session.commit()
        finally:
            await engine.dispose()

    asyncio.run(write())


@dataclass
class Stores:
    ehrbase: FakeEhrbase
    hapi: FakeHapi


@pytest.fixture
def stores(upstream_mock: respx.MockRouter) -> Stores:
    ehrbase, hapi = FakeEhrbase(), FakeHapi()
    upstream_mock.post(f"{eb.BASE}/query/aql").mock(side_effect=ehrbase)
    upstream_mock.route(method="GET", host="fhir.test", path="/fhir/Patient").mock(side_effect=hapi.search)
    upstream_mock.route(method="GET", host="fhir.test", path="/fhir").mock(side_effect=hapi.get_pages)
    upstream_mock.route(method="GET", host="fhir.test", path__regex=r"^/fhir/Patient/(?P<pid>[^/]+)$").mock(
        side_effect=hapi.read
    )
    return Stores(ehrbase, hapi)


def run(*args: str) -> Result:
    return CliRunner().invoke(app, ["check", "links", *args])


def as_json(result: Result) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(result.stdout)
    return document


# --- outcomes -------------------------------------------------------------------------------------


def test_all_links_sound_exits_0(auth_db: Path, stores: Stores) -> None:
    first = stores.ehrbase.add(1, "1001", compositions=3)
    second = stores.ehrbase.add(2, "1002")
    stores.hapi.patients |= {"1001", "1002"}
    cache(auth_db, ("1001", first), ("1002", second))

    result = run()

    assert result.exit_code == 0, result.output
    assert "checked 2 EHRs of 2 subjects in namespace 'fhir-patient' and 2 patient_ehr rows" in result.stdout
    assert result.stdout.rstrip().endswith("ok: no problems found")
    assert stores.hapi.searched == [["1001", "1002"]]
    assert stores.hapi.reads == []  # nothing missing: no single reads
    assert stores.ehrbase.queries(aql.COUNT_COMPOSITIONS) == []


def test_an_orphan_ehr_exits_1_with_its_compositions(auth_db: Path, stores: Stores) -> None:
    stores.ehrbase.add(1, "1001")
    orphan = stores.ehrbase.add(2, "9999", compositions=4)
    deleted = stores.ehrbase.add(3, "1003", compositions=0)
    stores.hapi.patients.add("1001")
    stores.hapi.deleted.add("1003")

    result = run()

    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert f"orphan EHR {orphan}: subject '9999' is not in HAPI FHIR (404), holds 4 compositions" in lines
    assert (
        f"orphan EHR {deleted}: subject '1003' was deleted in HAPI FHIR (410), holds 0 compositions" in lines
    )
    assert "problems: 2 orphan EHRs, 0 duplicated subjects, 0 stale cache rows" in result.stdout
    # absent from the batch search, then each confirmed by a read (which tells 404 from 410)
    assert stores.hapi.searched == [["1001", "9999", "1003"]]  # in EHR id order
    assert sorted(stores.hapi.reads) == ["1003", "9999"]
    counted = stores.ehrbase.queries(aql.COUNT_COMPOSITIONS)
    assert [body["query_parameters"] for body in counted] == [{"ehr_id": orphan}, {"ehr_id": deleted}]


def test_a_subject_that_is_no_fhir_id_is_an_orphan_without_asking_hapi(auth_db: Path, stores: Stores) -> None:
    odd = stores.ehrbase.add(1, "not a fhir id")
    long = stores.ehrbase.add(2, "x" * 65)

    result = run("--json")

    assert result.exit_code == 1, result.output
    orphans = {(o["ehr_id"], o["reason"]) for o in as_json(result)["orphan_ehrs"]}
    assert orphans == {(odd, "invalid_id"), (long, "invalid_id")}
    assert stores.hapi.searched == []
    assert stores.hapi.reads == []


def test_duplicate_ehrs_of_one_subject_are_listed(auth_db: Path, stores: Stores) -> None:
    first = stores.ehrbase.add(1, "1001")
    stores.ehrbase.add(2, "1002")
    second = stores.ehrbase.add(3, "1001")
    stores.hapi.patients |= {"1001", "1002"}
    cache(auth_db, ("1001", first))

    result = run()

    assert result.exit_code == 1, result.output
    assert f"duplicate EHRs for subject '1001': {first}, {second}" in result.stdout
    assert not [line for line in result.stdout.splitlines() if line.startswith("orphan EHR")]
    assert stores.hapi.searched == [["1001", "1002"]]  # the subject is looked up once


def test_stale_cache_rows_are_listed(auth_db: Path, stores: Stores) -> None:
    first = stores.ehrbase.add(1, "1001")
    second = stores.ehrbase.add(2, "1002")
    elsewhere = stores.ehrbase.add(3, "1003", namespace="other-system")
    stores.hapi.patients |= {"1001", "1002", "1003"}
    gone = str(uuid.uuid4())
    cache(
        auth_db,
        ("1001", first),  # sound
        ("1002", gone),  # the EHR no longer exists; the patient's EHR is `second`
        ("1004", second),  # the EHR is another patient's (1002's)
        ("1003", elsewhere),  # the EHR's subject is in another namespace
        ("1005", "not-a-uuid"),  # no EHR id at all: not sent to EHRbase
    )

    result = run("--json")

    assert result.exit_code == 1, result.output
    stale = {row["patient_id"]: row for row in as_json(result)["stale_cache_rows"]}
    assert set(stale) == {"1002", "1003", "1004", "1005"}
    assert stale["1002"] == {
        "patient_id": "1002",
        "ehr_id": gone,
        "reason": "ehr_missing",
        "actual_subject_id": None,
        "actual_namespace": None,
        "patient_ehr_ids": [second],
    }
    assert stale["1004"]["reason"] == "other_subject"
    assert (stale["1004"]["actual_subject_id"], stale["1004"]["actual_namespace"]) == ("1002", NAMESPACE)
    assert stale["1003"]["reason"] == "other_subject"
    assert stale["1003"]["actual_namespace"] == "other-system"
    assert stale["1005"]["reason"] == "ehr_missing"
    looked_up = [body["query_parameters"]["ehr_id"] for body in stores.ehrbase.queries(aql.EHR_SUBJECT)]
    assert sorted(looked_up) == sorted([gone, second, elsewhere])

    lines = run()
    assert f"stale cache row: patient '1002' -> EHR {gone}: EHR does not exist in EHRbase; " in lines.stdout
    assert f"the patient's EHR: {second}" in lines.stdout


def test_a_cache_row_of_an_ehr_created_after_the_scan_is_not_stale(auth_db: Path, stores: Stores) -> None:
    stores.hapi.patients.add("1001")
    late = str(uuid.uuid4())
    cache(auth_db, ("1001", late))
    stores.ehrbase.created_after_scan.append((late, "1001", NAMESPACE))

    result = run()

    assert result.exit_code == 0, result.output
    assert len(stores.ehrbase.queries(aql.EHR_SUBJECT)) == 1


def test_ehrs_of_other_namespaces_are_not_checked(auth_db: Path, stores: Stores) -> None:
    stores.ehrbase.add(1, "1001")
    stores.ehrbase.add(2, "9999", namespace="another-system")
    stores.hapi.patients.add("1001")

    result = run()

    assert result.exit_code == 0, result.output
    assert "EHRs with a subject in another namespace are not checked" in result.stdout
    (listed,) = stores.ehrbase.queries(aql.LIST_SUBJECT_EHRS)
    assert listed["query_parameters"] == {"namespace": NAMESPACE}
    assert NAMESPACE not in listed["q"]  # a parameter, never part of the text


# --- paging ---------------------------------------------------------------------------------------


def test_ehrs_are_read_page_by_page(auth_db: Path, stores: Stores) -> None:
    for n, subject in enumerate(["1001", "1002", "1003", "1004", "1001"], start=1):
        stores.ehrbase.add(n, subject)
    stores.hapi.patients |= {"1001", "1002", "1003"}

    result = run("--page-size", "2", "--json")

    assert result.exit_code == 1, result.output
    pages = stores.ehrbase.queries(aql.LIST_SUBJECT_EHRS)
    assert [(body["offset"], body["fetch"]) for body in pages] == [(0, 2), (2, 2), (4, 2)]
    document = as_json(result)
    assert document["counts"]["ehrs"] == 5
    assert document["counts"]["subjects"] == 4
    # a duplicate found across pages, an orphan on the second page
    assert document["duplicate_subjects"] == [{"subject_id": "1001", "ehr_ids": [ehr_id(1), ehr_id(5)]}]
    assert [o["ehr_id"] for o in document["orphan_ehrs"]] == [ehr_id(4)]
    # one FHIR batch per page, each subject once
    assert stores.hapi.searched == [["1001", "1002"], ["1003", "1004"]]


def test_a_full_last_page_ends_with_an_empty_one(auth_db: Path, stores: Stores) -> None:
    for n in range(1, 5):
        stores.ehrbase.add(n, f"100{n}")
    stores.hapi.patients |= {"1001", "1002", "1003", "1004"}

    result = run("--page-size", "2")

    assert result.exit_code == 0, result.output
    offsets = [body["offset"] for body in stores.ehrbase.queries(aql.LIST_SUBJECT_EHRS)]
    assert offsets == [0, 2, 4]


def test_fhir_lookups_are_batched_and_follow_hapis_paging(auth_db: Path, stores: Stores) -> None:
    subjects = [f"{1000 + n}" for n in range(1, 8)]
    for n, subject in enumerate(subjects, start=1):
        stores.ehrbase.add(n, subject)
    stores.hapi.patients |= set(subjects)
    stores.hapi.max_page = 2  # HAPI caps _count below the batch: the rest comes by _getpages

    result = run("--fhir-batch", "5")

    assert result.exit_code == 0, result.output
    assert stores.hapi.searched == [subjects[:5], subjects[5:]]
    assert stores.hapi.reads == []  # nothing was mistaken for missing


def test_fhir_batches_are_bounded_in_ids_and_in_characters() -> None:
    assert id_batches(["1", "2", "3"], 2) == [["1", "2"], ["3"]]
    long_ids = [f"{n:064d}" for n in range(100)]
    batches = id_batches(long_ids, 100)
    assert [pid for batch in batches for pid in batch] == long_ids
    assert len(batches) > 1
    assert all(len(",".join(batch)) <= MAX_ID_PARAM_CHARS for batch in batches)


def test_an_ehrbase_that_ignores_offset_stops_the_check(
    auth_db: Path, upstream_mock: respx.MockRouter
) -> None:
    same = [[ehr_id(1), "1001", NAMESPACE], [ehr_id(2), "1002", NAMESPACE]]
    upstream_mock.post(f"{eb.BASE}/query/aql").mock(
        return_value=httpx.Response(200, json=eb.result_set(aql.LIST_SUBJECT_EHRS, EHR_COLUMNS, same, 0, 2))
    )
    upstream_mock.route(method="GET", host="fhir.test", path="/fhir/Patient").mock(
        return_value=fb.searchset([fb.patient("1001"), fb.patient("1002")])
    )

    result = run("--page-size", "2")

    assert result.exit_code == 2, result.output
    assert "does not honour offset" in result.stderr


def test_the_cache_is_read_in_pages(auth_db: Path, stores: Stores) -> None:
    rows = []
    for n in range(1, 6):
        rows.append((f"100{n}", stores.ehrbase.add(n, f"100{n}")))
    stores.hapi.patients |= {pid for pid, _ in rows}
    cache(auth_db, *rows)

    result = run("--page-size", "2", "--json")

    assert result.exit_code == 0, result.output
    assert as_json(result)["counts"]["cache_rows"] == 5


# --- failures -------------------------------------------------------------------------------------


def test_ehrbase_down_exits_2_without_a_traceback(auth_db: Path, upstream_mock: respx.MockRouter) -> None:
    upstream_mock.post(f"{eb.BASE}/query/aql").mock(side_effect=httpx.ConnectError("refused"))

    result = run()

    assert result.exit_code == 2, result.output
    assert "link check could not complete: EHRbase cannot be reached (ehrbase.query.aql)" in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "ehrbase-user-secret" not in result.output


def test_hapi_failing_exits_2_with_json_status_error(auth_db: Path, upstream_mock: respx.MockRouter) -> None:
    ehrbase = FakeEhrbase()
    ehrbase.add(1, "1001")
    upstream_mock.post(f"{eb.BASE}/query/aql").mock(side_effect=ehrbase)
    upstream_mock.route(method="GET", host="fhir.test").mock(
        return_value=fb.outcome(500, "HAPI-0000: database unavailable")
    )

    result = run("--json")

    assert result.exit_code == 2, result.output
    message = "HAPI FHIR answered HTTP 500 (patient.search). (upstream_bad_response)"
    assert as_json(result) == {"status": "error", "error": message}
    assert f"link check could not complete: {message}" in result.stderr
    assert "HAPI-0000: database unavailable" in result.stderr  # HAPI's OperationOutcome, for the operator
    assert "Traceback" not in result.output


def test_a_page_over_ehrbases_max_fetch_exits_2_with_ehrbases_reason(
    auth_db: Path, upstream_mock: respx.MockRouter
) -> None:
    upstream_mock.post(f"{eb.BASE}/query/aql").mock(
        return_value=eb.error(400, "Fetch parameter 1000 exceeds maximum fetch 500")
    )

    result = run("--page-size", "1000")

    assert result.exit_code == 2, result.output
    assert "Fetch parameter 1000 exceeds maximum fetch 500" in result.stderr


def test_an_unusable_result_set_exits_2(auth_db: Path, upstream_mock: respx.MockRouter) -> None:
    upstream_mock.post(f"{eb.BASE}/query/aql").mock(
        return_value=httpx.Response(200, json=eb.result_set("SELECT 1", [("x", "x")], [], 0, 500))
    )

    result = run()

    assert result.exit_code == 2, result.output
    assert "unexpected answer from EHRbase" in result.stderr


def test_a_missing_auth_database_exits_2_unless_the_cache_is_skipped(
    auth_db: Path, stores: Stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTH_DB_SQLITE_PATH", str(tmp_path / "nowhere" / "auth.db"))
    stores.ehrbase.add(1, "1001")
    stores.hapi.patients.add("1001")

    refused = run()
    assert refused.exit_code == 2
    assert "no auth database" in refused.stderr
    assert not (tmp_path / "nowhere").exists()  # read-only: nothing was created

    skipped = run("--no-cache", "--json")
    assert skipped.exit_code == 0, skipped.output
    assert as_json(skipped)["counts"]["cache_rows"] == 0


# --- output ---------------------------------------------------------------------------------------


def test_json_document_shape(auth_db: Path, stores: Stores) -> None:
    sound = stores.ehrbase.add(1, "1001")
    orphan = stores.ehrbase.add(2, "9999", compositions=2)
    stores.hapi.patients.add("1001")
    cache(auth_db, ("1001", sound))

    result = run("--json")

    assert result.exit_code == 1, result.output
    assert as_json(result) == {
        "status": "problems",
        "namespace": NAMESPACE,
        "other_namespaces": "not checked",
        "counts": {
            "ehrs": 2,
            "subjects": 2,
            "cache_rows": 1,
            "orphan_ehrs": 1,
            "orphaned_compositions": 2,
            "duplicate_subjects": 0,
            "stale_cache_rows": 0,
        },
        "orphan_ehrs": [{"ehr_id": orphan, "subject_id": "9999", "reason": "not_found", "compositions": 2}],
        "duplicate_subjects": [],
        "stale_cache_rows": [],
    }


def test_no_counts_skips_the_composition_queries(auth_db: Path, stores: Stores) -> None:
    stores.ehrbase.add(1, "9999", compositions=2)

    result = run("--no-counts", "--json")

    assert result.exit_code == 1, result.output
    assert as_json(result)["orphan_ehrs"][0]["compositions"] is None
    assert stores.ehrbase.queries(aql.COUNT_COMPOSITIONS) == []


# --- the cache on PostgreSQL ----------------------------------------------------------------------


async def test_cache_rows_are_read_by_key_on_postgresql(session_factory: SessionFactory) -> None:
    async with session_factory() as session:
        for n in (3, 1, 4, 0, 2):
            session.add(PatientEhr(patient_id=f"p{n}", ehr_id=ehr_id(n)))
        await session.commit()

    rows = [row async for row in cache_rows(session_factory, page_size=2)]

    assert rows == [(f"p{n}", ehr_id(n)) for n in range(5)]
    assert await count_cache_rows(session_factory) == 5
