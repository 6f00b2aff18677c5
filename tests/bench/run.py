"""`just bench`: what the gateway adds to each request, and how close it gets to a ceiling of the same run.

Starts a PostgreSQL auth database (``.ci/postgres.sh``), the stub upstreams (``tests/bench/stub.py``) and the
gateway in production settings (uvicorn, one worker per core, uvloop, httptools), then drives each workload
with ``wrk`` per concurrency level — directly against the stub and through the gateway; then the paired
ceiling rounds (the read and the DocumentReference search at c=32 through the gateway and the bare
pass-through, alternating; the read's median ratio is the run's ``ceiling_ratio``). Then, one at a time
on its own port and under the same uvicorn settings, the bare pass-through of ``tests/bench/baseline.py``:
with aiohttp on every workload and concurrency (``bare``), the same with one SELECT and one INSERT per request
on the gateway's database (``bare_db``), and with each other HTTP client on the read at c=1, 32 and 128 (the
client comparison). Writes ``var/bench/results.json``, ``results.md`` and ``latency.png``, prints one line per
target, and ends with one line:

    bench: read added_p50_ms=… added_p99_ms=… rps=… rss_mb=… ceiling_ratio=… documents_search_ratio=…

Everything listens on 127.0.0.1 and every run is bounded (``BENCH_SECONDS`` per point, default 3). The
environment variables are listed in ``tests/bench/README.md``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from gateway.openehr.aql import LIST_LETTER_DOCUMENTS
from tests.bench import stub
from tests.bench.baseline import TEMPLATE_ID
from tests.bench.report import (
    CLIENTS,
    lua_script,
    parse_vegeta,
    parse_wrk,
    profile_summary,
    summary_line,
    target_lines,
    write_outputs,
)

if TYPE_CHECKING:
    import psutil

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "var" / "bench"
WORKLOADS = ("read", "search", "letter_create", "letters_list", "documents_search")
#: Workloads measured again in the paired rounds (gateway and bare alternating at c=32), when selected.
PAIRED_WORKLOADS = ("read", "documents_search")
BARE_CLIENT = "aiohttp"
CLIENT_CONCURRENCY = (1, 32, 128)
PASSWORD = "bench-password-correct-horse-battery"
LETTER = {"title": "Clinic letter", "body": "Seen in clinic today; plan unchanged.", "status": "final"}
COMPOSITION = {"_type": "COMPOSITION", "name": {"_type": "DV_TEXT", "value": "Clinic letter"}}
DB_POOL_SIZE = "20"
WARM_UP_SECONDS = 1
IDLE_CPU_PERCENT = 10.0  # all workers together, twice over 0.25 s: the previous point's backlog is done


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.replace(",", " ").split()]


def _name_list(text: str) -> list[str]:
    return [part for part in text.replace(",", " ").split() if part]


SECONDS = int(os.environ.get("BENCH_SECONDS", "3"))
CONCURRENCY = _int_list(os.environ.get("BENCH_CONCURRENCY", "1,8,32,128"))
ONLY = _name_list(os.environ.get("BENCH_ONLY", "")) or list(WORKLOADS)
COMPARED_CLIENTS = _name_list(os.environ.get("BENCH_CLIENTS", " ".join(CLIENTS)))
#: ``1``: profile the read (without it, the first selected workload); or the workloads to profile, by name.
PROFILE = _name_list(os.environ.get("BENCH_PROFILE", ""))
STUB_PORT = int(os.environ.get("BENCH_STUB_PORT", "18091"))
GATEWAY_PORT = int(os.environ.get("BENCH_GATEWAY_PORT", "18090"))
BASELINE_PORT = int(os.environ.get("BENCH_BASELINE_PORT", "18092"))
PAIRED_ROUNDS = int(os.environ.get("BENCH_PAIRED_ROUNDS", "3"))
OPEN_LOOP_RATES = _int_list(os.environ.get("BENCH_OPEN_LOOP_RATES", "250,500,1000"))
#: Where ``just bench`` installs vegeta when it is not on PATH (``go install``).
VEGETA_LOCAL = ROOT / "var" / "bench" / "bin" / "vegeta"


def workloads(token: str) -> list[dict[str, Any]]:
    """Each workload's request to the stub (``direct``) and through a server (``path``, gateway or bare)."""
    st = f"http://127.0.0.1:{STUB_PORT}"
    auth = {"Authorization": f"Bearer {token}"}
    aql = {"q": "SELECT …", "query_parameters": {"ehr_id": stub.SMALL_EHR}, "offset": 0, "fetch": 10}
    # what the gateway sends for a DocumentReference search of 10 (one row more: is there a next page?)
    documents = {
        "q": LIST_LETTER_DOCUMENTS,
        "query_parameters": {"ehr_id": stub.SMALL_EHR, "template_id": TEMPLATE_ID},
        "offset": 0,
        "fetch": 11,
    }
    return [
        {
            "name": "read",
            "direct": ("GET", f"{st}/fhir/Patient/{stub.SMALL_PATIENT}", None, {}),
            "path": ("GET", f"/patients/{stub.SMALL_PATIENT}", None, auth),
        },
        {
            "name": "search",
            "direct": ("GET", f"{st}/fhir/Patient?family=Chalmers&_count=20", None, {}),
            "path": ("GET", "/patients?family=Chalmers&count=20", None, auth),
        },
        {
            "name": "letter_create",
            "direct": (
                "POST",
                f"{st}/ehrbase/rest/openehr/v1/ehr/{stub.SMALL_EHR}/composition",
                COMPOSITION,
                {},
            ),
            "path": ("POST", f"/patients/{stub.SMALL_PATIENT}/letters", LETTER, auth),
        },
        {
            "name": "letters_list",
            "direct": ("POST", f"{st}/ehrbase/rest/openehr/v1/query/aql", aql, {}),
            "path": ("GET", f"/patients/{stub.SMALL_PATIENT}/letters?limit=10", None, auth),
        },
        {
            "name": "documents_search",
            "direct": ("POST", f"{st}/ehrbase/rest/openehr/v1/query/aql", documents, {}),
            "path": ("GET", f"/fhir/DocumentReference?patient={stub.SMALL_PATIENT}&_count=10", None, auth),
        },
    ]


