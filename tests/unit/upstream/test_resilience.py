"""The shared resilience policy: retry decisions, Retry-After, breaker, error mapping, call counts.

The policy (:class:`Upstream`) runs as in production; respx fakes the stores at the transport boundary
(``tests/respx_transport.py``), and real loopback sockets stand for refused connections, silent and
trickling servers, resets mid-body and oversized bodies.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

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
from tests.faults import CannedServer, ResettingServer, SilentServer, TricklingServer, closed_port

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


MakeUpstream = Callable[..., Upstream]


@pytest.fixture
async def make_upstream(make_settings: Callable[..., Settings]) -> AsyncIterator[MakeUpstream]:
    """Upstreams with the given setting overrides (closed after the test)."""
    made: list[Upstream] = []

    def make(**overrides: Any) -> Upstream:
        made.append(Upstream(name="t", display_name="T", settings=make_settings(**overrides)))
        return made[-1]

    yield make
    for upstream in made:
        await upstream.aclose()


@pytest.fixture
def upstream(make_upstream: MakeUpstream) -> Upstream:
    return make_upstream(breaker_failure_threshold=50)


class Recorder:
    """An observer keeping what the policy reported."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.retries = 0
        self.states: list[BreakerState] = []

    def on_call(self, store: str, operation: str, outcome: str, seconds: float) -> None:
        self.calls.append(outcome)

    def on_retry(self, store: str, operation: str) -> None:
        self.retries += 1

    def on_breaker_state(self, store: str, state: BreakerState) -> None:
        self.states.append(state)


async def test_idempotent_call_is_retried_until_success(
    upstream: Upstream, upstream_mock: respx.MockRouter
) -> None:
    route = upstream_mock.get(URL).mock(
        side_effect=[httpx.Response(503), httpx.Response(502), httpx.Response(200)]
    )
    response = await upstream.request("GET", URL, idempotent=True, operation="read")
    assert response.status_code == 200
    assert route.call_count == 3


async def test_every_attempt_and_retry_is_reported(
    upstream: Upstream, upstream_mock: respx.MockRouter
) -> None:
    recorder = Recorder()
    upstream.observer = recorder
    upstream_mock.get(URL).mock(
        side_effect=[httpx.ConnectError("refused"), httpx.Response(503), httpx.Response(200)]
    )
    assert (await upstream.request("GET", URL, idempotent=True, operation="read")).status_code == 200
    assert recorder.calls == ["unreachable", "503", "200"]
    assert recorder.retries == 2


async def test_a_successful_first_attempt_reports_one_call_and_no_retry(
    upstream: Upstream, upstream_mock: respx.MockRouter
) -> None:
    recorder = Recorder()
    upstream.observer = recorder
    upstream_mock.get(URL).mock(return_value=httpx.Response(200))
    assert (await upstream.request("GET", URL, idempotent=True, operation="read")).status_code == 200
    assert (recorder.calls, recorder.retries) == (["200"], 0)


async def test_non_idempotent_call_is_never_retried(
    upstream: Upstream, upstream_mock: respx.MockRouter
) -> None:
    route = upstream_mock.post(URL).mock(return_value=httpx.Response(503))
    with pytest.raises(UpstreamUnavailable):
        await upstream.request("POST", URL, idempotent=False, operation="create")
    assert route.call_count == 1


@pytest.mark.parametrize(
    ("failure", "problem"),
    [(httpx.ConnectError("refused"), UpstreamUnavailable), (httpx.ReadTimeout("slow"), UpstreamTimeout)],
)
async def test_non_idempotent_call_is_not_retried_after_a_transport_failure(
    upstream: Upstream, upstream_mock: respx.MockRouter, failure: Exception, problem: type[Exception]
) -> None:
    route = upstream_mock.post(URL).mock(side_effect=failure)
    with pytest.raises(problem):
        await upstream.request("POST", URL, idempotent=False, operation="create")
    assert route.call_count == 1


@pytest.mark.parametrize("status", [409, 412, 404, 422])
async def test_conflicts_and_client_errors_are_returned_not_retried(
    upstream: Upstream, status: int, upstream_mock: respx.MockRouter
) -> None:
    route = upstream_mock.put(URL).mock(return_value=httpx.Response(status))
    response = await upstream.request("PUT", URL, idempotent=True, operation="update")
    assert response.status_code == status
    assert route.call_count == 1


async def test_retries_are_bounded_and_map_to_problems(
    upstream: Upstream, upstream_mock: respx.MockRouter
) -> None:
    route = upstream_mock.get(URL).mock(return_value=httpx.Response(502))
    with pytest.raises(UpstreamError) as info:
        await upstream.request("GET", URL, idempotent=True, operation="read")
    assert info.value.status == 502
    assert route.call_count == 3  # UPSTREAM_RETRY_ATTEMPTS


async def test_retries_stop_at_the_total_timeout(
    make_upstream: MakeUpstream, upstream_mock: respx.MockRouter
) -> None:
    upstream = make_upstream(
        upstream_retry_attempts=10,
        upstream_retry_max_wait=0.2,
        upstream_read_timeout=0.5,
        upstream_total_timeout=0.5,
        breaker_failure_threshold=50,
    )
    route = upstream_mock.get(URL).mock(return_value=httpx.Response(503, headers={"Retry-After": "1"}))
    with pytest.raises(UpstreamUnavailable):
        await upstream.request("GET", URL, idempotent=True, operation="read")
    assert 2 <= route.call_count <= 5  # 0.2 s apart within 0.5 s: the time bound, not the 10 attempts


