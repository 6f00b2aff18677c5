"""The resilience policy shared by every upstream client (HAPI FHIR, EHRbase).

One :class:`Upstream` per store and process wraps one pooled transport
(:class:`gateway.upstream.transport.AiohttpTransport`) and adds:

- **timeouts** from settings: connect and read (applied by the transport), and a bound on the total time
  of a call including its retries (``UPSTREAM_TOTAL_TIMEOUT``);
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

The first attempt is sent directly; the retry machinery is only brought in when an idempotent call
failed transiently, so the common, successful call pays for none of it.

Credentials are passed per call as :class:`~gateway.upstream.transport.Credentials` (a precomputed
``Authorization`` value) and never logged.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import urlencode

import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from gateway.context import request_id_var
from gateway.errors import UpstreamError, UpstreamIssue, UpstreamTimeout, UpstreamUnavailable
from gateway.settings import Settings
from gateway.upstream.transport import (
    AiohttpTransport,
    ConnectFailed,
    Credentials,
    TimedOut,
    TooLarge,
    TransportError,
    UpstreamResponse,
)

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


@dataclass
class _Transient(Exception):
    """An attempt failed in a way worth retrying (internal to the policy)."""

    kind: str  # "timeout" | "unreachable" | "broken" | "status"
    response: UpstreamResponse | None = None
    retry_after: float | None = None


#: Query parameters: pairs (repeatable names, order kept) or a mapping.
Params = Sequence[tuple[str, str]] | Mapping[str, str]


class Upstream:
    """One upstream store: pooled transport, retries, breaker, error mapping, observer."""

    def __init__(
        self,
        *,
        name: str,
        display_name: str,
        settings: Settings,
        observer: UpstreamObserver | None = None,
        headers: Mapping[str, str] | None = None,
        transport: AiohttpTransport | None = None,
        issues_of: Callable[[UpstreamResponse], list[UpstreamIssue]] | None = None,
    ) -> None:
        self.name = name
        self.issues_of = issues_of
        self.display_name = display_name
        self.attempts = settings.upstream_retry_attempts
        self.max_wait = settings.upstream_retry_max_wait
        self.total_timeout = settings.upstream_total_timeout
        self.observer: UpstreamObserver = observer or NullObserver()
        self.breaker = CircuitBreaker(
            threshold=settings.breaker_failure_threshold,
            reset_seconds=settings.breaker_reset_seconds,
            on_change=lambda state: self.observer.on_breaker_state(self.name, state),
        )
        self.transport = transport or AiohttpTransport.from_settings(settings, headers=headers)

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        operation: str,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
        params: Params | None = None,
        auth: Credentials | None = None,
    ) -> UpstreamResponse:
        """Send one logical call (several attempts when ``idempotent``) and return the response.

        Args:
            url: an absolute, percent-encoded URL (path segments quoted by the caller).
            headers: this call's headers (the store's defaults are sent too).
            json: a body to send as JSON (``Content-Type: application/json`` unless given).
            content: a body already serialised (exclusive with ``json``).
            params: query parameters, encoded here and appended to ``url``.
            auth: the credentials of this call.

        Raises:
            UpstreamUnavailable: unreachable, or the breaker is open (503).
            UpstreamTimeout: no answer in time (504).
            UpstreamError: a 5xx answer outlived the retries, the connection broke mid-answer, or the
                body was over ``UPSTREAM_MAX_RESPONSE_BYTES`` (502).
        """
        deadline = time.monotonic() + self.total_timeout
        if params:
            url = f"{url}?{urlencode(params)}"
        body = content
        request_id = request_id_var.get()
        sent: dict[str, str] | None = None
        if headers or auth is not None or request_id or json is not None:
            sent = dict(headers) if headers else {}
            if auth is not None:
                sent["Authorization"] = auth.header
            if request_id:
                sent.setdefault("X-Request-ID", request_id)
            if json is not None:
                body = orjson.dumps(json)
                if not any(name.lower() == "content-type" for name in sent):
                    sent["Content-Type"] = "application/json"
        try:
            return await self._attempt(method, url, sent, body, operation, deadline)
        except _Transient as failure:
            if not idempotent or self.attempts < 2 or time.monotonic() >= deadline:
                raise self._as_problem(failure, operation) from None
            first_failure = failure
        return await self._retry(method, url, sent, body, operation, deadline, first_failure)

    async def _retry(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None,
        body: bytes | None,
        operation: str,
        deadline: float,
        first_failure: _Transient,
    ) -> UpstreamResponse:
        """Attempts 2..``attempts`` of an idempotent call whose first attempt failed transiently.

        Waits as the first attempt's failure asks (``Retry-After`` or jittered backoff), then lets
        tenacity repeat with the same waits; stops after ``UPSTREAM_RETRY_ATTEMPTS`` attempts in all, or
        once a failure comes after the call's ``UPSTREAM_TOTAL_TIMEOUT``.
        """
        attempts = self.attempts

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            retry_after = error.retry_after if isinstance(error, _Transient) else None
            return backoff_seconds(state.attempt_number + 1, retry_after, self.max_wait)

        def stop(state: RetryCallState) -> bool:
            return state.attempt_number + 1 >= attempts or time.monotonic() >= deadline

        def before_sleep(_state: RetryCallState) -> None:
            self.observer.on_retry(self.name, operation)

        self.observer.on_retry(self.name, operation)
        await asyncio.sleep(backoff_seconds(1, first_failure.retry_after, self.max_wait))
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop,
            wait=wait,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            result: UpstreamResponse = await retrying(
                self._attempt, method, url, headers, body, operation, deadline
            )
        except _Transient as failure:
            raise self._as_problem(failure, operation) from None
        return result

    async def _attempt(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None,
        body: bytes | None,
        operation: str,
        deadline: float,
    ) -> UpstreamResponse:
        """One attempt: breaker check, send, observe; a transient failure raises :class:`_Transient`."""
        if not self.breaker.allow():
            self.observer.on_call(self.name, operation, "breaker_open", 0.0)
            raise UpstreamUnavailable(
                f"{self.display_name} is unavailable (circuit breaker open after repeated failures).",
                retry_after=self.breaker.retry_in(),
            )
        started = time.perf_counter()
        try:
            response = await self.transport.send(
                method, url, headers=headers, body=body, time_left=max(0.001, deadline - time.monotonic())
            )
        except TimedOut:
            self._failed(operation, "timeout", started)
            raise _Transient("timeout") from None
        except ConnectFailed:
            self._failed(operation, "unreachable", started)
            raise _Transient("unreachable") from None
        except TooLarge:
            self.breaker.record_success()
            self.observer.on_call(self.name, operation, "too_large", time.perf_counter() - started)
            raise UpstreamError(
                f"{self.display_name} sent a response over UPSTREAM_MAX_RESPONSE_BYTES ({operation}).",
                code="upstream_response_too_large",
            ) from None
        except TransportError:  # Broken
            self._failed(operation, "broken", started)
            raise _Transient("broken") from None
        status = response.status_code
        self.observer.on_call(self.name, operation, str(status), time.perf_counter() - started)
        if status in BREAKER_STATUSES:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()
        if status < 429:  # the common case: nothing more to decide
            return response
        if should_retry_status(status):
            raise _Transient("status", response, parse_retry_after(response.headers.get("Retry-After")))
        if status >= 500:  # a server error that another try will not mend
            raise self._as_problem(_Transient("status", response), operation)
        return response

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