def uvicorn_command(app: str, port: int, workers: int) -> list[str]:
    """The uvicorn command line shared by the gateway and every baseline (same settings, other app)."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def baseline_plan(
    only: list[str], concurrency: list[int], clients: list[str], bare_client: str = BARE_CLIENT
) -> list[dict[str, Any]]:
    """The baseline servers to start, in order, and what to measure on each.

    ``bare`` and ``bare_db`` (the ceiling) run every selected workload at every concurrency the gateway is
    measured at; each other compared client runs the read at c=1, 32 and 128 (those of ``concurrency``).
    The bare pass-through's own read points stand for ``bare_client`` in the comparison.
    """
    plan: list[dict[str, Any]] = [
        {"target": "bare", "client": bare_client, "db": False, "workloads": only, "concurrency": concurrency},
        {
            "target": "bare_db",
            "client": bare_client,
            "db": True,
            "workloads": only,
            "concurrency": concurrency,
        },
    ]
    compared = [c for c in CLIENT_CONCURRENCY if c in concurrency]
    if "read" in only and compared:
        plan += [
            {
                "target": "client",
                "client": client,
                "db": False,
                "workloads": ["read"],
                "concurrency": compared,
            }
            for client in clients
            if client != bare_client
        ]
    return plan


def point_count(only: list[str], concurrency: list[int], clients: list[str]) -> int:
    """How many measured points a run makes (each lasts ``BENCH_SECONDS``)."""
    gateway = 2 * len(only) * len(concurrency) + (2 if "letters_list" in only else 0)
    gateway += 2 * PAIRED_ROUNDS * len([name for name in PAIRED_WORKLOADS if name in only])
    plan = baseline_plan(only, concurrency, clients)
    return gateway + sum(len(step["workloads"]) * len(step["concurrency"]) for step in plan)


def run_wrk(
    method: str,
    url: str,
    body: Any,
    headers: dict[str, str],
    connections: int,
    seconds: int = SECONDS,
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua_script(method, body, headers))
    threads = min(2, connections)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        script.name,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=False)
    os.unlink(script.name)
    parsed = parse_wrk(done.stdout)
    if done.returncode != 0:
        # wrk could not connect at all (the server is gone): record the point as failed, keep the run going.
        print(f"bench: wrk failed on {url}: {done.stderr.strip()[:200]}", file=sys.stderr)
        return parsed | {"errors": max(1, parsed["errors"]), "failed": True}
    if parsed["requests"] == 0:
        # Not one answer within the run (every request slower than the run, none past wrk's timeout yet):
        # no error was counted, but the point is not a measurement either.
        print(f"bench: no answer from {url} within {seconds} s", file=sys.stderr)
        return parsed | {"failed": True}
    return parsed


def start_postgres() -> str:
    """Start (or reuse) the throwaway server of ``.ci/postgres.sh``; ``TEST_PG_PORT`` picks its port."""
    output = subprocess.run(
        ["bash", str(ROOT / ".ci" / "postgres.sh"), "start"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    server = next(line.split("=", 1)[1] for line in output.splitlines() if "TEST_AUTH_DATABASE_URL" in line)
    return server


async def prepare_database(server_url: str) -> str:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from auth_db import migrate
    from auth_db.engine import create_engine, create_session_factory
    from auth_db.models import PatientEhr
    from gateway.security.access import grant_care_team
    from gateway.settings import normalise_database_url
    from tests.factories import create_user

    admin = create_async_engine(normalise_database_url(server_url), isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text('DROP DATABASE IF EXISTS "gateway_bench" WITH (FORCE)'))
        await connection.execute(text('CREATE DATABASE "gateway_bench"'))
    await admin.dispose()
    url = normalise_database_url(server_url.rsplit("/", 1)[0] + "/gateway_bench")
    await asyncio.to_thread(migrate.upgrade, url)
    engine = create_engine(url)
    factory = create_session_factory(engine)
    user = await create_user(factory, username="bench.clinician", roles=["clinician"], password=PASSWORD)
    async with factory() as session:
        for patient, ehr_id in ((stub.SMALL_PATIENT, stub.SMALL_EHR), (stub.LARGE_PATIENT, stub.LARGE_EHR)):
            await grant_care_team(session, user_id=user.id, patient_id=patient, granted_by=None)
            session.add(PatientEhr(patient_id=patient, ehr_id=ehr_id))
        await session.commit()
    await engine.dispose()
    return url


def wait_for(url: str, process: subprocess.Popen[bytes] | None = None, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"bench: the server for {url} exited with status {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"bench: {url} did not come up within {seconds} s")


def port_in_use(port: int) -> bool:
    """Whether something already listens on 127.0.0.1:``port`` (another bench run, another server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def start_server(command: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
    """Start a server; its stderr goes to ``var/bench/logs/<log_name>.log``."""
    logs = OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{log_name}.log").open("wb") as log:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def worker_processes(pid: int) -> list[psutil.Process]:
    """uvicorn's worker processes under the supervisor ``pid`` (not multiprocessing's resource tracker)."""
    import psutil  # bench group only; the unit tests import this module without it

    children = psutil.Process(pid).children(recursive=True)
    workers = []
    for child in children:
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                workers.append(child)
        except psutil.Error:
            continue
    return workers or children


def workers_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by the server's worker processes."""
    import psutil

    total = 0.0
    for worker in worker_processes(pid):
        try:
            times = worker.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def cpu_per_request(pid: int, before: float, requests: int) -> float:
    """The server's worker CPU (µs) per answer since ``before`` (:func:`workers_cpu_seconds` then):
    what a request costs the server, whatever else the machine was doing."""
    return round((workers_cpu_seconds(pid) - before) / requests * 1e6, 1)


def settle(pid: int, limit: float = 15.0) -> float:
    """Wait until the server's workers are idle again; how long it took (s).

    A saturated server still works through the requests queued by the previous point after wrk has
    closed its connections; measuring the next point before that would charge it the backlog.
    """
    import psutil

    workers = worker_processes(pid)
    started = time.monotonic()
    try:
        for worker in workers:
            worker.cpu_percent(None)
        idle = 0
        while idle < 2 and time.monotonic() - started < limit:
            time.sleep(0.25)
            busy = sum(worker.cpu_percent(None) for worker in workers)
            idle = idle + 1 if busy < IDLE_CPU_PERCENT else 0
    except psutil.Error:
        pass
    return time.monotonic() - started


def worker_rss_mb(pid: int) -> list[float]:
    return [round(worker.memory_info().rss / 1_048_576, 1) for worker in worker_processes(pid)]


def measure(
    results: list[dict[str, Any]],
    workload: str,
    target: str,
    request: tuple[str, str, Any, dict[str, str]],
    connections: int,
    client: str | None = None,
    server: int | None = None,
) -> dict[str, Any]:
    """One point; with ``server`` (a uvicorn supervisor's pid), first wait for its workers to be idle."""
    method, url, body, headers = request
    row: dict[str, Any] = {"workload": workload, "target": target, "concurrency": connections}
    if server is not None:
        row["settle_s"] = round(settle(server), 2)
        if row["settle_s"] > 1:
            print(
                f"bench: waited {row['settle_s']} s for the server to finish the previous point", flush=True
            )
    before = workers_cpu_seconds(server) if server is not None else 0.0
    measured = run_wrk(method, url, body, headers, connections)
    if server is not None and measured["requests"]:
        row["cpu_us_per_request"] = cpu_per_request(server, before, measured["requests"])
    if client is not None:
        row["client"] = client
    results.append(row | measured)
    label = target if client is None else f"{target}/{client}"
    print(
        f"bench: {workload:<16} c={connections:<3} {label:<21} rps={measured['served_rps']:.0f} "
        f"p50={measured['p50_ms']:.2f}ms p99={measured['p99_ms']:.2f}ms "
        f"shed={measured['shed']} errors={measured['errors']}",
        flush=True,
    )
    return measured


def warm_up(base: str, specs: list[dict[str, Any]]) -> None:
    """One short unrecorded wrk run per workload: first-call imports, pools and caches filled."""
    for spec in specs:
        method, path, body, headers = spec["path"]
        run_wrk(method, base + path, body, headers, 8, seconds=WARM_UP_SECONDS)


def py_spy() -> str:
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def profiled(selected: list[str], asked: list[str]) -> list[str]:
    """The workloads ``BENCH_PROFILE`` asks to profile (``asked``: its names) among those ``selected``.

    ``1`` means the read, or the first selected workload when the read is not selected; names pick workloads.
    """
    if asked == ["1"]:
        return ["read"] if "read" in selected else selected[:1]
    return [name for name in asked if name in selected]


def profile_workload(gateway_pid: int, spec: dict[str, Any]) -> None:
    """``BENCH_PROFILE``: py-spy on one gateway worker while wrk drives the workload at c=32.

    Two unrecorded runs: one writes ``var/bench/profile-<workload>.svg`` (flame graph), the other the
    collapsed stacks ``profile-<workload>.txt``, summarised into ``profile-<workload>-top.txt``.
    """
    worker = worker_processes(gateway_pid)[0].pid
    seconds = max(SECONDS, 5)
    method, path, body, headers = spec["path"]
    stem = f"profile-{spec['name']}"
    for form, name in (("flamegraph", f"{stem}.svg"), ("raw", f"{stem}.txt")):
        spy = subprocess.Popen(
            [
                py_spy(),
                "record",
                "--pid",
                str(worker),
                "--rate",
                "250",
                "--duration",
                str(seconds),
                "--format",
                form,
                "--output",
                str(OUT / name),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.5)  # py-spy attaches before the load starts
        run_wrk(method, f"http://127.0.0.1:{GATEWAY_PORT}{path}", body, headers, 32, seconds=seconds)
        _, err = spy.communicate(timeout=seconds + 60)
        if spy.returncode != 0:
            print(f"bench: py-spy failed: {err.decode(errors='replace').strip()[:300]}", file=sys.stderr)
            return
    (OUT / f"{stem}-top.txt").write_text(profile_summary((OUT / f"{stem}.txt").read_text()))
    print(
        f"bench: profile of one gateway worker ({spec['name']}, c=32): var/bench/{stem}.svg, {stem}-top.txt",
        flush=True,
    )


def start_baseline(
    base_env: dict[str, str], database: str, cores: int, port: int, *, client: str, db: bool, name: str
) -> subprocess.Popen[bytes]:
    """Start the bare pass-through on ``port`` with upstream ``client``, plus the DB work when ``db``."""
    env = base_env | {
        "BASELINE_UPSTREAM": f"http://127.0.0.1:{STUB_PORT}",
        "BASELINE_CLIENT": client,
        "BASELINE_DB": "1" if db else "0",
        "BASELINE_DATABASE_URL": database,
        "BASELINE_DB_POOL_SIZE": DB_POOL_SIZE,
    }
    return start_server(uvicorn_command("tests.bench.baseline:create_app", port, cores), env, name)


def measure_paired(
    results: list[dict[str, Any]],
    specs: list[dict[str, Any]],
    gateway: subprocess.Popen[bytes],
    base_env: dict[str, str],
    database: str,
    cores: int,
    port: int,
) -> None:
    """The ceiling ratios measured fairly: each workload of ``specs`` that is one of ``PAIRED_WORKLOADS``
    (the read, the DocumentReference search) at c=32 through the gateway and through the bare
    pass-through, back to back, ``PAIRED_ROUNDS`` times, the order swapped every round; then, when the
    read is among ``specs``, its open-loop points.

    The table's gateway and bare points lie minutes apart, and the machine's other load drifts in
    between; here both servers are up (the idle one uses no CPU) and each round's two points are measured
    one right after the other. The report's ``ceiling_ratio`` is the median of the read's rounds' ratios,
    its ``documents_search_ratio`` that of the DocumentReference search's.
    """
    paired = [spec for spec in specs if spec["name"] in PAIRED_WORKLOADS]
    bare = start_baseline(base_env, database, cores, port, client=BARE_CLIENT, db=False, name="bare-paired")
    try:
        bare_base = f"http://127.0.0.1:{port}"
        wait_for(f"{bare_base}/health", bare)
        warm_up(bare_base, paired)
        servers = {
            "gateway_paired": (f"http://127.0.0.1:{GATEWAY_PORT}", gateway),
            "bare_paired": (bare_base, bare),
        }
        for spec in paired:
            method, path, body, headers = spec["path"]
            for number in range(PAIRED_ROUNDS):
                order = list(servers) if number % 2 == 0 else list(reversed(servers))
                for target in order:
                    base, process = servers[target]
                    request = (method, base + path, body, headers)
                    measure(results, spec["name"], target, request, 32, server=process.pid)
                    results[-1]["round"] = number
        read = next((spec for spec in paired if spec["name"] == "read"), None)
        if OPEN_LOOP_RATES and read is not None:
            measure_open_loop(
                results,
                read,
                {
                    "open_gateway": (f"http://127.0.0.1:{GATEWAY_PORT}", gateway.pid),
                    "open_bare": (bare_base, bare.pid),
                },
            )
    finally:
        stop_server(bare)


def vegeta() -> str | None:
    """The vegeta binary (PATH, or where ``just bench`` installs it), or None."""
    found = shutil.which("vegeta")
    if found:
        return found
    return str(VEGETA_LOCAL) if VEGETA_LOCAL.exists() else None


def run_vegeta(binary: str, url: str, headers: dict[str, str], rate: int, seconds: int) -> dict[str, Any]:
    """Offer ``rate`` requests/s to ``url`` for ``seconds`` (open loop) and parse vegeta's report."""
    target = f"GET {url}\n" + "".join(f"{name}: {value}\n" for name, value in headers.items())
    attack = subprocess.run(
        [binary, "attack", f"-rate={rate}/s", f"-duration={seconds}s", "-timeout=5s", "-max-workers=512"],
        input=target.encode(),
        capture_output=True,
        timeout=seconds + 30,
        check=True,
    )
    report = subprocess.run(
        [binary, "report", "-type=json"], input=attack.stdout, capture_output=True, timeout=60, check=True
    )
    return parse_vegeta(json.loads(report.stdout), seconds)


def measure_open_loop(
    results: list[dict[str, Any]], spec: dict[str, Any], servers: dict[str, tuple[str, int]]
) -> None:
    """The read offered at each of ``OPEN_LOOP_RATES`` directly, through the gateway and through the bare
    pass-through (``servers``: target → base URL and server pid), with vegeta: latency below saturation.

    wrk is a closed loop: each connection sends its next request when the last is answered, so at any
    concurrency the server is saturated and latency is mostly queueing. vegeta sends on schedule.
    """
    binary = vegeta()
    if binary is None:
        print(
            "bench: vegeta not found (just bench installs it with Go); open-loop points skipped", flush=True
        )
        return
    path, headers = spec["path"][1], spec["path"][3]
    seconds = max(SECONDS, 5)
    for rate in OPEN_LOOP_RATES:
        targets: list[tuple[str, str, dict[str, str], int | None]] = [
            ("open_direct", spec["direct"][1], {}, None),
            *((target, base + path, headers, pid) for target, (base, pid) in servers.items()),
        ]
        for target, url, sent, pid in targets:
            row: dict[str, Any] = {"workload": "read", "target": target, "concurrency": 0, "rate": rate}
            before = 0.0
            if pid is not None:
                row["settle_s"] = round(settle(pid), 2)
                before = workers_cpu_seconds(pid)
            measured = run_vegeta(binary, url, sent, rate, seconds)
            if pid is not None and measured["requests"]:
                row["cpu_us_per_request"] = cpu_per_request(pid, before, measured["requests"])
            results.append(row | measured)
            print(
                f"bench: read open loop {rate}/s {target:<13} p50={measured['p50_ms']:.2f}ms "
                f"p99={measured['p99_ms']:.2f}ms errors={measured['errors']}",
                flush=True,
            )


def measure_baselines(
    results: list[dict[str, Any]],
    specs: list[dict[str, Any]],
    base_env: dict[str, str],
    database: str,
    cores: int,
) -> dict[str, list[float]]:
    """Start each baseline of :func:`baseline_plan` in turn, measure it, stop it; RSS of each by name."""
    rss: dict[str, list[float]] = {}
    for index, step in enumerate(baseline_plan(ONLY, CONCURRENCY, COMPARED_CLIENTS)):
        port = BASELINE_PORT + index
        name = f"{step['target']}-{step['client']}"
        server = start_baseline(
            base_env, database, cores, port, client=step["client"], db=step["db"], name=name
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(f"{base}/health", server)
            chosen = [spec for spec in specs if spec["name"] in step["workloads"]]
            warm_up(base, chosen)
            for spec in chosen:
                method, path, body, headers = spec["path"]
                for connections in step["concurrency"]:
                    measure(
                        results,
                        spec["name"],
                        step["target"],
                        (method, base + path, body, headers),
                        connections,
                        client=step["client"],
                        server=server.pid,
                    )
            rss[name] = worker_rss_mb(server.pid)
        finally:
            stop_server(server)
    return rss


def main() -> None:
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    unknown = sorted(set(ONLY) - set(WORKLOADS)) + sorted(set(COMPARED_CLIENTS) - set(CLIENTS))
    unknown += sorted(set(PROFILE) - {"1", *WORKLOADS})
    if unknown:
        raise SystemExit(
            f"bench: unknown name(s) {unknown}; BENCH_ONLY and BENCH_PROFILE take {', '.join(WORKLOADS)} "
            f"(BENCH_PROFILE also 1), BENCH_CLIENTS takes {', '.join(CLIENTS)}"
        )
    plan = baseline_plan(ONLY, CONCURRENCY, COMPARED_CLIENTS)
    paired_port = BASELINE_PORT + len(plan)
    ports = [STUB_PORT, GATEWAY_PORT, *range(BASELINE_PORT, paired_port + 1)]
    busy = [port for port in ports if port_in_use(port)]
    if busy:
        raise SystemExit(
            f"bench: port(s) {busy} already in use (another bench run?); measuring someone else's server "
            "would be wrong — stop it or set BENCH_STUB_PORT/BENCH_GATEWAY_PORT/BENCH_BASELINE_PORT"
        )
    if shutil.which("wrk") is None:
        raise SystemExit(
            "bench: wrk is missing; install it with `apt-get install wrk` (Debian) or your package manager"
        )
    OUT.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    points = point_count(ONLY, CONCURRENCY, COMPARED_CLIENTS)
    print(
        f"bench: {points} points of {SECONDS} s (workloads {','.join(ONLY)}; "
        f"c={','.join(map(str, CONCURRENCY))}); about {points * SECONDS // 60 + 1} min of load",
        flush=True,
    )
    server = start_postgres()
    database = asyncio.run(prepare_database(server))
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUTH_", "FHIR_", "EHRBASE_", "GATEWAY_", "BASELINE_"))
    }
    env = base_env | {
        "GATEWAY_ENV": "production",
        "GATEWAY_SECRET_KEY": uuid.uuid4().hex + uuid.uuid4().hex,
        "TOTP_ENCRYPTION_KEY": "q1YQ8o1cM7O1HxH0Bf2gWgUu3lKQ0xZbq6l2v3J0c1E=",
        "AUTH_DATABASE_URL": database,
        "AUTH_DB_POOL_SIZE": DB_POOL_SIZE,
        "FHIR_SERVER_URL": f"http://127.0.0.1:{STUB_PORT}/fhir",
        "EHRBASE_URL": f"http://127.0.0.1:{STUB_PORT}/ehrbase",
        "EHRBASE_API_USER": "bench",
        "EHRBASE_API_PASSWORD": "bench-user-secret",
        "EHRBASE_API_ADMIN_USER": "bench-admin",
        "EHRBASE_API_ADMIN_PASSWORD": "bench-admin-secret",
        "LOG_LEVEL": "WARNING",
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_COST_KIB": "8192",
        "ARGON2_PARALLELISM": "1",
    }
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(
            start_server([sys.executable, "-m", "tests.bench.stub", str(STUB_PORT)], base_env, "stub")
        )
        gateway = start_server(
            uvicorn_command("gateway.main:create_app", GATEWAY_PORT, cores), env, "gateway"
        )
        processes.append(gateway)
        wait_for(f"http://127.0.0.1:{STUB_PORT}/fhir/metadata", processes[0])
        wait_for(f"http://127.0.0.1:{GATEWAY_PORT}/health", gateway)
        token = httpx.post(
            f"http://127.0.0.1:{GATEWAY_PORT}/auth/token",
            data={"username": "bench.clinician", "password": PASSWORD},
            timeout=30,
        ).json()["access_token"]
        specs = [spec for spec in workloads(token) if spec["name"] in ONLY]
        gw = f"http://127.0.0.1:{GATEWAY_PORT}"
        warm_up(gw, specs)
        results: list[dict[str, Any]] = []
        for spec in specs:
            method, path, body, headers = spec["path"]
            for connections in CONCURRENCY:
                measure(results, spec["name"], "direct", spec["direct"], connections)
                measure(
                    results,
                    spec["name"],
                    "gateway",
                    (method, gw + path, body, headers),
                    connections,
                    server=gateway.pid,
                )
        if "letters_list" in ONLY:
            auth = {"Authorization": f"Bearer {token}"}
            for patient, letters in ((stub.SMALL_PATIENT, 10), (stub.LARGE_PATIENT, 10_000)):
                measure(
                    results,
                    f"letters_list_{letters}",
                    "gateway",
                    ("GET", f"{gw}/patients/{patient}/letters?limit=10", None, auth),
                    32,
                    server=gateway.pid,
                )
        rss = worker_rss_mb(gateway.pid)
        for name in profiled(ONLY, PROFILE):
            profile_workload(gateway.pid, next(spec for spec in specs if spec["name"] == name))
        paired_names = [name for name in PAIRED_WORKLOADS if name in ONLY]
        if (PAIRED_ROUNDS > 0 and paired_names) or (OPEN_LOOP_RATES and "read" in ONLY):
            measure_paired(results, specs, gateway, base_env, database, cores, paired_port)
        stop_server(gateway)
        baseline_rss = measure_baselines(results, specs, base_env, database, cores)
        machine = {
            "cores": cores,
            "cpu": _cpu_model(),
            "date": time.strftime("%Y-%m-%d"),
            "seconds_per_point": SECONDS,
            "bare_client": BARE_CLIENT,
            "bare_rss_mb": baseline_rss.get(f"bare-{BARE_CLIENT}", []),
            "baseline_rss_mb": baseline_rss,
            "run_seconds": round(time.monotonic() - started),
            # 1-minute load average of the machine before and after the run (everything, not only the bench)
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }
        write_outputs(OUT, results, rss, machine)
        # the auth-DB side of a PHI request three ways (ORM as before, Core, raw psycopg), same server;
        # BENCH_DB_PATHS=0 skips it (e.g. when benchmarking an older checkout without auth_db.hotpath)
        if "read" in ONLY and os.environ.get("BENCH_DB_PATHS", "1") != "0":
            from tests.bench import db_paths

            db_rows = asyncio.run(db_paths.measure(server))
            with (OUT / "results.md").open("a") as report:
                report.write("\n## Auth-DB paths of a PHI request (same PostgreSQL, same run)\n\n")
                report.write(db_paths.markdown(db_rows))
            data = json.loads((OUT / "results.json").read_text())
            (OUT / "results.json").write_text(json.dumps(data | {"db_paths": db_rows}, indent=2))
        print(f"bench: run took {machine['run_seconds']} s; report in var/bench/results.md", flush=True)
        for line in target_lines(results, rss):
            print(line)
        print(summary_line(results, rss))
    finally:
        for process in reversed(processes):
            stop_server(process)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
