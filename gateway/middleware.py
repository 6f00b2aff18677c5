"""ASGI middleware: load shedding, request ids, body size limit, security headers, access log, metrics.

Written as plain ASGI (not ``BaseHTTPMiddleware``) so it adds little to every request. The access log
line of each request is written at DEBUG level only (``LOG_LEVEL=DEBUG``): at INFO and above nothing is
logged per request; the request metrics count every request.

Load shedding: a worker serves at most ``MAX_REQUESTS_IN_FLIGHT`` requests at once. A request beyond
that is answered at once with ``503 overloaded`` (problem JSON, ``Retry-After: 1``) instead of queueing
without limit behind the others; the liveness, readiness and metrics routes are never refused.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.context import request_id_var
from gateway.errors import PROBLEM_JSON, ApiError
from gateway.metrics import observe_request, record_shed
from gateway.r4.outcome import FHIR_JSON, is_fhir_path, outcome_of

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._\-]{8,128}$")

access_logger = logging.getLogger("gateway.access")

DOCS_PATHS = ("/docs", "/redoc")
#: Never shed: a saturated worker must still answer its probes and its metrics scrape.
UNSHED_PATHS = frozenset({"/health", "/ready", "/metrics"})
#: Seconds a shed client is asked to wait.
SHED_RETRY_AFTER = 1
DOCS_CSP = (
    "default-src 'none'; script-src 'self' https://cdn.jsdelivr.net 'unsafe-inline'; "
    "style-src 'self' https://cdn.jsdelivr.net 'unsafe-inline'; "
    "img-src 'self' data: https://fastapi.tiangolo.com; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"


def _security_header_set(docs: bool, hsts: bool) -> list[tuple[bytes, bytes]]:
    result = [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        (b"content-security-policy", (DOCS_CSP if docs else API_CSP).encode()),
    ]
    if not docs:
        result.append((b"cache-control", b"no-store"))
    if hsts:
        result.append((b"strict-transport-security", b"max-age=63072000; includeSubDomains"))
    return result


#: The security headers of a response, by (documentation page?, HSTS?), built once.
_SECURITY_HEADERS = {
    (docs, hsts): _security_header_set(docs, hsts) for docs in (False, True) for hsts in (False, True)
}


def accept_request_id(value: str | None) -> str:
    """The client's request id if it is well-formed, else a new one (no header injection possible)."""
    if value and _REQUEST_ID_RE.fullmatch(value):
        return value
    return uuid.uuid4().hex


class GatewayMiddleware:
    """Assigns the request id, enforces the body limit, adds security headers and logs each request."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, hsts: bool, max_in_flight: int = 0) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.hsts = hsts
        self.max_in_flight = max_in_flight
        #: Requests of this worker being served now (the shed ones and the unshed routes not counted).
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given_id: bytes | None = None
        declared: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given_id = value
            elif name == b"content-length":
                declared = value
        request_id = accept_request_id(given_id.decode("latin-1") if given_id is not None else None)
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        path: str = scope["path"]
        status_holder: dict[str, Any] = {"status": 500}

        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await self._too_large(send, request_id, path)
            status_holder["status"] = 413
            self._log(scope, status_holder, started)
            request_id_var.reset(token)
            return

        counted = self.max_in_flight > 0 and path not in UNSHED_PATHS
        if counted and self.in_flight >= self.max_in_flight:
            record_shed()
            await self._overloaded(send, request_id, path)
            status_holder["status"] = 503
            self._log(scope, status_holder, started)
            request_id_var.reset(token)
            return
        if counted:
            self.in_flight += 1

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge
            return message

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                raw = list(message.get("headers", []))
                names = {name.lower() for name, _ in raw}
                raw.append((b"x-request-id", request_id.encode()))
                for name, value in self._security_headers(path, scope.get("scheme") == "https"):
                    if name not in names:
                        raw.append((name, value))
                message = {**message, "headers": raw}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except _BodyTooLarge:
            status_holder["status"] = 413
            await self._too_large(send, request_id, path)
        finally:
            if counted:
                self.in_flight -= 1
            self._log(scope, status_holder, started)
            request_id_var.reset(token)

    def _security_headers(self, path: str, https: bool) -> list[tuple[bytes, bytes]]:
        return _SECURITY_HEADERS[(path.startswith(DOCS_PATHS), self.hsts and https)]

    async def _too_large(self, send: Send, request_id: str, path: str) -> None:
        problem = {
            "type": "about:blank",
            "title": "Request body too large",
            "status": 413,
            "code": "payload_too_large",
            "detail": f"The body exceeds {self.max_body_bytes} bytes.",
            "request_id": request_id,
        }
        await self._problem(send, problem, path, [(b"connection", b"close")])

    async def _overloaded(self, send: Send, request_id: str, path: str) -> None:
        problem = {
            "type": "about:blank",
            "title": "Overloaded",
            "status": 503,
            "code": "overloaded",
            "detail": "The gateway is serving as many requests as it can; retry after Retry-After seconds.",
            "request_id": request_id,
            "retry_after": SHED_RETRY_AFTER,
        }
        await self._problem(send, problem, path, [(b"retry-after", str(SHED_RETRY_AFTER).encode())])

    async def _problem(
        self, send: Send, problem: dict[str, Any], path: str, extra: list[tuple[bytes, bytes]]
    ) -> None:
        media_type = PROBLEM_JSON
        body = orjson.dumps(problem)
        if is_fhir_path(path):  # the FHIR face answers with an OperationOutcome
            error = ApiError(
                problem["detail"], code=problem["code"], status=problem["status"], title=problem["title"]
            )
            media_type, body = FHIR_JSON, orjson.dumps(outcome_of(error, problem["request_id"]))
        headers = [
            (b"content-type", media_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", str(problem["request_id"]).encode()),
            *extra,
            *self._security_headers(path, False),
        ]
        await send({"type": "http.response.start", "status": problem["status"], "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _log(scope: Scope, status_holder: dict[str, Any], started: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        state = scope.get("state", {})
        seconds = time.perf_counter() - started
        method = str(scope.get("method"))
        observe_request(method, template, int(status_holder["status"]), seconds)
        if not access_logger.isEnabledFor(logging.DEBUG):
            return
        access_logger.debug(
            "request",
            extra={
                "method": method,
                "route": template,
                "status": status_holder["status"],
                "duration_ms": round(seconds * 1000, 2),
                "user_id": state.get("user_id"),
            },
        )


class _BodyTooLarge(Exception):
    pass
