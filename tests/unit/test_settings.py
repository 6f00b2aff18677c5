"""Settings: computed database URL, the embedded default, legacy variables, redaction."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import ConfigError, Settings, load_settings, redacted


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(
            ("AUTH_", "FHIR_", "EHRBASE_", "GATEWAY_", "POSTGRES_", "COOKIE_", "TOTP_", "UPSTREAM_")
        ) or name in {"DATABASE_URL"}:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_embedded_sqlite_is_the_default() -> None:
    settings = load_settings()
    assert settings.uses_embedded_db
    assert settings.computed_auth_database_url == "sqlite+aiosqlite:///var/auth.db"
    assert settings.auto_migrate is True


def test_postgres_url_is_computed_from_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_DB_HOST", "db.internal")
    monkeypatch.setenv("AUTH_DB_PORT", "6543")
    monkeypatch.setenv("AUTH_DB_NAME", "auth")
    monkeypatch.setenv("AUTH_DB_USER", "gw")
    monkeypatch.setenv("AUTH_DB_PASSWORD", "p@ss:w/rd")
    settings = load_settings()
    assert not settings.uses_embedded_db
    assert (
        settings.computed_auth_database_url == "postgresql+psycopg://gw:p%40ss%3Aw%2Frd@db.internal:6543/auth"
    )
    assert settings.auto_migrate is False


def test_explicit_url_overrides_parts_and_gets_the_async_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_DB_HOST", "ignored")
    monkeypatch.setenv("AUTH_DATABASE_URL", "postgresql://u:p@elsewhere:5432/x")
    assert load_settings().computed_auth_database_url == "postgresql+psycopg://u:p@elsewhere:5432/x"


def test_unsupported_database_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_DATABASE_URL", "mysql://u:p@h/x")
    with pytest.raises(ValueError, match="AUTH_DATABASE_URL must start with"):
        _ = load_settings().computed_auth_database_url


@pytest.mark.parametrize(
    ("legacy", "replacement"),
    [
        ("POSTGRES_USER", "AUTH_DB_USER"),
        ("POSTGRES_PASSWORD", "AUTH_DB_PASSWORD"),
        ("POSTGRES_DB", "AUTH_DB_NAME"),
        ("DATABASE_URL", "AUTH_DATABASE_URL"),
        ("EHRBASE_USER", "EHRBASE_API_USER"),
        ("EHRBASE_PASSWORD", "EHRBASE_API_PASSWORD"),
    ],
)
def test_legacy_variables_are_refused_naming_the_replacement(
    monkeypatch: pytest.MonkeyPatch, legacy: str, replacement: str
) -> None:
    monkeypatch.setenv(legacy, "x")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert legacy in str(info.value)
    assert replacement in str(info.value)


def test_legacy_variables_in_dotenv_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("POSTGRES_USER=old\nEHRBASE_USER=old\n")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "POSTGRES_USER" in str(info.value)
    assert "EHRBASE_USER" in str(info.value)


def test_the_retired_keepalive_cap_is_ignored_with_a_warning_naming_its_replacement(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("UPSTREAM_MAX_KEEPALIVE", "0")
    with caplog.at_level(logging.WARNING, logger="gateway.settings"):
        settings = load_settings()
    assert settings.upstream_keepalive_seconds == 15
    [record] = [r for r in caplog.records if r.name == "gateway.settings"]
    assert record.levelno == logging.WARNING
    assert "UPSTREAM_MAX_KEEPALIVE" in record.getMessage()
    assert "UPSTREAM_KEEPALIVE_SECONDS" in record.getMessage()


def test_the_retired_keepalive_cap_in_the_dotenv_file_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / ".env").write_text("UPSTREAM_MAX_KEEPALIVE=20\nUPSTREAM_KEEPALIVE_SECONDS=5\n")
    with caplog.at_level(logging.WARNING, logger="gateway.settings"):
        settings = load_settings()
    assert settings.upstream_keepalive_seconds == 5
    assert "UPSTREAM_MAX_KEEPALIVE is no longer read" in caplog.text


def test_no_warning_without_retired_variables(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.settings"):
        load_settings()
    assert not [r for r in caplog.records if r.name == "gateway.settings"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FHIR_AUTH_MODE": "basic"}, "FHIR_AUTH_MODE=basic needs FHIR_USERNAME and FHIR_PASSWORD"),
        ({"FHIR_AUTH_MODE": "bearer"}, "FHIR_AUTH_MODE=bearer needs FHIR_BEARER_TOKEN"),
        ({"FHIR_AUTH_MODE": "kerberos"}, "FHIR_AUTH_MODE"),
        ({"EHRBASE_API_USER": "u"}, "EHRBASE_API_PASSWORD"),
        ({"GATEWAY_SECRET_KEY": "short"}, "GATEWAY_SECRET_KEY must be at least 32 characters"),
        ({"GATEWAY_ENV": "production"}, "GATEWAY_ENV=production needs GATEWAY_SECRET_KEY"),
        ({"TOTP_ENCRYPTION_KEY": "not-a-key"}, "TOTP_ENCRYPTION_KEY is not a Fernet key"),
        ({"AUTH_DB_PORT": "99999"}, "AUTH_DB_PORT"),
        ({"FHIR_SERVER_URL": "not a url"}, "FHIR_SERVER_URL"),
        ({"EHRBASE_SUBJECT_NAMESPACE": "has.dots"}, "EHRBASE_SUBJECT_NAMESPACE"),
        ({"CORS_ALLOW_ORIGINS": "*"}, "CORS_ALLOW_ORIGINS"),
    ],
)
def test_bad_configuration_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert message in str(info.value)


def test_cors_origins_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", "https://a.example, https://b.example")
    assert load_settings().cors_allow_origins == ["https://a.example", "https://b.example"]


def test_redacted_hides_every_secret() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        auth_db_host="db",
        auth_db_password="db-secret-value",
        gateway_secret_key="k" * 40,
        ehrbase_api_user="u",
        ehrbase_api_password="ehr-secret-value",
        fhir_auth_mode="bearer",
        fhir_bearer_token="fhir-secret-value",
    )
    dumped = json.dumps(redacted(settings), default=str)
    for secret in ("db-secret-value", "ehr-secret-value", "fhir-secret-value", "k" * 40):
        assert secret not in dumped
    assert (
        redacted(settings)["AUTH_DATABASE_URL (effective)"]
        == "postgresql+psycopg://gateway:**********@db:5432/gateway_auth"
    )


def _run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    import os

    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("AUTH_", "EHRBASE_", "POSTGRES_", "FHIR_"))
    }
    base.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_config_show_redacts_secrets(tmp_path: Path) -> None:
    result = _run_cli(
        ["config", "show"],
        {
            "AUTH_DB_HOST": "db",
            "AUTH_DB_PASSWORD": "visible-if-broken",
            "EHRBASE_API_USER": "u",
            "EHRBASE_API_PASSWORD": "also-secret",
        },
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "AUTH_DB_PASSWORD" in result.stdout
    assert "visible-if-broken" not in result.stdout
    assert "also-secret" not in result.stdout
    assert "**********" in result.stdout


def test_cli_stops_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    result = _run_cli(["config", "show"], {"POSTGRES_PASSWORD": "x"}, tmp_path)
    assert result.returncode == 2
    assert "POSTGRES_PASSWORD: use AUTH_DB_PASSWORD" in result.stderr
    assert "Traceback" not in result.stderr
