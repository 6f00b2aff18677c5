"""The hot-path statements (auth_db.hotpath) on a real PostgreSQL (psycopg pool) and on SQLite (Core).

One authorisation statement must say exactly what the ORM checks said before it: session family alive,
account active, roles, care-team link or unexpired break-glass grant, the cached EHR id; and the audit
batch insert must be all or nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from auth_db import migrate
from auth_db.engine import SessionFactory, create_engine, create_session_factory
from auth_db.hotpath import AUDIT_COLUMNS, HotStore, HotStoreUnavailable, create_hot_store
from auth_db.models import (
    AuditEvent,
    AuthSession,
    BreakGlassGrant,
    CareTeamLink,
    PatientEhr,
    SystemSetting,
    User,
)
from auth_db.types import utcnow
from gateway.audit import Actor, AuditLog
from gateway.security import sessions
from gateway.security.principal import Role
from tests.factories import create_user

POLICY = sessions.SessionPolicy(idle=timedelta(minutes=30), absolute=timedelta(hours=8))
ROLES = [role.value for role in Role]


@dataclass
class Db:
    store: HotStore
    factory: SessionFactory

    async def login(self, username: str, roles: list[str]) -> tuple[uuid.UUID, uuid.UUID]:
        user = await create_user(self.factory, username=username, roles=roles)
        async with self.factory() as session:
            row, _ = await sessions.start_session(
                session, user_id=user.id, policy=POLICY, now=utcnow(), client_addr=None, user_agent=None
            )
            await session.commit()
            return user.id, row.family_id

    async def add(self, *rows: Any) -> None:
        async with self.factory() as session:
            session.add_all(rows)
            await session.commit()

    async def ask(self, user_id: uuid.UUID, family_id: uuid.UUID, patient_id: str | None = None) -> Any:
        return await self.store.authorize(
            user_id=user_id, family_id=family_id, patient_id=patient_id, now=utcnow()
        )


@pytest.fixture(params=["postgresql", "sqlite"])
async def db(
    request: pytest.FixtureRequest, tmp_path: Path, fresh_pg_database: Callable[[], str]
) -> AsyncIterator[Db]:
    if request.param == "postgresql":
        url = await asyncio.to_thread(fresh_pg_database)
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    engine = create_engine(url)
    store = create_hot_store(url, engine, role_names=ROLES, pool_size=2, timeout=5)
    await store.open()
    try:
        yield Db(store, create_session_factory(engine))
    finally:
        await store.close()
        await engine.dispose()


def test_postgres_gets_the_raw_pool_and_sqlite_gets_core(tmp_path: Path) -> None:
    from auth_db.hotpath import CoreHotStore, PostgresHotStore

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    assert isinstance(
        create_hot_store("sqlite+aiosqlite:///x.db", engine, role_names=ROLES, pool_size=1, timeout=1),
        CoreHotStore,
    )
    pg = "postgresql+psycopg://u:p@127.0.0.1:1/x"
    assert isinstance(
        create_hot_store(pg, engine, role_names=ROLES, pool_size=1, timeout=1), PostgresHotStore
    )
    assert isinstance(
        create_hot_store(pg, engine, role_names=ROLES, pool_size=1, timeout=1, raw=False), CoreHotStore
    )


async def test_a_live_session_yields_the_user_and_roles(db: Db) -> None:
    user_id, family = await db.login("ada", ["clinician", "admin"])
    row = await db.ask(user_id, family)
    assert row is not None
    assert (row.username, row.display_name) == ("ada", "Ada")
    assert row.roles == {"clinician", "admin"}
    assert (row.must_change_password, row.totp_enabled) == (False, False)
    assert (row.care_team, row.break_glass, row.ehr_id, row.require_2fa_for_admins) == (
        False,
        False,
        None,
        None,
    )


async def test_care_team_link_break_glass_and_ehr_id_of_the_named_patient(db: Db) -> None:
    user_id, family = await db.login("ada", ["clinician"])
    now = utcnow()
    await db.add(
        CareTeamLink(user_id=user_id, patient_id="p-care"),
        CareTeamLink(user_id=user_id, patient_id="p-revoked", revoked_at=now),
        BreakGlassGrant(
            user_id=user_id, patient_id="p-glass", reason="r", expires_at=now + timedelta(hours=1)
        ),
        BreakGlassGrant(
            user_id=user_id, patient_id="p-old", reason="r", expires_at=now - timedelta(seconds=1)
        ),
        BreakGlassGrant(
            user_id=user_id,
            patient_id="p-ended",
            reason="r",
            expires_at=now + timedelta(hours=1),
            revoked_at=now,
        ),
        PatientEhr(patient_id="p-care", ehr_id="ehr-1"),
    )
    found = {
        pid: await db.ask(user_id, family, pid)
        for pid in ("p-care", "p-revoked", "p-glass", "p-old", "p-ended")
    }
    assert (found["p-care"].care_team, found["p-care"].break_glass, found["p-care"].ehr_id) == (
        True,
        False,
        "ehr-1",
    )
    assert (found["p-revoked"].care_team, found["p-revoked"].break_glass) == (False, False)
    assert (found["p-glass"].care_team, found["p-glass"].break_glass) == (False, True)
    assert found["p-old"].break_glass is False
    assert found["p-ended"].break_glass is False


async def test_another_users_link_does_not_count(db: Db) -> None:
    user_id, family = await db.login("ada", ["clinician"])
    other, _ = await db.login("bob", ["clinician"])
    await db.add(CareTeamLink(user_id=other, patient_id="p1"))
    row = await db.ask(user_id, family, "p1")
    assert row is not None
    assert row.care_team is False


async def test_ended_sessions_and_disabled_accounts_yield_nothing(db: Db) -> None:
    user_id, family = await db.login("ada", ["clinician"])
    assert await db.ask(user_id, family) is not None
    assert await db.ask(user_id, uuid.uuid4()) is None, "unknown family"
    other, other_family = await db.login("bob", ["clinician"])
    assert await db.ask(user_id, other_family) is None, "someone else's family"
    now = utcnow()
    for change in (
        {"revoked_at": now},
        {"used_at": now},
        {"expires_at": now - timedelta(seconds=1)},
    ):
        async with db.factory() as session:
            await session.exec(
                update(AuthSession).where(col(AuthSession.family_id) == family).values(**change)
            )
            await session.commit()
        assert await db.ask(user_id, family) is None, change
        async with db.factory() as session:
            await session.exec(
                update(AuthSession)
                .where(col(AuthSession.family_id) == family)
                .values(revoked_at=None, used_at=None, expires_at=now + timedelta(minutes=5))
            )
            await session.commit()
        assert await db.ask(user_id, family) is not None
    async with db.factory() as session:
        await session.exec(update(User).where(col(User.id) == user_id).values(is_active=False))
        await session.commit()
    assert await db.ask(user_id, family) is None
    assert await db.ask(other, other_family) is not None


async def test_the_stored_two_factor_rule_comes_along(db: Db) -> None:
    user_id, family = await db.login("root", ["admin"])
    await db.add(SystemSetting(key="require_2fa_for_admins", value=True))
    row = await db.ask(user_id, family)
    assert row is not None
    assert row.require_2fa_for_admins is True


def audit_row(request_id: str, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(AUDIT_COLUMNS)
    row.update(
        occurred_at=utcnow(),
        actor_user_id=uuid.uuid4(),
        actor_username="ada",
        action="patient.read",
        outcome="success",
        patient_id="1001",
        resource_ids=["a", "b"],
        break_glass=False,
        request_id=request_id,
        details={"version": "1"},
    )
    row.update(overrides)
    return row


async def test_an_audit_batch_is_written_whole(db: Db) -> None:
    await db.store.insert_audit([audit_row(f"r{i}") for i in range(3)])
    async with db.factory() as session:
        rows = list(await session.exec(select(AuditEvent).order_by(col(AuditEvent.id))))
    assert [row.request_id for row in rows] == ["r0", "r1", "r2"]
    assert rows[0].resource_ids == ["a", "b"]
    assert rows[0].details == {"version": "1"}
    assert rows[0].occurred_at.tzinfo is not None


async def test_a_single_audit_row_is_written(db: Db) -> None:
    await db.store.insert_audit([audit_row("only", details=None, resource_ids=None, reason="x" * 1000)])
    async with db.factory() as session:
        [row] = list(await session.exec(select(AuditEvent)))
    assert (row.request_id, row.details, row.resource_ids) == ("only", None, None)
    assert len(row.reason or "") == 1000


async def test_rows_made_by_the_audit_log_survive_odd_values(db: Db) -> None:
    log = AuditLog(db.factory, client_addr="203.0.113.7", request_id="odd-values")
    odd = log.row(
        action="auth.login_failed",
        outcome="failure",
        actor=Actor(None, "nul\x00name" + "x" * 100),
        reason='line\nbreak, quote " and NUL \x00 end',
        resource_ids=["a\x00b"],
        details={"note": "nested \x00 too", "n": 1},
    )
    await db.store.insert_audit([odd, audit_row("plain")])
    async with db.factory() as session:
        rows = {row.request_id: row for row in await session.exec(select(AuditEvent))}
    written = rows["odd-values"]
    assert written.actor_username == ("nulname" + "x" * 100)[:64]
    assert written.reason == 'line\nbreak, quote " and NUL  end'
    assert written.details == {"note": "nested  too", "n": 1}
    assert written.resource_ids == ["ab"]
    assert "plain" in rows


async def test_a_refused_single_row_raises(db: Db) -> None:
    with pytest.raises(HotStoreUnavailable):
        await db.store.insert_audit([audit_row("bad", action=None)])


async def test_an_audit_batch_with_one_bad_row_writes_nothing(db: Db) -> None:
    with pytest.raises(HotStoreUnavailable):
        await db.store.insert_audit([audit_row("good"), audit_row("bad", action=None)])
    async with db.factory() as session:
        assert list(await session.exec(select(AuditEvent))) == []
