"""``POST/GET /patients/{id}/letters``: writing and reading letters against an EHRbase mocked with respx."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
import respx
from sqlmodel import select

from auth_db.engine import SessionFactory
from auth_db.models import AuditEvent, BreakGlassGrant, PatientEhr
from auth_db.types import utcnow
from gateway.api.letters import get_patient_reader
from gateway.errors import NotFound
from gateway.openehr.aql import LIST_LETTERS
from gateway.security.access import grant_care_team
from gateway.security.deps import current_principal
from gateway.security.principal import Principal, Role
from gateway.settings import Settings
from tests import ehrbase_payloads as eb
from tests.conftest import running_app
from tests.factories import create_user
from tests.respx_transport import UPSTREAM

PATIENT = "p1001"
OTHER_PATIENT = "p2002"
NAMESPACE = "fhir-patient"
LETTER = {
    "title": "Discharge letter",
    "body": "Dear colleague,\n\n**Synthetic** test text.\r\n\t- item",
    "status": "draft",
    "recipients": ["Dr Rivera (GP)"],
}


class FakeFhir:
    """Stands in for the FHIR client: knows some patient ids, counts reads."""

    def __init__(self, known: set[str]) -> None:
        self.known = known
        self.reads: list[str] = []

    async def read_patient(self, patient_id: str) -> dict[str, str]:
        self.reads.append(patient_id)
        if patient_id not in self.known:
            raise NotFound("No such patient.", code="patient_not_found")
        return {"resourceType": "Patient", "id": patient_id}


@dataclass
class LetterEnv:
    client: httpx.AsyncClient
    ehrbase: respx.MockRouter
    fhir: FakeFhir
    principal: Principal
    session_factory: SessionFactory

    async def audit(self, action: str) -> list[AuditEvent]:
        async with self.session_factory() as session:
            rows = await session.exec(select(AuditEvent).where(AuditEvent.action == action))
            return list(rows)


@pytest.fixture
async def env(
    pg_engine: Any, pg_url: str, session_factory: SessionFactory, make_settings: Callable[..., Settings]
) -> AsyncIterator[LetterEnv]:
    """An app with a clinician who is on the care team of PATIENT (not of OTHER_PATIENT)."""
    user = await create_user(
        session_factory, username="ada", roles=[Role.clinician], display_name="Dr Ada Example"
    )
    async with session_factory() as session:
        await grant_care_team(session, user_id=user.id, patient_id=PATIENT, granted_by=None)
        await session.commit()
    principal = Principal(
        user_id=user.id,
        username="ada",
        display_name="Dr Ada Example",
        roles=frozenset({Role.clinician}),
        session_id=None,
        auth_method="bearer",
    )
    fhir = FakeFhir({PATIENT})
    with respx.mock(using=UPSTREAM, base_url=eb.BASE, assert_all_called=False) as router:
        async with running_app(make_settings(auth_database_url=pg_url)) as client:
            app = client.app  # type: ignore[attr-defined]
            app.dependency_overrides[current_principal] = lambda: principal
            app.dependency_overrides[get_patient_reader] = lambda: fhir
            yield LetterEnv(client, router, fhir, principal, session_factory)


async def cache_ehr(env: LetterEnv, patient_id: str = PATIENT, ehr_id: str = eb.EHR_ID) -> None:
    async with env.session_factory() as session:
        session.add(PatientEhr(patient_id=patient_id, ehr_id=ehr_id))
        await session.commit()


def echo_create(
    ehr_id: str = eb.EHR_ID, version_uid: str = eb.VERSION_1
) -> Callable[[httpx.Request], httpx.Response]:
    """EHRbase's create answer, echoing the submitted composition (201 with representation)."""

    def answer(request: httpx.Request) -> httpx.Response:
        composition = json.loads(request.content)
        uid = composition.get("uid", {}).get("value", version_uid)
        return eb.composition_written(ehr_id, composition, uid)

    return answer


def compositions_posted(env: LetterEnv) -> list[dict[str, Any]]:
    return [
        json.loads(call.request.content)
        for call in env.ehrbase.calls
        if call.request.method == "POST" and call.request.url.path.endswith("/composition")
    ]


