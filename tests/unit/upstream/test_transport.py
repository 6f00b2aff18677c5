"""The aiohttp transport on real loopback sockets: what the respx tests above it take for granted.

A small aiohttp web server stands for HAPI FHIR and EHRbase (real TCP, real HTTP/1.1); ``tests.faults``
provides the servers that misbehave (refused, silent, trickling, resetting, malformed).
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.context import request_id_var
from gateway.settings import Settings
from gateway.upstream.resilience import Upstream
from gateway.upstream.transport import (
    AiohttpTransport,
    Broken,
    ConnectFailed,
    Credentials,
    TimedOut,
    TooLarge,
    UpstreamResponse,
)
from tests.faults import CannedServer, ResettingServer, SilentServer, TricklingServer, closed_port

LIMIT = 65_536
PASSWORD = "s3cret-upstream-password"


@dataclass
class Store:
    """The test server and what it saw."""

    url: str
    peers: list[int] = field(default_factory=list)  # client port of each request, in order
    requests: list[web.Request] = field(default_factory=list)
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    answer = {"method": request.method, "path": request.path_qs, "body": body.decode()}
    return web.Response(
        status=201 if request.method == "POST" else 200,
        body=orjson.dumps(answer),
        content_type="application/json",
        headers={"ETag": 'W/"3"'},
    )


async def _multi(_request: web.Request) -> web.Response:
    response = web.Response(body=b"{}", content_type="application/json")
    response.headers.add("X-Multi", "one")
    response.headers.add("X-Multi", "two")
    return response


async def _cookie(_request: web.Request) -> web.Response:
    response = web.Response(body=b"{}")
    response.set_cookie("JSESSIONID", "upstream-session-of-someone-else")
    return response


async def _gzip(_request: web.Request) -> web.Response:
    return web.Response(
        body=gzip.compress(b'{"resourceType": "Patient", "id": "1001"}'),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/fhir+json"},
    )


async def _gzip_bomb(_request: web.Request) -> web.Response:
    return web.Response(body=gzip.compress(b" " * (LIMIT * 4)), headers={"Content-Encoding": "gzip"})


async def _declared_too_large(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Length": str(LIMIT + 1)})
    await response.prepare(request)
    await response.write(b"x" * 1000)  # the rest never comes: the length alone must be refused
    await asyncio.sleep(0.5)
    return response


async def _chunked_too_large(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for _ in range(LIMIT // 8192 + 2):
        await response.write(b"x" * 8192)
    await response.write_eof()
    return response


async def _exactly_the_limit(_request: web.Request) -> web.Response:
    return web.Response(body=b"x" * LIMIT)


async def _redirect(_request: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": "/echo"})


async def _slow(_request: web.Request) -> web.Response:
    await asyncio.sleep(0.1)
    return web.Response(body=b"{}")


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        assert request.transport is not None
        state.peers.append(request.transport.get_extra_info("peername")[1])
        state.requests.append(request)
        state.seen_headers.append(dict(request.headers))
        state.in_flight += 1
        state.most_in_flight = max(state.most_in_flight, state.in_flight)
        try:
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            state.in_flight -= 1

    app = web.Application(middlewares=[record])
    for path, handler in {
        "/echo": _echo,
        "/multi": _multi,
        "/cookie": _cookie,
        "/gzip": _gzip,
        "/gzip-bomb": _gzip_bomb,
        "/declared-too-large": _declared_too_large,
        "/chunked-too-large": _chunked_too_large,
        "/exactly-the-limit": _exactly_the_limit,
        "/redirect": _redirect,
        "/slow": _slow,
    }.items():
        app.router.add_route("*", path, handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state = Store(url=str(server.make_url("")).rstrip("/"))
    try:
        yield state
    finally:
        await server.close()


MakeTransport = Callable[..., AiohttpTransport]


@pytest.fixture
async def make_transport() -> AsyncIterator[MakeTransport]:
    made: list[AiohttpTransport] = []

    def make(**overrides: Any) -> AiohttpTransport:
        values: dict[str, Any] = {
            "connect_timeout": 2.0,
            "read_timeout": 5.0,
            "max_connections": 10,
            "keepalive_seconds": 15.0,
            "max_response_bytes": LIMIT,
            "headers": {"Accept": "application/fhir+json"},
        }
        made.append(AiohttpTransport(**(values | overrides)))
        return made[-1]

    yield make
    for transport in made:
        await transport.aclose()


async def get(transport: AiohttpTransport, url: str, **kwargs: Any) -> UpstreamResponse:
    return await transport.send("GET", url, time_left=kwargs.pop("time_left", 10.0), **kwargs)


async def test_status_headers_and_body_round_trip(store: Store, make_transport: MakeTransport) -> None:
    transport = make_transport()
    response = await transport.send(
        "POST",
        f"{store.url}/echo?name=O%27Brien+Smith&_id=1%2C2",
        headers={"Content-Type": "application/fhir+json", "If-None-Exist": "identifier=x|1"},
        body=b'{"resourceType": "Patient"}',
        time_left=10.0,
    )
    assert response.status_code == 201
    assert response.headers["etag"] == 'W/"3"'  # case-insensitive
    assert response.json() == {
        "method": "POST",
        "path": "/echo?name=O%27Brien+Smith&_id=1%2C2",  # sent as encoded by the caller
        "body": '{"resourceType": "Patient"}',
    }
    seen = store.seen_headers[-1]
    assert seen["Content-Type"] == "application/fhir+json"
    assert seen["If-None-Exist"] == "identifier=x|1"
    assert seen["Accept"] == "application/fhir+json"  # the store's default header


async def test_multi_valued_headers_are_kept(store: Store, make_transport: MakeTransport) -> None:
    response = await get(make_transport(), f"{store.url}/multi")
    assert response.headers.getall("x-multi") == ["one", "two"]


async def test_keep_alive_reuses_one_connection(store: Store, make_transport: MakeTransport) -> None:
    transport = make_transport()
    for _ in range(5):
        assert (await get(transport, f"{store.url}/echo")).status_code == 200
    assert len(store.peers) == 5
    assert len(set(store.peers)) == 1


async def test_keepalive_zero_closes_after_every_call(store: Store, make_transport: MakeTransport) -> None:
    transport = make_transport(keepalive_seconds=0)
    for _ in range(3):
        await get(transport, f"{store.url}/echo")
    assert len(set(store.peers)) == 3


async def test_an_idle_connection_expires_after_the_keepalive_time(
    store: Store, make_transport: MakeTransport
) -> None:
    transport = make_transport(keepalive_seconds=0.2)
    await get(transport, f"{store.url}/echo")
    await asyncio.sleep(1.0)
    await get(transport, f"{store.url}/echo")
    assert len(set(store.peers)) == 2


async def test_max_connections_is_respected_under_concurrency(
    store: Store, make_transport: MakeTransport
) -> None:
    transport = make_transport(max_connections=2)
    answers = await asyncio.gather(*(get(transport, f"{store.url}/slow") for _ in range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    assert store.most_in_flight <= 2
    assert len(set(store.peers)) <= 2


@pytest.mark.parametrize("path", ["/declared-too-large", "/chunked-too-large", "/gzip-bomb"])
async def test_a_body_over_the_limit_is_refused(
    store: Store, make_transport: MakeTransport, path: str
) -> None:
    transport = make_transport()
    with pytest.raises(TooLarge):
        await get(transport, store.url + path)
    assert (await get(transport, f"{store.url}/echo")).status_code == 200  # the pool is still usable


async def test_a_body_of_exactly_the_limit_is_accepted(store: Store, make_transport: MakeTransport) -> None:
    response = await get(make_transport(), f"{store.url}/exactly-the-limit")
    assert len(response.content) == LIMIT


async def test_a_gzip_body_is_decoded(store: Store, make_transport: MakeTransport) -> None:
    response = await get(make_transport(), f"{store.url}/gzip")
    assert response.json() == {"resourceType": "Patient", "id": "1001"}
    assert "Content-Encoding" not in response.headers  # it describes a body the caller never sees
    assert response.headers["Content-Type"] == "application/fhir+json"


async def test_upstream_cookies_are_never_sent_back(store: Store, make_transport: MakeTransport) -> None:
    transport = make_transport()
    first = await get(transport, f"{store.url}/cookie")
    assert "JSESSIONID" in first.headers["Set-Cookie"]
    await get(transport, f"{store.url}/echo")
    assert "Cookie" not in store.seen_headers[-1]


async def test_credentials_are_sent_but_never_shown(
    store: Store, make_transport: MakeTransport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    credentials = Credentials.basic("gateway-svc", PASSWORD)
    transport = make_transport()
    await get(transport, f"{store.url}/echo", headers={"Authorization": credentials.header})
    assert store.seen_headers[-1]["Authorization"] == credentials.header
    with pytest.raises(ConnectFailed) as refused:
        await get(
            transport, f"http://127.0.0.1:{closed_port()}/x", headers={"Authorization": credentials.header}
        )
    for shown in (repr(credentials), str(credentials), repr(transport), str(refused.value), caplog.text):
        assert PASSWORD not in shown
        assert credentials.header not in shown


async def test_the_request_id_travels_upstream(store: Store, make_settings: Callable[..., Settings]) -> None:
    upstream = Upstream(name="t", display_name="T", settings=make_settings())
    token = request_id_var.set("req-socket-0001")
    try:
        await upstream.request("GET", f"{store.url}/echo", idempotent=True, operation="read")
    finally:
        request_id_var.reset(token)
        await upstream.aclose()
    assert store.seen_headers[-1]["X-Request-ID"] == "req-socket-0001"


async def test_a_redirect_is_returned_not_followed(store: Store, make_transport: MakeTransport) -> None:
    response = await get(make_transport(), f"{store.url}/redirect")
    assert response.status_code == 302
    assert response.headers["Location"] == "/echo"
    assert [r.path for r in store.requests] == ["/redirect"]


async def test_connection_refused_is_connect_failed(make_transport: MakeTransport) -> None:
    with pytest.raises(ConnectFailed):
        await get(make_transport(), f"http://127.0.0.1:{closed_port()}/fhir/metadata")


async def test_a_silent_server_times_out_within_the_read_timeout(make_transport: MakeTransport) -> None:
    transport = make_transport(read_timeout=0.3)
    loop = asyncio.get_running_loop()
    async with SilentServer() as server:
        started = loop.time()
        with pytest.raises(TimedOut):
            await get(transport, f"{server.url}/x", time_left=30.0)
        assert loop.time() - started < 0.3 + 2.0


async def test_a_trickling_server_times_out_within_the_time_left(make_transport: MakeTransport) -> None:
    transport = make_transport(read_timeout=5.0)
    loop = asyncio.get_running_loop()
    async with TricklingServer(interval=0.05) as server:
        started = loop.time()
        with pytest.raises(TimedOut):
            await get(transport, f"{server.url}/x", time_left=0.4)
        assert loop.time() - started < 0.4 + 2.0


async def test_a_reset_mid_body_is_broken(make_transport: MakeTransport) -> None:
    async with ResettingServer() as server:
        with pytest.raises(Broken):
            await get(make_transport(), f"{server.url}/x")


async def test_a_malformed_answer_is_broken(make_transport: MakeTransport) -> None:
    async with CannedServer(b"this is not HTTP\r\n\r\n") as server:
        with pytest.raises(Broken):
            await get(make_transport(), f"{server.url}/x")


async def test_a_closed_transport_refuses_calls(store: Store, make_transport: MakeTransport) -> None:
    transport = make_transport()
    await get(transport, f"{store.url}/echo")
    await transport.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await get(transport, f"{store.url}/echo")


def test_response_repr_shows_no_body() -> None:
    from multidict import CIMultiDict, CIMultiDictProxy

    response = UpstreamResponse(200, CIMultiDictProxy(CIMultiDict()), b'{"name": "Chalmers"}')
    assert "Chalmers" not in repr(response)
    assert response.text == '{"name": "Chalmers"}'
