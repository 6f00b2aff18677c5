"""``gateway check links`` against the real HAPI FHIR, EHRbase and PostgreSQL.

The scenario builds its own broken links in a subject namespace of its own (HAPI FHIR and EHRbase keep
the data of earlier runs, and the other scenarios' EHRs must not count): a patient with its EHR, an EHR
(holding one letter) whose subject HAPI FHIR never knew, an EHR whose patient was deleted, and an auth
database of its own with one sound and two stale ``patient_ehr`` rows. The command runs as a process, as
cron would run it, with a page size small enough to need several AQL pages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest

from gateway.openehr.composition import Composer, LetterContent, build_composition
from gateway.openehr.templates import load_opt, sync_template
from gateway.settings import load_settings
from gateway.upstream.ehrbase import EhrbaseClient, create_ehrbase_client
from tests.e2e.gateway_process import gateway_env, recreate_database, run_cli

LETTER_TEMPLATE = "gateway.clinical_letter.v1"
AUTH_DB = "gateway_e2e_links"
FHIR_JSON = "application/fhir+json"


@pytest.fixture
async def ehrbase() -> AsyncIterator[EhrbaseClient]:
    settings = load_settings(
        gateway_env="development",
        ehrbase_url=os.environ["E2E_EHRBASE_URL"],
        ehrbase_api_user=os.environ["E2E_EHRBASE_USER"],
        ehrbase_api_password=os.environ["E2E_EHRBASE_PASSWORD"],
        ehrbase_api_admin_user=os.environ["E2E_EHRBASE_ADMIN_USER"],
        ehrbase_api_admin_password=os.environ["E2E_EHRBASE_ADMIN_PASSWORD"],
    )
    client = create_ehrbase_client(settings)
    try:
        yield client
    finally:
        await client.aclose()


def create_patient(run: str, given: str) -> str:
    """A Patient created in HAPI FHIR directly; its id."""
    response = httpx.post(
        f"{os.environ['E2E_FHIR_URL'].rstrip('/')}/Patient",
        json={
            "resourceType": "Patient",
            "name": [{"use": "official", "family": f"Links{run}", "given": [given]}],
            "gender": "unknown",
        },
        headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    patient_id: str = response.json()["id"]
    return patient_id


def delete_patient(patient_id: str) -> None:
    base = os.environ["E2E_FHIR_URL"].rstrip("/")
    response = httpx.delete(f"{base}/Patient/{patient_id}", timeout=30)
    assert response.status_code in (200, 204), response.text
    assert httpx.get(f"{base}/Patient/{patient_id}", timeout=30).status_code == 410


def cache_rows(database_url: str, *rows: tuple[str, str]) -> None:
    with psycopg.connect(database_url) as conn:
        for patient_id, ehr_id in rows:
            conn.execute(
                "INSERT INTO patient_ehr (patient_id, ehr_id, created_at) VALUES (%s, %s, now())",
                (patient_id, ehr_id),
            )


@dataclass
class Outcome:
    status: int
    stdout: str
    stderr: str

    def document(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.stdout)
        return parsed


def check_links(env: dict[str, str], *args: str) -> Outcome:
    """``gateway check links <args>`` as a process (not :func:`run_cli`: exit 1 and 2 are expected here)."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", "links", *args],
        env=env,
        cwd=tempfile.mkdtemp(prefix="gateway-e2e-links-"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return Outcome(result.returncode, result.stdout, result.stderr)


async def test_check_links_reports_what_is_broken(ehrbase: EhrbaseClient) -> None:
    run = uuid.uuid4().hex[:8]
    namespace = f"e2e-links-{run}"
    database_url = recreate_database(os.environ["E2E_GATEWAY_ADMIN_DB_URL"], AUTH_DB)
    env = gateway_env(database_url, EHRBASE_SUBJECT_NAMESPACE=namespace)
    run_cli(env, tempfile.mkdtemp(prefix="gateway-e2e-links-"), "db", "upgrade")
    await sync_template(ehrbase, load_opt(LETTER_TEMPLATE))

    # a sound link
    patient = create_patient(run, "Sound")
    sound = (await ehrbase.create_ehr(patient, namespace)).ehr_id
    # an EHR, with a letter, whose subject HAPI FHIR never knew
    unknown = f"e2e-missing-{run}"
    orphan = (await ehrbase.create_ehr(unknown, namespace)).ehr_id
    letter = build_composition(
        LetterContent(title="Orphaned", body="A letter without a patient.", status="final"),
        composer=Composer(uuid.uuid4(), "E2E link check"),
        template_id=LETTER_TEMPLATE,
        time=datetime.now(UTC),
    )
    await ehrbase.create_composition(orphan, letter, idempotent=False)
    # an EHR whose patient was deleted
    deleted_patient = create_patient(run, "Deleted")
    deleted = (await ehrbase.create_ehr(deleted_patient, namespace)).ehr_id
    delete_patient(deleted_patient)
    # the cache: one sound row, one row of an EHR that does not exist, one of another subject's EHR
    missing_ehr = str(uuid.uuid4())
    cache_rows(
        database_url, (patient, sound), (f"e2e-stale-{run}", missing_ehr), (f"e2e-other-{run}", orphan)
    )

    found = check_links(env, "--json", "--page-size", "2")

    assert found.status == 1, found.stderr
    document = found.document()
    assert document["status"] == "problems"
    assert document["namespace"] == namespace
    assert document["counts"]["ehrs"] == 3  # two AQL pages
    assert document["counts"]["cache_rows"] == 3
    orphans = {o["ehr_id"]: o for o in document["orphan_ehrs"]}
    assert orphans == {
        orphan: {"ehr_id": orphan, "subject_id": unknown, "reason": "not_found", "compositions": 1},
        deleted: {"ehr_id": deleted, "subject_id": deleted_patient, "reason": "deleted", "compositions": 0},
    }
    assert document["duplicate_subjects"] == []
    stale = {row["patient_id"]: row for row in document["stale_cache_rows"]}
    assert set(stale) == {f"e2e-stale-{run}", f"e2e-other-{run}"}
    assert stale[f"e2e-stale-{run}"]["reason"] == "ehr_missing"
    assert stale[f"e2e-other-{run}"]["reason"] == "other_subject"
    assert stale[f"e2e-other-{run}"]["actual_subject_id"] == unknown
    assert stale[f"e2e-other-{run}"]["actual_namespace"] == namespace
    for secret in (os.environ["E2E_EHRBASE_PASSWORD"], os.environ["E2E_EHRBASE_ADMIN_PASSWORD"]):
        assert secret not in found.stdout + found.stderr

    # the same patient in a namespace of its own: nothing to report
    clean = f"e2e-links-clean-{run}"
    await ehrbase.create_ehr(patient, clean)
    sound_run = check_links({**env, "EHRBASE_SUBJECT_NAMESPACE": clean}, "--no-cache")
    assert sound_run.status == 0, sound_run.stdout + sound_run.stderr
    assert "checked 1 EHRs of 1 subjects" in sound_run.stdout

    # EHRbase unreachable: "could not check", not "problems"
    down = check_links({**env, "EHRBASE_URL": "http://127.0.0.1:9/ehrbase", "UPSTREAM_RETRY_ATTEMPTS": "1"})
    assert down.status == 2, down.stdout + down.stderr
    assert "EHRbase cannot be reached" in down.stderr
    assert "Traceback" not in down.stderr
