"""Optional tracing: off by default, and a missing ``tracing`` extra never stops the gateway."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi import FastAPI

from gateway.settings import Settings
from gateway.tracing import setup_tracing, tracing_available
from tests.conftest import running_app


def test_off_unless_enabled(make_settings: Callable[..., Settings]) -> None:
    assert setup_tracing(FastAPI(), make_settings()) is False
    assert "opentelemetry.sdk" not in sys.modules or tracing_available()


@pytest.mark.skipif(tracing_available(), reason="the tracing extra is installed")
def test_enabled_without_the_extra_warns_and_continues(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.tracing"):
        assert setup_tracing(FastAPI(), make_settings(tracing_enabled=True)) is False
    assert "uv sync --extra tracing" in caplog.text


async def test_app_serves_with_tracing_enabled(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(auth_db_sqlite_path=tmp_path / "a.db", tracing_enabled=True)
    async with running_app(settings) as client:
        assert (await client.get("/health")).status_code == 200
