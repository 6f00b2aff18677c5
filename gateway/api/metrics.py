"""``GET /metrics``: the Prometheus scrape endpoint.

Served only when ``METRICS_ENABLED`` is true (otherwise the route does not exist: 404). When
``METRICS_TOKEN`` is set the scraper must send ``Authorization: Bearer <token>``; the token is
compared in constant time and a missing or wrong one gets ``401 metrics_token_invalid``.

With ``gateway serve --workers N`` the worker that answers merges the metrics of every worker
(:func:`gateway.metrics.render`, prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response

from gateway.deps import SettingsDep
from gateway.errors import NotAuthenticated, problem_responses
from gateway.metrics import CONTENT_TYPE_LATEST, render

router = APIRouter(tags=["operations"])


def _token_matches(header: str | None, expected: str) -> bool:
    scheme, _, presented = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return False
    return hmac.compare_digest(presented.strip().encode(), expected.encode())


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
            "description": "Prometheus text format.",
        },
        401: {
            **problem_responses(401)[401],
            "description": "METRICS_TOKEN is set and the bearer token is missing or wrong.",
        },
    },
)
async def metrics(request: Request, settings: SettingsDep) -> Response:
    """Every gateway metric, with the auth DB pool gauges read at scrape time."""
    expected = settings.metrics_token.get_secret_value() if settings.metrics_token else ""
    if expected and not _token_matches(request.headers.get("authorization"), expected):
        raise NotAuthenticated("A valid metrics token is required.", code="metrics_token_invalid")
    engine = getattr(request.app.state, "engine", None)
    return Response(content=render(engine), media_type=CONTENT_TYPE_LATEST)
