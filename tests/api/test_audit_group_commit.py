"""The audit group commit through the API on a real PostgreSQL.

- Rows of concurrent PHI reads are committed together: the test holds a lock that stops the first audit
  batch, lets the other reads queue behind it, and then reads ``xmin`` (the id of the inserting
  transaction) of every row: all the rows of the reads share at most two transactions.
- Fail closed: when the batch transaction fails (a trigger refuses the rows), every read of the batch is
  answered 503 ``audit_unavailable`` without any PHI, and nothing of it is in the trail; the next read,
  once the database accepts rows again, is served and audited.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
import respx
from sqlalchemy.engine import make_url

from auth_db.engine import SessionFactory
from gateway.audit_writer import AuditWriter
from gateway.security.access import grant_care_team
from gateway.settings import Settings
from tests import fhir_payloads as hapi
from tests.conftest import running_app
from tests.factories import bearer_headers, create_user

READS = 8


@dataclass
class Env:
    client: httpx.AsyncClient
    headers: dict[str, str]
    writer: AuditWriter
    dsn: str

    async def read_all(self) -> list[httpx.Response]:
        return await asyncio.gather(
            *(
                self.client.get(
                    "/patients/1001", headers={**self.headers, "X-Request-ID": f"group-read-{i:04d}"}
                )
                for i in range(READS)
            )
        )

    async def read_rows(self) -> list[tuple[str, int]]:
        """``(request_id, inserting transaction id)`` of the audited reads of :meth:`read_all`."""
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as connection:
            cursor = await connection.execute(
                "SELECT request_id, xmin::text::bigint FROM audit_event "
                "WHERE action = 'patient.read' AND request_id LIKE 'group-read-%' ORDER BY request_id"
            )
            return [(str(request_id), int(xid)) for request_id, xid in await cursor.fetchall()]


@pytest.fixture
async def env(
    pg_url: str, session_factory: SessionFactory, make_settings: Callable[..., Settings]
) -> AsyncIterator[Env]:
    user = await create_user(session_factory, username="dr.group", roles=["clinician"])
    async with session_factory() as session:
        await grant_care_team(session, user_id=user.id, patient_id="1001", granted_by=None)
        await session.commit()
    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with respx.mock(base_url=hapi.BASE, assert_all_called=False) as mock:
        mock.get("/Patient/1001").mock(return_value=hapi.resource_response(hapi.patient()))
        async with running_app(make_settings(auth_database_url=pg_url)) as client:
            headers = await bearer_headers(client, "dr.group")
            writer: AuditWriter = client.app.state.audit_writer  # type: ignore[attr-defined]
            yield Env(client, headers, writer, dsn)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.005)


async def hold_audit_table(dsn: str) -> psycopg.AsyncConnection[Any]:
    """A connection whose open transaction blocks every INSERT into audit_event until it ends."""
    connection = await psycopg.AsyncConnection.connect(dsn)
    await connection.execute("LOCK TABLE audit_event IN SHARE ROW EXCLUSIVE MODE")
    return connection


async def test_concurrent_reads_share_audit_transactions(env: Env) -> None:
    lock = await hold_audit_table(env.dsn)
    try:
        reads = asyncio.ensure_future(env.read_all())
        # the first batch is stuck on the lock; the other reads' rows queue behind it
        await until(lambda: env.writer.in_flight + env.writer.waiting == READS)
        assert not reads.done(), "no read may be answered before its audit row is committed"
    finally:
        await lock.commit()
        await lock.close()
    responses = await reads
    assert [response.status_code for response in responses] == [200] * READS
    rows = await env.read_rows()
    assert len(rows) == READS
    transactions = {xid for _, xid in rows}
    assert len(transactions) <= 2, f"{READS} rows in {len(transactions)} transactions"
    largest = max(sum(1 for _, xid in rows if xid == t) for t in transactions)
    assert largest >= READS // 2, "rows of different requests must share a commit"


async def test_a_failed_audit_commit_fails_every_read_of_the_batch_without_phi(env: Env) -> None:
    lock = await hold_audit_table(env.dsn)
    try:
        reads = asyncio.ensure_future(env.read_all())
        await until(lambda: env.writer.in_flight + env.writer.waiting == READS)
        # while the rows wait, the database starts refusing them
        await lock.execute(
            "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'audit storage refused the row'; END $$"
        )
        await lock.execute(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_event "
            "FOR EACH ROW EXECUTE FUNCTION refuse_audit()"
        )
    finally:
        await lock.commit()
    try:
        responses = await reads
        for response in responses:
            assert response.status_code == 503, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["code"] == "audit_unavailable"
            assert "retry-after" in response.headers
            assert "Chalmers" not in response.text
            assert "9434765919" not in response.text
        assert await env.read_rows() == []
    finally:
        await lock.execute("DROP TRIGGER refuse_audit ON audit_event")
        await lock.execute("DROP FUNCTION refuse_audit()")
        await lock.commit()
        await lock.close()
    served = await env.client.get(
        "/patients/1001", headers={**env.headers, "X-Request-ID": "group-read-last"}
    )
    assert served.status_code == 200
    assert served.json()["name"][0]["family"] == "Chalmers"
    assert [request_id for request_id, _ in await env.read_rows()] == ["group-read-last"]