class TestAccess:
    async def test_anonymous(self, env: LetterEnv) -> None:
        env.client.app.dependency_overrides.pop(current_principal)  # type: ignore[attr-defined]
        response = await env.client.get(f"/patients/{PATIENT}/letters")
        assert response.status_code == 401, response.text

    async def test_no_care_relationship_is_refused_before_any_upstream_call(self, env: LetterEnv) -> None:
        response = await env.client.post(f"/patients/{OTHER_PATIENT}/letters", json=LETTER)
        assert response.status_code == 403
        assert response.json()["code"] == "no_patient_relationship"
        assert env.ehrbase.calls.call_count == 0
        assert [e.outcome for e in await env.audit("letter.create")] == ["denied"]


class TestBreakGlass:
    async def test_break_glass_access_is_flagged_in_the_audit(self, env: LetterEnv) -> None:
        async with env.session_factory() as session:
            session.add(
                BreakGlassGrant(
                    user_id=env.principal.user_id,
                    patient_id=OTHER_PATIENT,
                    reason="Emergency admission",
                    expires_at=utcnow() + timedelta(hours=1),
                )
            )
            await session.commit()
        env.ehrbase.get("/ehr").mock(return_value=eb.ehr_not_found_by_subject())
        response = await env.client.get(f"/patients/{OTHER_PATIENT}/letters")
        assert response.status_code == 200
        [event] = await env.audit("letter.list")
        assert (event.patient_id, event.break_glass) == (OTHER_PATIENT, True)


class TestCreateFailures:
    async def test_a_create_without_key_is_sent_once_when_ehrbase_times_out(self, env: LetterEnv) -> None:
        await cache_ehr(env)
        create = env.ehrbase.post(f"/ehr/{eb.EHR_ID}/composition").mock(side_effect=httpx.ReadTimeout("slow"))
        response = await env.client.post(f"/patients/{PATIENT}/letters", json=LETTER)
        assert response.status_code == 504
        assert response.json()["code"] == "upstream_timeout"
        assert create.call_count == 1


