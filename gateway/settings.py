"""Gateway configuration, read from the environment (and an optional ``.env`` file).

Every variable is documented in ``docs/configuration.md`` and listed in ``.env.example``.
Secrets are :class:`pydantic.SecretStr` and are never printed. Use :func:`load_settings`
rather than instantiating :class:`Settings` directly: it also refuses legacy variables
and turns validation failures into a :class:`ConfigError` with one readable message.
"""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from dotenv import dotenv_values
from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.sso.config import OidcProvider

#: Variables an older layout used. They are refused, never silently honoured.
LEGACY_VARIABLES: dict[str, str] = {
    "POSTGRES_USER": "AUTH_DB_USER (auth database) or FHIR_DB_USER / EHRBASE_DB_USER (compose only)",
    "POSTGRES_PASSWORD": "AUTH_DB_PASSWORD (auth database) or FHIR_DB_PASSWORD / EHRBASE_DB_PASSWORD "
    "(compose only)",
    "POSTGRES_DB": "AUTH_DB_NAME (auth database) or FHIR_DB_NAME / EHRBASE_DB_NAME (compose only)",
    "DATABASE_URL": "AUTH_DATABASE_URL (or AUTH_DB_HOST/PORT/NAME/USER/PASSWORD)",
    "EHRBASE_USER": "EHRBASE_API_USER (clinical reads/writes) and EHRBASE_API_ADMIN_USER (templates)",
    "EHRBASE_PASSWORD": "EHRBASE_API_PASSWORD and EHRBASE_API_ADMIN_PASSWORD",
}

#: Variables that no longer mean anything. They are ignored with a warning naming what to use instead:
#: refusing them would stop deployments (``.env.example`` listed them) over a value that changes
#: neither safety nor correctness.
IGNORED_VARIABLES: dict[str, str] = {
    "UPSTREAM_MAX_KEEPALIVE": "it capped idle upstream connections, which the aiohttp client does not "
    "count separately (idle connections stay within UPSTREAM_MAX_CONNECTIONS). Use "
    "UPSTREAM_KEEPALIVE_SECONDS to set how long an idle connection is kept (0: close after every call, "
    "as UPSTREAM_MAX_KEEPALIVE=0 did)",
}

DEFAULT_SQLITE_PATH = Path("var/auth.db")

logger = logging.getLogger("gateway.settings")


class ConfigError(Exception):
    """Configuration that cannot start the gateway; the message names each variable and its fix."""


class Environment(StrEnum):
    development = "development"
    production = "production"


class FhirAuthMode(StrEnum):
    none = "none"
    basic = "basic"
    bearer = "bearer"


