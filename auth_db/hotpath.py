"""The auth database on the per-request hot path: one authorisation statement, one audit batch insert.

Everything else (logins, administration, settings, the audit API) uses SQLModel sessions. The two
statements every PHI request runs are kept off the ORM:

- :meth:`HotStore.authorize` answers, in **one** statement, "is this session family alive, is the
  account active, what are its roles, and may it touch this patient (care-team link or unexpired
  break-glass grant)?", plus the cached EHR id of the patient;
- :meth:`HotStore.insert_audit` writes a batch of audit rows in one transaction (the group commit of
  :mod:`gateway.audit_writer`).

Both statements are defined once as SQLAlchemy Core constructs over the ORM's own tables, so they
cannot drift from the schema. On PostgreSQL they run on a psycopg 3 async connection pool of their own
(:class:`PostgresHotStore`: autocommit, prepared statements, no pool pre-ping, no ORM unit of work);
on the embedded SQLite database through SQLAlchemy Core on the app's engine (:class:`CoreHotStore`).
``docs/performance.md`` has the measurement that chose the raw pool over Core on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson
import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy import Select, bindparam, exists, insert, select
from sqlalchemy.dialects.postgresql import psycopg as pg_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_db.models import (
    AuditEvent,
    AuthSession,
    BreakGlassGrant,
    CareTeamLink,
    PatientEhr,
    SystemSetting,
    User,
    UserRole,
)

#: The audit columns a batch insert writes, in this order (``id`` comes from the sequence).
AUDIT_COLUMNS: tuple[str, ...] = (
    "occurred_at",
    "actor_user_id",
    "actor_username",
    "action",
    "outcome",
    "target_type",
    "target_id",
    "patient_id",
    "ehr_id",
    "resource_ids",
    "reason",
    "break_glass",
    "client_addr",
    "request_id",
    "details",
)
#: The system setting the authorisation statement reads along (admins without TOTP).
REQUIRE_2FA_KEY = "require_2fa_for_admins"


class HotStoreUnavailable(Exception):
    """The auth database could not answer (unreachable, pool exhausted, or too slow)."""


@dataclass(frozen=True, slots=True)
class AuthzRow:
    """What the authorisation statement found for a live session (``None`` is returned otherwise)."""

    username: str
    display_name: str
    must_change_password: bool
    totp_enabled: bool
    roles: frozenset[str]
    #: The stored ``require_2fa_for_admins`` override, or None (the caller applies the default).
    require_2fa_for_admins: Any
    care_team: bool
    break_glass: bool
    ehr_id: str | None


def authorize_statement(role_names: Sequence[str]) -> Select[Any]:
    """The one authorisation statement (bind parameters: user_id, family_id, patient_id, now).

    A session family is alive while one of its rows is unused, unrevoked and unexpired (the rows of a
    family are its successive refresh tokens; only the newest is unused). With ``patient_id`` NULL the
    relationship columns are false and the EHR id NULL.
    """
    user, session = User.__table__, AuthSession.__table__  # type: ignore[attr-defined]
    roles, setting = UserRole.__table__, SystemSetting.__table__  # type: ignore[attr-defined]
    care, grant, ehr = CareTeamLink.__table__, BreakGlassGrant.__table__, PatientEhr.__table__  # type: ignore[attr-defined]
    patient_id = bindparam("patient_id", type_=care.c.patient_id.type)
    now = bindparam("now", type_=session.c.expires_at.type)
    role_columns = [
        exists()
        .where(roles.c.user_id == user.c.id, roles.c.role == bindparam(f"role_{name}", value=name))
        .label(f"role_{name}")
        for name in role_names
    ]
    return (
        select(
            user.c.username,
            user.c.display_name,
            user.c.must_change_password,
            user.c.totp_enabled,
            select(setting.c.value)
            .where(setting.c.key == REQUIRE_2FA_KEY)
            .scalar_subquery()
            .label("require_2fa"),
            exists()
            .where(care.c.user_id == user.c.id, care.c.patient_id == patient_id, care.c.revoked_at.is_(None))
            .label("care_team"),
            exists()
            .where(
                grant.c.user_id == user.c.id,
                grant.c.patient_id == patient_id,
                grant.c.revoked_at.is_(None),
                grant.c.expires_at > now,
            )
            .label("break_glass"),
            select(ehr.c.ehr_id).where(ehr.c.patient_id == patient_id).scalar_subquery().label("ehr_id"),
            *role_columns,
        )
        .select_from(user.join(session, session.c.user_id == user.c.id))
        .where(
            user.c.id == bindparam("user_id", type_=user.c.id.type),
            user.c.is_active.is_(True),
            session.c.family_id == bindparam("family_id", type_=session.c.family_id.type),
            session.c.used_at.is_(None),
            session.c.revoked_at.is_(None),
            session.c.expires_at > now,
        )
        .limit(1)
    )


def _row(values: Sequence[Any], role_names: Sequence[str]) -> AuthzRow:
    (username, display_name, must_change, totp, require_2fa, care, grant, ehr_id, *flags) = values
    return AuthzRow(
        username=username,
        display_name=display_name,
        must_change_password=bool(must_change),
        totp_enabled=bool(totp),
        roles=frozenset(name for name, held in zip(role_names, flags, strict=True) if held),
        require_2fa_for_admins=require_2fa,
        care_team=bool(care),
        break_glass=bool(grant),
        ehr_id=ehr_id,
    )


def _audit_insert() -> Any:
    return insert(AuditEvent.__table__).inline()  # type: ignore[attr-defined]


def audit_insert_sql() -> str:
    """PostgreSQL: a batch of audit rows as ONE statement taking ONE parameter, a JSON array of the rows.

    ``INSERT INTO audit_event (…) SELECT … FROM json_populate_recordset(NULL::audit_event, %s::json)``: one
    round trip, atomic without an explicit transaction, and the rows are serialised by orjson in one call
    (timestamps as RFC 3339 with their offset, UUIDs as text) instead of one driver adaptation per value.
    Measured (``tests/bench/db_paths.py`` and docs/performance.md): about 0.15 ms of client CPU per batch
    whatever its size, where COPY in a transaction took about 0.5 ms plus 30 µs a row.
    """
    columns = sql.SQL(", ").join(sql.Identifier(name) for name in AUDIT_COLUMNS)
    return (
        sql.SQL(
            "INSERT INTO {table} ({columns}) "
            "SELECT {columns} FROM json_populate_recordset(NULL::{table}, %s::json)"
        )
        .format(table=sql.Identifier("audit_event"), columns=columns)
        .as_string(None)
    )


class HotStore(Protocol):
    """The two hot-path statements; :func:`create_hot_store` picks the implementation."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def authorize(
        self, *, user_id: uuid.UUID, family_id: uuid.UUID, patient_id: str | None, now: datetime
    ) -> AuthzRow | None:
        """The session's user, roles and relationship to ``patient_id``; None when the session is not alive.

        Raises:
            HotStoreUnavailable: the database did not answer.
        """

    async def insert_audit(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert ``rows`` (dicts keyed by :data:`AUDIT_COLUMNS`) in one transaction; all or none.

        Raises:
            HotStoreUnavailable: nothing was written.
        """


class PostgresHotStore:
    """The hot-path statements on a psycopg 3 async connection pool (PostgreSQL)."""

    def __init__(
        self, url: str, *, role_names: Sequence[str], pool_size: int, timeout: float, connect_timeout: float
    ) -> None:
        parsed = make_url(url)
        conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        dialect = pg_dialect.dialect()  # type: ignore[no-untyped-call]
        self.role_names = tuple(role_names)
        self.timeout = timeout
        compiled = authorize_statement(self.role_names).compile(dialect=dialect)
        self._authorize_sql = str(compiled)
        # the constants the statement carries as bind parameters (role names, setting key, LIMIT)
        self._authorize_defaults = dict(compiled.params)
        # rendered once: composing the statement again on every call costs more than sending it
        self._insert_sql = audit_insert_sql()
        self.pool = AsyncConnectionPool(
            conninfo,
            min_size=pool_size,
            max_size=pool_size,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(connect_timeout))},
            timeout=timeout,
            open=False,
            name="auth-db-hot",
        )

    async def open(self) -> None:
        # Connections are made in the background: the gateway starts (and /health answers) while
        # PostgreSQL is still coming up; requests wait at most ``timeout`` for a connection.
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    async def authorize(
        self, *, user_id: uuid.UUID, family_id: uuid.UUID, patient_id: str | None, now: datetime
    ) -> AuthzRow | None:
        params = {
            **self._authorize_defaults,
            "user_id": user_id,
            "family_id": family_id,
            "patient_id": patient_id,
            "now": now,
        }
        try:
            async with asyncio.timeout(self.timeout), self.pool.connection() as connection:
                cursor = await connection.execute(self._authorize_sql, params, prepare=True)
                values = await cursor.fetchone()
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, TimeoutError) as exc:
            raise HotStoreUnavailable(type(exc).__name__) from exc
        return _row(values, self.role_names) if values is not None else None

    async def insert_audit(self, rows: Sequence[Mapping[str, Any]]) -> None:
        payload = orjson.dumps([{name: row[name] for name in AUDIT_COLUMNS} for row in rows]).decode()
        try:
            async with asyncio.timeout(self.timeout), self.pool.connection() as connection:
                await connection.execute(self._insert_sql, (payload,), prepare=True)
        except (psycopg.Error, PoolTimeout, TimeoutError) as exc:
            raise HotStoreUnavailable(type(exc).__name__) from exc


class CoreHotStore:
    """The hot-path statements through SQLAlchemy Core on the app's engine (the embedded SQLite database).

    Also works on PostgreSQL; the benchmark uses it there to compare with :class:`PostgresHotStore`.
    """

    def __init__(self, engine: AsyncEngine, *, role_names: Sequence[str], timeout: float) -> None:
        self.engine = engine
        self.role_names = tuple(role_names)
        self.timeout = timeout
        self._authorize = authorize_statement(self.role_names)
        self._insert = _audit_insert()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None  # the engine belongs to the app

    async def authorize(
        self, *, user_id: uuid.UUID, family_id: uuid.UUID, patient_id: str | None, now: datetime
    ) -> AuthzRow | None:
        params = {"user_id": user_id, "family_id": family_id, "patient_id": patient_id, "now": now}
        try:
            async with asyncio.timeout(self.timeout), self.engine.connect() as connection:
                values = (await connection.execute(self._authorize, params)).first()
        except (OperationalError, InterfaceError, PoolTimeoutError, TimeoutError) as exc:
            raise HotStoreUnavailable(type(exc).__name__) from exc
        return _row(tuple(values), self.role_names) if values is not None else None

    async def insert_audit(self, rows: Sequence[Mapping[str, Any]]) -> None:
        try:
            async with asyncio.timeout(self.timeout), self.engine.begin() as connection:
                await connection.execute(self._insert, [dict(row) for row in rows])
        except (SQLAlchemyError, TimeoutError) as exc:
            raise HotStoreUnavailable(type(exc).__name__) from exc


def create_hot_store(
    url: str,
    engine: AsyncEngine,
    *,
    role_names: Sequence[str],
    pool_size: int,
    timeout: float,
    raw: bool = True,
) -> HotStore:
    """The hot store for ``url``: the psycopg pool on PostgreSQL (unless ``raw`` is False), else Core."""
    if raw and make_url(url).get_backend_name() == "postgresql":
        return PostgresHotStore(
            url, role_names=role_names, pool_size=pool_size, timeout=timeout, connect_timeout=timeout
        )
    return CoreHotStore(engine, role_names=role_names, timeout=timeout)
