"""The app factory and its lifespan.

The lifespan opens what the process shares and closes it on shutdown: the auth database engine and pools,
one client per upstream store, the audit log, the password hasher and the single sign-on providers.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from auth_db.engine import create_autocommit_session_factory, create_engine, create_session_factory
from auth_db.hotpath import create_hot_store
from gateway.api import (
    audit,
    auth,
    break_glass,
    care_team,
    fhir,
    fhir_documents,
    fhir_patients,
    health,
    letters,
    patients,
    sso,
    user_identities,
    users,
)
from gateway.api import metrics as metrics_api
from gateway.api import settings as settings_api
from gateway.audit import AuditLog
from gateway.audit_writer import AuditWriter
from gateway.errors import install_error_handlers
from gateway.logs import configure_logging
from gateway.metrics import PrometheusObserver, install_observer, observe_audit_batch, watch_pool
from gateway.middleware import GatewayMiddleware
from gateway.r4.ids import DocumentIds
from gateway.security.authz import Authoriser, watch_authorisation_changes
from gateway.security.passwords import PasswordService
from gateway.security.principal import Role
from gateway.security.shared_secrets import check_at_startup
from gateway.security.tokens import AccessTokenVerifier
from gateway.services.documents import DocumentCache
from gateway.services.sso import SsoService
from gateway.settings import ConfigError, Settings, load_settings
from gateway.sso.provider import ProviderClient, create_idp_http_client
from gateway.tracing import setup_tracing
from gateway.upstream.ehrbase import create_ehrbase_client
from gateway.upstream.fhir import FhirClient

logger = logging.getLogger("gateway")


def _lifespan(settings: Settings):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.computed_auth_database_url
        if settings.uses_embedded_db:
            logger.info(
                "auth database: embedded SQLite at %s (set AUTH_DB_HOST for PostgreSQL)",
                settings.auth_db_sqlite_path,
            )
        else:
            logger.info("auth database: %s", url.split("@")[-1])
        engine = create_engine(
            url,
            pool_size=settings.auth_db_pool_size,
            max_overflow=settings.auth_db_max_overflow,
            pool_timeout=settings.auth_db_pool_timeout,
        )
        if settings.auto_migrate:
            from auth_db import migrate  # Alembic is imported only where it runs (about 10 MB per worker)

            await asyncio.to_thread(migrate.upgrade, url)
            logger.info("auth database migrated to the latest revision")
        # Refuses to start when the secrets differ from the other replicas' (recorded in the auth database).
        app.state.secrets_check = await check_at_startup(settings)
        hot_store = create_hot_store(
            url,
            engine,
            role_names=[role.value for role in Role],
            pool_size=settings.auth_db_hot_pool_size,
            timeout=settings.auth_db_pool_timeout,
        )
        await hot_store.open()
        authoriser = Authoriser(hot_store, cache_ms=settings.authz_cache_ms)
        info: dict[str, object] = {}
        watch_authorisation_changes(info, authoriser)
        factory = create_session_factory(engine, info=info)
        writer = AuditWriter(hot_store, batch_max=settings.audit_batch_max, on_batch=observe_audit_batch)
        writer.start()
        app.state.settings = settings
        app.state.engine = engine
        app.state.hot_store = hot_store
        app.state.authoriser = authoriser
        app.state.audit_writer = writer
        app.state.session_factory = factory
        app.state.autocommit_session_factory = create_autocommit_session_factory(engine, info=info)
        app.state.audit = AuditLog(app.state.autocommit_session_factory, writer=writer)
        # Argon2 work (the dummy hash checked for unknown usernames) at start-up and off the event loop,
        # not in the first login.
        app.state.password_service = await asyncio.to_thread(PasswordService, settings)
        app.state.fhir = FhirClient(settings)
        app.state.ehrbase = create_ehrbase_client(settings)
        idp_http = create_idp_http_client() if settings.oidc_providers else None
        app.state.sso = (
            SsoService(
                settings,
                factory,
                {p.id: ProviderClient(p, idp_http) for p in settings.oidc_providers},
            )
            if idp_http is not None
            else None
        )
        observer = PrometheusObserver()
        install_observer(app.state.fhir, observer)
        install_observer(app.state.ehrbase, observer)
        watch_pool(engine)  # several workers: each publishes its own pool (gateway.metrics)
        if settings.ehrbase_sync_templates_on_startup:
            from gateway.openehr.templates import sync_at_startup  # lxml only where templates are read

            await sync_at_startup(app.state.ehrbase)
        # Everything loaded so far lives as long as the process: move it out of the garbage collector's
        # sight, so that its full collections, which would otherwise walk every module, class and
        # function object on each pass, stay short (they showed as the slowest requests under load).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            # The server has stopped accepting and drained the requests in flight (or cancelled them after
            # SHUTDOWN_DRAIN_SECONDS). Every audit row handed in is committed first, while the auth DB
            # pools are still open; then the pools close. A step that fails is logged and the next still run.
            await _close_in_order(
                ("shared-secrets check", lambda: app.state.secrets_check.aclose()),  # its background retry
                ("audit writer", writer.close),
                ("EHRbase client", app.state.ehrbase.aclose),
                ("FHIR client", app.state.fhir.aclose),
                *([("identity provider client", idp_http.aclose)] if idp_http is not None else []),
                ("auth DB hot-path pool", hot_store.close),
                ("auth DB engine", engine.dispose),
            )
            logger.info("shutdown: %d audit rows written since start; pools closed", writer.rows)

    return lifespan


async def _close_in_order(*steps: tuple[str, Callable[[], Awaitable[object]]]) -> None:
    for name, close in steps:
        try:
            await close()
        except Exception:
            logger.exception("shutdown: closing the %s failed", name)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the gateway application.

    Args:
        settings: the configuration; read from the environment when omitted. A configuration
            error stops the process with a readable message instead of a traceback.
    """
    if settings is None:
        try:
            settings = load_settings()
        except ConfigError as exc:
            print(f"gateway: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    configure_logging(level=settings.log_level, json_output=settings.log_json)
    app = FastAPI(
        title="FHIR/openEHR gateway",
        version="0.1.0",
        summary="One API for patient demographics (HAPI FHIR) and clinical letters (EHRbase).",
        lifespan=_lifespan(settings),
        # FastAPI's own OpenTelemetry hooks look up the global providers on every request; tracing, when
        # enabled, is set up explicitly by gateway.tracing instead.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.token_verifier = AccessTokenVerifier(settings)
    app.state.document_ids = DocumentIds(settings)
    app.state.document_cache = DocumentCache(settings.fhir_document_cache_size, ttl_seconds=300)
    install_error_handlers(app)
    # Routes are matched in this order, one after the other: the PHI routes every page view uses come
    # first, right after the probes.
    app.include_router(health.router)
    app.include_router(patients.router)
    app.include_router(letters.router)
    app.include_router(fhir.router)
    app.include_router(fhir_patients.router)
    app.include_router(fhir_documents.router)
    if settings.metrics_enabled:
        app.include_router(metrics_api.router)
    app.include_router(auth.router)
    app.include_router(sso.router)
    app.include_router(users.router)
    app.include_router(user_identities.router)
    app.include_router(settings_api.router)
    app.include_router(break_glass.router)
    app.include_router(care_team.me_router)
    app.include_router(care_team.admin_router)
    app.include_router(audit.router)
    app.add_middleware(
        GatewayMiddleware,
        max_body_bytes=settings.max_body_bytes,
        hsts=True,
        max_in_flight=settings.max_requests_in_flight,
    )
    # CORS goes outermost (added last), so that the answers the gateway middleware gives by itself
    # (413 payload_too_large, 503 overloaded) carry the CORS headers too and a browser frontend can read
    # their problem JSON and Retry-After instead of seeing an opaque network error.
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "If-Match",
                "Idempotency-Key",
                "X-CSRF-Token",
                "X-Request-ID",
            ],
            expose_headers=[
                "ETag",
                "Location",
                "Last-Modified",
                "X-Request-ID",
                "Retry-After",
                "Idempotent-Replayed",
            ],
        )
    setup_tracing(app, settings)
    return app
