"""The clinician's and the administrator's journeys through the gateway, against the real servers.

The tests run in file order and build on each other (accounts, then patients, then letters, then the
EHRbase outage); each one asserts what a user of the gateway would see. State is kept on the session's
:class:`~tests.e2e.conftest.Stack`.
"""

from __future__ import annotations

import os
import random
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ADMIN_PASSWORD, ADMIN_USER, Stack, infra
from tests.e2e.gateway_process import nhs_number

NHS = "https://fhir.nhs.uk/Id/nhs-number"
CLINICIAN_NAME = "Dr E2E Clinician"
CLINICIAN_PASSWORD = "Clinician-first-Passw0rd!"
CLINICIAN_NEW_PASSWORD = "Clinician-own-Passw0rd-42!"
#: Patients registered in the paging scenario (one more is registered before).
EXTRA_PATIENTS = 45


def token(stack: Stack, username: str, password: str) -> str:
    response = httpx.post(
        f"{stack.gateway_url}/auth/token", data={"username": username, "password": password}, timeout=30
    )
    assert response.status_code == 200, response.text
    value: str = response.json()["access_token"]
    return value


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


def patient_body(stack: Stack, nhs: str, given: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": NHS, "value": nhs}],
        "name": [{"use": "official", "family": f"Etoe{stack.run_id}", "given": [given]}],
        "gender": "female",
        "birthDate": "1970-01-31",
    }


@pytest.fixture(scope="module")
def rng(stack: Stack) -> random.Random:
    return random.Random(stack.run_id)


# --- accounts ------------------------------------------------------------------------------------


def onboard_clinician(stack: Stack, username: str, display_name: str) -> tuple[dict[str, Any], str]:
    """An admin creates a clinician, who sets an own password first; returns the account and a token."""
    with stack.client(stack.admin_token) as admin:
        created = admin.post(
            "/admin/users",
            json={
                "username": username,
                "display_name": display_name,
                "roles": ["clinician"],
                "initial_password": CLINICIAN_PASSWORD,
            },
        )
        assert created.status_code == 201, created.text
    user: dict[str, Any] = created.json()["user"]
    assert user["must_change_password"] is True
    with stack.client(token(stack, username, CLINICIAN_PASSWORD)) as clinician:
        # The new account cannot touch patients before it sets its own password.
        problem(clinician.get("/patients", params={"family": "x"}), 403, "password_change_required")
        changed = clinician.post(
            "/auth/password",
            json={"current_password": CLINICIAN_PASSWORD, "new_password": CLINICIAN_NEW_PASSWORD},
        )
        assert changed.status_code == 204, changed.text
    return user, token(stack, username, CLINICIAN_NEW_PASSWORD)


def test_admin_creates_clinician(stack: Stack) -> None:
    stack.admin_token = token(stack, ADMIN_USER, ADMIN_PASSWORD)
    with stack.client(stack.admin_token) as admin:
        me = admin.get("/auth/me")
        assert me.status_code == 200
        assert "admin" in me.json()["roles"]
    stack.clinician, stack.clinician_token = onboard_clinician(stack, f"clin.{stack.run_id}", CLINICIAN_NAME)


def test_clinician_is_not_admin(stack: Stack) -> None:
    with stack.client(stack.clinician_token) as clinician:
        problem(clinician.get("/admin/users"), 403, "permission_denied")


# --- patients ------------------------------------------------------------------------------------


def test_register_patient_is_conditional(stack: Stack, rng: random.Random) -> None:
    nhs = nhs_number(rng)
    body = patient_body(stack, nhs, "Primary")
    with stack.client(stack.clinician_token) as clinician:
        first = clinician.post("/patients", json=body)
        assert first.status_code == 201, first.text
        patient = first.json()
        assert patient["resourceType"] == "Patient"
        assert first.headers["location"] == f"/patients/{patient['id']}"
        assert first.headers["etag"] == 'W/"1"'
        again = clinician.post("/patients", json=body)
        assert again.status_code == 200, again.text
        assert again.json()["id"] == patient["id"]
    # HAPI itself holds exactly one patient with this identifier.
    bundle = httpx.get(f"{stack.fhir_url}/Patient", params={"identifier": f"{NHS}|{nhs}"}, timeout=30).json()
    assert [entry["resource"]["id"] for entry in bundle.get("entry", [])] == [patient["id"]]
    stack.state.update(patient_id=patient["id"], nhs=nhs)


