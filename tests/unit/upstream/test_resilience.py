"""The shared resilience policy: retry decisions, Retry-After, breaker, error mapping, call counts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest
import respx

from gateway.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.settings import Settings
from gateway.upstream.resilience import (
    BreakerState,
    CircuitBreaker,
    Upstream,
    backoff_seconds,
    parse_retry_after,
    should_retry_status,
)
from tests.faults import SilentServer, closed_port

URL = "http://store.test/thing"


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (200, False),
        (400, False),
        (404, False),
        (409, False),
        (412, False),
        (422, False),
        (429, True),
        (500, False),
        (501, False),
        (502, True),
        (503, True),
        (504, True),
    ],
)
def test_should_retry_status(status: int, retry: bool) -> None:
    assert should_retry_status(status) is retry


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 12 ", 12.0),
        ("soon", None),
        ("-3", None),
        ("Sun, 22 Nov 2026 12:00:10 GMT", 10.0),
        ("Sun, 22 Nov 2026 11:00:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    now = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(header, now=now) == expected


def test_backoff_honours_retry_after_capped_and_jitters_otherwise() -> None:
    assert backoff_seconds(1, 1.5, 2.0) == 1.5
    assert backoff_seconds(1, 60.0, 2.0) == 2.0
    waits = {backoff_seconds(3, None, 2.0) for _ in range(50)}
    assert all(0 <= w <= 0.4 for w in waits)
    assert len(waits) > 1


def test_breaker_opens_after_threshold_and_half_opens_for_one_probe() -> None:
    now = [0.0]
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(threshold=3, reset_seconds=10, on_change=changes.append, clock=lambda: now[0])
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.closed
    breaker.record_failure()
    assert breaker.state is BreakerState.open
    assert not breaker.allow()
    now[0] = 10.5
    assert breaker.allow()  # the probe
    assert breaker.state is BreakerState.half_open
    assert not breaker.allow()  # only one probe at a time
    breaker.record_failure()
    assert breaker.state is BreakerState.open
    now[0] = 21.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.closed
    assert changes == [
        BreakerState.open,
        BreakerState.half_open,
        BreakerState.open,
        BreakerState.half_open,
        BreakerState.closed,
    ]


@pytest.fixture
def upstream(make_settings: Callable[..., Settings]) -> Upstream:
    return Upstream(
        name="test", display_name="Test store", settings=make_settings(breaker_failure_threshold=50)
    )


@respx.mock
async def test_idempotent_call_is_retried_until_success(upstream: Upstream) -> None:
    route = respx.get(URL).mock(side_effect=[httpx.Response(503), httpx.Response(502), httpx.Response(200)])
    response = await upstream.request("GET", URL, idempotent=True, operation="read")
    assert response.status_code == 200
    assert route.call_count == 3


@respx.mock
async def test_non_idempotent_call_is_never_retried(upstream: Upstream) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(503))
    with pytest.raises(UpstreamUnavailable):
        await upstream.request("POST", URL, idempotent=False, operation="create")
    assert route.call_count == 1


@respx.mock
@pytest.mark.parametrize("status", [409, 412, 404, 422])
async def test_conflicts_and_client_errors_are_returned_not_retried(upstream: Upstream, status: int) -> None:
    route = respx.put(URL).mock(return_value=httpx.Response(status))
    response = await upstream.request("PUT", URL, idempotent=True, operation="update")
    assert response.status_code == status
    assert route.call_count == 1


@respx.mock
async def test_retries_are_bounded_and_map_to_problems(upstream: Upstream) -> None:
    route = respx.get(URL).mock(return_value=httpx.Response(502))
    with pytest.raises(UpstreamError) as info:
        await upstream.request("GET", URL, idempotent=True, operation="read")
    assert info.value.status == 502
    assert route.call_count == 3  # UPSTREAM_RETRY_ATTEMPTS


@respx.mock
async def test_retry_after_is_honoured_and_reported(make_settings: Callable[..., Settings]) -> None:
    upstream = Upstream(name="t", display_name="T", settings=make_settings(upstream_retry_attempts=1))
    respx.get(URL).mock(return_value=httpx.Response(503, headers={"Retry-After": "17"}))
    with pytest.raises(UpstreamUnavailable) as info:
        await upstream.request("GET", URL, idempotent=True, operation="read")
    assert info.value.retry_after == 17


async def test_connection_refused_is_503(upstream: Upstream) -> None:
    with pytest.raises(UpstreamUnavailable):
        await upstream.request(
            "GET", f"http://127.0.0.1:{closed_port()}/x", idempotent=True, operation="read"
        )


async def test_real_read_timeout_is_504(make_settings: Callable[..., Settings]) -> None:
    upstream = Upstream(
        name="t",
        display_name="T",
        settings=make_settings(
            upstream_read_timeout=0.2, upstream_total_timeout=0.5, upstream_retry_attempts=2
        ),
    )
    async with SilentServer() as server:
        with pytest.raises(UpstreamTimeout):
            await upstream.request("GET", server.url + "/x", idempotent=True, operation="read")
        assert server.connections == 2
    await upstream.aclose()


@respx.mock
async def test_breaker_opens_then_recovers(make_settings: Callable[..., Settings]) -> None:
    upstream = Upstream(
        name="t",
        display_name="T",
        settings=make_settings(
            breaker_failure_threshold=2, breaker_reset_seconds=0.2, upstream_retry_attempts=1
        ),
    )
    route = respx.get(URL).mock(return_value=httpx.Response(503))
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable):
            await upstream.request("GET", URL, idempotent=True, operation="read")
    assert upstream.breaker.state is BreakerState.open
    with pytest.raises(UpstreamUnavailable, match="circuit breaker"):
        await upstream.request("GET", URL, idempotent=True, operation="read")
    assert route.call_count == 2  # the open breaker sent nothing
    route.mock(return_value=httpx.Response(200))
    import asyncio

    await asyncio.sleep(0.25)
    assert (await upstream.request("GET", URL, idempotent=True, operation="read")).status_code == 200
    assert upstream.breaker.state is BreakerState.closed


@respx.mock
async def test_request_id_is_propagated(upstream: Upstream) -> None:
    from gateway.middleware import request_id_var

    route = respx.get(URL).mock(return_value=httpx.Response(200))
    token = request_id_var.set("req-12345678")
    try:
        await upstream.request("GET", URL, idempotent=True, operation="read")
    finally:
        request_id_var.reset(token)
    assert route.calls.last.request.headers["X-Request-ID"] == "req-12345678"


async def test_connection_reset_mid_body_is_502_and_retried_when_idempotent(upstream: Upstream) -> None:
    from tests.faults import ResettingServer

    async with ResettingServer() as server:
        with pytest.raises(UpstreamError) as info:
            await upstream.request("GET", server.url + "/x", idempotent=True, operation="read")
        assert info.value.status == 502
        assert server.connections == 3
    await upstream.aclose()


@respx.mock
async def test_a_response_over_the_limit_is_refused(make_settings: Callable[..., Settings]) -> None:
    upstream = Upstream(
        name="t", display_name="T", settings=make_settings(upstream_max_response_bytes=65_536)
    )
    respx.get(URL).mock(return_value=httpx.Response(200, content=b"x" * 70_000))
    with pytest.raises(UpstreamError) as info:
        await upstream.request("GET", URL, idempotent=True, operation="read")
    assert info.value.code == "upstream_response_too_large"
    respx.get(URL).mock(return_value=httpx.Response(200, content=b"x" * 60_000))
    assert len((await upstream.request("GET", URL, idempotent=True, operation="read")).content) == 60_000


@respx.mock
async def test_a_500_is_not_retried_even_when_idempotent(upstream: Upstream) -> None:
    route = respx.get(URL).mock(return_value=httpx.Response(500))
    with pytest.raises(UpstreamError) as info:
        await upstream.request("GET", URL, idempotent=True, operation="read")
    assert info.value.status == 502
    assert route.call_count == 1