class TestCreate:
    async def test_letter_is_written_with_the_signed_in_user_as_composer(self, env: LetterEnv) -> None:
        await cache_ehr(env)
        env.ehrbase.post(f"/ehr/{eb.EHR_ID}/composition").mock(side_effect=echo_create())
        response = await env.client.post(f"/patients/{PATIENT}/letters", json=LETTER)
        assert response.status_code == 201, response.text
        assert response.headers["ETag"] == f'"{eb.VERSION_1}"'
        assert response.headers["Location"] == f"/patients/{PATIENT}/letters/{eb.LETTER_UUID}"
        body = response.json()
        assert body["author"] == {"name": "Dr Ada Example", "id": str(env.principal.user_id)}
        assert body["body"] == LETTER["body"]
        assert body["recipients"] == ["Dr Rivera (GP)"]
        [posted] = compositions_posted(env)
        assert posted["composer"]["external_ref"]["id"]["value"] == str(env.principal.user_id)
        assert posted["archetype_details"]["template_id"]["value"] == "gateway.clinical_letter.v1"
        call = env.ehrbase.calls.last.request
        assert call.headers["Prefer"] == "return=representation"
        assert (
            call.headers["Authorization"]
            == httpx.BasicAuth("ehrbase-user", "ehrbase-user-secret")._auth_header
        )
        [event] = await env.audit("letter.create")
        assert (event.outcome, event.patient_id, event.ehr_id) == ("success", PATIENT, eb.EHR_ID)
        assert event.resource_ids == [eb.VERSION_1]
        assert "Synthetic" not in json.dumps([event.reason, event.details, event.target_id])

    async def test_a_client_supplied_author_is_refused(self, env: LetterEnv) -> None:
        response = await env.client.post(
            f"/patients/{PATIENT}/letters", json={**LETTER, "author": "Dr Mallory"}
        )
        assert response.status_code == 422
        assert env.ehrbase.calls.call_count == 0

    async def test_204_without_body_is_read_back(self, env: LetterEnv) -> None:
        await cache_ehr(env)
        env.ehrbase.post(f"/ehr/{eb.EHR_ID}/composition").mock(
            side_effect=lambda request: eb.composition_written(eb.EHR_ID, None, eb.VERSION_1, status_code=204)
        )
        composition: dict[str, Any] = {}

        def read(request: httpx.Request) -> httpx.Response:
            return eb.composition_read(eb.EHR_ID, compositions_posted(env)[0], eb.VERSION_1)

        env.ehrbase.get(f"/ehr/{eb.EHR_ID}/composition/{eb.VERSION_1}").mock(side_effect=read)
        response = await env.client.post(f"/patients/{PATIENT}/letters", json=LETTER)
        assert response.status_code == 201, response.text
        assert response.json()["title"] == "Discharge letter"
        assert composition == {}

    async def test_first_letter_creates_the_ehr_after_fhir_confirms_the_patient(self, env: LetterEnv) -> None:
        env.ehrbase.get("/ehr", params={"subject_id": PATIENT, "subject_namespace": NAMESPACE}).mock(
            return_value=eb.ehr_not_found_by_subject()
        )
        create_ehr = env.ehrbase.post("/ehr").mock(return_value=eb.ehr(status_code=201))
        env.ehrbase.post(f"/ehr/{eb.EHR_ID}/composition").mock(side_effect=echo_create())
        response = await env.client.post(f"/patients/{PATIENT}/letters", json=LETTER)
        assert response.status_code == 201, response.text
        assert env.fhir.reads == [PATIENT]
        status = json.loads(create_ehr.calls.last.request.content)
        assert status["subject"]["external_ref"]["id"]["value"] == PATIENT
        assert status["subject"]["external_ref"]["namespace"] == NAMESPACE
        async with env.session_factory() as session:
            cached = (await session.exec(select(PatientEhr))).all()
        assert [(c.patient_id, c.ehr_id) for c in cached] == [(PATIENT, eb.EHR_ID)]

    async def test_concurrent_ehr_creation_rereads_by_subject(self, env: LetterEnv) -> None:
        answers = iter([eb.ehr_not_found_by_subject(), eb.ehr(eb.OTHER_EHR_ID)])
        env.ehrbase.get("/ehr").mock(side_effect=lambda request: next(answers))
        env.ehrbase.post("/ehr").mock(return_value=eb.subject_in_use(PATIENT, NAMESPACE))
        env.ehrbase.post(f"/ehr/{eb.OTHER_EHR_ID}/composition").mock(side_effect=echo_create(eb.OTHER_EHR_ID))
        response = await env.client.post(f"/patients/{PATIENT}/letters", json=LETTER)
        assert response.status_code == 201, response.text
        [event] = await env.audit("letter.create")
        assert event.ehr_id == eb.OTHER_EHR_ID

    async def test_no_ehr_is_created_for_a_patient_fhir_does_not_know(self, env: LetterEnv) -> None:
        env.fhir.known.clear()
        env.ehrbase.get("/ehr").mock(return_value=eb.ehr_not_found_by_subject())
        create_ehr = env.ehrbase.post("/ehr")
        response = await env.client.post(f"/patients/{PATIENT}/letters", json=LETTER)
        assert response.status_code == 404
        assert create_ehr.call_count == 0

    async def test_with_the_real_fhir_client_a_deleted_patient_gets_no_ehr(self, env: LetterEnv) -> None:
        env.client.app.dependency_overrides.pop(get_patient_reader)  # type: ignore[attr-defined]
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": "processing",
                    "diagnostics": "Resource was deleted at 2026-11-01T10:00:00.000+00:00",
                }
            ],
        }
        hapi = env.ehrbase.get(url=f"http://fhir.test/fhir/Patient/{PATIENT}").mock(
            return_value=httpx.Response(
                410, json=outcome, headers={"Content-Type": "application/fhir+json;charset=utf-8"}
            )
        )
        env.ehrbase.get("/ehr").mock(return_value=eb.ehr_not_found_by_subject())
        create_ehr = env.ehrbase.post("/ehr")
        response = await env.client.post(f"/patients/{PATIENT}/letters", json=LETTER)
        assert response.status_code == 410
        assert response.json()["code"] == "patient_deleted"
        assert hapi.call_count == 1
        assert create_ehr.call_count == 0

    async def test_ehrbase_rejection_is_carried_into_the_problem(self, env: LetterEnv) -> None:
        await cache_ehr(env)
        env.ehrbase.post(f"/ehr/{eb.EHR_ID}/composition").mock(
            return_value=eb.template_unknown("gateway.clinical_letter.v1")
        )
        response = await env.client.post(f"/patients/{PATIENT}/letters", json=LETTER)
        assert response.status_code == 422
        problem = response.json()
        assert problem["code"] == "upstream_rejected"
        assert problem["upstream_issues"] == [
            {
                "severity": "error",
                "code": "Unprocessable Entity",
                "diagnostics": "Could not retrieve template for template Id: gateway.clinical_letter.v1",
            }
        ]
        assert [e.outcome for e in await env.audit("letter.create")] == ["failure"]