def test_concurrent_identical_registrations_make_one_patient(stack: Stack, rng: random.Random) -> None:
    nhs = nhs_number(rng)
    body = {**patient_body(stack, nhs, "Racer"), "name": [{"family": f"Race{stack.run_id}"}]}

    def register(_: int) -> httpx.Response:
        with stack.client(stack.clinician_token) as clinician:
            return clinician.post("/patients", json=body)

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(register, range(6)))
    assert sorted(a.status_code for a in answers) == [200] * 5 + [201], [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    stack.state["racer"] = answers[0].json()["id"]
    bundle = httpx.get(f"{stack.fhir_url}/Patient", params={"identifier": f"{NHS}|{nhs}"}, timeout=30).json()
    assert len(bundle.get("entry", [])) == 1, bundle


def test_search_pages_over_many_patients(stack: Stack, rng: random.Random) -> None:
    registered = {stack.state["patient_id"]}
    with stack.client(stack.clinician_token) as clinician:
        for n in range(EXTRA_PATIENTS):
            response = clinician.post("/patients", json=patient_body(stack, nhs_number(rng), f"Extra{n:02d}"))
            assert response.status_code == 201, response.text
            registered.add(response.json()["id"])
        assert len(registered) == EXTRA_PATIENTS + 1
        stack.state["others"] = sorted(registered - {stack.state["patient_id"]})

        seen: list[str] = []
        sizes: list[int] = []
        page = clinician.get("/patients", params={"family": f"Etoe{stack.run_id}", "limit": 20})
        while True:
            assert page.status_code == 200, page.text
            items = page.json()["items"]
            sizes.append(len(items))
            seen.extend(item["id"] for item in items)
            cursor = page.json()["next"]
            if cursor is None:
                break
            assert len(sizes) < 10, "paging does not end"
            page = clinician.get("/patients", params={"cursor": cursor})
        assert sizes == [20, 20, 6]
        assert len(seen) == len(set(seen)) == EXTRA_PATIENTS + 1
        assert set(seen) == registered

        by_name = clinician.get("/patients", params={"name": f"Etoe{stack.run_id}", "limit": 50})
        assert by_name.status_code == 200
        assert {item["id"] for item in by_name.json()["items"]} == registered
        assert by_name.json()["total"] == EXTRA_PATIENTS + 1  # one page: HAPI counts the matches

        by_given = clinician.get("/patients", params={"family": f"Etoe{stack.run_id}", "given": "Primary"})
        assert [item["id"] for item in by_given.json()["items"]] == [stack.state["patient_id"]]

        by_identifier = clinician.get("/patients", params={"identifier": f"{NHS}|{stack.state['nhs']}"})
        assert by_identifier.status_code == 200, by_identifier.text
        assert [item["id"] for item in by_identifier.json()["items"]] == [stack.state["patient_id"]]


def test_read_and_update_with_if_match(stack: Stack) -> None:
    patient_id = stack.state["patient_id"]
    with stack.client(stack.clinician_token) as clinician:
        read = clinician.get(f"/patients/{patient_id}")
        assert read.status_code == 200, read.text
        assert read.headers["etag"] == 'W/"1"'
        assert read.headers.get("last-modified")
        resource = read.json()
        resource["telecom"] = [{"system": "phone", "value": "01632 960001", "use": "home"}]

        problem(clinician.put(f"/patients/{patient_id}", json=resource), 428, "if_match_required")
        updated = clinician.put(f"/patients/{patient_id}", json=resource, headers={"If-Match": 'W/"1"'})
        assert updated.status_code == 200, updated.text
        assert updated.headers["etag"] == 'W/"2"'
        assert updated.json()["telecom"][0]["value"] == "01632 960001"

        resource["telecom"][0]["value"] = "01632 960002"
        stale = clinician.put(f"/patients/{patient_id}", json=resource, headers={"If-Match": 'W/"1"'})
        body = problem(stale, 412, "version_conflict")
        assert body.get("current_version") == 'W/"2"', body

        again = clinician.get(f"/patients/{patient_id}")
        assert again.headers["etag"] == 'W/"2"'
        assert again.json()["telecom"][0]["value"] == "01632 960001"


def test_no_access_without_care_relationship(stack: Stack) -> None:
    with stack.client(stack.admin_token) as admin:
        # The first admin also holds the clinician role, but has no care-team link to this patient.
        problem(admin.get(f"/patients/{stack.state['patient_id']}"), 403, "no_patient_relationship")
        problem(admin.get(f"/patients/{stack.state['patient_id']}/letters"), 403, "no_patient_relationship")


def test_unknown_patient(stack: Stack) -> None:
    with stack.client(stack.clinician_token) as clinician:
        # No care-team link to a patient that does not exist: refused before HAPI is asked.
        problem(clinician.get("/patients/does-not-exist-1"), 403, "no_patient_relationship")


# --- letters -------------------------------------------------------------------------------------


def letter(title: str, status: str, body: str = "Dear colleague,\n\nSeen today in clinic.") -> dict[str, Any]:
    return {"title": title, "body": body, "status": status, "recipients": ["Dr Rivera (GP)"]}


def test_write_draft_and_final_letters(stack: Stack) -> None:
    patient_id = stack.state["patient_id"]
    key = f"e2e-{uuid.uuid4()}"
    with stack.client(stack.clinician_token) as clinician:
        assert clinician.get(f"/patients/{patient_id}/letters").json() == {
            "items": [],
            "next": None,
            "next_cursor": None,
        }
        draft = clinician.post(
            f"/patients/{patient_id}/letters",
            json=letter("Clinic letter", "draft"),
            headers={"Idempotency-Key": key},
        )
        assert draft.status_code == 201, draft.text
        replay = clinician.post(
            f"/patients/{patient_id}/letters",
            json=letter("Clinic letter", "draft"),
            headers={"Idempotency-Key": key},
        )
        assert replay.status_code == 201, replay.text
        assert replay.headers.get("idempotent-replayed") == "true"
        assert replay.headers["etag"] == draft.headers["etag"]

        time.sleep(0.05)  # distinct dates, so "newest first" is decided by the data
        final = clinician.post(f"/patients/{patient_id}/letters", json=letter("Discharge letter", "final"))
        assert final.status_code == 201, final.text

    d, f = draft.json(), final.json()
    for written in (d, f):
        assert written["author"] == {"name": CLINICIAN_NAME, "id": stack.clinician["id"]}
        assert written["patient_id"] == patient_id
        assert written["version_uid"].startswith(written["id"] + "::")
        assert written["version_uid"].endswith("::1")
    assert draft.headers["etag"] == f'"{d["version_uid"]}"'
    assert (d["status"], f["status"]) == ("draft", "final")
    stack.state.update(draft=d, final=f)


def test_list_newest_first_with_paging(stack: Stack) -> None:
    patient_id = stack.state["patient_id"]
    with stack.client(stack.clinician_token) as clinician:
        first = clinician.get(f"/patients/{patient_id}/letters", params={"limit": 1})
        assert first.status_code == 200, first.text
        assert [item["id"] for item in first.json()["items"]] == [stack.state["final"]["id"]]
        cursor = first.json()["next"]
        assert cursor
        second = clinician.get(f"/patients/{patient_id}/letters", params={"limit": 1, "cursor": cursor})
        assert second.status_code == 200, second.text
        assert [item["id"] for item in second.json()["items"]] == [stack.state["draft"]["id"]]
        assert second.json()["next"] is None
        item = second.json()["items"][0]
        assert item["title"] == "Clinic letter"
        assert item["status"] == "draft"
        assert item["author"]["name"] == CLINICIAN_NAME


def test_read_one_letter(stack: Stack) -> None:
    patient_id, draft = stack.state["patient_id"], stack.state["draft"]
    with stack.client(stack.clinician_token) as clinician:
        read = clinician.get(f"/patients/{patient_id}/letters/{draft['id']}")
        assert read.status_code == 200, read.text
        assert read.json()["body"] == letter("x", "draft")["body"]
        assert read.json()["recipients"] == ["Dr Rivera (GP)"]
        assert read.headers["etag"] == f'"{draft["version_uid"]}"'
        by_version = clinician.get(f"/patients/{patient_id}/letters/{draft['version_uid']}")
        assert by_version.status_code == 200
        assert by_version.json()["version_uid"] == draft["version_uid"]
        problem(clinician.get(f"/patients/{patient_id}/letters/{uuid.uuid4()}"), 404, "letter_not_found")


def test_amend_with_if_match(stack: Stack) -> None:
    patient_id, draft, final = stack.state["patient_id"], stack.state["draft"], stack.state["final"]
    url = f"/patients/{patient_id}/letters/{draft['id']}"
    with stack.client(stack.clinician_token) as clinician:
        problem(clinician.put(url, json=letter("Clinic letter", "draft")), 428, "if_match_required")
        amended = clinician.put(
            url,
            json=letter("Clinic letter", "final", body="Dear colleague,\n\nSeen today; dose corrected."),
            headers={"If-Match": f'"{draft["version_uid"]}"'},
        )
        assert amended.status_code == 200, amended.text
        assert amended.json()["version_uid"].endswith("::2")
        assert amended.json()["status"] == "final"
        assert amended.headers["etag"] == f'"{amended.json()["version_uid"]}"'

        stale = clinician.put(
            url, json=letter("Clinic letter", "final"), headers={"If-Match": draft["version_uid"]}
        )
        body = problem(stale, 412, "stale_version")
        assert body.get("current_version") == amended.json()["version_uid"]

        final_url = f"/patients/{patient_id}/letters/{final['id']}"
        problem(
            clinician.put(
                final_url,
                json=letter("Discharge letter", "final"),
                headers={"If-Match": final["version_uid"]},
            ),
            422,
            "amend_reason_required",
        )
        with_reason = clinician.put(
            final_url,
            json={**letter("Discharge letter", "final"), "reason": "Recipient added after review"},
            headers={"If-Match": final["version_uid"]},
        )
        assert with_reason.status_code == 200, with_reason.text

        latest = clinician.get(url)
        assert latest.json()["version_uid"] == amended.json()["version_uid"]
        assert "dose corrected" in latest.json()["body"]
        old = clinician.get(f"{url[: url.rindex('/')]}/{draft['version_uid']}")
        assert old.json()["status"] == "draft"
    stack.state["amended"] = amended.json()


def test_ehrbase_holds_one_ehr_and_our_compositions(stack: Stack) -> None:
    patient_id = stack.state["patient_id"]
    ehrs = stack.ehrbase_aql(
        "SELECT e/ehr_id/value FROM EHR e "
        "WHERE e/ehr_status/subject/external_ref/id/value = $subject "
        "AND e/ehr_status/subject/external_ref/namespace = $namespace",
        {"subject": patient_id, "namespace": stack.namespace},
    )
    assert len(ehrs) == 1, ehrs
    ehr_id = ehrs[0][0]
    rows = stack.ehrbase_aql(
        "SELECT c/uid/value, c/archetype_details/template_id/value, c/composer/name, "
        "c/composer/external_ref/id/value FROM EHR e CONTAINS COMPOSITION c WHERE e/ehr_id/value = $ehr_id",
        {"ehr_id": ehr_id},
    )
    by_id = {row[0].split("::")[0]: row for row in rows}
    assert set(by_id) == {stack.state["draft"]["id"], stack.state["final"]["id"]}
    assert by_id[stack.state["draft"]["id"]][0] == stack.state["amended"]["version_uid"]
    for _, template_id, composer, composer_id in rows:
        assert template_id == "gateway.clinical_letter.v1"
        assert composer == CLINICIAN_NAME
        assert composer_id == stack.clinician["id"]


def test_my_patients_resolves_every_link(stack: Stack) -> None:
    with stack.client(stack.clinician_token) as clinician:
        mine = clinician.get("/me/patients")
        assert mine.status_code == 200, mine.text
    ids = {item["id"] for item in mine.json()["items"]}
    assert ids == {stack.state["patient_id"], stack.state["racer"], *stack.state["others"]}
    assert mine.json()["missing"] == []


def test_a_letter_of_another_patient_is_not_found(stack: Stack) -> None:
    other = stack.state["others"][0]
    with stack.client(stack.clinician_token) as clinician:
        response = clinician.get(f"/patients/{other}/letters/{stack.state['draft']['id']}")
    problem(response, 404, "letter_not_found")


def test_delete_a_draft(stack: Stack) -> None:
    other = stack.state["others"][0]
    url = f"/patients/{other}/letters"
    with stack.client(stack.clinician_token) as clinician:
        draft = clinician.post(url, json=letter("To be withdrawn", "draft")).json()
        final = clinician.post(url, json=letter("Stays", "final")).json()
        problem(clinician.delete(f"{url}/{draft['id']}"), 428, "if_match_required")
        deleted = clinician.delete(f"{url}/{draft['id']}", headers={"If-Match": f'"{draft["version_uid"]}"'})
        assert deleted.status_code == 204, deleted.text
        problem(clinician.get(f"{url}/{draft['id']}"), 410, "letter_deleted")
        refused = clinician.delete(f"{url}/{final['id']}", headers={"If-Match": final["version_uid"]})
        problem(refused, 409, "letter_not_draft")
        listed = clinician.get(url).json()["items"]
        assert [item["id"] for item in listed] == [final["id"]]


def test_concurrent_first_letters_make_one_ehr(stack: Stack) -> None:
    patient_id = stack.state["others"][1]

    def write(n: int) -> httpx.Response:
        with stack.client(stack.clinician_token) as clinician:
            return clinician.post(f"/patients/{patient_id}/letters", json=letter(f"Parallel {n}", "draft"))

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(write, range(6)))
    assert [a.status_code for a in answers] == [201] * 6, [a.text for a in answers if a.status_code != 201]
    ehrs = stack.ehrbase_aql(
        "SELECT e/ehr_id/value FROM EHR e WHERE e/ehr_status/subject/external_ref/id/value = $subject",
        {"subject": patient_id},
    )
    assert len(ehrs) == 1, ehrs
    compositions = stack.ehrbase_aql(
        "SELECT c/uid/value FROM EHR e CONTAINS COMPOSITION c WHERE e/ehr_id/value = $ehr_id",
        {"ehr_id": ehrs[0][0]},
    )
    assert len(compositions) == 6


