"""Readiness probes of the three stores, with a per-process cache.

Each probe is a small async function given only what it needs and bounded by its own timeout
(``READY_PROBE_TIMEOUT``):

- auth DB: ``SELECT 1`` through the app's engine;
- HAPI FHIR: ``GET {FHIR_SERVER_URL}/metadata`` must answer 200 with a CapabilityStatement;
- EHRbase: ``GET {EHRBASE_URL}/rest/status`` must answer 200.

Upstream probes go through the pooled transport and credentials of the store's client, one attempt
each (no retries, no breaker), so a probe tells the truth now. Results are cached for
``READY_CACHE_SECONDS`` and a lock makes concurrent ``/ready`` calls share one round of probes,
so readiness checks cannot hammer HAPI or EHRbase. Error texts are for operators and never
contain credentials.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.upstream.transport import (
    AiohttpTransport,
    Credentials,
    TimedOut,
    TooLarge,
    TransportError,
    UpstreamResponse,
)

Status = Literal["up", "down"]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one probe."""

    status: Status
    latency_ms: float
    error: str | None = None


_URL_CREDENTIALS = re.compile(r"(?i)([a-z][a-z0-9+.\-]*://)[^/@\s]+@")
_PASSWORD_PARAM = re.compile(r"(?i)(password|passwd|pwd)\s*=\s*\S+")


def scrub(message: str) -> str:
    """``message`` without URL credentials or ``password=…`` pairs, on one line, at most 200 characters."""
    message = _URL_CREDENTIALS.sub(r"\1***@", message)
    message = _PASSWORD_PARAM.sub(r"\1=***", message)
    return " ".join(message.split())[:200]


async def _timed(probe: Awaitable[str | None], limit: float) -> CheckResult:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit):
            error = await probe
    except (TimeoutError, TimedOut):
        error = f"no answer within {limit:g} s"
    except TooLarge:
        error = "answer over UPSTREAM_MAX_RESPONSE_BYTES"
    except TransportError as exc:  # ConnectFailed, Broken: their texts name no URL, header or body
        error = scrub(f"unreachable ({exc})")
    except Exception as exc:
        error = scrub(f"{type(exc).__name__}: {_root_message(exc)}")
    latency = round((time.perf_counter() - started) * 1000, 1)
    return CheckResult("down" if error else "up", latency, error)


def _root_message(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc.__cause__ or exc
    return str(original).splitlines()[0] if str(original) else type(original).__name__


async def probe_database(engine: AsyncEngine, limit: float) -> CheckResult:
    """Run ``SELECT 1`` on the auth database."""

    async def run() -> str | None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        return None

    return await _timed(run(), limit)


async def probe_http(
    transport: AiohttpTransport,
    url: str,
    *,
    auth: Credentials | None,
    limit: float,
    check: Callable[[UpstreamResponse], str | None] | None = None,
) -> CheckResult:
    """One ``GET url`` through the store's transport, with its credentials.

    Up when it answers 200 within ``limit`` seconds and ``check`` (if given) finds nothing wrong.
    """
    headers = {"Authorization": auth.header} if auth is not None else None

    async def run() -> str | None:
        response = await transport.send("GET", url, headers=headers, time_left=limit)
        if response.status_code != 200:
            return f"HTTP {response.status_code}"
        return check(response) if check else None

    return await _timed(run(), limit)


def capability_statement(response: UpstreamResponse) -> str | None:
    """None if the answer is a FHIR CapabilityStatement, else why not."""
    try:
        body = response.json()
    except ValueError:
        return "answer is not JSON (is FHIR_SERVER_URL the FHIR base?)"
    if not isinstance(body, dict) or body.get("resourceType") != "CapabilityStatement":
        return "answer is not a CapabilityStatement (is FHIR_SERVER_URL the FHIR base?)"
    return None


def client_parts(
    store_client: Any, auth_attribute: str
) -> tuple[AiohttpTransport, Credentials | None] | None:
    """The pooled transport and credentials of a store client (``client.upstream.transport``)."""
    upstream = getattr(store_client, "upstream", None)
    transport = getattr(upstream, "transport", None)
    if not isinstance(transport, AiohttpTransport):
        return None
    auth = getattr(store_client, auth_attribute, None)
    return transport, auth if isinstance(auth, Credentials) else None


@dataclass
class ReadinessCache:
    """The last round of probes of this process, shared by concurrent ``/ready`` calls."""

    ttl: float
    results: dict[str, CheckResult] = field(default_factory=dict)
    taken_at: float = float("-inf")
    _lock: asyncio.Lock | None = None

    async def get(self, run: Callable[[], Awaitable[dict[str, CheckResult]]]) -> dict[str, CheckResult]:
        """Cached results if fresh, else one new round (callers waiting on the lock share it)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        if self.results and time.monotonic() - self.taken_at < self.ttl:
            return self.results
        async with self._lock:
            if self.results and time.monotonic() - self.taken_at < self.ttl:
                return self.results
            self.results = await run()
            self.taken_at = time.monotonic()
            return self.results