class Settings(BaseSettings):
    """All configuration of one gateway process."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        frozen=True,
    )

    # --- general -------------------------------------------------------------------------------
    gateway_env: Environment = Environment.development
    gateway_secret_key: SecretStr | None = Field(
        default=None,
        description="Master secret for signing tokens and cursors (>= 32 characters). "
        "Required in production; a random per-process key is used in development.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    data_dir: Path = Path("var")

    # --- auth database -------------------------------------------------------------------------
    auth_database_url: str | None = None
    auth_db_host: str | None = None
    auth_db_port: int = Field(default=5432, ge=1, le=65535)
    auth_db_name: str = "gateway_auth"
    auth_db_user: str = "gateway"
    auth_db_password: SecretStr = SecretStr("")
    auth_db_sqlite_path: Path = DEFAULT_SQLITE_PATH
    auth_db_pool_size: int = Field(default=10, ge=1, le=200)
    auth_db_max_overflow: int = Field(default=10, ge=0, le=200)
    auth_db_pool_timeout: float = Field(default=5.0, gt=0)
    auth_db_auto_migrate: bool | None = None
    auth_db_hot_pool_size: int = Field(
        default=8,
        ge=1,
        le=100,
        description="Connections per process for the per-request authorisation check and the audit writer "
        "(PostgreSQL only; a pool of its own beside AUTH_DB_POOL_SIZE).",
    )

    # --- sessions and tokens -------------------------------------------------------------------
    jwt_issuer: str = "fhir-openehr-gateway"
    jwt_audience: str = "fhir-openehr-gateway"
    access_token_ttl_seconds: int = Field(default=900, ge=30, le=3600)
    cookie_secure: bool = True
    cookie_samesite: Literal["strict", "lax"] = "strict"
    cookie_domain: str | None = None
    totp_encryption_key: SecretStr | None = Field(
        default=None, description="Fernet key encrypting TOTP secrets at rest."
    )
    argon2_time_cost: int = Field(default=3, ge=1, le=20)
    argon2_memory_cost_kib: int = Field(default=65536, ge=8192, le=1048576)
    argon2_parallelism: int = Field(default=4, ge=1, le=16)
    authz_cache_ms: int = Field(
        default=500,
        ge=0,
        le=1000,
        description="How long a process may reuse a positive authorisation check, in milliseconds (0: off). "
        "Logout, revocation, disabling and revoked care-team links reach every worker within this bound.",
    )

    # --- single sign-on (OpenID Connect) ------------------------------------------------------
    oidc_providers: Annotated[list[OidcProvider], NoDecode] = Field(
        default_factory=list,
        description="The identity providers, as a JSON list (docs/sso.md). Empty: local accounts only.",
    )
    gateway_public_url: AnyHttpUrl | None = Field(
        default=None,
        description="The gateway's address as browsers reach it; the SSO callback is built from it, "
        "never from a request's Host header.",
    )
    frontend_url: AnyHttpUrl | None = Field(
        default=None,
        description="Where the browser goes after an SSO login or logout (default: GATEWAY_PUBLIC_URL).",
    )
    oidc_login_ttl_seconds: int = Field(default=600, ge=60, le=1800)

    # --- the FHIR face (/fhir) -------------------------------------------------------------------
    fhir_inline_attachment_max_bytes: int = Field(
        default=32_768,
        ge=0,
        le=1_000_000,
        description="Letter texts up to this size (UTF-8 bytes) are inlined in a DocumentReference; "
        "longer ones are linked as a Binary URL.",
    )
    fhir_document_cache_size: int = Field(
        default=512,
        ge=0,
        le=100_000,
        description="Mapped DocumentReferences kept in each process's memory (5 minutes at most; 0: off).",
    )

    # --- HAPI FHIR -----------------------------------------------------------------------------
    fhir_server_url: AnyHttpUrl = AnyHttpUrl("http://localhost:8080/fhir")
    fhir_auth_mode: FhirAuthMode = FhirAuthMode.none
    fhir_username: str | None = None
    fhir_password: SecretStr | None = None
    fhir_bearer_token: SecretStr | None = None

    # --- EHRbase -------------------------------------------------------------------------------
    ehrbase_url: AnyHttpUrl = AnyHttpUrl("http://localhost:8081/ehrbase")
    ehrbase_api_user: str | None = None
    ehrbase_api_password: SecretStr | None = None
    ehrbase_api_admin_user: str | None = None
    ehrbase_api_admin_password: SecretStr | None = None
    ehrbase_subject_namespace: str = Field(default="fhir-patient", pattern=r"^[a-zA-Z][a-zA-Z0-9\-_:/&+?]*$")
    letter_template_id: str = "gateway.clinical_letter.v1"
    ehrbase_sync_templates_on_startup: bool = False

    # --- upstream resilience (both HAPI FHIR and EHRbase) --------------------------------------
    upstream_connect_timeout: float = Field(default=3.0, gt=0)
    upstream_read_timeout: float = Field(default=10.0, gt=0)
    upstream_total_timeout: float = Field(default=20.0, gt=0)
    upstream_max_connections: int = Field(default=100, ge=1)
    upstream_keepalive_seconds: float = Field(default=15.0, ge=0)
    upstream_max_response_bytes: int = Field(default=10_485_760, ge=65_536)
    upstream_retry_attempts: int = Field(default=3, ge=1, le=10)
    upstream_retry_max_wait: float = Field(default=2.0, gt=0)
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_reset_seconds: float = Field(default=30.0, gt=0)

    # --- load and the audit trail --------------------------------------------------------------
    max_requests_in_flight: int = Field(
        default=256,
        ge=0,
        description="Requests one worker serves at once; beyond it the answer is 503 overloaded at once "
        "(0: no limit). /health, /ready and /metrics are never refused.",
    )
    audit_batch_max: int = Field(default=500, ge=1, le=10_000)

    # --- operations ----------------------------------------------------------------------------
    metrics_enabled: bool = True
    metrics_token: SecretStr | None = None
    ready_cache_seconds: float = Field(default=5.0, ge=0)
    ready_probe_timeout: float = Field(default=2.0, gt=0)
    shutdown_drain_seconds: int = Field(
        default=20,
        ge=1,
        le=3600,
        description="On SIGTERM: how long requests in flight may take to finish once the process has "
        "stopped accepting connections; then they are cancelled (uvicorn's timeout_graceful_shutdown).",
    )
    shutdown_delay_seconds: int = Field(
        default=0,
        ge=0,
        le=300,
        description="On SIGTERM: how long the process goes on accepting and serving requests, with "
        "GET /ready answering 503, before it stops accepting (time for a load balancer to notice).",
    )
    tracing_enabled: bool = False
    otel_exporter_otlp_endpoint: str | None = None

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("cors_allow_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin == "*" or not origin.startswith(("http://", "https://")):
                raise ValueError(f"{origin!r} is not an origin like https://frontend.example.org")
        return value

    @field_validator("oidc_providers", mode="before")
    @classmethod
    def _parse_providers(cls, value: Any) -> Any:
        if isinstance(value, str):
            import json

            if not value.strip():
                return []
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON list of providers ({exc.msg} at character {exc.pos})") from None
        return value

    def _sso_problems(self) -> list[str]:
        problems: list[str] = []
        if not self.oidc_providers:
            return problems
        ids = [p.id for p in self.oidc_providers]
        issuers = [p.issuer for p in self.oidc_providers]
        if len(set(ids)) != len(ids):
            problems.append("OIDC_PROVIDERS: two providers share an id")
        if len(set(issuers)) != len(issuers):
            problems.append("OIDC_PROVIDERS: two providers share an issuer (one client per issuer)")
        if self.gateway_public_url is None:
            problems.append("OIDC_PROVIDERS needs GATEWAY_PUBLIC_URL (the callback address browsers reach)")
        if self.gateway_env is Environment.production:
            for provider in self.oidc_providers:
                if provider.allow_insecure_http:
                    problems.append(f"OIDC provider {provider.id!r}: allow_insecure_http is for development")
            for name in ("gateway_public_url", "frontend_url"):
                url = getattr(self, name)
                if url is not None and url.scheme != "https" and url.host not in {"127.0.0.1", "localhost"}:
                    problems.append(f"{name.upper()} must be https in production")
        return problems

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        problems: list[str] = self._sso_problems()
        if self.fhir_auth_mode is FhirAuthMode.basic and not (self.fhir_username and self.fhir_password):
            problems.append("FHIR_AUTH_MODE=basic needs FHIR_USERNAME and FHIR_PASSWORD")
        if self.fhir_auth_mode is FhirAuthMode.bearer and not self.fhir_bearer_token:
            problems.append("FHIR_AUTH_MODE=bearer needs FHIR_BEARER_TOKEN")
        if bool(self.ehrbase_api_user) != bool(self.ehrbase_api_password):
            problems.append("set both EHRBASE_API_USER and EHRBASE_API_PASSWORD, or neither")
        if bool(self.ehrbase_api_admin_user) != bool(self.ehrbase_api_admin_password):
            problems.append("set both EHRBASE_API_ADMIN_USER and EHRBASE_API_ADMIN_PASSWORD, or neither")
        key = self.gateway_secret_key.get_secret_value() if self.gateway_secret_key else ""
        if self.gateway_secret_key is not None and len(key) < 32:
            problems.append("GATEWAY_SECRET_KEY must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        if self.gateway_env is Environment.production:
            if not key:
                problems.append(
                    "GATEWAY_ENV=production needs GATEWAY_SECRET_KEY (e.g. `openssl rand -hex 32`)"
                )
            if not self.totp_encryption_key:
                problems.append(
                    "GATEWAY_ENV=production needs TOTP_ENCRYPTION_KEY (a Fernet key: `python -c "
                    "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`)"
                )
            if not self.cookie_secure:
                problems.append("COOKIE_SECURE=false is only allowed with GATEWAY_ENV=development")
        if self.totp_encryption_key is not None:
            from cryptography.fernet import Fernet

            try:
                Fernet(self.totp_encryption_key.get_secret_value().encode())
            except ValueError:
                problems.append("TOTP_ENCRYPTION_KEY is not a Fernet key (32 url-safe base64-encoded bytes)")
        if self.upstream_total_timeout < self.upstream_read_timeout:
            problems.append("UPSTREAM_TOTAL_TIMEOUT must not be smaller than UPSTREAM_READ_TIMEOUT")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # --- derived values ------------------------------------------------------------------------
    @property
    def uses_embedded_db(self) -> bool:
        """True when the auth database is the embedded SQLite file (no host, no explicit URL)."""
        return self.auth_database_url is None and not self.auth_db_host

    @cached_property
    def computed_auth_database_url(self) -> str:
        """The SQLAlchemy URL of the auth database (async drivers: psycopg 3 or aiosqlite)."""
        if self.auth_database_url:
            return normalise_database_url(self.auth_database_url)
        if self.uses_embedded_db:
            return f"sqlite+aiosqlite:///{self.auth_db_sqlite_path}"
        password = quote(self.auth_db_password.get_secret_value(), safe="")
        user = quote(self.auth_db_user, safe="")
        auth = f"{user}:{password}" if password else user
        return f"postgresql+psycopg://{auth}@{self.auth_db_host}:{self.auth_db_port}/{self.auth_db_name}"

    @property
    def auto_migrate(self) -> bool:
        """Whether the app upgrades the auth database at start-up (default: only the embedded SQLite)."""
        if self.auth_db_auto_migrate is not None:
            return self.auth_db_auto_migrate
        return self.computed_auth_database_url.startswith("sqlite")

    @property
    def public_base(self) -> str:
        """The gateway's public address without a trailing slash (SSO callback and logout)."""
        return str(self.gateway_public_url or "http://127.0.0.1:8000").rstrip("/")

    @property
    def frontend_base(self) -> str:
        """Where browsers return after SSO, without a trailing slash."""
        return str(self.frontend_url or self.gateway_public_url or "http://127.0.0.1:8000").rstrip("/")

    def oidc_provider(self, provider_id: str) -> OidcProvider | None:
        """The configured provider of this id, if any."""
        return next((p for p in self.oidc_providers if p.id == provider_id), None)

    @property
    def fhir_base(self) -> str:
        """The FHIR base URL without a trailing slash."""
        return str(self.fhir_server_url).rstrip("/")

    @property
    def ehrbase_base(self) -> str:
        """The EHRbase base URL (…/ehrbase) without a trailing slash."""
        return str(self.ehrbase_url).rstrip("/")


