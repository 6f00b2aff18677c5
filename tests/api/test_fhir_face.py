"""``/fhir``: the FHIR R4 face against respx HAPI FHIR and EHRbase (real auth DB, real bearer tokens)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.operationoutcome import OperationOutcome
from sqlmodel import col, select

from auth_db.engine import SessionFactory
from auth_db.models import AuditEvent, PatientEhr
from gateway.openehr.aql import LIST_LETTER_DOCUMENTS, LIST_LETTER_DOCUMENTS_BETWEEN
from gateway.openehr.composition import Composer, LetterContent, build_composition
from gateway.r4.ids import DocumentIds, LetterAddress
from gateway.security.access import grant_care_team
from gateway.settings import Settings
from tests import ehrbase_payloads as eb
from tests import fhir_payloads as hapi
from tests.conftest import running_app
from tests.factories import bearer_headers, create_user
from tests.respx_transport import UPSTREAM

PATIENT = "1001"
OTHER = "2002"
PUBLIC = "https://gateway.example"
FHIR = f"{PUBLIC}/fhir"
FHIR_JSON = "application/fhir+json"
DOCUMENT_COLUMNS = [
    *eb.LETTER_COLUMNS,
    ("body", "s/items[openEHR-EHR-EVALUATION.clinical_synopsis.v1]/data[at0001]/items[at0002]/value/value"),
]


@dataclass
class Env:
    client: httpx.AsyncClient
    factory: SessionFactory
    headers: dict[str, str]
    user_id: Any
    mock: respx.MockRouter
    ids: DocumentIds

    async def audit(self, action: str) -> list[AuditEvent]:
        async with self.factory() as session:
            rows = await session.exec(
                select(AuditEvent).where(AuditEvent.action == action).order_by(col(AuditEvent.id))
            )
            return list(rows)

    def doc_id(self, letter_uuid: str = eb.LETTER_UUID) -> str:
        return self.ids.encode(LetterAddress(eb.EHR_ID, letter_uuid))


@pytest.fixture
async def env(
    pg_url: str, session_factory: SessionFactory, make_settings: Callable[..., Settings]
) -> AsyncIterator[Env]:
    user = await create_user(session_factory, username="dr.fhir", roles=["clinician"], display_name="Dr F")
    async with session_factory() as session:
        await grant_care_team(session, user_id=user.id, patient_id=PATIENT, granted_by=None)
        session.add(PatientEhr(patient_id=PATIENT, ehr_id=eb.EHR_ID))
        session.add(PatientEhr(patient_id=OTHER, ehr_id=eb.OTHER_EHR_ID))
        await session.commit()
    settings = make_settings(
        auth_database_url=pg_url,
        gateway_public_url=PUBLIC,
        fhir_inline_attachment_max_bytes=64,
        breaker_failure_threshold=100,
    )
    async with running_app(settings) as client:
        headers = await bearer_headers(client, "dr.fhir")
        with respx.mock(using=UPSTREAM, assert_all_called=False) as mock:
            yield Env(client, session_factory, headers, user.id, mock, DocumentIds(settings))


def composition(
    title: str, body: str, status: str, when: str = "2026-11-20T10:15:00+00:00"
) -> dict[str, Any]:
    from datetime import datetime

    content = LetterContent(title=title, body=body, status="final" if status != "draft" else "draft")
    built = build_composition(
        content,
        composer=Composer(__import__("uuid").UUID("7d3c1b2a-0000-4000-8000-000000000001"), "Dr F"),
        template_id="gateway.clinical_letter.v1",
        time=datetime.fromisoformat(when),
    )
    built["context"]["other_context"]["items"][0]["value"]["value"] = status
    return built


def document_rows(count: int) -> list[list[Any]]:
    return [
        [
            f"c0ffee00-1234-4abc-8def-0000000000{n:02d}::{eb.SYSTEM_ID}::1",
            f"Letter {n}",
            "final",
            "Dr F",
            "7d3c1b2a-0000-4000-8000-000000000001",
            f"2026-11-{20 - n:02d}T10:15:00Z",
            f"Text {n}",
        ]
        for n in range(count)
    ]


def aql_answer(rows: list[list[Any]]) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        offset, fetch = sent.get("offset", 0), sent.get("fetch", 100)
        return httpx.Response(
            200, json=eb.result_set(sent["q"], DOCUMENT_COLUMNS, rows[offset : offset + fetch], offset, fetch)
        )

    return answer


class TestMetadata:
    async def test_capability_statement_is_public_valid_and_truthful(self, env: Env) -> None:
        response = await env.client.get("/fhir/metadata")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(FHIR_JSON)
        statement = CapabilityStatement.model_validate(response.json())
        assert statement.fhirVersion == "4.0.1"
        resources = {r.type: r for r in statement.rest[0].resource}
        assert set(resources) == {"Patient", "DocumentReference", "Binary"}
        assert {i.code for i in resources["DocumentReference"].interaction} == {
            "read",
            "vread",
            "history-instance",
            "search-type",
        }
        assert {p.name for p in resources["DocumentReference"].searchParam} == {
            "patient",
            "subject",
            "date",
            "status",
            "type",
        }
        assert "user/DocumentReference.rs" in statement.rest[0].security.description

    async def test_xml_is_not_acceptable(self, env: Env) -> None:
        response = await env.client.get("/fhir/metadata", params={"_format": "xml"})
        assert response.status_code == 406
        assert response.json()["resourceType"] == "OperationOutcome"


class TestPatients:
    async def test_anonymous_gets_an_operation_outcome(self, env: Env) -> None:
        response = await env.client.get("/fhir/Patient", params={"family": "Chalmers"})
        assert response.status_code == 401
        assert response.headers["content-type"].startswith(FHIR_JSON)
        outcome = OperationOutcome.model_validate(response.json())
        assert outcome.issue[0].code == "login"
        assert outcome.issue[0].details.coding[0].code == "not_authenticated"

    async def test_search_passes_through_care_team_patients_and_subsets_the_others(self, env: Env) -> None:
        env.mock.get(f"{hapi.BASE}/Patient").mock(
            return_value=hapi.searchset(
                [hapi.patient(PATIENT), hapi.patient(OTHER)], total=3, next_offset=2, count=2
            )
        )
        response = await env.client.get(
            "/fhir/Patient", params={"family": "Chalmers", "_count": "2"}, headers=env.headers
        )
        assert response.status_code == 200, response.text
        bundle = response.json()
        Bundle.model_validate(bundle)
        assert bundle["total"] == 3
        full, subset = (entry["resource"] for entry in bundle["entry"])
        assert full == hapi.patient(PATIENT)
        assert "telecom" not in subset
        assert subset["meta"]["tag"][-1]["code"] == "SUBSETTED"
        assert subset["name"] == hapi.patient(OTHER)["name"]
        assert bundle["entry"][0]["fullUrl"] == f"{FHIR}/Patient/{PATIENT}"
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        assert links["self"] == f"{FHIR}/Patient?family=Chalmers&_count=2"
        assert links["next"].startswith(f"{FHIR}/Patient?_cursor=")
        assert "fhir.test" not in response.text
        assert "_getpages" not in response.text
        [event] = await env.audit("patient.search")
        assert event.resource_ids == [PATIENT, OTHER]

    async def test_next_link_is_followed_through_the_gateway(self, env: Env) -> None:
        env.mock.get(f"{hapi.BASE}/Patient").mock(
            return_value=hapi.searchset([hapi.patient(PATIENT)], next_offset=1, count=1)
        )
        page2 = env.mock.get(hapi.BASE).mock(return_value=hapi.searchset([hapi.patient("3003")], count=1))
        first = await env.client.get(
            "/fhir/Patient", params={"family": "Chalmers", "_count": "1"}, headers=env.headers
        )
        next_url = next(link["url"] for link in first.json()["link"] if link["relation"] == "next")
        second = await env.client.get(next_url.removeprefix(PUBLIC), headers=env.headers)
        assert second.status_code == 200, second.text
        assert [e["resource"]["id"] for e in second.json()["entry"]] == ["3003"]
        assert parse_qs(urlsplit(str(page2.calls.last.request.url)).query)["_getpagesoffset"] == ["1"]
        # Someone else's cursor is refused (bound to the user).
        await create_user(env.factory, username="dr.other", roles=["clinician"])
        other = await bearer_headers(env.client, "dr.other")
        stolen = await env.client.get(next_url.removeprefix(PUBLIC), headers=other)
        assert stolen.status_code == 400
        assert stolen.json()["issue"][0]["details"]["coding"][0]["code"] == "invalid_cursor"

    async def test_unknown_parameter_is_refused_or_reported_when_lenient(self, env: Env) -> None:
        strict = await env.client.get(
            "/fhir/Patient", params={"family": "Chalmers", "address": "x"}, headers=env.headers
        )
        assert strict.status_code == 400
        assert strict.json()["issue"][0]["details"]["coding"][0]["code"] == "unknown_search_parameter"
        env.mock.get(f"{hapi.BASE}/Patient").mock(return_value=hapi.searchset([hapi.patient(PATIENT)]))
        lenient = await env.client.get(
            "/fhir/Patient",
            params={"family": "Chalmers", "address": "x"},
            headers={**env.headers, "Prefer": "handling=lenient"},
        )
        assert lenient.status_code == 200
        bundle = lenient.json()
        Bundle.model_validate(bundle)
        assert "address" not in bundle["link"][0]["url"]
        assert bundle["entry"][-1]["search"]["mode"] == "outcome"
        assert "address" in bundle["entry"][-1]["resource"]["issue"][0]["diagnostics"]

    async def test_count_over_the_limit_is_a_400(self, env: Env) -> None:
        response = await env.client.get(
            "/fhir/Patient", params={"family": "Chalmers", "_count": "1000"}, headers=env.headers
        )
        assert response.status_code == 400
        assert response.json()["issue"][0]["details"]["coding"][0]["code"] == "invalid_count"

    async def test_read_needs_a_care_relationship(self, env: Env) -> None:
        env.mock.get(f"{hapi.BASE}/Patient/{PATIENT}").mock(
            return_value=hapi.resource_response(hapi.patient(PATIENT))
        )
        ok = await env.client.get(f"/fhir/Patient/{PATIENT}", headers=env.headers)
        assert ok.status_code == 200
        assert ok.json() == hapi.patient(PATIENT)
        assert ok.headers["etag"] == 'W/"1"'
        refused = await env.client.get(f"/fhir/Patient/{OTHER}", headers=env.headers)
        assert refused.status_code == 403
        assert refused.json()["issue"][0]["code"] == "forbidden"
        assert [e.outcome for e in await env.audit("patient.read")] == ["success", "denied"]

    async def test_malformed_id_is_a_400_outcome(self, env: Env) -> None:
        response = await env.client.get("/fhir/Patient/bad$id", headers=env.headers)
        assert response.status_code == 400
        assert response.json()["resourceType"] == "OperationOutcome"

    async def test_hapi_down_is_503_outcome_without_upstream_text(self, env: Env) -> None:
        env.mock.get(f"{hapi.BASE}/Patient/{PATIENT}").mock(side_effect=httpx.ConnectError("refused"))
        response = await env.client.get(f"/fhir/Patient/{PATIENT}", headers=env.headers)
        assert response.status_code == 503
        assert response.json()["issue"][0]["code"] == "transient"
        assert "fhir.test" not in response.text


class TestDocumentSearch:
    async def test_search_maps_letters_and_pages_with_a_signed_cursor(self, env: Env) -> None:
        rows = document_rows(3)
        aql = env.mock.post(f"{eb.BASE}/query/aql").mock(side_effect=aql_answer(rows))
        response = await env.client.get(
            "/fhir/DocumentReference", params={"patient": PATIENT, "_count": "2"}, headers=env.headers
        )
        assert response.status_code == 200, response.text
        bundle = response.json()
        Bundle.model_validate(bundle)
        sent = json.loads(aql.calls.last.request.content)
        assert sent["q"] == LIST_LETTER_DOCUMENTS
        assert sent["query_parameters"]["ehr_id"] == eb.EHR_ID
        assert eb.EHR_ID not in sent["q"]
        docs = [DocumentReference.model_validate(entry["resource"]) for entry in bundle["entry"]]
        assert [d.description for d in docs] == ["Letter 0", "Letter 1"]
        assert docs[0].id == env.doc_id("c0ffee00-1234-4abc-8def-000000000000")
        assert eb.EHR_ID not in response.text
        attachment = bundle["entry"][0]["resource"]["content"][0]["attachment"]
        assert base64.b64decode(attachment["data"]) == b"Text 0"
        next_url = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
        second = await env.client.get(next_url.removeprefix(PUBLIC), headers=env.headers)
        assert [e["resource"]["description"] for e in second.json()["entry"]] == ["Letter 2"]
        assert not any(link["relation"] == "next" for link in second.json()["link"])
        events = await env.audit("letter.list")
        assert [e.resource_ids for e in events] == [[rows[0][0], rows[1][0]], [rows[2][0]]]

    async def test_a_final_letter_after_a_final_version_is_amended_and_mapped_once(self, env: Env) -> None:
        uid = f"{eb.LETTER_UUID}::{eb.SYSTEM_ID}::2"
        row = [
            uid,
            "Letter",
            "final",
            "Dr F",
            "7d3c1b2a-0000-4000-8000-000000000001",
            "2026-11-20T10:15:00Z",
            "T",
        ]
        env.mock.post(f"{eb.BASE}/query/aql").mock(side_effect=aql_answer([row]))
        previous = f"{eb.LETTER_UUID}::{eb.SYSTEM_ID}::1"
        read_previous = env.mock.get(f"{eb.BASE}/ehr/{eb.EHR_ID}/composition/{previous}").mock(
            return_value=eb.composition_read(eb.EHR_ID, composition("Letter", "Before", "final"), previous)
        )
        for _ in range(2):
            response = await env.client.get(f"/fhir/DocumentReference?patient={PATIENT}", headers=env.headers)
            assert response.json()["entry"][0]["resource"]["docStatus"] == "amended"
        assert read_previous.call_count == 1  # the second search used the cached mapping

    async def test_subject_as_a_reference_and_date_range_go_into_parameterised_aql(self, env: Env) -> None:
        aql = env.mock.post(f"{eb.BASE}/query/aql").mock(side_effect=aql_answer([]))
        response = await env.client.get(
            f"/fhir/DocumentReference?subject=Patient/{PATIENT}&date=ge2026-11&date=lt2026-11-15",
            headers=env.headers,
        )
        assert response.status_code == 200, response.text
        sent = json.loads(aql.calls.last.request.content)
        assert sent["q"] == LIST_LETTER_DOCUMENTS_BETWEEN
        assert sent["query_parameters"]["from"] == "2026-11-01T00:00:00Z"
        assert sent["query_parameters"]["to"] == "2026-11-15T00:00:00Z"
        assert "entry" not in response.json()

    async def test_status_or_type_that_cannot_match_asks_nobody(self, env: Env) -> None:
        aql = env.mock.post(f"{eb.BASE}/query/aql").mock(side_effect=aql_answer(document_rows(1)))
        for query in ("status=superseded", "type=http://loinc.org|34109-9"):
            response = await env.client.get(
                f"/fhir/DocumentReference?patient={PATIENT}&{query}", headers=env.headers
            )
            assert response.status_code == 200
            assert "entry" not in response.json()
        assert aql.call_count == 0
        matching = await env.client.get(
            f"/fhir/DocumentReference?patient={PATIENT}&status=current&type=823691000000103",
            headers=env.headers,
        )
        assert len(matching.json()["entry"]) == 1

    async def test_a_patient_outside_the_care_team_is_refused_and_audited(self, env: Env) -> None:
        aql = env.mock.post(f"{eb.BASE}/query/aql").mock(side_effect=aql_answer(document_rows(1)))
        response = await env.client.get(f"/fhir/DocumentReference?patient={OTHER}", headers=env.headers)
        assert response.status_code == 403
        assert aql.call_count == 0
        [event] = await env.audit("letter.list")
        assert (event.outcome, event.patient_id) == ("denied", OTHER)

    @pytest.mark.parametrize(
        ("query", "code"),
        [
            ("", "patient_required"),
            ("patient=a$b", "invalid_patient_reference"),
            (f"patient={PATIENT}&date=ne2026", "invalid_date"),
            (f"patient={PATIENT}&date=2026-13", "invalid_date"),
            (f"patient={PATIENT}&_count=0", "invalid_count"),
            (f"patient={PATIENT}&_cursor=forged.value", "invalid_cursor"),
            (f"patient={PATIENT}&author=x", "unknown_search_parameter"),
            (f"patient={PATIENT}&subject=Patient/{OTHER}", "patient_mismatch"),
        ],
    )
    async def test_bad_input_is_a_400_outcome(self, env: Env, query: str, code: str) -> None:
        response = await env.client.get(f"/fhir/DocumentReference?{query}", headers=env.headers)
        assert response.status_code == 400, response.text
        outcome = OperationOutcome.model_validate(response.json())
        assert outcome.issue[0].details.coding[0].code == code


class TestDocumentReads:
    def read_version(self, env: Env, version: int, status: str, body: str = "Short") -> None:
        uid = f"{eb.LETTER_UUID}::{eb.SYSTEM_ID}::{version}"
        env.mock.get(f"{eb.BASE}/ehr/{eb.EHR_ID}/composition/{uid}").mock(
            return_value=eb.composition_read(eb.EHR_ID, composition(f"Title v{version}", body, status), uid)
        )

    def latest(self, env: Env, version: int, status: str, body: str = "Short") -> None:
        uid = f"{eb.LETTER_UUID}::{eb.SYSTEM_ID}::{version}"
        env.mock.get(f"{eb.BASE}/ehr/{eb.EHR_ID}/composition/{eb.LETTER_UUID}").mock(
            return_value=eb.composition_read(eb.EHR_ID, composition(f"Title v{version}", body, status), uid)
        )
        env.mock.get(f"{eb.BASE}/ehr/{eb.EHR_ID}").mock(return_value=eb.ehr(eb.EHR_ID, subject=PATIENT))

    async def test_read_latest_version(self, env: Env) -> None:
        self.latest(env, 2, "final")
        self.read_version(env, 1, "final")  # final before too: an amendment
        response = await env.client.get(f"/fhir/DocumentReference/{env.doc_id()}", headers=env.headers)
        assert response.status_code == 200, response.text
        doc = DocumentReference.model_validate(response.json())
        assert (doc.status, doc.docStatus, doc.meta.versionId) == ("current", "amended", "2")
        assert response.headers["etag"] == 'W/"2"'
        assert doc.subject.reference == f"Patient/{PATIENT}"
        [event] = await env.audit("letter.read")
        assert event.resource_ids == [f"{eb.LETTER_UUID}::{eb.SYSTEM_ID}::2"]

    async def test_a_draft_made_final_is_final_not_amended(self, env: Env) -> None:
        self.latest(env, 2, "final")
        self.read_version(env, 1, "draft")
        response = await env.client.get(f"/fhir/DocumentReference/{env.doc_id()}", headers=env.headers)
        assert response.json()["docStatus"] == "final"

    async def test_vread_of_an_older_version_is_superseded(self, env: Env) -> None:
        self.latest(env, 2, "final")
        self.read_version(env, 1, "final")
        response = await env.client.get(
            f"/fhir/DocumentReference/{env.doc_id()}/_history/1", headers=env.headers
        )
        assert response.status_code == 200, response.text
        doc = DocumentReference.model_validate(response.json())
        assert (doc.status, doc.docStatus, doc.description) == ("superseded", "final", "Title v1")
        missing = await env.client.get(
            f"/fhir/DocumentReference/{env.doc_id()}/_history/9", headers=env.headers
        )
        assert missing.status_code == 404

    async def test_history_lists_every_version_newest_first(self, env: Env) -> None:
        self.latest(env, 3, "final")
        self.read_version(env, 2, "final")
        self.read_version(env, 1, "draft")
        response = await env.client.get(
            f"/fhir/DocumentReference/{env.doc_id()}/_history", headers=env.headers
        )
        assert response.status_code == 200, response.text
        bundle = response.json()
        Bundle.model_validate(bundle)
        assert bundle["type"] == "history"
        rows = [
            (
                e["resource"]["meta"]["versionId"],
                e["resource"]["status"],
                e["resource"]["docStatus"],
                e["request"]["method"],
            )
            for e in bundle["entry"]
        ]
        assert rows == [
            ("3", "current", "amended", "PUT"),
            ("2", "superseded", "final", "PUT"),
            ("1", "superseded", "preliminary", "POST"),
        ]
        [event] = await env.audit("letter.history")
        assert len(event.resource_ids) == 3

    async def test_large_text_is_linked_as_binary(self, env: Env) -> None:
        long_text = "A long letter. " * 20
        self.latest(env, 1, "final", body=long_text)
        response = await env.client.get(f"/fhir/DocumentReference/{env.doc_id()}", headers=env.headers)
        attachment = response.json()["content"][0]["attachment"]
        assert "data" not in attachment
        assert attachment["url"] == f"{FHIR}/Binary/{env.doc_id()}"
        assert attachment["size"] == len(long_text.encode())
        text = await env.client.get(f"/fhir/Binary/{env.doc_id()}", headers=env.headers)
        assert text.status_code == 200
        assert text.text == long_text
        assert text.headers["content-type"].startswith("text/plain")
        resource = await env.client.get(
            f"/fhir/Binary/{env.doc_id()}", headers={**env.headers, "Accept": FHIR_JSON}
        )
        assert base64.b64decode(resource.json()["data"]).decode() == long_text

    async def test_forged_or_foreign_id_is_404_without_asking_ehrbase(self, env: Env) -> None:
        route = env.mock.get(url__regex=rf"{eb.BASE}/ehr/.*").mock(return_value=httpx.Response(500))
        forged = env.doc_id()[:-2] + ("AA" if not env.doc_id().endswith("AA") else "BB")
        for document_id in (forged, "short-id"):
            response = await env.client.get(f"/fhir/DocumentReference/{document_id}", headers=env.headers)
            assert response.status_code == 404
            assert response.json()["issue"][0]["details"]["coding"][0]["code"] == "document_not_found"
        assert route.call_count == 0

    async def test_a_letter_of_another_patient_is_refused_before_ehrbase(self, env: Env) -> None:
        route = env.mock.get(url__regex=rf"{eb.BASE}/ehr/.*").mock(return_value=httpx.Response(500))
        other_doc = env.ids.encode(LetterAddress(eb.OTHER_EHR_ID, eb.LETTER_UUID))
        response = await env.client.get(f"/fhir/DocumentReference/{other_doc}", headers=env.headers)
        assert response.status_code == 403
        assert route.call_count == 0
        [event] = await env.audit("letter.read")
        assert (event.outcome, event.patient_id) == ("denied", OTHER)

    async def test_deleted_letter_is_410(self, env: Env) -> None:
        env.mock.get(f"{eb.BASE}/ehr/{eb.EHR_ID}/composition/{eb.LETTER_UUID}").mock(
            return_value=httpx.Response(204)
        )
        response = await env.client.get(f"/fhir/DocumentReference/{env.doc_id()}", headers=env.headers)
        assert response.status_code == 410
        assert response.json()["issue"][0]["code"] == "deleted"
