"""The FHIR client alone against real HAPI: conditional creates that race inside HAPI.

Through the gateway, registrations of one identifier are serialised before they reach HAPI, so HAPI never
sees them race. Other systems writing to HAPI, or several processes on the embedded database, are not
serialised. HAPI 8.8 then refuses the loser of the race with 409. This test makes such races happen by
calling the client concurrently, with nothing in front of it, and checks that every call still answers
with the one patient.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter

from gateway.settings import load_settings
from gateway.upstream.fhir import FhirClient

CALLERS = 8
TRIALS = 8


class CountingObserver:
    """Counts the answers HAPI gave to each attempt (what the metrics would count)."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()

    def on_call(self, store: str, operation: str, outcome: str, seconds: float) -> None:
        self.outcomes[outcome] += 1

    def on_retry(self, store: str, operation: str) -> None:
        return None

    def on_breaker_state(self, store: str, state: str) -> None:
        return None


async def test_racing_conditional_creates_all_answer_with_the_one_patient() -> None:
    settings = load_settings(fhir_server_url=os.environ["E2E_FHIR_URL"], gateway_env="development")
    observer = CountingObserver()
    client = FhirClient(settings, observer=observer)
    try:
        for _ in range(TRIALS):
            value = uuid.uuid4().hex
            body = {"resourceType": "Patient", "identifier": [{"system": "urn:e2e:race", "value": value}]}
            results = await asyncio.gather(
                *(
                    client.create_patient(body, if_none_exist=f"identifier=urn:e2e:race|{value}")
                    for _ in range(CALLERS)
                )
            )
            assert len({resource.body["id"] for resource, _ in results}) == 1
            assert sum(created for _, created in results) <= 1
    finally:
        await client.aclose()
    print(f"e2e: HAPI answers to {CALLERS}x{TRIALS} racing conditional creates: {dict(observer.outcomes)}")
    assert observer.outcomes["201"] == TRIALS
