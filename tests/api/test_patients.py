"""Patient routes against a respx HAPI FHIR: search, read, register, update, errors, audit, access."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import respx
from sqlmodel import col, select

from auth_db.engine import SessionFactory
from auth_db.models import AuditEvent, CareTeamLink
from gateway.security.access import grant_care_team
from gateway.settings import Settings
from tests import fhir_payloads as hapi
from tests.conftest import running_app
from tests.factories import bearer_headers, create_user
from tests.respx_transport import UPSTREAM

BASE = hapi.BASE


@dataclass
class Env:
    client: httpx.AsyncClient
    factory: SessionFactory
    headers: dict[str, str]
    other_headers: dict[str, str]
    user_id: Any
    mock: respx.MockRouter

    async def audit(self, action: str) -> list[AuditEvent]:
        async with self.factory() as session:
            rows = await session.exec(
                select(AuditEvent).where(AuditEvent.action == action).order_by(col(AuditEvent.id))
            )
            return list(rows)

    async def link(self, patient_id: str = "1001") -> None:
        async with self.factory() as session:
            await grant_care_team(session, user_id=self.user_id, patient_id=patient_id, granted_by=None)
            await session.commit()


@pytest.fixture
async def env(
    pg_url: str, session_factory: SessionFactory, make_settings: Callable[..., Settings]
) -> AsyncIterator[Env]:
    user = await create_user(session_factory, username="dr.who", roles=["clinician"])
    await create_user(session_factory, username="dr.other", roles=["clinician"])
    settings = make_settings(auth_database_url=pg_url, breaker_failure_threshold=100)
    async with running_app(settings) as client:
        headers = await bearer_headers(client, "dr.who")
        other = await bearer_headers(client, "dr.other")
        with respx.mock(using=UPSTREAM, base_url=BASE, assert_all_called=False) as mock:
            yield Env(client, session_factory, headers, other, user.id, mock)


class TestSearch:
    async def test_anonymous(self, env: Env) -> None:
        response = await env.client.get("/patients", params={"family": "Chalmers"})
        assert response.status_code == 401

    async def test_admin_without_clinician_role_is_refused(
        self, env: Env, session_factory: SessionFactory
    ) -> None:
        await create_user(session_factory, username="admin.only", roles=["admin"])
        headers = await bearer_headers(env.client, "admin.only")
        response = await env.client.get("/patients", params={"family": "Chalmers"}, headers=headers)
        assert response.status_code == 403
        assert response.json()["code"] == "permission_denied"

    async def test_returns_summaries_only_and_audits_ids(self, env: Env) -> None:
        route = env.mock.get("/Patient").mock(
            return_value=hapi.searchset([hapi.patient("1001"), hapi.patient("1002")], total=2)
        )
        response = await env.client.get(
            "/patients", params={"family": "Chalmers", "count": 2}, headers=env.headers
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert [item["id"] for item in body["items"]] == ["1001", "1002"]
        assert "telecom" not in body["items"][0]
        assert body["next"] is None
        sent = route.calls.last.request.url.params
        assert sent["family"] == "Chalmers"
        assert sent["_count"] == "2"
        (event,) = await env.audit("patient.search")
        assert event.resource_ids == ["1001", "1002"]
        assert "Chalmers" not in str(event.details)

    async def test_limit_is_the_page_size_and_count_its_deprecated_name(self, env: Env) -> None:
        route = env.mock.get("/Patient").mock(return_value=hapi.searchset([hapi.patient("1001")]))
        for params in ({"limit": 3}, {"count": 3}, {"limit": 3, "count": 3}):
            response = await env.client.get(
                "/patients", params={"family": "Chalmers", **params}, headers=env.headers
            )
            assert response.status_code == 200, response.text
            assert route.calls.last.request.url.params["_count"] == "3"
        conflict = await env.client.get(
            "/patients", params={"family": "Chalmers", "limit": 3, "count": 4}, headers=env.headers
        )
        assert conflict.status_code == 422
        assert conflict.json()["code"] == "conflicting_page_size"

    async def test_paging_uses_a_signed_cursor_not_a_url(self, env: Env) -> None:
        env.mock.get("/Patient").mock(
            return_value=hapi.searchset([hapi.patient("1001")], next_offset=1, count=1)
        )
        first = (
            await env.client.get("/patients", params={"family": "Chalmers", "count": 1}, headers=env.headers)
        ).json()
        assert first["next"]
        assert "http" not in first["next"]
        page2 = env.mock.get("", params={"_getpages": "5e9d3c1a-7b2f-4c8e-9a6d-0f1e2d3c4b5a"}).mock(
            return_value=hapi.searchset([hapi.patient("1002")], count=1)
        )
        second = await env.client.get("/patients", params={"cursor": first["next"]}, headers=env.headers)
        assert second.status_code == 200, second.text
        assert [item["id"] for item in second.json()["items"]] == ["1002"]
        params = page2.calls.last.request.url.params
        assert params["_getpagesoffset"] == "1"
        assert params["_count"] == "1"

    async def test_a_tampered_cursor_is_refused(self, env: Env) -> None:
        env.mock.get("/Patient").mock(
            return_value=hapi.searchset([hapi.patient("1001")], next_offset=1, count=1)
        )
        cursor = (
            await env.client.get("/patients", params={"family": "X", "count": 1}, headers=env.headers)
        ).json()["next"]
        payload, signature = cursor.split(".")
        tampered = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + signature
        response = await env.client.get("/patients", params={"cursor": tampered}, headers=env.headers)
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_cursor"

    async def test_a_cursor_of_another_user_is_refused(self, env: Env) -> None:
        env.mock.get("/Patient").mock(
            return_value=hapi.searchset([hapi.patient("1001")], next_offset=1, count=1)
        )
        cursor = (
            await env.client.get("/patients", params={"family": "X", "count": 1}, headers=env.headers)
        ).json()["next"]
        response = await env.client.get("/patients", params={"cursor": cursor}, headers=env.other_headers)
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_cursor"

    async def test_a_paging_link_to_another_host_is_not_followed(self, env: Env) -> None:
        env.mock.get("/Patient").mock(
            return_value=hapi.searchset(
                [hapi.patient("1001")], next_offset=1, count=1, base="http://evil.test/fhir"
            )
        )
        response = await env.client.get("/patients", params={"family": "X", "count": 1}, headers=env.headers)
        assert response.status_code == 502
        assert response.json()["code"] == "upstream_bad_response"
        assert "FHIR_SERVER_URL" in response.json()["detail"]

    async def test_an_expired_hapi_page_is_410(self, env: Env) -> None:
        env.mock.get("/Patient").mock(
            return_value=hapi.searchset([hapi.patient("1001")], next_offset=1, count=1)
        )
        cursor = (
            await env.client.get("/patients", params={"family": "X", "count": 1}, headers=env.headers)
        ).json()["next"]
        env.mock.get("").mock(return_value=hapi.search_expired())
        response = await env.client.get("/patients", params={"cursor": cursor}, headers=env.headers)
        assert response.status_code == 410
        assert response.json()["code"] == "search_expired"

    @pytest.mark.parametrize(
        ("params", "code"),
        [
            ({}, "search_criteria_required"),
            ({"birthdate": "25/12/1974"}, "validation_error"),
            ({"identifier": "no-bar"}, "validation_error"),
            ({"family": "a\x00b"}, "validation_error"),
            ({"family": "x", "count": 101}, "validation_error"),
            ({"gender": "banana"}, "validation_error"),
        ],
    )
    async def test_bad_criteria_are_422_and_nothing_is_sent(
        self, env: Env, params: dict[str, Any], code: str
    ) -> None:
        route = env.mock.get("/Patient").mock(return_value=hapi.searchset([]))
        response = await env.client.get("/patients", params=params, headers=env.headers)
        assert response.status_code == 422
        assert response.json()["code"] == code
        assert route.call_count == 0


class TestRead:
    async def test_no_relationship_is_403_before_any_upstream_call(self, env: Env) -> None:
        route = env.mock.get("/Patient/1001").mock(return_value=hapi.resource_response(hapi.patient()))
        response = await env.client.get("/patients/1001", headers=env.headers)
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "no_patient_relationship"
        assert route.call_count == 0
        (event,) = await env.audit("patient.read")
        assert event.outcome == "denied"

    async def test_read_passes_etag_and_last_modified_and_audits(self, env: Env) -> None:
        await env.link()
        env.mock.get("/Patient/1001").mock(return_value=hapi.resource_response(hapi.patient(version="3")))
        response = await env.client.get("/patients/1001", headers=env.headers)
        assert response.status_code == 200
        assert response.headers["etag"] == 'W/"3"'
        assert response.headers["last-modified"] == hapi.LAST_MODIFIED
        assert response.headers["cache-control"] == "no-store"
        assert response.json()["name"][0]["family"] == "Chalmers"
        (event,) = await env.audit("patient.read")
        assert (event.outcome, event.patient_id) == ("success", "1001")

    async def test_read_hands_on_hapis_bytes_unchanged(self, env: Env) -> None:
        await env.link()
        # HAPI's own formatting (pretty-printed, its key order, an extension the gateway knows nothing of)
        raw = json.dumps(
            {
                **hapi.patient(),
                "extension": [{"url": "http://example.org/fhir/ext", "valueString": "ünïcode ✓"}],
            },
            indent=2,
            ensure_ascii=False,
        ).encode()
        env.mock.get("/Patient/1001").mock(
            return_value=httpx.Response(
                200, content=raw, headers={"Content-Type": hapi.FHIR_JSON, "ETag": 'W/"1"'}
            )
        )
        response = await env.client.get("/patients/1001", headers=env.headers)
        assert response.status_code == 200
        assert response.content == raw
        assert response.headers["content-type"] == "application/json"

    async def test_a_different_patient_from_hapi_is_never_handed_on(self, env: Env) -> None:
        await env.link()
        env.mock.get("/Patient/1001").mock(return_value=hapi.resource_response(hapi.patient(pid="2002")))
        response = await env.client.get("/patients/1001", headers=env.headers)
        assert response.status_code == 502
        assert response.json()["code"] == "upstream_bad_response"
        assert "Chalmers" not in response.text
        assert await env.audit("patient.read") == []

    @pytest.mark.parametrize(
        ("answer", "status", "code"),
        [
            (hapi.not_found("1001"), 404, "patient_not_found"),
            (hapi.gone(), 410, "patient_deleted"),
            (
                httpx.Response(200, content=b"{not json", headers={"Content-Type": "application/fhir+json"}),
                502,
                "upstream_bad_response",
            ),
            (
                httpx.Response(200, json={"resourceType": "Observation", "id": "1001"}),
                502,
                "upstream_bad_response",
            ),
            (
                httpx.Response(500, json={"resourceType": "OperationOutcome", "issue": []}),
                502,
                "upstream_bad_response",
            ),
        ],
    )
    async def test_upstream_answers_map_to_problems(
        self, env: Env, answer: httpx.Response, status: int, code: str
    ) -> None:
        await env.link()
        env.mock.get("/Patient/1001").mock(return_value=answer)
        response = await env.client.get("/patients/1001", headers=env.headers)
        assert response.status_code == status
        assert response.json()["code"] == code
        assert response.headers["content-type"] == "application/problem+json"

    async def test_operation_outcome_issues_are_carried(self, env: Env) -> None:
        await env.link()
        env.mock.get("/Patient/1001").mock(return_value=hapi.not_found("1001"))
        body = (await env.client.get("/patients/1001", headers=env.headers)).json()
        assert body["upstream_issues"][0]["diagnostics"].startswith("HAPI-2001")

    async def test_unreachable_is_503_and_retried(self, env: Env) -> None:
        await env.link()
        route = env.mock.get("/Patient/1001").mock(side_effect=httpx.ConnectError("refused"))
        response = await env.client.get("/patients/1001", headers=env.headers)
        assert response.status_code == 503
        assert response.json()["code"] == "upstream_unavailable"
        assert route.call_count == 3

    @pytest.mark.parametrize("bad_id", ["a_b", "x" * 65, "a%2F..%2Fb", "caf%C3%A9"])
    async def test_bad_ids_are_refused_without_an_upstream_call(self, env: Env, bad_id: str) -> None:
        route = env.mock.route().mock(return_value=hapi.resource_response(hapi.patient()))
        response = await env.client.get(f"/patients/{bad_id}", headers=env.headers)
        assert response.status_code in (404, 422)
        assert route.call_count == 0


class TestRegister:
    async def test_creates_links_the_clinician_and_audits(self, env: Env) -> None:
        route = env.mock.post("/Patient").mock(return_value=hapi.resource_response(hapi.patient("2001"), 201))
        response = await env.client.post("/patients", json=hapi.new_patient(), headers=env.headers)
        assert response.status_code == 201, response.text
        assert response.headers["location"] == "/patients/2001"
        assert response.headers["etag"] == 'W/"1"'
        sent = route.calls.last.request
        assert sent.headers["if-none-exist"] == f"identifier={hapi.NHS}|{hapi.VALID_NHS_NUMBER}"
        assert sent.headers["content-type"] == "application/fhir+json"
        async with env.factory() as session:
            links = list(await session.exec(select(CareTeamLink).where(CareTeamLink.patient_id == "2001")))
        assert [link.user_id for link in links] == [env.user_id]
        (event,) = await env.audit("patient.create")
        assert event.details == {"created": True, "version": "1"}
        env.mock.get("/Patient/2001").mock(return_value=hapi.resource_response(hapi.patient("2001")))
        assert (await env.client.get("/patients/2001", headers=env.headers)).status_code == 200

    async def test_a_repeat_returns_the_existing_patient_and_creates_nothing(self, env: Env) -> None:
        env.mock.post("/Patient").mock(return_value=hapi.resource_response(hapi.patient("2001"), 200))
        response = await env.client.post("/patients", json=hapi.new_patient(), headers=env.headers)
        assert response.status_code == 200
        assert response.json()["id"] == "2001"
        (event,) = await env.audit("patient.create")
        assert event.details is not None
        assert event.details["created"] is False

    async def test_concurrent_identical_registrations_are_serialised(self, env: Env) -> None:
        in_flight = 0
        peak = 0
        created: list[str] = []

        async def create(request: httpx.Request) -> httpx.Response:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.05)
            in_flight -= 1
            if created:
                return hapi.resource_response(hapi.patient("2001"), 200)
            created.append("2001")
            return hapi.resource_response(hapi.patient("2001"), 201)

        env.mock.post("/Patient").mock(side_effect=create)
        responses = await asyncio.gather(
            *(env.client.post("/patients", json=hapi.new_patient(), headers=env.headers) for _ in range(5))
        )
        assert sorted(r.status_code for r in responses) == [200, 200, 200, 200, 201]
        assert peak == 1

    async def test_a_create_that_lost_a_race_in_hapi_is_repeated_and_finds_the_winner(self, env: Env) -> None:
        create = env.mock.post("/Patient").mock(
            side_effect=[hapi.search_url_race(), hapi.resource_response(hapi.patient("2001"))]
        )
        response = await env.client.post("/patients", json=hapi.new_patient(), headers=env.headers)
        assert response.status_code == 200, response.text
        assert response.json()["id"] == "2001"
        assert create.call_count == 2
        assert all("If-None-Exist" in call.request.headers for call in create.calls)

    async def test_a_race_that_persists_is_409_without_hapi_sql(self, env: Env) -> None:
        create = env.mock.post("/Patient").mock(return_value=hapi.search_url_race())
        response = await env.client.post("/patients", json=hapi.new_patient(), headers=env.headers)
        assert response.status_code == 409
        assert response.json()["code"] == "registration_in_progress"
        assert response.headers["retry-after"] == "1"
        assert hapi.VALID_NHS_NUMBER not in response.text
        assert "hfj_res_search_url" not in response.text
        assert create.call_count == 3

    async def test_multiple_matches_is_409(self, env: Env) -> None:
        env.mock.post("/Patient").mock(return_value=hapi.multiple_matches())
        response = await env.client.post("/patients", json=hapi.new_patient(), headers=env.headers)
        assert response.status_code == 409
        assert response.json()["code"] == "duplicate_identifier"

    @pytest.mark.parametrize(
        ("mutate", "code"),
        [
            (lambda b: b.update(id="chosen"), "client_id_not_allowed"),
            (lambda b: b.update(resourceType="Observation"), "validation_error"),
            (lambda b: b.update(birthDate="25/12/1974"), "invalid_fhir_resource"),
            (lambda b: b.update(unknownField=1), "invalid_fhir_resource"),
            (lambda b: b.pop("identifier"), "identifier_required"),
            (
                lambda b: b.update(identifier=[{"system": hapi.NHS, "value": "9434765918"}]),
                "invalid_nhs_number",
            ),
        ],
    )
    async def test_invalid_bodies_are_422_and_nothing_is_sent(
        self, env: Env, mutate: Callable[[dict[str, Any]], Any], code: str
    ) -> None:
        route = env.mock.post("/Patient").mock(return_value=hapi.resource_response(hapi.patient("2001"), 201))
        body = hapi.new_patient()
        mutate(body)
        response = await env.client.post("/patients", json=body, headers=env.headers)
        assert response.status_code == 422, response.text
        assert response.json()["code"] == code
        assert route.call_count == 0

    async def test_a_failure_after_the_fhir_create_is_completed_by_a_retry(self, env: Env) -> None:
        """The FHIR create succeeded but the answer was lost: the retry finds the patient and links it."""
        env.mock.post("/Patient").mock(
            side_effect=[httpx.ReadTimeout("lost"), hapi.resource_response(hapi.patient("2001"), 200)]
        )
        response = await env.client.post("/patients", json=hapi.new_patient(), headers=env.headers)
        assert response.status_code == 200
        assert response.json()["id"] == "2001"
        async with env.factory() as session:
            links = list(await session.exec(select(CareTeamLink).where(CareTeamLink.patient_id == "2001")))
        assert len(links) == 1


class TestUpdate:
    async def test_missing_if_match_is_428(self, env: Env) -> None:
        await env.link()
        route = env.mock.put("/Patient/1001")
        response = await env.client.put("/patients/1001", json=hapi.patient(), headers=env.headers)
        assert response.status_code == 428
        assert response.json()["code"] == "if_match_required"
        assert route.call_count == 0

    async def test_update_sends_if_match_and_returns_the_new_version(self, env: Env) -> None:
        await env.link()
        route = env.mock.put("/Patient/1001").mock(
            return_value=hapi.resource_response(hapi.patient(version="2", family="Changed"))
        )
        body = hapi.patient(family="Changed")
        response = await env.client.put(
            "/patients/1001", json=body, headers={**env.headers, "If-Match": 'W/"1"'}
        )
        assert response.status_code == 200, response.text
        assert response.headers["etag"] == 'W/"2"'
        assert route.calls.last.request.headers["if-match"] == 'W/"1"'
        (event,) = await env.audit("patient.update")
        assert event.details == {"from_version": "1", "version": "2"}

    async def test_stale_version_is_412_with_the_current_version(self, env: Env) -> None:
        await env.link()
        env.mock.put("/Patient/1001").mock(return_value=hapi.version_conflict())
        env.mock.get("/Patient/1001").mock(return_value=hapi.resource_response(hapi.patient(version="4")))
        response = await env.client.put(
            "/patients/1001", json=hapi.patient(), headers={**env.headers, "If-Match": 'W/"1"'}
        )
        assert response.status_code == 412
        body = response.json()
        assert body["code"] == "version_conflict"
        assert body["current_version"] == 'W/"4"'
        assert "HAPI-0989" in body["upstream_issues"][0]["diagnostics"]

    async def test_id_mismatch_is_refused(self, env: Env) -> None:
        await env.link()
        response = await env.client.put(
            "/patients/1001", json=hapi.patient("1002"), headers={**env.headers, "If-Match": 'W/"1"'}
        )
        assert response.status_code == 422
        assert response.json()["code"] == "id_mismatch"

    async def test_update_without_relationship_is_403(self, env: Env) -> None:
        route = env.mock.put("/Patient/1001")
        response = await env.client.put(
            "/patients/1001", json=hapi.patient(), headers={**env.headers, "If-Match": 'W/"1"'}
        )
        assert response.status_code == 403
        assert route.call_count == 0
