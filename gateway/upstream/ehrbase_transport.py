"""A minimal upstream transport for the EHRbase client, used until the shared resilience policy is wired.

One pooled ``httpx.AsyncClient`` with the configured timeouts and limits; transport failures become
``503 upstream_unavailable``, timeouts ``504 upstream_timeout``, 5xx answers ``502 upstream_bad_response``
(EHRbase's message carried). Only idempotent requests are retried, on connection errors and 502/503/504,
a bounded number of times. No circuit breaker: that is the shared policy's job.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx

from gateway.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.settings import Settings
from gateway.upstream.ehrbase_errors import issues_of

RETRY_STATUSES = frozenset({502, 503, 504})


class SimpleUpstream:
    """Timeouts, limits, error mapping and retries of idempotent calls for one upstream."""

    def __init__(self, settings: Settings, name: str = "EHRbase") -> None:
        self.name = name
        self.attempts = settings.upstream_retry_attempts
        self.max_wait = settings.upstream_retry_max_wait
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                settings.upstream_read_timeout,
                connect=settings.upstream_connect_timeout,
            ),
            limits=httpx.Limits(
                max_connections=settings.upstream_max_connections,
                max_keepalive_connections=settings.upstream_max_keepalive,
            ),
        )

    async def request(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        headers: dict[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
        auth: httpx.Auth | None = None,
        operation: str,
    ) -> httpx.Response:
        """Send one request (retrying idempotent ones); 4xx answers are returned to the caller."""
        attempts = self.attempts if idempotent else 1
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            try:
                response = await self.client.request(
                    method, url, headers=headers, json=json, content=content, params=params, auth=auth
                )
            except httpx.TimeoutException:
                if last:
                    raise UpstreamTimeout(f"{self.name} did not answer in time ({operation}).") from None
            except httpx.TransportError:
                if last:
                    raise UpstreamUnavailable(
                        f"{self.name} cannot be reached ({operation}).", retry_after=5
                    ) from None
            else:
                if response.status_code < 500:
                    return response
                if last or response.status_code not in RETRY_STATUSES:
                    raise UpstreamError(
                        f"{self.name} answered {response.status_code} ({operation}).",
                        upstream_issues=issues_of(response) or None,
                    )
            await asyncio.sleep(random.uniform(0, min(self.max_wait, 0.1 * 2**attempt)))  # noqa: S311
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await self.client.aclose()
