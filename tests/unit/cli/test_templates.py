"""``gateway templates sync``: what it prints and how it fails."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import respx
from typer.testing import CliRunner

from gateway.cli import app
from tests import ehrbase_payloads as eb

TEMPLATE_URL = f"{eb.BASE}/definition/template/adl1.4"


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "EHRBASE_URL": "http://ehrbase.test/ehrbase",
        "EHRBASE_API_ADMIN_USER": "ehrbase-admin",
        "EHRBASE_API_ADMIN_PASSWORD": "ehrbase-admin-secret",
        "LOG_JSON": "false",
    }.items():
        monkeypatch.setenv(name, value)


def test_sync_prints_what_it_did(cli_env: None, upstream_mock: respx.MockRouter) -> None:
    upstream_mock.post(TEMPLATE_URL).mock(return_value=httpx.Response(201))
    result = CliRunner().invoke(app, ["templates", "sync"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "gateway.clinical_letter.v1: created"


def test_sync_failure_shows_ehrbase_message_and_exits_1(
    cli_env: None, upstream_mock: respx.MockRouter
) -> None:
    upstream_mock.post(TEMPLATE_URL).mock(
        return_value=eb.xml_error(400, "Supplied template has nil or empty concept")
    )
    result = CliRunner().invoke(app, ["templates", "sync"])
    assert result.exit_code == 1
    assert "Supplied template has nil or empty concept" in result.output


def test_sync_needs_the_admin_credentials(cli_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EHRBASE_API_ADMIN_USER")
    monkeypatch.delenv("EHRBASE_API_ADMIN_PASSWORD")
    result = CliRunner().invoke(app, ["templates", "sync"])
    assert result.exit_code == 2
    assert "EHRBASE_API_ADMIN_USER" in result.output
