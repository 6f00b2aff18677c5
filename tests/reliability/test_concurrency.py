"""Concurrency: many first letters for a patient without an EHR create exactly one EHR."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import respx
from sqlmodel import select

from auth_db.engine import SessionFactory
from auth_db.models import PatientEhr
from gateway.security.access import grant_care_team
from gateway.settings import Settings
from tests import ehrbase_payloads as eb
from tests import fhir_payloads as hapi
from tests.conftest import running_app
from tests.factories import bearer_headers, create_user
from tests.respx_transport import UPSTREAM

NEW_PATIENT = "2002"


async def test_fifty_concurrent_first_letters_create_one_ehr(
    pg_url: str, session_factory: SessionFactory, make_settings: Callable[..., Settings]
) -> None:
    user = await create_user(session_factory, username="dr.busy", roles=["clinician"])
    async with session_factory() as session:
        await grant_care_team(session, user_id=user.id, patient_id=NEW_PATIENT, granted_by=None)
        await session.commit()
    created: list[str] = []
    ehr_creates: list[int] = []

    async def find(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)
        return eb.ehr(created[0]) if created else eb.ehr_not_found_by_subject()

    async def create_ehr(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.02)
        subject = json.loads(request.content)["subject"]["external_ref"]
        ehr_creates.append(1)
        if created:
            return eb.subject_in_use(subject["id"]["value"], subject["namespace"])
        created.append(eb.EHR_ID)
        return eb.ehr(eb.EHR_ID, status_code=201)

    def write(request: httpx.Request) -> httpx.Response:
        composition = json.loads(request.content)
        return eb.composition_written(
            eb.EHR_ID, composition, composition.get("uid", {}).get("value", eb.VERSION_1)
        )

    settings = make_settings(auth_database_url=pg_url, auth_db_pool_size=20, auth_db_max_overflow=40)
    async with running_app(settings) as client:
        headers = await bearer_headers(client, "dr.busy")
        with respx.mock(using=UPSTREAM, assert_all_called=False) as mock:
            mock.get(f"{hapi.BASE}/Patient/{NEW_PATIENT}").mock(
                return_value=hapi.resource_response(hapi.patient(NEW_PATIENT))
            )
            mock.get(f"{eb.BASE}/ehr").mock(side_effect=find)
            mock.post(f"{eb.BASE}/ehr").mock(side_effect=create_ehr)
            mock.get(f"{eb.BASE}/ehr/{eb.EHR_ID}").mock(return_value=eb.ehr())
            compositions = mock.post(f"{eb.BASE}/ehr/{eb.EHR_ID}/composition").mock(side_effect=write)
            body: dict[str, Any] = {"title": "Letter", "body": "Text.", "status": "draft"}
            responses = await asyncio.gather(
                *(
                    client.post(f"/patients/{NEW_PATIENT}/letters", json=body, headers=headers)
                    for _ in range(50)
                )
            )
    assert [r.status_code for r in responses] == [201] * 50, {r.status_code: r.text for r in responses}
    assert created == [eb.EHR_ID]
    assert compositions.call_count == 50
    assert all(
        call.request.url.path.startswith(f"/ehrbase/rest/openehr/v1/ehr/{eb.EHR_ID}/")
        for call in compositions.calls
    )
    async with session_factory() as session:
        rows = list(await session.exec(select(PatientEhr).where(PatientEhr.patient_id == NEW_PATIENT)))
    assert [row.ehr_id for row in rows] == [eb.EHR_ID]
    assert len(ehr_creates) >= 1