def normalise_database_url(url: str) -> str:
    """Map plain ``postgresql://`` and ``sqlite://`` URLs to the async drivers the gateway uses."""
    for prefix, replacement in (
        ("postgresql+psycopg://", "postgresql+psycopg://"),
        ("postgresql://", "postgresql+psycopg://"),
        ("postgres://", "postgresql+psycopg://"),
        ("sqlite+aiosqlite://", "sqlite+aiosqlite://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(prefix):
            return replacement + url[len(prefix) :]
    raise ValueError("AUTH_DATABASE_URL must start with postgresql:// or sqlite://")


def _present_variables(environ: dict[str, str], env_file: Path | None) -> set[str]:
    present = {name.upper() for name in environ}
    if env_file is not None and env_file.is_file():
        present |= {name.upper() for name in dotenv_values(env_file)}
    return present


def find_legacy_variables(environ: dict[str, str], env_file: Path | None = Path(".env")) -> list[str]:
    """Names of legacy variables present in the environment or the ``.env`` file."""
    present = _present_variables(environ, env_file)
    return [name for name in LEGACY_VARIABLES if name in present]


def find_ignored_variables(environ: dict[str, str], env_file: Path | None = Path(".env")) -> list[str]:
    """Names of variables that are no longer read, present in the environment or the ``.env`` file."""
    present = _present_variables(environ, env_file)
    return [name for name in IGNORED_VARIABLES if name in present]


def _format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        location = "_".join(str(part) for part in item["loc"]).upper()
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  - {location or 'configuration'}: {message}")
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Read and check the configuration.

    Args:
        **overrides: values that take precedence over the environment (used by tests and the CLI).

    Returns:
        The validated settings.

    Variables that no longer mean anything (:data:`IGNORED_VARIABLES`) are logged as a warning each.

    Raises:
        ConfigError: legacy variables are present or a value is invalid; the message says what to change.
    """
    environ = dict(os.environ)
    legacy = find_legacy_variables(environ)
    if legacy:
        details = "\n".join(f"  - {name}: use {LEGACY_VARIABLES[name]}" for name in legacy)
        raise ConfigError(f"Legacy configuration variables are no longer read; rename them:\n{details}")
    for name in find_ignored_variables(environ):
        logger.warning("%s is no longer read and is ignored: %s", name, IGNORED_VARIABLES[name])
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(
            "Invalid configuration (see docs/configuration.md):\n" + _format_validation_error(exc)
        ) from None


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain values, with every secret shown as ``**********``."""
    result: dict[str, Any] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = "**********" if value.get_secret_value() else ""
        elif isinstance(value, Path | AnyHttpUrl | StrEnum):
            value = str(value)
        elif name == "oidc_providers":  # client secrets show as ********** (pydantic's JSON of SecretStr)
            value = [provider.model_dump(mode="json") for provider in value]
        result[name.upper()] = value
    url = settings.computed_auth_database_url
    result["AUTH_DATABASE_URL (effective)"] = _redact_url(url)
    if settings.auth_database_url:
        result["AUTH_DATABASE_URL"] = _redact_url(url)
    return result


def _redact_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:**********@{host}" if ":" in credentials else url