def test_break_glass_opens_access_and_is_flagged(stack: Stack) -> None:
    patient_id = stack.state["patient_id"]
    oncall_user, oncall_token = onboard_clinician(stack, f"oncall.{stack.run_id}", "Dr On Call")
    with stack.client(oncall_token) as oncall:
        problem(oncall.get(f"/patients/{patient_id}"), 403, "no_patient_relationship")
        opened = oncall.post(
            f"/patients/{patient_id}/break-glass", json={"reason": "Unconscious in the emergency department"}
        )
        assert opened.status_code == 201, opened.text
        assert oncall.get(f"/patients/{patient_id}").status_code == 200
        assert oncall.get(f"/patients/{patient_id}/letters").status_code == 200
    with stack.client(stack.admin_token) as admin:
        events = admin.get("/admin/audit", params={"patient": patient_id, "user": oncall_user["id"]}).json()[
            "items"
        ]
    flagged = {(e["action"], e["outcome"]) for e in events if e["break_glass"]}
    assert {
        ("break_glass.open", "success"),
        ("patient.read", "success"),
        ("letter.list", "success"),
    } <= flagged


def test_audit_trail_records_every_access(stack: Stack) -> None:
    patient_id = stack.state["patient_id"]
    with stack.client(stack.admin_token) as admin:
        page = admin.get("/admin/audit", params={"patient": patient_id, "limit": 500})
        assert page.status_code == 200, page.text
        events = page.json()["items"]
    seen = {(e["action"], e["outcome"], e["actor_username"]) for e in events}
    clinician = stack.clinician["username"]
    for action in (
        "patient.create",
        "patient.read",
        "patient.update",
        "letter.create",
        "letter.list",
        "letter.read",
        "letter.amend",
    ):
        assert (action, "success", clinician) in seen, (action, sorted(seen))
    assert ("patient.read", "denied", ADMIN_USER) in seen
    letter_events = [
        e
        for e in events
        if e["action"].startswith("letter.") and e["outcome"] == "success" and e["resource_ids"]
    ]
    assert letter_events
    assert all(e["ehr_id"] for e in letter_events)
    # No letter text or demographics in the trail.
    text = str(events)
    assert "Seen today" not in text
    assert f"Etoe{stack.run_id}" not in text