class TestIdempotency:
    async def test_a_retry_with_the_same_key_writes_once(self, env: LetterEnv) -> None:
        await cache_ehr(env)
        env.ehrbase.get(f"/ehr/{eb.EHR_ID}").mock(return_value=eb.ehr())
        env.ehrbase.post(f"/ehr/{eb.EHR_ID}/composition").mock(side_effect=echo_create())

        def read(request: httpx.Request) -> httpx.Response:
            posted = compositions_posted(env)[0]
            return eb.composition_read(eb.EHR_ID, posted, posted["uid"]["value"])

        env.ehrbase.get(path__regex=rf"/ehr/{eb.EHR_ID}/composition/.+").mock(side_effect=read)
        headers = {"Idempotency-Key": "letter-key-0001"}
        first = await env.client.post(f"/patients/{PATIENT}/letters", json=LETTER, headers=headers)
        second = await env.client.post(f"/patients/{PATIENT}/letters", json=LETTER, headers=headers)
        assert first.status_code == second.status_code == 201, second.text
        assert first.headers["ETag"] == second.headers["ETag"]
        assert second.headers["Idempotent-Replayed"] == "true"
        assert first.json() == second.json()
        assert len(compositions_posted(env)) == 1
        uid = compositions_posted(env)[0]["uid"]["value"]
        assert uid.endswith(f"::{eb.SYSTEM_ID}::1")

    async def test_a_lost_answer_is_recovered_without_a_second_letter(self, env: LetterEnv) -> None:
        """The first attempt reached EHRbase but its answer was lost: a retry finds that letter."""
        await cache_ehr(env)
        env.ehrbase.get(f"/ehr/{eb.EHR_ID}").mock(return_value=eb.ehr())
        written: list[dict[str, Any]] = []

        def create(request: httpx.Request) -> httpx.Response:
            composition = json.loads(request.content)
            if written:
                return eb.composition_exists(composition["uid"]["value"])
            written.append(composition)
            return eb.error(500, "An internal error has occurred. Please contact your administrator.")

        env.ehrbase.post(f"/ehr/{eb.EHR_ID}/composition").mock(side_effect=create)
        env.ehrbase.get(path__regex=rf"/ehr/{eb.EHR_ID}/composition/.+").mock(
            side_effect=lambda request: eb.composition_read(eb.EHR_ID, written[0], written[0]["uid"]["value"])
        )
        headers = {"Idempotency-Key": "letter-key-0002"}
        first = await env.client.post(f"/patients/{PATIENT}/letters", json=LETTER, headers=headers)
        assert first.status_code == 201 or first.status_code >= 500
        second = await env.client.post(f"/patients/{PATIENT}/letters", json=LETTER, headers=headers)
        assert second.status_code == 201, second.text
        assert second.headers["ETag"] == f'"{written[0]["uid"]["value"]}"'
        assert len(written) == 1

    async def test_same_key_with_another_body_is_refused(self, env: LetterEnv) -> None:
        await cache_ehr(env)
        env.ehrbase.get(f"/ehr/{eb.EHR_ID}").mock(return_value=eb.ehr())
        env.ehrbase.post(f"/ehr/{eb.EHR_ID}/composition").mock(side_effect=echo_create())
        headers = {"Idempotency-Key": "letter-key-0003"}
        assert (
            await env.client.post(f"/patients/{PATIENT}/letters", json=LETTER, headers=headers)
        ).status_code == 201
        other = await env.client.post(
            f"/patients/{PATIENT}/letters", json={**LETTER, "title": "Another"}, headers=headers
        )
        assert other.status_code == 422
        assert other.json()["code"] == "idempotency_key_reused"
        assert len(compositions_posted(env)) == 1


