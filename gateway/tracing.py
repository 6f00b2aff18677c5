"""Optional OpenTelemetry tracing of FastAPI requests and the upstream calls (aiohttp client).

Off unless ``TRACING_ENABLED=true``. Needs the ``tracing`` extra
(``uv sync --extra tracing``); the OpenTelemetry packages are imported only here and only then.
Spans are exported over OTLP/HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the standard
``OTEL_*`` variables of the SDK apply too). Span attributes carry route templates, never bodies.
"""

from __future__ import annotations

import importlib.util
import logging

from fastapi import FastAPI

from gateway.settings import Settings

logger = logging.getLogger("gateway.tracing")

REQUIRED_MODULES = (
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.instrumentation.fastapi",
    "opentelemetry.instrumentation.aiohttp_client",
)


def tracing_available() -> bool:
    """Whether the ``tracing`` extra is installed."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in REQUIRED_MODULES)
    except ModuleNotFoundError:
        return False


def setup_tracing(app: FastAPI, settings: Settings) -> bool:
    """Instrument ``app`` and every aiohttp client session when tracing is enabled and installed.

    The upstream transports create their sessions on first use, after this has run, so their calls to
    HAPI FHIR and EHRbase are traced (span names carry the method; URLs carry no credentials).

    Returns:
        True when instrumentation was installed.
    """
    if not settings.tracing_enabled:
        return False
    if not tracing_available():
        logger.warning("TRACING_ENABLED=true but the tracing extra is missing (uv sync --extra tracing)")
        return False
    from opentelemetry import trace  # type: ignore[import-not-found, unused-ignore]
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found, unused-ignore]
        OTLPSpanExporter,
    )
    from opentelemetry.instrumentation.aiohttp_client import (  # type: ignore[import-not-found, unused-ignore]
        AioHttpClientInstrumentor,
    )
    from opentelemetry.instrumentation.fastapi import (  # type: ignore[import-not-found, unused-ignore]
        FastAPIInstrumentor,
    )
    from opentelemetry.sdk.resources import Resource  # type: ignore[import-not-found, unused-ignore]
    from opentelemetry.sdk.trace import TracerProvider  # type: ignore[import-not-found, unused-ignore]
    from opentelemetry.sdk.trace.export import (  # type: ignore[import-not-found, unused-ignore]
        BatchSpanProcessor,
    )

    provider = TracerProvider(resource=Resource.create({"service.name": "fhir-openehr-gateway"}))
    endpoint = settings.otel_exporter_otlp_endpoint
    exporter = (
        OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces") if endpoint else OTLPSpanExporter()
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls="health,ready,metrics")
    AioHttpClientInstrumentor().instrument(tracer_provider=provider)
    logger.info("OpenTelemetry tracing enabled")
    return True