async def test_retry_after_is_honoured_and_reported(
    make_upstream: MakeUpstream, upstream_mock: respx.MockRouter
) -> None:
    upstream = make_upstream(upstream_retry_attempts=1)
    upstream_mock.get(URL).mock(return_value=httpx.Response(503, headers={"Retry-After": "17"}))
    with pytest.raises(UpstreamUnavailable) as info:
        await upstream.request("GET", URL, idempotent=True, operation="read")
    assert info.value.retry_after == 17


async def test_json_bodies_params_and_credentials_reach_the_store(
    upstream: Upstream, upstream_mock: respx.MockRouter
) -> None:
    from gateway.upstream.transport import Credentials

    route = upstream_mock.post(URL).mock(return_value=httpx.Response(201))
    await upstream.request(
        "POST",
        URL,
        idempotent=False,
        operation="create",
        json={"name": "Zoë", "n": [1, 2]},
        params=[("a", "1"), ("a", "x y"), ("b", "c,d")],
        auth=Credentials.basic("svc", "pw"),
    )
    request = route.calls.last.request
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == httpx.BasicAuth("svc", "pw")._auth_header
    assert httpx.Response(200, content=request.content).json() == {"name": "Zoë", "n": [1, 2]}
    assert request.url.params.multi_items() == [("a", "1"), ("a", "x y"), ("b", "c,d")]


async def test_connection_refused_is_503(upstream: Upstream) -> None:
    with pytest.raises(UpstreamUnavailable):
        await upstream.request(
            "GET", f"http://127.0.0.1:{closed_port()}/x", idempotent=True, operation="read"
        )


async def test_real_read_timeout_is_504(make_upstream: MakeUpstream) -> None:
    upstream = make_upstream(upstream_read_timeout=0.2, upstream_total_timeout=0.5, upstream_retry_attempts=2)
    async with SilentServer() as server:
        with pytest.raises(UpstreamTimeout):
            await upstream.request("GET", server.url + "/x", idempotent=True, operation="read")
        assert server.connections == 2


async def test_a_trickling_answer_is_cut_at_the_total_timeout(make_upstream: MakeUpstream) -> None:
    upstream = make_upstream(upstream_read_timeout=0.5, upstream_total_timeout=0.6, upstream_retry_attempts=1)
    loop = asyncio.get_running_loop()
    async with TricklingServer(interval=0.05) as server:
        started = loop.time()
        with pytest.raises(UpstreamTimeout):
            await upstream.request("GET", server.url + "/x", idempotent=True, operation="read")
        assert loop.time() - started < 0.6 + 2.0  # the total bound (plus a generous margin)


async def test_breaker_opens_then_recovers(
    make_upstream: MakeUpstream, upstream_mock: respx.MockRouter
) -> None:
    upstream = make_upstream(
        breaker_failure_threshold=2, breaker_reset_seconds=0.2, upstream_retry_attempts=1
    )
    route = upstream_mock.get(URL).mock(return_value=httpx.Response(503))
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable):
            await upstream.request("GET", URL, idempotent=True, operation="read")
    assert upstream.breaker.state is BreakerState.open
    with pytest.raises(UpstreamUnavailable, match="circuit breaker"):
        await upstream.request("GET", URL, idempotent=True, operation="read")
    assert route.call_count == 2  # the open breaker sent nothing
    route.mock(return_value=httpx.Response(200))

    await asyncio.sleep(0.25)
    assert (await upstream.request("GET", URL, idempotent=True, operation="read")).status_code == 200
    assert upstream.breaker.state is BreakerState.closed


async def test_request_id_is_propagated(upstream: Upstream, upstream_mock: respx.MockRouter) -> None:
    from gateway.context import request_id_var

    route = upstream_mock.get(URL).mock(return_value=httpx.Response(200))
    token = request_id_var.set("req-12345678")
    try:
        await upstream.request("GET", URL, idempotent=True, operation="read")
    finally:
        request_id_var.reset(token)
    assert route.calls.last.request.headers["X-Request-ID"] == "req-12345678"


async def test_connection_reset_mid_body_is_502_and_retried_when_idempotent(upstream: Upstream) -> None:
    async with ResettingServer() as server:
        with pytest.raises(UpstreamError) as info:
            await upstream.request("GET", server.url + "/x", idempotent=True, operation="read")
        assert info.value.status == 502
        assert server.connections == 3


async def test_a_response_over_the_limit_is_refused(make_upstream: MakeUpstream) -> None:
    upstream = make_upstream(upstream_max_response_bytes=65_536)
    recorder = Recorder()
    upstream.observer = recorder
    async with CannedServer.http(200, b"x" * 70_000) as server:
        with pytest.raises(UpstreamError) as info:
            await upstream.request("GET", server.url + "/x", idempotent=True, operation="read")
        assert info.value.status == 502
        assert info.value.code == "upstream_response_too_large"
        assert server.requests == 1  # not retried: the same answer would come back
    assert recorder.calls == ["too_large"]
    assert upstream.breaker.state is BreakerState.closed  # the store answered: not a failure
    async with CannedServer.http(200, b"x" * 60_000) as server:
        response = await upstream.request("GET", server.url + "/x", idempotent=True, operation="read")
    assert len(response.content) == 60_000


async def test_a_500_is_not_retried_even_when_idempotent(
    upstream: Upstream, upstream_mock: respx.MockRouter
) -> None:
    route = upstream_mock.get(URL).mock(return_value=httpx.Response(500))
    with pytest.raises(UpstreamError) as info:
        await upstream.request("GET", URL, idempotent=True, operation="read")
    assert info.value.status == 502
    assert route.call_count == 1