class TestList:
    async def test_aql_carries_parameters_and_pages_with_a_cursor(self, env: LetterEnv) -> None:
        await cache_ehr(env)
        rows = [
            [
                f"{uuid.UUID(int=i)}::{eb.SYSTEM_ID}::1",
                f"Letter {i}",
                "final",
                "Dr Ada Example",
                None,
                f"2026-11-2{i}T10:00:00Z",
            ]
            for i in (3, 2, 1)
        ]

        def answer(request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content)
            page = rows[body["offset"] : body["offset"] + body["fetch"]]
            return httpx.Response(
                200, json=eb.result_set(body["q"], eb.LETTER_COLUMNS, page, body["offset"], body["fetch"])
            )

        aql = env.ehrbase.post("/query/aql").mock(side_effect=answer)
        first = await env.client.get(f"/patients/{PATIENT}/letters", params={"limit": 2})
        assert first.status_code == 200, first.text
        page = first.json()
        assert [item["title"] for item in page["items"]] == ["Letter 3", "Letter 2"]
        assert page["items"][0]["id"] == str(uuid.UUID(int=3))
        sent = json.loads(aql.calls.last.request.content)
        assert sent == {
            "q": LIST_LETTERS,
            "query_parameters": {"ehr_id": eb.EHR_ID, "template_id": "gateway.clinical_letter.v1"},
            "offset": 0,
            "fetch": 3,
        }
        assert eb.EHR_ID not in sent["q"]
        assert page["next"] is not None
        assert page["next_cursor"] == page["next"]  # the deprecated name, for one release
        second = await env.client.get(
            f"/patients/{PATIENT}/letters", params={"limit": 2, "cursor": page["next"]}
        )
        assert [item["title"] for item in second.json()["items"]] == ["Letter 1"]
        assert second.json()["next"] is None
        assert json.loads(aql.calls.last.request.content)["offset"] == 2
        events = await env.audit("letter.list")
        assert [e.resource_ids for e in events] == [[rows[0][0], rows[1][0]], [rows[2][0]]]

    async def test_ehrbase_down_is_503_and_audited_as_error(self, env: LetterEnv) -> None:
        await cache_ehr(env)
        aql = env.ehrbase.post("/query/aql").mock(side_effect=httpx.ConnectError("connection refused"))
        response = await env.client.get(f"/patients/{PATIENT}/letters")
        assert response.status_code == 503
        assert response.json()["code"] == "upstream_unavailable"
        assert "Retry-After" in response.headers
        assert aql.call_count == 3  # a read: retried
        assert [(e.outcome, e.ehr_id) for e in await env.audit("letter.list")] == [("error", eb.EHR_ID)]

    async def test_a_forged_cursor_is_refused(self, env: LetterEnv) -> None:
        response = await env.client.get(f"/patients/{PATIENT}/letters", params={"cursor": "eyJvIjo1MH0.AAAA"})
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_cursor"

    async def test_a_patient_without_ehr_has_no_letters_and_gets_no_ehr(self, env: LetterEnv) -> None:
        env.ehrbase.get("/ehr").mock(return_value=eb.ehr_not_found_by_subject())
        create_ehr = env.ehrbase.post("/ehr")
        response = await env.client.get(f"/patients/{PATIENT}/letters")
        assert response.json() == {"items": [], "next": None, "next_cursor": None}
        assert create_ehr.call_count == 0


