"""Prometheus metrics of the gateway (prometheus-client), and the hooks other modules call.

One :class:`~prometheus_client.CollectorRegistry` per process, :data:`REGISTRY`, holds:

- ``gateway_http_requests_total`` / ``gateway_http_request_duration_seconds`` by method, route
  *template* (``/patients/{patient_id}``, never a raw id) and status;
- ``gateway_upstream_calls_total`` / ``gateway_upstream_call_duration_seconds`` by store, operation
  and outcome (an HTTP status, ``timeout``, ``unreachable`` or ``breaker_open``);
- ``gateway_upstream_retries_total`` and ``gateway_upstream_breaker_state`` (0 closed, 1 half-open,
  2 open) per store;
- ``gateway_auth_db_pool_*`` gauges, read from the engine's pool at scrape time;
- ``gateway_login_failures_total`` and ``gateway_login_lockouts_total`` — call
  :func:`record_login_failure` and :func:`record_lockout` from the login flow;
- ``gateway_audit_batch_rows`` / ``gateway_audit_batch_seconds`` (the audit group commit: rows per
  transaction and its duration) and ``gateway_audit_batch_failures_total``;
- ``gateway_requests_shed_total``: requests answered 503 ``overloaded`` at once because the worker
  already served ``MAX_REQUESTS_IN_FLIGHT``;
- ``gateway_workers``: 1 in each worker process ``gateway serve`` runs.

Labels never carry user data: the route template, a store name, an operation name, a status.

**Several workers** (``gateway serve --workers N``) run prometheus-client's multiprocess mode: the server
sets ``PROMETHEUS_MULTIPROC_DIR`` before it starts the workers, each worker writes its values to files
there, and :func:`render` merges the files of every worker, so a scrape sees the whole server whichever
worker answers it. Counters and histograms are summed, including those of workers that have died (a
restarted worker must not make a counter go down). Each gauge says how its workers' values combine
(``multiprocess_mode``, which only this mode reads); the ``live`` modes leave out dead workers, whose
files the supervisor marks (:func:`prometheus_client.multiprocess.mark_process_dead`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import event

__all__ = [
    "CONTENT_TYPE_LATEST",
    "MULTIPROCESS",
    "REGISTRY",
    "PrometheusObserver",
    "observe_audit_batch",
    "observe_request",
    "record_lockout",
    "record_login_failure",
    "record_shed",
    "render",
    "watch_pool",
    "worker_started",
]

REGISTRY = CollectorRegistry(auto_describe=True)

#: True when the values live in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client decides once, when it is
#: first imported, from that variable): then a scrape must merge every worker's files.
MULTIPROCESS: bool = values.ValueClass is not values.MutexValue

#: Request latency buckets (seconds): fast auth checks up to slow upstream writes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0)

HTTP_REQUESTS = Counter(
    "gateway_http_requests",
    "HTTP requests served, by route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "gateway_http_request_duration_seconds",
    "Time to serve a request, by route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_CALLS = Counter(
    "gateway_upstream_calls",
    "Attempts sent to an upstream store, by outcome (HTTP status, timeout, unreachable, breaker_open).",
    ["store", "operation", "outcome"],
    registry=REGISTRY,
)
UPSTREAM_DURATION = Histogram(
    "gateway_upstream_call_duration_seconds",
    "Duration of one attempt to an upstream store.",
    ["store", "operation"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_RETRIES = Counter(
    "gateway_upstream_retries",
    "Attempts repeated after a transient upstream failure.",
    ["store", "operation"],
    registry=REGISTRY,
)
# Several workers: each has its own breakers. The worst state among the live workers is the one to
# alert on (one worker failing fast is an outage for a share of the requests), so "livemax".
BREAKER_STATE = Gauge(
    "gateway_upstream_breaker_state",
    "Circuit breaker per store: 0 closed, 1 half-open, 2 open.",
    ["store"],
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
# Several workers: each has its own pool. The sum over the live workers is what the server holds against
# PostgreSQL's max_connections, and checked_out / size stays the server's pool use, so "livesum"
# (divide by gateway_workers for one worker's average).
POOL_SIZE = Gauge(
    "gateway_auth_db_pool_size",
    "Configured size of the auth DB pool.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
POOL_CHECKED_OUT = Gauge(
    "gateway_auth_db_pool_checked_out",
    "Auth DB connections in use.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
POOL_OVERFLOW = Gauge(
    "gateway_auth_db_pool_overflow",
    "Auth DB connections opened beyond the pool size.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
# Several workers: 1 per live worker, summed: how many workers the scraped server runs now.
WORKERS = Gauge(
    "gateway_workers",
    "Worker processes serving (1 per worker; the sum over the live workers of gateway serve --workers N).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
LOGIN_FAILURES = Counter(
    "gateway_login_failures",
    "Failed login attempts, by reason (e.g. bad_credentials, locked, totp).",
    ["reason"],
    registry=REGISTRY,
)
AUDIT_BATCH_ROWS = Histogram(
    "gateway_audit_batch_rows",
    "Audit rows written per transaction by the group commit.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    registry=REGISTRY,
)
AUDIT_BATCH_SECONDS = Histogram(
    "gateway_audit_batch_seconds",
    "Duration of one audit batch transaction.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
AUDIT_BATCH_FAILURES = Counter(
    "gateway_audit_batch_failures",
    "Audit batches whose transaction failed (each of their requests was answered 503).",
    registry=REGISTRY,
)
REQUESTS_SHED = Counter(
    "gateway_requests_shed",
    "Requests answered 503 overloaded at once because the worker was at MAX_REQUESTS_IN_FLIGHT.",
    registry=REGISTRY,
)
LOGIN_LOCKOUTS = Counter(
    "gateway_login_lockouts",
    "Lockouts started by repeated failures, by scope (account or address).",
    ["scope"],
    registry=REGISTRY,
)

#: Breaker states (``gateway.upstream.resilience.BreakerState`` values) as gauge values.
_BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one served request under its route template (called by the ASGI middleware)."""
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_DURATION.labels(method, route).observe(seconds)


