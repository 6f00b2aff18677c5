"""``GET /metrics``: Prometheus format, route templates as labels, upstream metrics, token, off switch."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import respx

from gateway.errors import UpstreamUnavailable
from gateway.metrics import record_lockout, record_login_failure
from gateway.settings import Settings
from tests import ops_payloads as ops
from tests.conftest import running_app
from tests.respx_transport import UPSTREAM

METRICS_TOKEN = "scrape-token-0123456789abcdef"


LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str, metric: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of ``metric`` in a Prometheus text exposition: (labels, value)."""
    result = []
    for line in text.splitlines():
        match = re.fullmatch(re.escape(metric) + r"\{(.*)\} (\S+)", line)
        if match:
            result.append((dict(LABEL.findall(match.group(1))), float(match.group(2))))
    return result


def labels_of(text: str, metric: str) -> list[dict[str, str]]:
    return [labels for labels, _ in samples(text, metric)]


def sample(text: str, metric: str, **labels: str) -> float:
    """The value of the sample of ``metric`` with exactly these labels (0 when absent)."""
    return next((value for found, value in samples(text, metric) if found == labels), 0.0)


@pytest.fixture
def sqlite_settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        return make_settings(auth_db_sqlite_path=tmp_path / "auth.db", **overrides)

    return make


async def test_request_metrics_are_labelled_by_route_template(
    sqlite_settings: Callable[..., Settings],
) -> None:
    async with running_app(sqlite_settings()) as client:
        await client.get("/patients/p8817263")
        await client.get("/patients/p8817263")
        await client.get("/no-such-place/x99182734")
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    routes = {labels["route"] for labels in labels_of(text, "gateway_http_requests_total")}
    assert "/patients/{patient_id}" in routes
    assert "unmatched" in routes
    assert "p8817263" not in text
    assert "x99182734" not in text
    read = {"method": "GET", "route": "/patients/{patient_id}", "status": "401"}
    assert sample(text, "gateway_http_requests_total", **read) >= 2
    assert labels_of(text, "gateway_http_request_duration_seconds_bucket")


async def test_upstream_calls_retries_and_breaker_are_counted(
    sqlite_settings: Callable[..., Settings],
) -> None:
    settings = sqlite_settings(upstream_retry_attempts=2, breaker_failure_threshold=2)
    with respx.mock(using=UPSTREAM, assert_all_called=False) as router:
        router.get(f"{ops.FHIR_BASE}/metadata").mock(side_effect=httpx.ConnectError("refused"))
        async with running_app(settings) as client:
            before = (await client.get("/metrics")).text
            with pytest.raises(UpstreamUnavailable):
                await client.app.state.fhir.metadata()  # type: ignore[attr-defined]
            text = (await client.get("/metrics")).text
    calls = dict(store="fhir", operation="metadata", outcome="unreachable")
    assert (
        sample(text, "gateway_upstream_calls_total", **calls)
        - sample(before, "gateway_upstream_calls_total", **calls)
        == 2
    )
    retries = dict(store="fhir", operation="metadata")
    assert (
        sample(text, "gateway_upstream_retries_total", **retries)
        - sample(before, "gateway_upstream_retries_total", **retries)
        == 1
    )
    assert sample(text, "gateway_upstream_breaker_state", store="fhir") == 2
    assert labels_of(text, "gateway_upstream_call_duration_seconds_bucket")


async def test_pool_usage_of_the_postgres_auth_db(
    pg_engine: object, pg_url: str, make_settings: Callable[..., Settings]
) -> None:
    async with running_app(make_settings(auth_database_url=pg_url, auth_db_pool_size=7)) as client:
        text = (await client.get("/metrics")).text
    assert "gateway_auth_db_pool_size 7.0" in text
    assert "gateway_auth_db_pool_checked_out" in text


async def test_login_failure_and_lockout_counters(sqlite_settings: Callable[..., Settings]) -> None:
    async with running_app(sqlite_settings()) as client:
        before = (await client.get("/metrics")).text
        record_login_failure("bad_credentials")
        record_lockout("account")
        text = (await client.get("/metrics")).text
    failures = sample(text, "gateway_login_failures_total", reason="bad_credentials")
    assert failures - sample(before, "gateway_login_failures_total", reason="bad_credentials") == 1
    lockouts = sample(text, "gateway_login_lockouts_total", scope="account")
    assert lockouts - sample(before, "gateway_login_lockouts_total", scope="account") == 1


async def test_metrics_can_be_switched_off(sqlite_settings: Callable[..., Settings]) -> None:
    async with running_app(sqlite_settings(metrics_enabled=False)) as client:
        response = await client.get("/metrics")
        schema = (await client.get("/openapi.json")).json()
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert "/metrics" not in schema["paths"]


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong-token", f"Basic {METRICS_TOKEN}", "Bearer", f"Bearer {METRICS_TOKEN}x"],
)
async def test_token_is_required_when_configured(
    sqlite_settings: Callable[..., Settings], header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    async with running_app(sqlite_settings(metrics_token=METRICS_TOKEN)) as client:
        response = await client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "metrics_token_invalid"
    assert METRICS_TOKEN not in response.text


async def test_right_token_is_accepted(sqlite_settings: Callable[..., Settings]) -> None:
    async with running_app(sqlite_settings(metrics_token=METRICS_TOKEN)) as client:
        response = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200
    assert "gateway_http_requests_total" in response.text


async def test_failed_logins_and_lockouts_are_counted(sqlite_settings: Callable[..., Settings]) -> None:
    async with running_app(sqlite_settings()) as client:
        before = (await client.get("/metrics")).text
        failures_before = sum(value for _, value in samples(before, "gateway_login_failures_total"))
        lockouts_before = sum(value for _, value in samples(before, "gateway_login_lockouts_total"))
        for _ in range(12):
            await client.post("/auth/token", data={"username": "nobody", "password": "wrong-password-123"})
        after = (await client.get("/metrics")).text
    assert sum(value for _, value in samples(after, "gateway_login_failures_total")) > failures_before
    assert sum(value for _, value in samples(after, "gateway_login_lockouts_total")) > lockouts_before
