"""The one error model of the API: RFC 9457 problem details with a stable ``code``.

Every error a client sees is an :class:`ApiError` (or a subclass) rendered as
``application/problem+json``. Request validation failures become ``422 validation_error``;
anything unexpected becomes ``500 internal_error`` without exception text. The catalogue of
codes is documented in ``docs/api/errors.md``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
logger = logging.getLogger("gateway.errors")


class FieldError(BaseModel):
    """One invalid input field."""

    loc: list[str | int] = Field(description="Where the problem is, e.g. ['body', 'name', 0, 'family'].")
    msg: str
    type: str


class UpstreamIssue(BaseModel):
    """One issue reported by HAPI FHIR (OperationOutcome.issue) or EHRbase (error body)."""

    severity: str | None = None
    code: str | None = None
    diagnostics: str | None = None
    location: list[str] | None = None


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every error response."""

    type: str = Field(default="about:blank", description="A URI naming the problem type.")
    title: str
    status: int
    code: str = Field(description="Stable machine-readable error code; see docs/api/errors.md.")
    detail: str | None = None
    request_id: str | None = None
    errors: list[FieldError] | None = None
    upstream_issues: list[UpstreamIssue] | None = None
    current_version: str | None = Field(default=None, description="Current version on a 412 conflict.")
    retry_after: int | None = Field(default=None, description="Seconds to wait, on 429 and 503.")


