"""CORS for a browser frontend on another origin: its preflights pass with credentials, others' do not."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gateway.settings import Settings
from tests.conftest import running_app

FRONTEND = "http://localhost:5173"


async def test_the_frontends_preflight_passes_and_names_what_it_may_send(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(cors_allow_origins=[FRONTEND], auth_db_sqlite_path=tmp_path / "auth.db")
    async with running_app(settings) as client:
        response = await client.options(
            "/patients/1001/letters",
            headers={
                "Origin": FRONTEND,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, x-csrf-token, idempotency-key",
            },
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == FRONTEND
        assert response.headers["access-control-allow-credentials"] == "true"
        allowed = {
            name.strip().lower() for name in response.headers["access-control-allow-headers"].split(",")
        }
        assert {"content-type", "x-csrf-token", "idempotency-key", "if-match"} <= allowed


async def test_the_frontend_may_read_versions_locations_and_replays(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(cors_allow_origins=[FRONTEND], auth_db_sqlite_path=tmp_path / "auth.db")
    async with running_app(settings) as client:
        response = await client.get("/health", headers={"Origin": FRONTEND})
        exposed = {
            name.strip().lower() for name in response.headers["access-control-expose-headers"].split(",")
        }
        assert {"etag", "location", "x-request-id", "retry-after", "idempotent-replayed"} <= exposed


async def test_another_origin_gets_no_cors_permission(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(cors_allow_origins=[FRONTEND], auth_db_sqlite_path=tmp_path / "auth.db")
    async with running_app(settings) as client:
        preflight = await client.options(
            "/patients/1001/letters",
            headers={
                "Origin": "http://localhost:6666",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-csrf-token",
            },
        )
        assert preflight.status_code == 400
        assert "access-control-allow-origin" not in preflight.headers
        read = await client.get("/health", headers={"Origin": "http://localhost:6666"})
        assert "access-control-allow-origin" not in read.headers


async def test_the_gateways_own_refusals_are_readable_by_the_frontend(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A 413 the middleware gives before any route runs still carries the CORS headers: without them
    the browser hides the problem JSON and the frontend sees only a network error."""
    settings = make_settings(
        cors_allow_origins=[FRONTEND], auth_db_sqlite_path=tmp_path / "auth.db", max_body_bytes=2048
    )
    async with running_app(settings) as client:
        response = await client.post(
            "/patients/1001/letters", content=b"x" * 4096, headers={"Origin": FRONTEND}
        )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert response.headers["access-control-allow-origin"] == FRONTEND
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
