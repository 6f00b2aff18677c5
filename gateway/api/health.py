"""Liveness (``GET /health``, no dependencies) and readiness (``GET /ready``, every store probed)."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from gateway.readiness import (
    CheckResult,
    ReadinessCache,
    capability_statement,
    client_parts,
    probe_database,
    probe_http,
)
from gateway.settings import Settings
from gateway.shutdown import shutdown_state

router = APIRouter(tags=["health"])

#: The reason ``/ready`` gives, under the check ``shutdown``, once the process has been told to stop.
STOPPING = "the process is stopping (SIGTERM): finishing the requests in flight, taking no new ones"


class Health(BaseModel):
    status: Literal["ok"]


class Check(BaseModel):
    """The state of one store."""

    status: Literal["up", "down"]
    latency_ms: float = Field(description="How long the probe took, in milliseconds.")
    error: str | None = Field(default=None, description="Why the store is down (for operators).")


class Readiness(BaseModel):
    """Whether this process can serve requests: every store it needs answers."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, Check] = Field(description="One entry per store: auth_db, fhir, ehrbase.")


@router.get("/health", response_model=Health, summary="Liveness: the process is up (no dependencies)")
async def health() -> Health:
    """Answers as long as the process serves HTTP; checks no store."""
    return Health(status="ok")


@router.get(
    "/ready",
    response_model=Readiness,
    summary="Readiness: the auth DB, HAPI FHIR and EHRbase answer",
    responses={503: {"model": Readiness, "description": "At least one store is down (see `checks`)."}},
)
async def ready(request: Request) -> JSONResponse:
    """Probe each store (results cached for ``READY_CACHE_SECONDS``); 200 when all are up, else 503.

    Once the process has been told to stop (SIGTERM), 503 at once, without probing: the load balancer
    must send it nothing new while it finishes the requests it has.
    """
    shutdown = shutdown_state(request.state)
    if shutdown is not None and shutdown.stopping:
        return _stopping()
    state = request.app.state
    settings: Settings = state.settings
    cache: ReadinessCache | None = getattr(state, "readiness", None)
    if cache is None:
        cache = state.readiness = ReadinessCache(ttl=settings.ready_cache_seconds)

    async def run() -> dict[str, CheckResult]:
        return await probe_all(state, settings)

    results = await cache.get(run)
    if shutdown is not None and shutdown.stopping:  # the signal came while the probes ran
        return _stopping()
    body = Readiness(
        status="ready" if all(r.status == "up" for r in results.values()) else "unavailable",
        checks={name: Check(**vars(result)) for name, result in results.items()},
    )
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "ready" else 503)


def _stopping() -> JSONResponse:
    body = Readiness(
        status="unavailable",
        checks={"shutdown": Check(status="down", latency_ms=0.0, error=STOPPING)},
    )
    return JSONResponse(body.model_dump(), status_code=503)


async def probe_all(state: object, settings: Settings) -> dict[str, CheckResult]:
    """One probe per store, concurrently, each with its own timeout."""
    timeout = settings.ready_probe_timeout
    missing = CheckResult("down", 0.0, "not initialised (the application is starting or stopping)")

    async def auth_db() -> CheckResult:
        engine = getattr(state, "engine", None)
        return await probe_database(engine, timeout) if engine is not None else missing

    async def fhir() -> CheckResult:
        parts = client_parts(getattr(state, "fhir", None), "auth")
        if parts is None:
            return missing
        return await probe_http(
            parts[0],
            f"{settings.fhir_base}/metadata",
            auth=parts[1],
            limit=timeout,
            check=capability_statement,
        )

    async def ehrbase() -> CheckResult:
        parts = client_parts(getattr(state, "ehrbase", None), "user_auth")
        if parts is None:
            return missing
        return await probe_http(
            parts[0], f"{settings.ehrbase_base}/rest/status", auth=parts[1], limit=timeout
        )

    db_result, fhir_result, ehrbase_result = await asyncio.gather(auth_db(), fhir(), ehrbase())
    return {"auth_db": db_result, "fhir": fhir_result, "ehrbase": ehrbase_result}