# --- EHRbase outage ------------------------------------------------------------------------------


def _poll(check: Any, seconds: float = 90.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {seconds:.0f}s")
        time.sleep(1.0)


def test_ehrbase_down_then_back(stack: Stack) -> None:
    patient_id = stack.state["patient_id"]
    letters = f"/patients/{patient_id}/letters"
    with stack.client(stack.clinician_token) as clinician:
        assert clinician.get("/ready").status_code == 200
        infra("down.sh", "ehrbase")
        try:
            problem(clinician.get(letters), 503, "upstream_unavailable")
            problem(
                clinician.post(letters, json=letter("During outage", "draft")), 503, "upstream_unavailable"
            )
            ready = clinician.get("/ready")
            assert ready.status_code == 503
            checks = ready.json()["checks"]
            assert checks["ehrbase"]["status"] == "down"
            assert checks["fhir"]["status"] == "up"
            assert checks["auth_db"]["status"] == "up"
            # Demographics keep working.
            assert clinician.get(f"/patients/{patient_id}").status_code == 200
            search = clinician.get("/patients", params={"identifier": f"{NHS}|{stack.state['nhs']}"})
            assert search.status_code == 200
        finally:
            infra("up.sh", services="ehrbase")

        def recovered() -> httpx.Response | None:
            response = clinician.get(letters)
            return response if response.status_code == 200 else None

        listed = _poll(recovered)
        assert {item["id"] for item in listed.json()["items"]} == {
            stack.state["draft"]["id"],
            stack.state["final"]["id"],
        }
        assert _poll(lambda: clinician.get("/ready") if clinician.get("/ready").status_code == 200 else None)
        # A just-restarted EHRbase can be slow to answer its first write (JIT warm-up, a loaded machine):
        # the client does what the API guide says, retrying a 504 with the same Idempotency-Key, which can
        # never write twice.
        key = {"Idempotency-Key": f"after-outage-{stack.run_id}"}
        after = clinician.post(letters, json=letter("After outage", "draft"), headers=key)
        if after.status_code == 504:
            after = clinician.post(letters, json=letter("After outage", "draft"), headers=key)
        assert after.status_code == 201, after.text


def test_metrics_saw_the_outage(stack: Stack) -> None:
    metrics = httpx.get(f"{stack.gateway_url}/metrics", timeout=30)
    assert metrics.status_code == 200
    samples = [
        (name, dict(label.split("=", 1) for label in labels.split(",")), float(value))
        for name, labels, value in re.findall(r"^(\w+)\{(.*)\} (\S+)$", metrics.text.replace('"', ""), re.M)
    ]

    def total(name: str, **labels: str) -> float:
        return sum(v for n, found, v in samples if n == name and labels.items() <= found.items())

    calls = "gateway_upstream_calls_total"
    assert total(calls, store="ehrbase", operation="ehrbase.composition.create", outcome="201") >= 6
    assert total(calls, store="ehrbase", outcome="unreachable") >= 1
    assert total(calls, store="fhir", outcome="201") >= EXTRA_PATIENTS + 1  # registrations
    assert total("gateway_upstream_breaker_state", store="ehrbase") == 0  # closed again after recovery


def test_no_secret_reached_the_log(stack: Stack) -> None:
    log = stack.log_path.read_text()
    assert "letter.create" in log or "/letters" in log  # the log is the one of this run
    secrets_in_play = {
        os.environ["E2E_EHRBASE_PASSWORD"],
        os.environ["E2E_EHRBASE_ADMIN_PASSWORD"],
        ADMIN_PASSWORD,
        CLINICIAN_PASSWORD,
        CLINICIAN_NEW_PASSWORD,
        stack.admin_token,
        stack.clinician_token,
    }
    leaked = sorted(secret[:4] + "…" for secret in secrets_in_play if secret in log)
    assert not leaked, f"secrets in {stack.log_path}: {leaked}"
    assert f"Etoe{stack.run_id}" not in log  # no patient names either
