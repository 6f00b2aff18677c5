"""The gateway as a real process beside the real HAPI FHIR and EHRbase of ``tests/e2e/infra``.

Shared by the end-to-end suite (``tests/e2e/conftest.py``) and the browser suite (``tests/browser/stack.py``):
a fresh auth database, the gateway's environment (production mode, fresh secrets, the stores' addresses and
credentials from the ``E2E_*`` variables that ``up.sh`` prints), and its command line.
"""

from __future__ import annotations

import os
import random
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
from cryptography.fernet import Fernet

#: Seconds a starting gateway has to answer ``/health``.
START_TIMEOUT = 60.0


def recreate_database(admin_url: str, name: str) -> str:
    """Drop and create the auth database ``name`` on the server of ``admin_url``; return its URL."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def gateway_env(database_url: str, **settings: str) -> dict[str, str]:
    """The environment of a production-mode gateway on ``database_url``; ``settings`` add or override.

    The caller's own ``AUTH_*``, ``FHIR_*``, ``EHRBASE_*`` and ``GATEWAY_*`` variables are not inherited.
    """
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith(("AUTH_", "FHIR_", "EHRBASE_", "GATEWAY_"))
    }
    return {
        **inherited,
        "GATEWAY_ENV": "production",
        "GATEWAY_SECRET_KEY": secrets.token_hex(32),
        "TOTP_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "AUTH_DATABASE_URL": database_url,
        "FHIR_SERVER_URL": os.environ["E2E_FHIR_URL"],
        "EHRBASE_URL": os.environ["E2E_EHRBASE_URL"],
        "EHRBASE_API_USER": os.environ["E2E_EHRBASE_USER"],
        "EHRBASE_API_PASSWORD": os.environ["E2E_EHRBASE_PASSWORD"],
        "EHRBASE_API_ADMIN_USER": os.environ["E2E_EHRBASE_ADMIN_USER"],
        "EHRBASE_API_ADMIN_PASSWORD": os.environ["E2E_EHRBASE_ADMIN_PASSWORD"],
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",  # the log file is read while the gateway runs
        # Fast hashing: the suites log in a handful of times, and hashing is not what they test.
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_COST_KIB": "8192",
        "ARGON2_PARALLELISM": "1",
        **settings,
    }


def run_cli(env: dict[str, str], cwd: str, *args: str, stdin: str | None = None) -> str:
    """``gateway <args>`` with ``env``; its standard output.

    Raises:
        RuntimeError: the command failed (its output is in the message).
    """
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"gateway {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def wait_until_serving(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Return once the gateway at ``url`` answers ``/health``.

    Raises:
        RuntimeError: the process exited (the end of its log ``log_path`` is in the message), or it did
            not answer within :data:`START_TIMEOUT`.
    """
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited during start-up:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the gateway did not answer /health within {START_TIMEOUT:.0f}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the gateway process: SIGTERM, then SIGKILL if it has not exited within 15 s."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def nhs_number(rng: random.Random) -> str:
    """A random 10-digit NHS number with a valid check digit (modulus 11)."""
    while True:
        digits = [rng.randrange(10) for _ in range(9)]
        check = 11 - sum(d * w for d, w in zip(digits, range(10, 1, -1), strict=True)) % 11
        if check == 11:
            check = 0
        if check != 10:
            return "".join(map(str, digits)) + str(check)
