"""A real ``gateway serve`` process told to stop: SIGTERM drains it, SIGKILL loses no audit record.

SIGTERM (docs/operations.md, "Stopping a replica"): ``/ready`` answers 503 at once, new connections are
refused (after ``SHUTDOWN_DELAY_SECONDS``), the request in flight still gets its 200 and its audit row, and
the process exits 0 within the drain timeout; a request slower than ``SHUTDOWN_DRAIN_SECONDS`` is cut
there. SIGKILL under load: every read answered 200 has its audit row, because the row is committed before
the answer is sent.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.api.health import STOPPING
from tests.process.conftest import (
    PATIENT_ID,
    Gateway,
    audited_request_ids,
    bearer,
    gateway_env,
    request_id,
)
from tests.process.upstream_stub import UpstreamStub

READ = f"/patients/{PATIENT_ID}"


async def wait_for(event: object, timeout: float = 10.0) -> None:
    """Wait for a ``threading.Event`` of the stub without blocking the event loop."""
    assert await asyncio.to_thread(event.wait, timeout), "the gateway did not call the stub in time"  # type: ignore[attr-defined]


async def refused(url: str) -> bool:
    """True when a new connection to ``url`` is refused."""
    try:
        async with httpx.AsyncClient(base_url=url, timeout=2.0) as fresh:
            await fresh.get("/health")
    except httpx.ConnectError:
        return True
    return False


async def wait_refused(url: str, within: float) -> float:
    """Poll until new connections are refused; the seconds it took (fails after ``within``)."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await refused(url):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    pytest.fail(f"new connections were still accepted {within:g} s after SIGTERM")


async def test_sigterm_finishes_the_read_in_flight_refuses_new_connections_and_exits_0(
    gateways: Callable[..., Gateway], database: str
) -> None:
    with UpstreamStub(patient_delay=2.0) as stub:
        gateway = gateways(gateway_env(database, stub.url, SHUTDOWN_DRAIN_SECONDS="5"))
        async with httpx.AsyncClient(base_url=gateway.url, timeout=15.0) as client:
            headers = await bearer(client)
            assert (await client.get("/ready")).status_code == 200
            stub.metadata_delay = 1.5  # a /ready whose probes are still running when the signal comes
            ready = asyncio.create_task(client.get("/ready"))
            await wait_for(stub.metadata_read)
            read_id = request_id()
            read = asyncio.create_task(client.get(READ, headers={**headers, "X-Request-ID": read_id}))
            await wait_for(stub.patient_read)

            signalled = time.monotonic()
            gateway.signal(signal.SIGTERM)
            assert await wait_refused(gateway.url, within=1.0) < 1.0
            assert not read.done(), "the read should still be waiting for its (slow) upstream answer"

            answered = await ready
            assert answered.status_code == 503
            assert answered.json()["checks"]["shutdown"] == {
                "status": "down",
                "latency_ms": 0.0,
                "error": STOPPING,
            }
            response = await read
            assert response.status_code == 200, response.text
            assert response.json()["id"] == PATIENT_ID
            assert response.headers["x-request-id"] == read_id

        assert await asyncio.to_thread(gateway.wait, 5.0) == 0
        assert time.monotonic() - signalled < 5.0
    assert read_id in await audited_request_ids(database)
    assert "audit rows written since start; pools closed" in gateway.output()


