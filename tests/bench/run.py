"""`just bench`: what the gateway adds to each request, measured against stub upstreams on loopback.

Starts a PostgreSQL auth database (``.ci/postgres.sh``), the stub upstreams (``tests/bench/stub.py``) and the
gateway in production settings (uvicorn, one worker per core), then drives each workload with ``wrk`` twice
per concurrency level — directly against the stub and through the gateway — in the same run. Writes
``var/bench/results.json``, ``var/bench/results.md`` and ``var/bench/latency.png``, and ends with one line:

    bench: read added_p50_ms=… added_p99_ms=… rps=… rss_mb=…

Everything listens on 127.0.0.1 and every run is bounded (``BENCH_SECONDS`` per point, default 3).
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
from typing import Any

import httpx
import psutil

from tests.bench import stub
from tests.bench.report import parse_wrk, summary_line, write_outputs

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "var" / "bench"
SECONDS = int(os.environ.get("BENCH_SECONDS", "3"))
CONCURRENCY = [1, 8, 32, 128]
STUB_PORT = int(os.environ.get("BENCH_STUB_PORT", "18091"))
GATEWAY_PORT = int(os.environ.get("BENCH_GATEWAY_PORT", "18090"))
PASSWORD = "bench-password-correct-horse-battery"
LETTER = {"title": "Clinic letter", "body": "Seen in clinic today; plan unchanged.", "status": "final"}
COMPOSITION = {"_type": "COMPOSITION", "name": {"_type": "DV_TEXT", "value": "Clinic letter"}}


def workloads(token: str) -> list[dict[str, Any]]:
    gw = f"http://127.0.0.1:{GATEWAY_PORT}"
    st = f"http://127.0.0.1:{STUB_PORT}"
    auth = {"Authorization": f"Bearer {token}"}
    aql = {"q": "SELECT …", "query_parameters": {"ehr_id": stub.SMALL_EHR}, "offset": 0, "fetch": 10}
    return [
        {
            "name": "read",
            "direct": ("GET", f"{st}/fhir/Patient/{stub.SMALL_PATIENT}", None, {}),
            "gateway": ("GET", f"{gw}/patients/{stub.SMALL_PATIENT}", None, auth),
        },
        {
            "name": "search",
            "direct": ("GET", f"{st}/fhir/Patient?family=Chalmers&_count=20", None, {}),
            "gateway": ("GET", f"{gw}/patients?family=Chalmers&count=20", None, auth),
        },
        {
            "name": "letter_create",
            "direct": (
                "POST",
                f"{st}/ehrbase/rest/openehr/v1/ehr/{stub.SMALL_EHR}/composition",
                COMPOSITION,
                {},
            ),
            "gateway": ("POST", f"{gw}/patients/{stub.SMALL_PATIENT}/letters", LETTER, auth),
        },
        {
            "name": "letters_list",
            "direct": ("POST", f"{st}/ehrbase/rest/openehr/v1/query/aql", aql, {}),
            "gateway": ("GET", f"{gw}/patients/{stub.SMALL_PATIENT}/letters?limit=10", None, auth),
        },
    ]


def lua_script(method: str, body: Any, headers: dict[str, str]) -> str:
    lines = [f'wrk.method = "{method}"']
    all_headers = dict(headers)
    if body is not None:
        all_headers["Content-Type"] = "application/json"
        lines.append(f"wrk.body = {json.dumps(json.dumps(body))}")
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in all_headers.items()]
    return "\n".join(lines) + "\n"


def run_wrk(method: str, url: str, body: Any, headers: dict[str, str], connections: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua_script(method, body, headers))
    threads = min(2, connections)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{SECONDS}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        script.name,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=SECONDS + 30, check=False)
    os.unlink(script.name)
    if done.returncode != 0:
        # wrk could not connect at all (the server is gone): record the point as failed, keep the run going.
        print(f"bench: wrk failed on {url}: {done.stderr.strip()[:200]}", file=sys.stderr)
        return parse_wrk(done.stdout) | {"errors": max(1, parse_wrk(done.stdout)["errors"]), "failed": True}
    return parse_wrk(done.stdout)


def start_postgres() -> str:
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


def wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
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


def main() -> None:
    busy = [port for port in (STUB_PORT, GATEWAY_PORT) if port_in_use(port)]
    if busy:
        raise SystemExit(
            f"bench: port(s) {busy} already in use (another bench run?); measuring someone else's server "
            "would be wrong — stop it or set BENCH_STUB_PORT/BENCH_GATEWAY_PORT"
        )
    if shutil.which("wrk") is None:
        raise SystemExit(
            "bench: wrk is missing; install it with `apt-get install wrk` (Debian) or your package manager"
        )
    OUT.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    database = asyncio.run(prepare_database(start_postgres()))
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AUTH_", "FHIR_", "EHRBASE_", "GATEWAY_"))
        },
        "GATEWAY_ENV": "production",
        "GATEWAY_SECRET_KEY": uuid.uuid4().hex + uuid.uuid4().hex,
        "TOTP_ENCRYPTION_KEY": "q1YQ8o1cM7O1HxH0Bf2gWgUu3lKQ0xZbq6l2v3J0c1E=",
        "AUTH_DATABASE_URL": database,
        "AUTH_DB_POOL_SIZE": "20",
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
            subprocess.Popen([sys.executable, "-m", "tests.bench.stub", str(STUB_PORT)], cwd=ROOT)
        )
        gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "gateway.main:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(GATEWAY_PORT),
                "--workers",
                str(cores),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=ROOT,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        processes.append(gateway)
        wait_for(f"http://127.0.0.1:{STUB_PORT}/fhir/metadata")
        wait_for(f"http://127.0.0.1:{GATEWAY_PORT}/health")
        token = httpx.post(
            f"http://127.0.0.1:{GATEWAY_PORT}/auth/token",
            data={"username": "bench.clinician", "password": PASSWORD},
            timeout=30,
        ).json()["access_token"]
        results: list[dict[str, Any]] = []
        for workload in workloads(token):
            for connections in CONCURRENCY:
                for target in ("direct", "gateway"):
                    method, url, body, headers = workload[target]
                    measured = run_wrk(method, url, body, headers, connections)
                    results.append(
                        {
                            "workload": workload["name"],
                            "target": target,
                            "concurrency": connections,
                            **measured,
                        }
                    )
                    print(
                        f"bench: {workload['name']:<13} c={connections:<3} {target:<7} "
                        f"rps={measured['rps']:.0f} p50={measured['p50_ms']:.2f}ms "
                        f"p99={measured['p99_ms']:.2f}ms "
                        f"errors={measured['errors']}",
                        flush=True,
                    )
        auth = {"Authorization": f"Bearer {token}"}
        for patient, letters in ((stub.SMALL_PATIENT, 10), (stub.LARGE_PATIENT, 10_000)):
            measured = run_wrk(
                "GET", f"http://127.0.0.1:{GATEWAY_PORT}/patients/{patient}/letters?limit=10", None, auth, 32
            )
            results.append(
                {"workload": f"letters_list_{letters}", "target": "gateway", "concurrency": 32, **measured}
            )
            print(
                f"bench: letters of a patient with {letters} letters, page 10, c=32: "
                f"rps={measured['rps']:.0f} "
                f"p50={measured['p50_ms']:.2f}ms",
                flush=True,
            )
        workers = psutil.Process(gateway.pid).children(recursive=True)
        rss = [round(worker.memory_info().rss / 1_048_576, 1) for worker in workers]
        machine = {
            "cores": cores,
            "cpu": _cpu_model(),
            "date": time.strftime("%Y-%m-%d"),
            "seconds_per_point": SECONDS,
        }
        write_outputs(OUT, results, rss, machine)
        print(summary_line(results, rss))
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


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
