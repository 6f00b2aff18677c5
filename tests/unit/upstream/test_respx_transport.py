"""The respx mocker keeps the transport's contract: what the router sees, and what the caller gets back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import respx
from respx.models import AllMockedAssertionError

from gateway.upstream.transport import AiohttpTransport, Broken, ConnectFailed, TimedOut

URL = "http://store.test/fhir/Patient"


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    transport = AiohttpTransport(
        connect_timeout=1,
        read_timeout=1,
        max_connections=1,
        keepalive_seconds=1,
        max_response_bytes=65_536,
        headers={"Accept": "application/fhir+json", "X-Default": "store"},
    )
    yield transport
    await transport.aclose()


async def test_the_router_sees_defaults_call_headers_and_body(
    transport: AiohttpTransport, upstream_mock: respx.MockRouter
) -> None:
    route = upstream_mock.post(URL).mock(return_value=httpx.Response(201))
    await transport.send(
        "POST",
        URL,
        headers={"X-Default": "call", "Content-Type": "application/json"},
        body=b"{}",
        time_left=1,
    )
    request = route.calls.last.request
    assert request.headers["Accept"] == "application/fhir+json"
    assert request.headers.get_list("X-Default") == ["call"]  # the call's value wins
    assert request.content == b"{}"


async def test_the_answer_comes_back_whole(
    transport: AiohttpTransport, upstream_mock: respx.MockRouter
) -> None:
    upstream_mock.get(URL).mock(
        return_value=httpx.Response(200, json={"id": "1"}, headers=[("Link", "a"), ("Link", "b")])
    )
    response = await transport.send("GET", URL, time_left=1)
    assert (response.status_code, response.json()) == (200, {"id": "1"})
    assert response.headers.getall("link") == ["a", "b"]


@pytest.mark.parametrize(
    ("side_effect", "error"),
    [
        (httpx.ConnectError("refused"), ConnectFailed),
        (httpx.ConnectTimeout("slow connect"), TimedOut),
        (httpx.ReadTimeout("slow answer"), TimedOut),
        (httpx.PoolTimeout("no free connection"), TimedOut),
        (httpx.RemoteProtocolError("peer closed"), Broken),
        (httpx.ReadError("reset"), Broken),
    ],
)
async def test_respx_side_effects_become_transport_errors(
    transport: AiohttpTransport,
    upstream_mock: respx.MockRouter,
    side_effect: Exception,
    error: type[Exception],
) -> None:
    upstream_mock.get(URL).mock(side_effect=side_effect)
    with pytest.raises(error):
        await transport.send("GET", URL, time_left=1)


async def test_an_answer_later_than_the_time_left_is_timed_out(
    transport: AiohttpTransport, upstream_mock: respx.MockRouter
) -> None:
    async def slow(_request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200)

    upstream_mock.get(URL).mock(side_effect=slow)
    with pytest.raises(TimedOut):
        await transport.send("GET", URL, time_left=0.1)


async def test_a_call_no_route_matches_fails_the_test(
    transport: AiohttpTransport, upstream_mock: respx.MockRouter
) -> None:
    with pytest.raises(AllMockedAssertionError):
        await transport.send("GET", "http://store.test/elsewhere", time_left=1)


async def test_a_router_without_using_fakes_the_same_boundary(transport: AiohttpTransport) -> None:
    with respx.mock(assert_all_called=False) as router:  # respx's default is the transport mocker (conftest)
        route = router.get(URL).mock(return_value=httpx.Response(204))
        assert (await transport.send("GET", URL, time_left=1)).status_code == 204
    assert route.call_count == 1
