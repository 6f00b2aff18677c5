"""The app factory, its lifespan and the liveness endpoint; the embedded SQLite default."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import create_engine, inspect

from gateway.settings import Settings
from tests.conftest import running_app


async def test_health_is_ok_without_dependencies(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(auth_db_sqlite_path=tmp_path / "auth.db")
    async with running_app(settings) as client:
        response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_embedded_default_creates_and_migrates_sqlite(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    path = tmp_path / "nested" / "auth.db"
    async with running_app(make_settings(auth_db_sqlite_path=path)) as client:
        assert (await client.get("/health")).status_code == 200
    engine = create_engine(f"sqlite:///{path}")
    try:
        assert {"user", "audit_event", "session"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


async def test_health_on_postgres(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200


async def test_openapi_docs_are_served(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    async with running_app(make_settings(auth_db_sqlite_path=tmp_path / "a.db")) as client:
        assert (await client.get("/docs")).status_code == 200
        schema = (await client.get("/openapi.json")).json()
    assert "/health" in schema["paths"]


async def test_request_id_is_echoed_when_well_formed_and_replaced_otherwise(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with running_app(make_settings(auth_db_sqlite_path=tmp_path / "a.db")) as client:
        good = await client.get("/health", headers={"X-Request-ID": "abc-123-def-456"})
        bad = await client.get("/health", headers={"X-Request-ID": "evil\tvalue; injected"})
    assert good.headers["x-request-id"] == "abc-123-def-456"
    assert bad.headers["x-request-id"] != "evil\tvalue; injected"
    assert len(bad.headers["x-request-id"]) == 32


async def test_unknown_route_is_problem_json(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    async with running_app(make_settings(auth_db_sqlite_path=tmp_path / "a.db")) as client:
        response = await client.get("/no-such-route")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "not_found"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"


async def test_oversize_body_is_refused_with_413(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with running_app(
        make_settings(auth_db_sqlite_path=tmp_path / "a.db", max_body_bytes=2048)
    ) as client:
        response = await client.post("/health", content=b"x" * 4096)
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