def observe_audit_batch(rows: int, seconds: float, ok: bool) -> None:
    """Record one audit group-commit transaction (called by the audit writer)."""
    AUDIT_BATCH_ROWS.observe(rows)
    AUDIT_BATCH_SECONDS.observe(seconds)
    if not ok:
        AUDIT_BATCH_FAILURES.inc()


def record_shed() -> None:
    """Count a request refused because the worker was full."""
    REQUESTS_SHED.inc()


def record_login_failure(reason: str = "bad_credentials") -> None:
    """Count a failed login attempt.

    Args:
        reason: a short fixed word (``bad_credentials``, ``locked``, ``totp``…), never user input.
    """
    LOGIN_FAILURES.labels(reason).inc()


def record_lockout(scope: str = "account") -> None:
    """Count a lockout that has just started.

    Args:
        scope: ``account`` (too many failures for one username) or ``address`` (for one client IP).
    """
    LOGIN_LOCKOUTS.labels(scope).inc()


class PrometheusObserver:
    """The :class:`gateway.upstream.resilience.UpstreamObserver` that feeds the metrics above."""

    def on_call(self, store: str, operation: str, outcome: str, seconds: float) -> None:
        """Count one attempt and its duration."""
        UPSTREAM_CALLS.labels(store, operation, outcome).inc()
        if outcome != "breaker_open":
            UPSTREAM_DURATION.labels(store, operation).observe(seconds)

    def on_retry(self, store: str, operation: str) -> None:
        """Count one retry."""
        UPSTREAM_RETRIES.labels(store, operation).inc()

    def on_breaker_state(self, store: str, state: str) -> None:
        """Publish the breaker's new state (a ``BreakerState``, which is a ``str``)."""
        BREAKER_STATE.labels(store).set(_BREAKER_VALUES.get(str(state), 0))


def install_observer(client: Any, observer: PrometheusObserver) -> None:
    """Attach ``observer`` to an upstream client's resilience policy (``client.upstream``), if it has one."""
    upstream = getattr(client, "upstream", None)
    if upstream is not None and hasattr(upstream, "observer"):
        upstream.observer = observer
        breaker = getattr(upstream, "breaker", None)
        state = getattr(breaker, "state", None)
        if isinstance(state, str):
            observer.on_breaker_state(str(upstream.name), state)


def worker_started() -> None:
    """Count this process as a serving worker (called by ``gateway serve`` once the worker serves)."""
    WORKERS.set(1)


def _pool_of(engine: Any) -> Any:
    return getattr(getattr(engine, "sync_engine", engine), "pool", None)


def _update_pool_gauges(pool: Any) -> None:
    for gauge, method in ((POOL_SIZE, "size"), (POOL_CHECKED_OUT, "checkedout"), (POOL_OVERFLOW, "overflow")):
        read = getattr(pool, method, None)
        if callable(read):
            gauge.set(max(0, int(read())))


def watch_pool(engine: Any) -> None:
    """With several workers, keep this worker's pool gauges current as connections come and go.

    One worker answers a scrape and can read only its own pool, so each worker publishes its pool
    whenever a connection is checked out, returned or closed. With one process (no multiprocess mode)
    nothing is registered: the scrape reads the pool, as before.
    """
    pool = _pool_of(engine)
    if not MULTIPROCESS or pool is None:
        return
    scheduled = False

    def update() -> None:
        nonlocal scheduled
        scheduled = False
        _update_pool_gauges(pool)

    def soon(*_: Any) -> None:
        # The pool fires "checkin" before it takes the connection back: read it once the event is over
        # (one read for a burst of events).
        nonlocal scheduled
        if scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a connection finalised outside the event loop
            _update_pool_gauges(pool)
            return
        scheduled = True
        loop.call_soon(update)

    for name in ("checkout", "checkin", "close", "close_detached"):
        event.listen(pool, name, soon)
    _update_pool_gauges(pool)


def render(engine: Any = None) -> bytes:
    """Every metric in Prometheus text format, with the pool gauges refreshed from ``engine``.

    In multiprocess mode (several workers) the files of every worker are merged; otherwise this process's
    registry is rendered.
    """
    pool = _pool_of(engine)
    if pool is not None:
        _update_pool_gauges(pool)
    if MULTIPROCESS:
        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
    return generate_latest(REGISTRY)