class ApiError(Exception):
    """Base of every error the API returns on purpose."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        status: int | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        upstream_issues: list[UpstreamIssue] | None = None,
        current_version: str | None = None,
        retry_after: int | None = None,
        errors: list[FieldError] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if title is not None:
            self.title = title
        self.headers = dict(headers or {})
        self.upstream_issues = upstream_issues
        self.current_version = current_version
        self.retry_after = retry_after
        self.errors = errors
        if retry_after is not None:
            self.headers.setdefault("Retry-After", str(retry_after))

    def to_problem(self, request_id: str | None) -> Problem:
        return Problem(
            title=self.title,
            status=self.status,
            code=self.code,
            detail=self.detail,
            request_id=request_id,
            errors=self.errors,
            upstream_issues=self.upstream_issues,
            current_version=self.current_version,
            retry_after=self.retry_after,
        )


class BadRequest(ApiError):
    status, code, title = 400, "bad_request", "Bad request"


class NotAuthenticated(ApiError):
    status, code, title = 401, "not_authenticated", "Authentication required"

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(detail, **kwargs)


class Forbidden(ApiError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(ApiError):
    status, code, title = 404, "not_found", "Not found"


class NotAcceptable(ApiError):
    status, code, title = 406, "not_acceptable", "Not acceptable"


class Gone(ApiError):
    status, code, title = 410, "gone", "Gone"


class Conflict(ApiError):
    status, code, title = 409, "conflict", "Conflict"


class PreconditionFailed(ApiError):
    status, code, title = 412, "precondition_failed", "Precondition failed"


class PayloadTooLarge(ApiError):
    status, code, title = 413, "payload_too_large", "Request body too large"


class UnprocessableEntity(ApiError):
    status, code, title = 422, "validation_error", "Invalid request"


class PreconditionRequired(ApiError):
    """428: the route needs ``If-Match`` and the request has none (the API's only 428)."""

    status, code, title = 428, "if_match_required", "Precondition required"


class TooManyRequests(ApiError):
    status, code, title = 429, "too_many_requests", "Too many requests"


class ServiceUnavailable(ApiError):
    status, code, title = 503, "service_unavailable", "Service unavailable"


class UpstreamError(ApiError):
    """A problem with HAPI FHIR or EHRbase (502 bad response, 503 unreachable, 504 timeout)."""

    status, code, title = 502, "upstream_bad_response", "Upstream answered badly"


class UpstreamUnavailable(UpstreamError):
    status, code, title = 503, "upstream_unavailable", "Upstream unavailable"


class UpstreamTimeout(UpstreamError):
    status, code, title = 504, "upstream_timeout", "Upstream timed out"


class AuthDatabaseUnavailable(ApiError):
    status, code, title = 503, "auth_db_unavailable", "Auth database unavailable"


def request_id_of(request: Request) -> str | None:
    value = getattr(request.state, "request_id", None)
    return value if isinstance(value, str) else None


class OrjsonResponse(JSONResponse):
    """A JSON response serialised with orjson (the gateway's own JSON answers: problems, FHIR resources)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def problem_response(request: Request, error: ApiError) -> JSONResponse:
    """The error as problem+json, or as an OperationOutcome on the FHIR face (``/fhir``).

    The FHIR face is read-only, so its request errors are 400 (FHIR's status for a bad search or id)
    where the JSON API answers 422.
    """
    from gateway.r4.outcome import FHIR_JSON, is_fhir_path, outcome_of

    if is_fhir_path(request.url.path):
        status = 400 if error.status == 422 else error.status
        return OrjsonResponse(
            outcome_of(error, request_id_of(request)),
            status_code=status,
            headers=error.headers,
            media_type=FHIR_JSON,
        )
    problem = error.to_problem(request_id_of(request))
    return OrjsonResponse(
        problem.model_dump(exclude_none=True),
        status_code=error.status,
        headers=error.headers,
        media_type=PROBLEM_JSON,
    )


@dataclass(frozen=True, slots=True)
class StatusText:
    """What the gateway says about one HTTP error status, wherever it says it."""

    code: str  #: the problem code of a bare HTTP error of this status (e.g. an unknown route's 404)
    title: str  #: the problem's title
    description: str  #: the OpenAPI response description
    issue: str  #: the FHIR ``IssueType`` of the FHIR face's OperationOutcome


#: The one table of error statuses: problem code and title, OpenAPI description, FHIR issue type.
STATUSES: dict[int, StatusText] = {
    400: StatusText("bad_request", "Bad request", "Bad request", "invalid"),
    401: StatusText("not_authenticated", "Authentication required", "Not authenticated", "login"),
    403: StatusText("forbidden", "Forbidden", "Forbidden", "forbidden"),
    404: StatusText("not_found", "Not found", "Not found", "not-found"),
    405: StatusText("method_not_allowed", "Method not allowed", "Method not allowed", "not-supported"),
    406: StatusText("not_acceptable", "Not acceptable", "Not acceptable", "not-supported"),
    409: StatusText("conflict", "Conflict", "Conflict", "conflict"),
    410: StatusText("gone", "Gone", "Gone", "deleted"),
    412: StatusText(
        "precondition_failed", "Precondition failed", "Precondition failed (stale version)", "conflict"
    ),
    413: StatusText("payload_too_large", "Request body too large", "Body too large", "too-costly"),
    415: StatusText(
        "unsupported_media_type", "Unsupported media type", "Unsupported media type", "not-supported"
    ),
    422: StatusText("validation_error", "Invalid request", "Invalid input", "invalid"),
    428: StatusText(
        "if_match_required", "Precondition required", "Precondition required (If-Match missing)", "required"
    ),
    429: StatusText("too_many_requests", "Too many requests", "Too many requests", "throttled"),
    500: StatusText("internal_error", "Internal error", "Internal error", "exception"),
    502: StatusText(
        "upstream_bad_response", "Upstream answered badly", "Upstream answered badly", "transient"
    ),
    503: StatusText(
        "service_unavailable", "Service unavailable", "Upstream or auth database unavailable", "transient"
    ),
    504: StatusText("upstream_timeout", "Upstream timed out", "Upstream timed out", "timeout"),
}


def _is_db_outage(exc: BaseException) -> bool:
    from sqlalchemy.exc import DBAPIError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, OperationalError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def install_error_handlers(app: FastAPI) -> None:
    """Render every error as problem+json; nothing unexpected leaks exception text."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return problem_response(request, exc)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            FieldError(
                loc=[part if isinstance(part, int) else str(part) for part in item.get("loc", ())],
                msg=str(item.get("msg", "invalid")),
                type=str(item.get("type", "value_error")),
            )
            for item in exc.errors()
        ]
        return problem_response(request, UnprocessableEntity("The request is not valid.", errors=errors))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        known = STATUSES.get(exc.status_code)
        code, title = (known.code, known.title) if known else ("http_error", "HTTP error")
        detail = exc.detail if isinstance(exc.detail, str) else None
        headers = dict(exc.headers) if exc.headers else None
        error = ApiError(detail, code=code, status=exc.status_code, title=title, headers=headers)
        return problem_response(request, error)

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        # Registered for SQLAlchemy errors so an outage is answered here (and not re-raised to the
        # server as an unhandled error, which is what the catch-all handler below does by design).
        if _is_db_outage(exc):
            logger.warning("auth database unavailable: %s", type(exc).__name__)
            return problem_response(
                request, AuthDatabaseUnavailable("The auth database cannot be reached.", retry_after=5)
            )
        logger.error("auth database error: %s", type(exc).__name__)
        return problem_response(request, ApiError("An unexpected error occurred."))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if _is_db_outage(exc):
            return await database_error(request, exc)
        logger.exception("unhandled error", exc_info=exc)
        return problem_response(request, ApiError("An unexpected error occurred."))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(SQLAlchemyError, database_error)
    app.add_exception_handler(Exception, unexpected)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries declaring problem+json bodies for the given statuses."""
    return {
        status: {
            "model": Problem,
            # The schema under the media type actually sent, so generated clients type error bodies.
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
            "description": _describe(status),
        }
        for status in statuses
    }


def _describe(status: int) -> str:
    known = STATUSES.get(status)
    return known.description if known else "Error"