async def test_with_a_shutdown_delay_ready_is_503_while_requests_are_still_served(
    gateways: Callable[..., Gateway], database: str
) -> None:
    """Two workers (the supervisor gets SIGTERM), ``SHUTDOWN_DELAY_SECONDS=1``."""
    with UpstreamStub(patient_delay=2.0) as stub:
        env = gateway_env(database, stub.url, SHUTDOWN_DELAY_SECONDS="1", SHUTDOWN_DRAIN_SECONDS="5")
        gateway = gateways(env, workers=2)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=15.0) as client:
            headers = await bearer(client)
            read_id = request_id()
            read = asyncio.create_task(client.get(READ, headers={**headers, "X-Request-ID": read_id}))
            await wait_for(stub.patient_read)

            signalled = time.monotonic()
            gateway.signal(signal.SIGTERM)
            await asyncio.sleep(0.7)  # the supervisor forwards the signal within 0.5 s
            # New connections are still accepted during the delay: /ready says 503, the rest is served.
            async with httpx.AsyncClient(base_url=gateway.url, timeout=5.0) as fresh:
                answers = [await fresh.get("/ready", headers={"Connection": "close"}) for _ in range(4)]
                assert {answer.status_code for answer in answers} == {503}
                assert (await fresh.get("/health")).status_code == 200
            assert time.monotonic() - signalled < 1.0, "too slow to check the delay window"

            await wait_refused(gateway.url, within=2.0)
            assert time.monotonic() - signalled >= 1.0
            response = await read
            assert response.status_code == 200, response.text

        assert await asyncio.to_thread(gateway.wait, 6.0) == 0
    assert read_id in await audited_request_ids(database)
    metrics_dir = re.search(r"PROMETHEUS_MULTIPROC_DIR=(\S+?)\"", gateway.output())
    assert metrics_dir is not None, "two workers run prometheus-client's multiprocess mode"
    assert not Path(metrics_dir.group(1)).exists(), "the temporary metrics directory is removed at exit"


async def test_a_request_slower_than_the_drain_timeout_is_cut_and_the_process_still_exits(
    gateways: Callable[..., Gateway], database: str
) -> None:
    with UpstreamStub(patient_delay=30.0) as stub:
        gateway = gateways(gateway_env(database, stub.url, SHUTDOWN_DRAIN_SECONDS="1"))
        async with httpx.AsyncClient(base_url=gateway.url, timeout=15.0) as client:
            headers = await bearer(client)
            read = asyncio.create_task(client.get(READ, headers=headers))
            await wait_for(stub.patient_read)
            signalled = time.monotonic()
            gateway.signal(signal.SIGTERM)
            assert await asyncio.to_thread(gateway.wait, 5.0) == 0
            assert time.monotonic() - signalled < 3.0
            try:
                cut: httpx.Response | None = await read
            except httpx.TransportError:
                cut = None
            # uvicorn answers a request it cancels with a bare 500 (or the connection just closes): no PHI
            assert cut is None or cut.status_code == 500, cut.text
    assert not await audited_request_ids(database)
    assert "timeout graceful shutdown exceeded" in gateway.output()


async def test_sigkill_under_load_every_read_answered_200_has_its_audit_row(
    gateways: Callable[..., Gateway], database: str
) -> None:
    with UpstreamStub(patient_delay=0.02) as stub:
        gateway = gateways(gateway_env(database, stub.url))
        answered: list[str] = []
        stop = asyncio.Event()
        async with httpx.AsyncClient(
            base_url=gateway.url, timeout=10.0, limits=httpx.Limits(max_connections=32)
        ) as client:
            headers = await bearer(client)

            async def reader() -> None:
                while not stop.is_set():
                    rid = request_id()
                    try:
                        response = await client.get(READ, headers={**headers, "X-Request-ID": rid})
                    except httpx.TransportError:
                        return  # the server is gone
                    if response.status_code == 200:
                        answered.append(rid)

            readers = [asyncio.create_task(reader()) for _ in range(16)]
            while len(answered) < 150:
                await asyncio.sleep(0.02)
            gateway.process.send_signal(signal.SIGKILL)  # mid-load: many reads in flight
            stop.set()
            await asyncio.gather(*readers)
        assert gateway.wait(5.0) == -signal.SIGKILL

    audited = await audited_request_ids(database)
    missing = set(answered) - audited
    assert not missing, f"{len(missing)} of {len(answered)} reads answered 200 have no audit row"
    assert len(answered) >= 150
