"""``/fhir``: the gateway's FHIR R4 face (read-only; ``application/fhir+json``). See ``docs/fhir.md``.

This module holds the CapabilityStatement and what the FHIR routers share; the resources are in
:mod:`gateway.api.fhir_patients` and :mod:`gateway.api.fhir_documents`. Errors under ``/fhir`` are
OperationOutcomes (:mod:`gateway.r4.outcome`, chosen by path in :func:`gateway.errors.problem_response`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response

from gateway.deps import SettingsDep
from gateway.errors import OrjsonResponse
from gateway.r4 import search as params
from gateway.r4.capability import capability_statement
from gateway.r4.outcome import FHIR_JSON, outcome_responses
from gateway.settings import Settings

router = APIRouter(prefix="/fhir", tags=["fhir"])
#: OpenAPI of a route answering one FHIR resource (or a Bundle), errors as OperationOutcome.
FHIR_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {FHIR_JSON: {"schema": {"type": "object"}}}, "description": "A FHIR R4 resource."},
    **outcome_responses(),
}
Prefer = Annotated[str | None, Header(description="`handling=lenient` ignores unknown parameters.")]


def fhir_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """A FHIR JSON answer (``application/fhir+json``)."""
    return OrjsonResponse(body, media_type=FHIR_JSON, headers=headers)


def fhir_base(settings: Settings) -> str:
    """The FHIR face's public base URL (``GATEWAY_PUBLIC_URL`` + ``/fhir``)."""
    return f"{settings.public_base}/fhir"


@router.get("/metadata", summary="CapabilityStatement", responses=FHIR_RESPONSE, response_class=Response)
async def metadata(request: Request, settings: SettingsDep) -> Response:
    """What the FHIR face supports (no authentication needed, no patient data)."""
    params.check_format(request.query_params.get("_format"))
    cached: dict[str, Any] | None = getattr(request.app.state, "capability_statement", None)
    if cached is None:
        try:
            version = package_version("fhir-openehr-gateway")
        except PackageNotFoundError:  # pragma: no cover - running from a plain checkout
            version = "0"
        cached = capability_statement(
            fhir_base=fhir_base(settings), version=version, date=datetime.now(UTC).strftime("%Y-%m-%d")
        )
        request.app.state.capability_statement = cached
    return fhir_response(cached)
