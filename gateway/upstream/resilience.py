"""The resilience policy shared by every upstream client (HAPI FHIR, EHRbase).

One :class:`Upstream` per store and process wraps one pooled ``httpx.AsyncClient`` and adds:

- **timeouts** from settings: connect, read, pool, and a bound on the total time of a call including
  its retries (``UPSTREAM_TOTAL_TIMEOUT``);
- **retries** with jittered exponential backoff (tenacity), only for calls the caller marks
  ``idempotent=True`` (GET, PUT with If-Match, create with If-None-Exist, writes carrying an
  idempotency key), only on transient failures (connection errors, timeouts, 429/502/503/504),
  honouring ``Retry-After`` up to ``UPSTREAM_RETRY_MAX_WAIT``. 409 and 412 are version conflicts
  in FHIR and openEHR and are never retried;
- a **circuit breaker**: after ``BREAKER_FAILURE_THRESHOLD`` consecutive transient failures the
  store is considered down and calls fail at once with 503 for ``BREAKER_RESET_SECONDS``; then one
  probe call is let through (half-open) and its outcome closes or re-opens the breaker;
- **error mapping** to the API's problems: unreachable or breaker open → 503
  ``upstream_unavailable``, timeout → 504 ``upstream_timeout``, a 5xx that outlived the retries or a
  connection broken mid-answer → 502 ``upstream_bad_response``, a body over
  ``UPSTREAM_MAX_RESPONSE_BYTES`` → 502 ``upstream_response_too_large`` (read as a stream, never buffered
  whole). 2xx, 3xx and 4xx responses are returned to the client class, which
  knows what they mean for its store;
- the **request id** of the current request sent as ``X-Request-ID``;
- **metrics hooks**: an :class:`UpstreamObserver` told of every call, retry and breaker change.

Credentials are passed per call as ``httpx.Auth`` objects and never logged.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
)

from gateway.errors import UpstreamError, UpstreamIssue, UpstreamTimeout, UpstreamUnavailable
from gateway.middleware import request_id_var
from gateway.settings import Settings

logger = logging.getLogger("gateway.upstream")

#: Answers worth another try of an idempotent call.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
#: Answers that count against the breaker (the store is struggling).
BREAKER_STATUSES = frozenset({500, 502, 503, 504})
#: Smallest backoff step, seconds.
BACKOFF_BASE = 0.05
#: Pauses before repeating a conditional create that lost a race inside HAPI (409), seconds.
CONDITIONAL_CREATE_REPEATS = (0.05, 0.25)


class BreakerState(StrEnum):
    closed = "closed"
    open = "open"
    half_open = "half_open"


class UpstreamObserver(Protocol):
    """Receives what the policy sees; the metrics module implements it with Prometheus."""

    def on_call(self, store: str, operation: str, outcome: str, seconds: float) -> None:
        """One attempt finished; ``outcome``: a status, ``timeout``, ``unreachable`` or ``breaker_open``."""

    def on_retry(self, store: str, operation: str) -> None:
        """An attempt is about to be repeated."""

    def on_breaker_state(self, store: str, state: BreakerState) -> None:
        """The breaker of ``store`` changed state."""


class NullObserver:
    """Does nothing (the default until metrics are installed)."""

    def on_call(self, store: str, operation: str, outcome: str, seconds: float) -> None:
        return None

    def on_retry(self, store: str, operation: str) -> None:
        return None

    def on_breaker_state(self, store: str, state: BreakerState) -> None:
        return None


def should_retry_status(status: int) -> bool:
    """Whether an answer with ``status`` is worth another try of an idempotent call."""
    return status in RETRYABLE_STATUSES


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff_seconds(attempt: int, retry_after: float | None, max_wait: float) -> float:
    """Wait before attempt ``attempt + 1``: ``Retry-After`` if given, else full-jitter exponential; capped."""
    if retry_after is not None:
        return min(retry_after, max_wait)
    return random.uniform(0, min(max_wait, BACKOFF_BASE * 2**attempt))  # noqa: S311 - jitter, not crypto


class CircuitBreaker:
    """Consecutive-failure breaker with a half-open probe."""

    def __init__(
        self,
        *,
        threshold: int,
        reset_seconds: float,
        on_change: Callable[[BreakerState], None] = lambda _state: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.reset_seconds = reset_seconds
        self.failures = 0
        self.state = BreakerState.closed
        self.opened_at = 0.0
        self._probe_in_flight = False
        self._on_change = on_change
        self._clock = clock

    def _set(self, state: BreakerState) -> None:
        if state is not self.state:
            self.state = state
            self._on_change(state)

    def allow(self) -> bool:
        """Whether a call may go out now (reserves the single probe when half-open)."""
        if self.state is BreakerState.closed:
            return True
        if self.state is BreakerState.open and self._clock() - self.opened_at >= self.reset_seconds:
            self._set(BreakerState.half_open)
        if self.state is BreakerState.half_open and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def retry_in(self) -> int:
        """Seconds until the breaker lets a probe through (for ``Retry-After``)."""
        return max(1, round(self.reset_seconds - (self._clock() - self.opened_at)))

    def record_success(self) -> None:
        self.failures = 0
        self._probe_in_flight = False
        self._set(BreakerState.closed)

    def record_failure(self) -> None:
        self._probe_in_flight = False
        self.failures += 1
        if self.state is BreakerState.half_open or self.failures >= self.threshold:
            self.opened_at = self._clock()
            self._set(BreakerState.open)


class _TooLarge(Exception):
    """The response body exceeded the configured maximum (internal)."""


@dataclass
class _Transient(Exception):
    """An attempt failed in a way worth retrying (internal to the policy)."""

    kind: str  # "timeout" | "unreachable" | "broken" | "status"
    response: httpx.Response | None = None
    retry_after: float | None = None


class Upstream:
    """One upstream store: pooled client, retries, breaker, error mapping, observer."""

    def __init__(
        self,
        *,
        name: str,
        display_name: str,
        settings: Settings,
        observer: UpstreamObserver | None = None,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        issues_of: Callable[[httpx.Response], list[UpstreamIssue]] | None = None,
    ) -> None:
        self.name = name
        self.issues_of = issues_of
        self.display_name = display_name
        self.attempts = settings.upstream_retry_attempts
        self.max_wait = settings.upstream_retry_max_wait
        self.total_timeout = settings.upstream_total_timeout
        self.max_response_bytes = settings.upstream_max_response_bytes
        self.observer: UpstreamObserver = observer or NullObserver()
        self.breaker = CircuitBreaker(
            threshold=settings.breaker_failure_threshold,
            reset_seconds=settings.breaker_reset_seconds,
            on_change=lambda state: self.observer.on_breaker_state(self.name, state),
        )
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=settings.upstream_connect_timeout,
                read=settings.upstream_read_timeout,
                write=settings.upstream_read_timeout,
                pool=settings.upstream_connect_timeout,
            ),
            limits=httpx.Limits(
                max_connections=settings.upstream_max_connections,
                max_keepalive_connections=settings.upstream_max_connections
                if settings.upstream_keepalive_seconds > 0
                else 0,
                keepalive_expiry=settings.upstream_keepalive_seconds,
            ),
            headers=headers,
            transport=transport,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        operation: str,
        headers: dict[str, str] | None = None,
        json: Any = None,
        content: bytes | str | None = None,
        params: httpx.QueryParams | dict[str, str] | None = None,
        auth: httpx.Auth | None = None,
    ) -> httpx.Response:
        """Send one logical call (several attempts when ``idempotent``) and return the response.

        Raises:
            UpstreamUnavailable: unreachable, or the breaker is open (503).
            UpstreamTimeout: no answer in time (504).
            UpstreamError: a 5xx answer outlived the retries (502).
        """
        sent_headers = dict(headers or {})
        request_id = request_id_var.get()
        if request_id:
            sent_headers.setdefault("X-Request-ID", request_id)
        deadline = time.monotonic() + self.total_timeout

        async def attempt() -> httpx.Response:
            if not self.breaker.allow():
                self.observer.on_call(self.name, operation, "breaker_open", 0.0)
                raise UpstreamUnavailable(
                    f"{self.display_name} is unavailable (circuit breaker open after repeated failures).",
                    retry_after=self.breaker.retry_in(),
                )
            started = time.perf_counter()
            remaining = max(0.001, deadline - time.monotonic())
            try:
                async with asyncio.timeout(remaining):
                    response = await self._send(method, url, sent_headers, json, content, params, auth)
            except (httpx.TimeoutException, TimeoutError):
                self._failed(operation, "timeout", started)
                raise _Transient("timeout") from None
            except httpx.ConnectError:
                self._failed(operation, "unreachable", started)
                raise _Transient("unreachable") from None
            except httpx.TransportError:
                self._failed(operation, "broken", started)
                raise _Transient("broken") from None
            except _TooLarge:
                self.breaker.record_success()
                self.observer.on_call(self.name, operation, "too_large", time.perf_counter() - started)
                raise UpstreamError(
                    f"{self.display_name} sent a response over UPSTREAM_MAX_RESPONSE_BYTES ({operation}).",
                    code="upstream_response_too_large",
                ) from None
            self.observer.on_call(
                self.name, operation, str(response.status_code), time.perf_counter() - started
            )
            if response.status_code in BREAKER_STATUSES:
                self.breaker.record_failure()
            else:
                self.breaker.record_success()
            if should_retry_status(response.status_code):
                raise _Transient("status", response, parse_retry_after(response.headers.get("Retry-After")))
            if response.status_code >= 500:  # a server error that another try will not mend
                raise self._as_problem(_Transient("status", response), operation)
            return response

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            retry_after = error.retry_after if isinstance(error, _Transient) else None
            return backoff_seconds(state.attempt_number, retry_after, self.max_wait)

        def before_sleep(_state: RetryCallState) -> None:
            self.observer.on_retry(self.name, operation)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(self.attempts if idempotent else 1)
            | stop_after_delay(self.total_timeout),
            wait=wait,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            result: httpx.Response = await retrying(attempt)
        except _Transient as failure:
            raise self._as_problem(failure, operation) from None
        return result

    async def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        json: Any,
        content: bytes | str | None,
        params: httpx.QueryParams | dict[str, str] | None,
        auth: httpx.Auth | None,
    ) -> httpx.Response:
        """Send and read the body, refusing more than ``max_response_bytes`` (streamed, not buffered)."""
        request = self.client.build_request(
            method, url, headers=headers, json=json, content=content, params=params
        )
        response = await self.client.send(request, auth=auth, stream=True)
        chunks: list[bytes] = []
        try:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_response_bytes:
                raise _TooLarge
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise _TooLarge
                chunks.append(chunk)
        finally:
            await response.aclose()
        return httpx.Response(
            response.status_code,
            headers=[(k, v) for k, v in response.headers.multi_items() if k.lower() != "content-encoding"],
            content=b"".join(chunks),
            request=request,
        )

    def _failed(self, operation: str, outcome: str, started: float) -> None:
        self.breaker.record_failure()
        self.observer.on_call(self.name, operation, outcome, time.perf_counter() - started)
        logger.warning("upstream %s %s: %s", self.name, operation, outcome)

    def _as_problem(self, failure: _Transient, operation: str) -> UpstreamError:
        if failure.kind == "timeout":
            return UpstreamTimeout(f"{self.display_name} did not answer in time ({operation}).")
        if failure.kind == "unreachable":
            return UpstreamUnavailable(f"{self.display_name} cannot be reached ({operation}).", retry_after=5)
        if failure.kind == "broken":
            return UpstreamError(f"{self.display_name} broke the connection mid-answer ({operation}).")
        assert failure.response is not None
        status = failure.response.status_code
        if status in {429, 503}:
            retry_after = failure.retry_after
            return UpstreamUnavailable(
                f"{self.display_name} is overloaded or unavailable ({operation}, HTTP {status}).",
                retry_after=round(retry_after) if retry_after is not None else 5,
            )
        if status == 504:
            return UpstreamTimeout(f"{self.display_name} reported a gateway timeout ({operation}).")
        issues = self.issues_of(failure.response) if self.issues_of else None
        return UpstreamError(
            f"{self.display_name} answered HTTP {status} ({operation}).", upstream_issues=issues or None
        )
