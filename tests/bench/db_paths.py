"""The auth-database side of a PHI request, three ways, on the same PostgreSQL in the same run.

For the authorisation check (session alive, account active, roles, care-team link) and the audit insert:

- ``orm``: what the gateway did before — the session check and the care-team check through SQLModel
  autocommit sessions on SQLAlchemy's pool (with pre-ping), one ORM unit of work per audit row;
- ``core``: the one authorisation statement and the audit batch through SQLAlchemy Core on the same
  engine (:class:`auth_db.hotpath.CoreHotStore`);
- ``raw``: the same statement on a psycopg 3 async pool, and the audit batch as one ``INSERT … SELECT FROM
  json_populate_recordset`` whose one parameter is the batch as JSON
  (:class:`auth_db.hotpath.PostgresHotStore`, what the gateway uses on PostgreSQL).

Each is timed sequentially (latency) and with 16 concurrent callers (throughput and client CPU per call,
``time.process_time``). The audit insert is timed one row per call (``rows=1``) and as batches of 16.
Run: ``uv run --group bench python -m tests.bench.db_paths [server URL]`` (default: ``.ci/postgres.sh``).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import uvloop
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from auth_db import migrate
from auth_db.engine import create_autocommit_session_factory, create_engine, create_session_factory
from auth_db.hotpath import AUDIT_COLUMNS, CoreHotStore, PostgresHotStore
from auth_db.models import AuditEvent
from auth_db.types import utcnow
from gateway.security import sessions
from gateway.security.access import grant_care_team, relationships
from gateway.security.principal import Role
from gateway.settings import normalise_database_url
from tests.factories import create_user

ROLES = [role.value for role in Role]
CALLS = 2000
CONCURRENCY = 16


async def timed(call: Callable[[], Awaitable[Any]], calls: int = CALLS) -> dict[str, float]:
    for _ in range(50):
        await call()
    started = time.perf_counter()
    for _ in range(calls // 2):
        await call()
    sequential_us = (time.perf_counter() - started) / (calls // 2) * 1e6

    async def worker() -> None:
        for _ in range(calls // CONCURRENCY):
            await call()

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    done = calls // CONCURRENCY * CONCURRENCY
    elapsed = time.perf_counter() - started
    return {
        "latency_us": round(sequential_us),
        "per_s": round(done / elapsed),
        "cpu_us": round((time.process_time() - cpu) / done * 1e6),
    }


def audit_row() -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(AUDIT_COLUMNS)
    row.update(
        occurred_at=utcnow(),
        actor_user_id=uuid.uuid4(),
        actor_username="bench",
        action="patient.read",
        outcome="success",
        patient_id="bench-small",
        break_glass=False,
        request_id=uuid.uuid4().hex,
        details={"version": "1"},
    )
    return row


async def measure(server_url: str) -> list[dict[str, Any]]:
    admin = create_async_engine(normalise_database_url(server_url), isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text('DROP DATABASE IF EXISTS "gateway_db_paths" WITH (FORCE)'))
        await connection.execute(text('CREATE DATABASE "gateway_db_paths"'))
    await admin.dispose()
    url = normalise_database_url(server_url.rsplit("/", 1)[0] + "/gateway_db_paths")
    await asyncio.to_thread(migrate.upgrade, url)
    engine = create_engine(url, pool_size=CONCURRENCY)
    factory = create_session_factory(engine)
    user = await create_user(factory, username="bench.db", roles=["clinician"])
    async with factory() as session:
        row, _ = await sessions.start_session(
            session,
            user_id=user.id,
            policy=sessions.SessionPolicy(timedelta(hours=1), timedelta(hours=8)),
            now=utcnow(),
            client_addr=None,
            user_agent=None,
        )
        await grant_care_team(session, user_id=user.id, patient_id="bench-small", granted_by=None)
        await session.commit()
    family = row.family_id
    autocommit = create_autocommit_session_factory(engine)
    core = CoreHotStore(engine, role_names=ROLES, timeout=5)
    raw = PostgresHotStore(url, role_names=ROLES, pool_size=CONCURRENCY, timeout=5, connect_timeout=5)
    await raw.open()
    await raw.pool.wait()

    async def orm_authorize() -> None:
        async with autocommit() as session:
            assert await sessions.load_session_user(session, user_id=user.id, family_id=family, now=utcnow())
        assert (await relationships(autocommit, user.id, ["bench-small"])).get("bench-small") is True

    async def orm_audit() -> None:
        async with autocommit() as session:
            session.add(AuditEvent(**audit_row()))
            await session.commit()

    def authorize(store: Any) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            found = await store.authorize(
                user_id=user.id, family_id=family, patient_id="bench-small", now=utcnow()
            )
            assert found is not None
            assert found.care_team

        return call

    def audit(store: Any, rows: int) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            await store.insert_audit([audit_row() for _ in range(rows)])

        return call

    results = []
    try:
        for name, call in (
            ("authorize orm (before)", orm_authorize),
            ("authorize core", authorize(core)),
            ("authorize raw psycopg", authorize(raw)),
            ("audit orm, 1 row (before)", orm_audit),
            ("audit core, 1 row", audit(core, 1)),
            ("audit raw psycopg JSON, 1 row", audit(raw, 1)),
            ("audit core, batch of 16", audit(core, 16)),
            ("audit raw psycopg JSON, batch of 16", audit(raw, 16)),
        ):
            figures = await timed(call, CALLS // 4 if "batch" in name else CALLS)
            results.append({"path": name, **figures})
            print(
                f"bench: db {name:<32} latency {figures['latency_us']:>6} us   "
                f"c={CONCURRENCY} {figures['per_s']:>6}/s   client CPU {figures['cpu_us']:>5} us/call",
                flush=True,
            )
    finally:
        await raw.close()
        await engine.dispose()
    return results


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        f"| auth DB path | latency (sequential) | calls/s at c={CONCURRENCY} | client CPU per call |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['path']} | {r['latency_us']} µs | {r['per_s']} | {r['cpu_us']} µs |" for r in results]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1:
        server = sys.argv[1]
    else:
        from tests.bench.run import start_postgres

        server = start_postgres()
    print(markdown(uvloop.run(measure(server))))


if __name__ == "__main__":
    main()
