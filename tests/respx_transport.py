"""respx at the gateway's transport boundary: the one method it replaces is ``AiohttpTransport.send``.

Tests that fake HAPI FHIR or EHRbase with respx route through this mocker, always named explicitly::

    with respx.mock(using=UPSTREAM, assert_all_called=False) as router:
        router.get(f"{BASE}/Patient/1001").mock(return_value=httpx.Response(200, json=...))

Everything above the transport — the store clients, the resilience policy (retries, breaker, error
mapping), readiness, the routes — runs as in production. Only the network is replaced, at
:meth:`gateway.upstream.transport.AiohttpTransport.send`:

- the call becomes an ``httpx.Request`` for respx's router: method, URL, the transport's default headers
  overlaid with the call's, and the body bytes;
- the router's ``httpx.Response`` becomes the :class:`UpstreamResponse` the transport would return;
- respx side effects become the transport's errors: ``httpx.ConnectError`` → ``ConnectFailed``,
  ``httpx.TimeoutException`` (connect, read, pool…) → ``TimedOut``, any other ``httpx.TransportError``
  → ``Broken``; an answer not complete within the call's ``time_left`` → ``TimedOut``, as the real
  transport does.

What the transport itself does (pooling, keep-alive, cookies, redirects, the size limit, decoding,
real timeouts and broken connections) is tested on real loopback sockets in
``tests/unit/upstream/test_transport.py``, not here: a body over ``UPSTREAM_MAX_RESPONSE_BYTES`` given
to this mocker is returned whole.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import httpx
from multidict import CIMultiDict, CIMultiDictProxy
from respx.mocks import AbstractRequestMocker
from respx.models import PassThrough

from gateway.upstream.transport import AiohttpTransport, Broken, ConnectFailed, TimedOut, UpstreamResponse

#: The name to pass as ``respx.mock(using=UPSTREAM)``.
UPSTREAM = "gateway-upstream-transport"

Send = Callable[..., Coroutine[Any, Any, UpstreamResponse]]


def upstream_response(response: httpx.Response) -> UpstreamResponse:
    """The :class:`UpstreamResponse` the transport would return for this (fully read) answer."""
    headers: CIMultiDict[str] = CIMultiDict(response.headers.multi_items())
    return UpstreamResponse(response.status_code, CIMultiDictProxy(headers), response.content)


class TransportMocker(AbstractRequestMocker):
    """Replaces ``AiohttpTransport.send`` while a router ``using=UPSTREAM`` is active."""

    name = UPSTREAM
    targets = ["gateway.upstream.transport.AiohttpTransport"]
    target_methods = ["send"]

    @classmethod
    def mock(cls, spec: Send) -> Send:
        if spec.__name__ not in cls.target_methods:
            return spec

        async def send(
            transport: AiohttpTransport,
            method: str,
            url: str,
            *,
            headers: Mapping[str, str] | None = None,
            body: bytes | None = None,
            time_left: float,
        ) -> UpstreamResponse:
            request = cls.to_httpx_request(
                transport=transport, method=method, url=url, headers=headers, body=body
            )
            try:
                async with asyncio.timeout(time_left):
                    response = await cls.async_handler(request)
                    await response.aread()
            except PassThrough:
                return await spec(transport, method, url, headers=headers, body=body, time_left=time_left)
            except httpx.ConnectError as exc:
                raise ConnectFailed(f"cannot connect: {exc} (respx)") from None
            except (httpx.TimeoutException, TimeoutError) as exc:
                raise TimedOut(f"no complete answer in time: {type(exc).__name__} (respx)") from None
            except httpx.TransportError as exc:
                raise Broken(f"connection broken or answer malformed: {type(exc).__name__} (respx)") from None
            return upstream_response(response)

        if list(inspect.signature(send).parameters)[1:] != list(inspect.signature(spec).parameters)[1:]:
            raise TypeError("AiohttpTransport.send changed its parameters: update tests/respx_transport.py")
        return send

    @classmethod
    def to_httpx_request(cls, **kwargs: Any) -> httpx.Request:
        """The request as the router sees it: default headers overlaid with the call's, body bytes."""
        transport: AiohttpTransport = kwargs["transport"]
        headers = httpx.Headers(transport.default_headers)
        headers.update(kwargs["headers"] or {})
        return httpx.Request(kwargs["method"], kwargs["url"], headers=headers, content=kwargs["body"])
