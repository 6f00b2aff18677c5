"""``gateway serve --workers 2``: a scrape of ``/metrics`` counts the requests of every worker.

prometheus-client's multiprocess mode (docs/operations.md, "Several workers"): each worker writes its values
to ``PROMETHEUS_MULTIPROC_DIR`` and the worker that answers a scrape merges them all. The test reads the
per-worker files too, to make sure both workers served requests and both answered scrapes, so that the sum
it checks is really one over two processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from tests.api.test_metrics import sample
from tests.factories import DEFAULT_PASSWORD
from tests.process.conftest import USERNAME, Gateway, gateway_env
from tests.process.upstream_stub import UpstreamStub

UNMATCHED = {"method": "GET", "route": "unmatched", "status": "404"}
SCRAPE = {"method": "GET", "route": "/metrics", "status": "200"}
_COUNTER_FILE = re.compile(r"^counter_(\d+)\.db$")


def value(text: str, metric: str) -> float:
    """The value of an unlabelled metric in a Prometheus text exposition (fails when absent)."""
    match = re.search(rf"^{re.escape(metric)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{metric} is not in the scrape"
    return float(match.group(1))


def per_worker(directory: Path, labels: dict[str, str]) -> dict[int, float]:
    """``gateway_http_requests_total{labels}`` as each process's own file holds it, by process id."""
    counts: dict[int, float] = {}
    for path in directory.iterdir():
        match = _COUNTER_FILE.match(path.name)
        if not match:
            continue
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            _, name, found, _ = json.loads(key)
            if name == "gateway_http_requests_total" and found == labels:
                counts[int(match.group(1))] = counts.get(int(match.group(1)), 0.0) + value
    return counts


def leave_stale_file(directory: Path) -> Path:
    """A counter file as an earlier run would have left it: 1000 unmatched requests of a process long gone."""
    path = directory / "counter_999999.db"
    stale = MmapedDict(str(path))
    key = mmap_key(
        "gateway_http_requests",
        "gateway_http_requests_total",
        list(UNMATCHED),
        list(UNMATCHED.values()),
        "HTTP requests served, by route template and status.",
    )
    stale.write_value(key, 1000.0, 0.0)
    stale.close()
    return path


async def fresh_get(url: str, path: str) -> httpx.Response:
    """``GET`` on a new connection (so that any worker may accept it)."""
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
        return await client.get(path, headers={"Connection": "close"})


async def login(url: str) -> httpx.Response:
    """``POST /auth/token`` as the clinician, on a new connection."""
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
        data = {"username": USERNAME, "password": DEFAULT_PASSWORD}
        return await client.post("/auth/token", data=data, headers={"Connection": "close"})


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.1)


async def test_a_scrape_sums_every_workers_requests_whichever_worker_answers(
    gateways: Callable[..., Gateway], database: str, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stale = leave_stale_file(metrics_dir)
    with UpstreamStub() as stub:
        env = gateway_env(database, stub.url, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
        gateway = gateways(env, workers=2)
        assert not stale.exists(), "the files of an earlier run are deleted at start"
        workers = gateway.worker_pids()
        assert len(workers) == 2

        # K requests on new connections, in rounds, until both workers have served some.
        sent = 0
        while len(per_worker(metrics_dir, UNMATCHED)) < 2:
            assert sent < 400, f"one worker took every connection: {per_worker(metrics_dir, UNMATCHED)}"
            answers = await asyncio.gather(*(fresh_get(gateway.url, f"/no-such-page/{i}") for i in range(10)))
            assert {answer.status_code for answer in answers} == {404}
            sent += len(answers)
        await until(
            lambda: sum(per_worker(metrics_dir, UNMATCHED).values()) == sent, "every request is counted"
        )
        for _ in range(6):  # ORM connections come and go (one at a time: this is not a login race test)
            assert (await login(gateway.url)).status_code == 200

        # Scrapes on new connections until both workers have answered some: each one sees all K requests.
        scrapes = 0
        while len(per_worker(metrics_dir, SCRAPE)) < 2 or scrapes < 4:
            assert scrapes < 100, "one worker answered every scrape"
            text = (await fresh_get(gateway.url, "/metrics")).text
            scrapes += 1
            assert sample(text, "gateway_http_requests_total", **UNMATCHED) == sent
            assert value(text, "gateway_workers") == 2
            # each worker's own pool, summed: 2 x AUTH_DB_POOL_SIZE, none checked out (all returned)
            assert value(text, "gateway_auth_db_pool_size") == 20
            assert value(text, "gateway_auth_db_pool_checked_out") == 0
            await until(
                lambda n=scrapes: sum(per_worker(metrics_dir, SCRAPE).values()) == n, "scrape counted"
            )

        # A worker that dies is replaced; its counts stay in the sums, its live gauges go.
        killed = workers[0]
        os.kill(killed, signal.SIGKILL)
        await until(
            lambda: killed not in gateway.worker_pids() and len(gateway.worker_pids()) == 2,
            "the supervisor replaces the killed worker",
            timeout=60.0,
        )
        await until(
            lambda: not list(metrics_dir.glob(f"gauge_live*_{killed}.db")), "the dead worker is marked"
        )
        for _ in range(60):  # the replacement may still be starting: a scrape then comes from the survivor
            text = (await fresh_get(gateway.url, "/metrics")).text
            if value(text, "gateway_workers") == 2:
                break
            assert value(text, "gateway_workers") == 1
            await asyncio.sleep(0.5)
        assert value(text, "gateway_workers") == 2
        assert value(text, "gateway_auth_db_pool_size") == 20
        assert sample(text, "gateway_http_requests_total", **UNMATCHED) == sent
        assert per_worker(metrics_dir, UNMATCHED).get(killed, 0) > 0
