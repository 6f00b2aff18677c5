"""Engine and session management for the auth database (PostgreSQL via psycopg 3, or SQLite)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

SessionFactory = async_sessionmaker[AsyncSession]


def create_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_overflow: int = 10,
    pool_timeout: float = 5.0,
    echo: bool = False,
) -> AsyncEngine:
    """Create the async engine for ``url``.

    PostgreSQL gets a bounded, pre-pinged connection pool and a connect timeout; SQLite gets its
    directory created, foreign keys switched on and WAL journalling.
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs.update(
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            pool_recycle=1800,
            connect_args={"connect_timeout": max(1, int(pool_timeout))},
        )
    engine = create_async_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()


def create_session_factory(engine: AsyncEngine, *, info: dict[str, Any] | None = None) -> SessionFactory:
    """A factory of async sessions that keep loaded objects usable after commit.

    ``info`` is copied into every session's ``Session.info`` (the app puts its authorisation cache there,
    so that commits touching permissions clear it: :mod:`gateway.security.authz`).
    """
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False, info=info)


def create_autocommit_session_factory(
    engine: AsyncEngine, *, info: dict[str, Any] | None = None
) -> SessionFactory:
    """Sessions without an explicit transaction (no BEGIN/COMMIT round trips), sharing ``engine``'s pool.

    For single-statement reads outside the hot path (which uses :mod:`auth_db.hotpath`).
    """
    return async_sessionmaker(
        engine.execution_options(isolation_level="AUTOCOMMIT"),
        class_=AsyncSession,
        expire_on_commit=False,
        info=info,
    )


@asynccontextmanager
async def transaction(factory: SessionFactory) -> AsyncIterator[AsyncSession]:
    """A session whose transaction commits when the block ends normally and rolls back otherwise."""
    async with factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