class TestRead:
    async def test_letter_with_its_version_as_etag(self, env: LetterEnv) -> None:
        await cache_ehr(env)
        env.ehrbase.post(f"/ehr/{eb.EHR_ID}/composition").mock(side_effect=echo_create())
        await env.client.post(f"/patients/{PATIENT}/letters", json=LETTER)
        env.ehrbase.get(f"/ehr/{eb.EHR_ID}/composition/{eb.LETTER_UUID}").mock(
            return_value=eb.composition_read(eb.EHR_ID, compositions_posted(env)[0], eb.VERSION_1)
        )
        response = await env.client.get(f"/patients/{PATIENT}/letters/{eb.LETTER_UUID}")
        assert response.status_code == 200, response.text
        assert response.headers["ETag"] == f'"{eb.VERSION_1}"'
        assert response.json()["version_uid"] == eb.VERSION_1
        [event] = await env.audit("letter.read")
        assert (event.ehr_id, event.resource_ids) == (eb.EHR_ID, [eb.VERSION_1])

    async def test_a_letter_of_another_patients_ehr_is_not_found(self, env: LetterEnv) -> None:
        """EHRbase is asked inside this patient's EHR only; the other EHR is never touched."""
        await cache_ehr(env)
        env.ehrbase.get(f"/ehr/{eb.EHR_ID}/composition/{eb.LETTER_UUID}").mock(
            return_value=eb.composition_not_found(eb.LETTER_UUID)
        )
        response = await env.client.get(f"/patients/{PATIENT}/letters/{eb.LETTER_UUID}")
        assert response.status_code == 404
        assert response.json()["code"] == "letter_not_found"
        assert all(eb.OTHER_EHR_ID not in str(call.request.url) for call in env.ehrbase.calls)

    async def test_a_composition_of_another_template_is_not_a_letter(self, env: LetterEnv) -> None:
        await cache_ehr(env)
        foreign = {
            "_type": "COMPOSITION",
            "archetype_node_id": "openEHR-EHR-COMPOSITION.encounter.v1",
            "archetype_details": {"template_id": {"value": "RIPPLE - Clinical Notes.v1"}},
        }
        env.ehrbase.get(f"/ehr/{eb.EHR_ID}/composition/{eb.LETTER_UUID}").mock(
            return_value=eb.composition_read(eb.EHR_ID, foreign, eb.VERSION_1)
        )
        response = await env.client.get(f"/patients/{PATIENT}/letters/{eb.LETTER_UUID}")
        assert response.status_code == 404

    async def test_a_deleted_letter_is_gone(self, env: LetterEnv) -> None:
        await cache_ehr(env)
        env.ehrbase.get(f"/ehr/{eb.EHR_ID}/composition/{eb.LETTER_UUID}").mock(
            return_value=httpx.Response(204)
        )
        response = await env.client.get(f"/patients/{PATIENT}/letters/{eb.LETTER_UUID}")
        assert response.status_code == 410
        assert response.json()["code"] == "letter_deleted"

    @pytest.mark.parametrize(
        "letter_id", ["not-a-uid", f"{eb.LETTER_UUID}::", f"{eb.LETTER_UUID}::sys::0", "1234"]
    )
    async def test_a_malformed_letter_id_is_422(self, env: LetterEnv, letter_id: str) -> None:
        response = await env.client.get(f"/patients/{PATIENT}/letters/{letter_id}")
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_letter_id"
        assert env.ehrbase.calls.call_count == 0


class TestBadInput:
    @pytest.mark.parametrize(
        "change",
        [
            {"body": ""},
            {"body": "   \n"},
            {"body": "x" * 100_001},
            {"title": ""},
            {"title": "two\nlines"},
            {"status": "signed"},
            {"body": "bell \x07 here"},
            {"body": "escape \x1b[31m"},
            {"recipients": ["ok"] * 21},
        ],
    )
    async def test_invalid_letters_are_422_and_nothing_is_written(
        self, env: LetterEnv, change: dict[str, Any]
    ) -> None:
        response = await env.client.post(f"/patients/{PATIENT}/letters", json={**LETTER, **change})
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"
        assert env.ehrbase.calls.call_count == 0

    async def test_the_message_names_the_control_character(self, env: LetterEnv) -> None:
        response = await env.client.post(f"/patients/{PATIENT}/letters", json={**LETTER, "body": "a\x00b"})
        [error] = response.json()["errors"]
        assert error["loc"] == ["body", "body"]
        assert "U+0000 at position 1" in error["msg"]
