"""The FHIR face driven by a third-party FHIR client (fhirpy) against real HAPI FHIR and EHRbase.

Patients and letters are created through the gateway's JSON API; then fhirpy, pointed at ``/fhir`` with a
clinician's bearer token, searches patients and follows ``next`` to the end, reads a patient, searches that
patient's DocumentReferences across pages, reads one, reads an amended letter's history and one earlier
version, and is refused for a patient outside the care team. No line of that client is ours: the test only
records, through ``requests``' own response hook, every answer it received, and every FHIR resource among
them (Patient, DocumentReference, Bundle, OperationOutcome, CapabilityStatement) is then validated against
the R4 core specification by HAPI FHIR's validator (``tests/e2e/fhir_validator.py``): zero errors.
"""

from __future__ import annotations

import base64
import random
from typing import Any

import httpx
import pytest
import requests
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import BaseFHIRError, ForbiddenError

from tests.e2e.conftest import ADMIN_PASSWORD, ADMIN_USER, Stack
from tests.e2e.fhir_validator import validation_errors
from tests.e2e.gateway_process import nhs_number
from tests.e2e.test_gateway_e2e import onboard_clinician, patient_body, token

LETTERS = 3


class Recorder:
    """Every JSON body the FHIR client received (``requests`` response hook)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def hook(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if response.headers.get("content-type", "").startswith("application/fhir+json"):
            self.bodies.append(response.json())


@pytest.fixture(scope="module")
def world(stack: Stack) -> dict[str, Any]:
    """Two clinicians; three patients of the first (registered by them), with letters for the first."""
    rng = random.Random(f"fhir-{stack.run_id}")
    admin = token(stack, ADMIN_USER, ADMIN_PASSWORD)
    stack.admin_token = stack.admin_token or admin
    _, mine = onboard_clinician(stack, f"fhir.a.{stack.run_id}", "Dr FHIR A")
    _, other = onboard_clinician(stack, f"fhir.b.{stack.run_id}", "Dr FHIR B")
    family = f"Fhirface{stack.run_id}"
    patients = []
    with stack.client(mine) as client:
        for given in ("Ann", "Bea", "Cyd"):
            body = patient_body(stack, nhs_number(rng), given)
            body["name"][0]["family"] = family
            created = client.post("/patients", json=body)
            assert created.status_code == 201, created.text
            patients.append(created.json()["id"])
        letters = []
        url = f"/patients/{patients[0]}/letters"
        for n in range(LETTERS):
            written = client.post(
                url, json={"title": f"Letter {n}", "body": f"Dear colleague,\n\nText {n}.", "status": "draft"}
            )
            assert written.status_code == 201, written.text
            letters.append(written.json())
        # Letter 0: draft → final (v2) → final again (v3): FHIR docStatus amended.
        first = letters[0]
        final = client.put(
            f"{url}/{first['id']}",
            json={"title": "Letter 0", "body": "Final text.", "status": "final"},
            headers={"If-Match": f'"{first["version_uid"]}"'},
        )
        assert final.status_code == 200, final.text
        amended = client.put(
            f"{url}/{first['id']}",
            json={
                "title": "Letter 0",
                "body": "Amended text.",
                "status": "final",
                "reason": "Dose corrected",
            },
            headers={"If-Match": f'"{final.json()["version_uid"]}"'},
        )
        assert amended.status_code == 200, amended.text
        assert amended.json()["status"] == "final"  # the JSON API keeps the stored status
    recorder = Recorder()
    return {
        "family": family,
        "patients": patients,
        "amended_letter": first["id"],
        "recorder": recorder,
        "client": SyncFHIRClient(
            f"{stack.gateway_url}/fhir",
            authorization=f"Bearer {mine}",
            requests_config={"hooks": {"response": [recorder.hook]}, "timeout": 60},
        ),
        "outsider": SyncFHIRClient(
            f"{stack.gateway_url}/fhir",
            authorization=f"Bearer {other}",
            requests_config={"hooks": {"response": [recorder.hook]}, "timeout": 60},
        ),
    }


def test_patients_are_searched_to_the_end_and_read(world: dict[str, Any]) -> None:
    client: SyncFHIRClient = world["client"]
    found = client.resources("Patient").search(family=world["family"]).limit(2).fetch_all()
    assert sorted(p.id for p in found) == sorted(world["patients"])
    pages = [b for b in world["recorder"].bodies if b.get("resourceType") == "Bundle"]
    assert len(pages) == 2  # followed one next link
    patient = client.reference("Patient", world["patients"][0]).to_resource()
    assert patient.get("name")[0]["family"] == world["family"]
    assert patient["meta"]["versionId"] == "1"


def test_letters_are_searched_across_pages_read_and_their_history_listed(world: dict[str, Any]) -> None:
    client: SyncFHIRClient = world["client"]
    documents = (
        client.resources("DocumentReference").search(patient=world["patients"][0]).limit(2).fetch_all()
    )
    assert len(documents) == LETTERS
    assert {d["status"] for d in documents} == {"current"}
    by_title = {d["description"]: d for d in documents}
    amended = by_title["Letter 0"]
    assert amended["docStatus"] == "amended"
    assert amended["meta"]["versionId"] == "3"
    assert amended["identifier"][0]["value"] == f"urn:uuid:{world['amended_letter']}"
    assert by_title["Letter 1"]["docStatus"] == "preliminary"
    assert amended["type"]["coding"][0]["code"] == "823691000000103"
    assert amended["subject"]["reference"] == f"Patient/{world['patients'][0]}"

    read = client.reference("DocumentReference", amended["id"]).to_resource()
    text = base64.b64decode(read["content"][0]["attachment"]["data"]).decode()
    assert text == "Amended text."

    history = client.execute(f"DocumentReference/{amended['id']}/_history", method="get")
    versions = [
        (e["resource"]["meta"]["versionId"], e["resource"]["status"], e["resource"]["docStatus"])
        for e in history["entry"]
    ]
    assert versions == [
        ("3", "current", "amended"),
        ("2", "superseded", "final"),
        ("1", "superseded", "preliminary"),
    ]
    first = client.execute(f"DocumentReference/{amended['id']}/_history/1", method="get")
    assert (
        base64.b64decode(first["content"][0]["attachment"]["data"]).decode() == "Dear colleague,\n\nText 0."
    )

    dated = client.resources("DocumentReference").search(patient=world["patients"][0], date="ge2000-01-01")
    assert len(dated.fetch_all()) == LETTERS
    none = client.resources("DocumentReference").search(patient=world["patients"][0], date="lt2000-01-01")
    assert none.fetch_all() == []


def test_a_patient_outside_the_care_team_is_refused(world: dict[str, Any]) -> None:
    outsider: SyncFHIRClient = world["outsider"]
    with pytest.raises(ForbiddenError):
        outsider.resources("DocumentReference").search(patient=world["patients"][0]).fetch_all()
    with pytest.raises(ForbiddenError):
        outsider.reference("Patient", world["patients"][0]).to_resource()
    # A search finds the patient, but shows the outsider identifying demographics only.
    [seen] = outsider.resources("Patient").search(family=world["family"], given="Ann").fetch_all()
    assert seen["meta"]["tag"][-1]["code"] == "SUBSETTED"
    assert "telecom" not in seen
    with pytest.raises(BaseFHIRError):
        outsider.resources("DocumentReference").search(subject="x$y").fetch_all()


def test_capability_statement(world: dict[str, Any], stack: Stack) -> None:
    statement = httpx.get(f"{stack.gateway_url}/fhir/metadata", timeout=30).json()
    world["recorder"].bodies.append(statement)
    assert statement["resourceType"] == "CapabilityStatement"
    assert {r["type"] for r in statement["rest"][0]["resource"]} == {"Patient", "DocumentReference", "Binary"}


def test_everything_received_validates_against_r4_core(world: dict[str, Any]) -> None:
    bodies: list[dict[str, Any]] = world["recorder"].bodies
    kinds = {body["resourceType"] for body in bodies}
    assert {"Bundle", "Patient", "DocumentReference", "OperationOutcome", "CapabilityStatement"} <= kinds
    failures = {}
    for n, body in enumerate(bodies):
        errors = validation_errors(None, body)
        if errors:
            failures[f"{n}: {body['resourceType']}"] = [str(e) for e in errors]
    assert not failures, failures
