"""An app with a clinician linked to patient 1001 (EHR cached), with small upstream timeouts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from auth_db.engine import SessionFactory
from auth_db.models import AuditEvent, PatientEhr
from gateway.security.access import grant_care_team
from gateway.settings import Settings
from tests import ehrbase_payloads as eb
from tests.conftest import running_app
from tests.factories import bearer_headers, create_user

PATIENT = "1001"
FAST = {
    "upstream_connect_timeout": 0.3,
    "upstream_read_timeout": 0.3,
    "upstream_total_timeout": 2.0,
    "upstream_retry_attempts": 3,
    "upstream_retry_max_wait": 0.01,
    "breaker_failure_threshold": 100,
}


@dataclass
class Gateway:
    client: httpx.AsyncClient
    headers: dict[str, str]
    factory: SessionFactory
    user_id: Any

    async def audit(self, action: str) -> list[AuditEvent]:
        async with self.factory() as session:
            query = select(AuditEvent).where(AuditEvent.action == action).order_by(col(AuditEvent.id))
            return list(await session.exec(query))


@pytest.fixture
def gateway(
    pg_url: str, session_factory: SessionFactory, make_settings: Callable[..., Settings]
) -> Callable[..., Any]:
    """``async with gateway(**settings) as gw``: a running app and a linked clinician's bearer headers."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Gateway]:
        user = await create_user(
            session_factory, username=f"dr.rel{id(overrides) % 100000}", roles=["clinician"]
        )
        async with session_factory() as session:
            await grant_care_team(session, user_id=user.id, patient_id=PATIENT, granted_by=None)
            if (await session.get(PatientEhr, PATIENT)) is None:
                session.add(PatientEhr(patient_id=PATIENT, ehr_id=eb.EHR_ID))
            await session.commit()
        settings = make_settings(auth_database_url=pg_url, **{**FAST, **overrides})
        async with running_app(settings) as client:
            headers = await bearer_headers(client, user.username)
            yield Gateway(client, headers, session_factory, user.id)

    return start
