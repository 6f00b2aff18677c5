"""The EHRbase transport: timeouts and failures as problems, retries only for idempotent calls."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import respx

from gateway.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.settings import Settings
from gateway.upstream.ehrbase_transport import SimpleUpstream
from tests import ehrbase_payloads as eb

URL = f"{eb.BASE}/query/aql"


@pytest.fixture
async def upstream(make_settings: Callable[..., Settings]) -> AsyncIterator[SimpleUpstream]:
    transport = SimpleUpstream(make_settings(upstream_retry_attempts=3))
    try:
        yield transport
    finally:
        await transport.aclose()


@respx.mock
async def test_idempotent_calls_are_retried_after_a_503(upstream: SimpleUpstream) -> None:
    route = respx.post(URL).mock(side_effect=[httpx.Response(503), httpx.Response(200, json={})])
    response = await upstream.request("POST", URL, idempotent=True, operation="t")
    assert response.status_code == 200
    assert route.call_count == 2


@respx.mock
async def test_non_idempotent_calls_are_sent_once(upstream: SimpleUpstream) -> None:
    route = respx.post(URL).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(UpstreamUnavailable):
        await upstream.request("POST", URL, idempotent=False, operation="t")
    assert route.call_count == 1


@respx.mock
async def test_timeouts_are_504_after_the_last_attempt(upstream: SimpleUpstream) -> None:
    route = respx.get(URL).mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(UpstreamTimeout):
        await upstream.request("GET", URL, idempotent=True, operation="t")
    assert route.call_count == 3


@respx.mock
async def test_a_500_is_not_retried_and_carries_the_message(upstream: SimpleUpstream) -> None:
    route = respx.get(URL).mock(return_value=eb.error(500, "An internal error has occurred."))
    with pytest.raises(UpstreamError) as caught:
        await upstream.request("GET", URL, idempotent=True, operation="t")
    assert caught.value.status == 502
    assert route.call_count == 1
    assert caught.value.upstream_issues is not None


@respx.mock
async def test_client_errors_are_returned_to_the_caller(upstream: SimpleUpstream) -> None:
    respx.get(URL).mock(return_value=eb.error(404, "nope"))
    assert (await upstream.request("GET", URL, idempotent=True, operation="t")).status_code == 404
