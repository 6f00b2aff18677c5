"""The benchmark's ceiling: the thinnest FastAPI pass-through of the five routes the gateway workloads use.

Run by ``tests/bench/run.py`` under the same uvicorn settings as the gateway (``--factory``, one worker per
core, ``--loop uvloop --http httptools``, no access log, log level warning)::

    BASELINE_UPSTREAM=http://127.0.0.1:18091 BASELINE_CLIENT=aiohttp \\
        uvicorn tests.bench.baseline:create_app --factory --port 18092

What it does, per request:

- ``GET /patients/{id}`` → stub ``GET /fhir/Patient/{id}``;
- ``GET /patients?family=…&count=…`` → stub ``GET /fhir/Patient?family=…&_count=…``;
- ``POST /patients/{id}/letters`` → stub ``POST /ehrbase/rest/openehr/v1/ehr/{ehr_id}/composition``: the
  letter's JSON (``title``, ``body``, ``status``) is parsed and put into a minimal composition (orjson), which
  is forwarded; the EHR id comes from a fixed in-memory map of the stub's two patients (404 for others);
- ``GET /patients/{id}/letters?limit=…`` → stub ``POST /ehrbase/rest/openehr/v1/query/aql`` (a fixed AQL with
  the EHR id as parameter, ``offset`` 0, ``fetch`` = limit);
- ``GET /fhir/DocumentReference?patient=…&_count=…`` → stub ``POST /ehrbase/rest/openehr/v1/query/aql`` with
  the body the gateway sends: its own ``LIST_LETTER_DOCUMENTS`` (imported from ``gateway.openehr.aql``),
  ``query_parameters`` ``ehr_id`` and ``template_id`` (the default ``LETTER_TEMPLATE_ID``), ``offset`` 0,
  ``fetch`` = ``_count`` + 1. Unlike the other routes this one does not pass the upstream's bytes through:
  the gateway answers a FHIR Bundle, so the yardstick must too. It parses the result set (orjson), finds the
  seven columns by name, and turns each of the first ``_count`` rows into a plain ``dict`` with the same
  elements the gateway's DocumentReference has (id, meta, masterIdentifier, identifier, status, docStatus
  from the letter's status, type, subject, date, author, description, and the text inlined as base64
  ``content.attachment.data`` with its size and SHA-1 hash, context.period), wraps them in a ``searchset``
  Bundle (``self`` link, a ``next`` link when the extra row came back) and serialises it with orjson as
  ``application/fhir+json``. What it leaves out of the gateway's work: the resource's id is the composition
  id, not the gateway's sealed (AES-SIV) id; no fhir.resources model, no validation, no per-version cache,
  no ``amended`` check; the EHR id comes from the same fixed map as the letters routes (no ``patient_ehr``
  lookup); no search-parameter checks beyond FastAPI's query parsing (``patient`` required, ``_count`` 1 to
  100), no signed paging cursor, no OperationOutcome errors.

Each answer of the other routes is the upstream's status, ``Content-Type`` and body bytes, unparsed. The
upstream client is chosen by ``BASELINE_CLIENT``: ``httpx`` (default transport), ``httpx-aiohttp`` (httpx
over ``httpx_aiohttp.AiohttpTransport``), ``aiohttp`` or ``pyreqwest``; each is one pooled client per worker
process created in the lifespan and closed on shutdown, with keep-alive, at most 100 connections (all of them
kept alive — the gateway keeps 20), a 10 s timeout per call, and the body read in full before answering.

With ``BASELINE_DB=1`` (the floor of an authenticated, audited read), every request first takes one connection
from a ``psycopg_pool.AsyncConnectionPool`` (psycopg 3, autocommit, ``BASELINE_DB_POOL_SIZE`` connections,
default 20 as the bench gives the gateway) on ``BASELINE_DATABASE_URL`` — the bench's auth database — and
runs on it one indexed ``SELECT`` (a ``session`` row by primary key; the id is that of the newest session,
read once at startup, so run the bench's login first) and one ``INSERT`` of an audit-like row into
``audit_event`` (action, outcome, patient id, time); the connection goes back to the pool, then the upstream
is called. No session row → 401.

What it does not do: no authentication (no token is read or checked), no permission or care-team check, no
request validation beyond FastAPI's path/query parsing, no response model, no re-serialisation (but for
the DocumentReference search's Bundle, above), no retries, circuit breaker, metrics, tracing, logging or
middleware, no error mapping (an upstream failure is an unhandled 500), no ETag/Location handling. It is a
yardstick, not a gateway.
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Annotated, Any, Protocol
from urllib.parse import urlencode

import orjson
from fastapi import FastAPI, Query, Request, Response

from gateway.openehr.aql import LIST_LETTER_DOCUMENTS
from tests.bench import stub

CLIENTS = ("httpx", "httpx-aiohttp", "aiohttp", "pyreqwest")
TIMEOUT_SECONDS = 10.0
MAX_CONNECTIONS = 100
EHR_OF_PATIENT = {stub.SMALL_PATIENT: stub.SMALL_EHR, stub.LARGE_PATIENT: stub.LARGE_EHR}
AQL = (
    "SELECT c/uid/value, c/name/value FROM EHR e[ehr_id/value=$ehr_id] CONTAINS COMPOSITION c "
    "ORDER BY c/context/start_time/value DESC"
)
SELECT_SESSION = "SELECT user_id, expires_at, revoked_at FROM session WHERE id = %s"
INSERT_AUDIT = (
    "INSERT INTO audit_event (occurred_at, actor_user_id, action, outcome, target_type, target_id, "
    "patient_id, break_glass) VALUES (now(), %s, %s, 'success', 'Patient', %s, %s, false)"
)
JSON = "application/json"
FHIR_JSON = "application/fhir+json"
#: The gateway's default ``LETTER_TEMPLATE_ID`` (what it puts in the document query's parameters).
TEMPLATE_ID = "gateway.clinical_letter.v1"
FHIR_BASE = "http://localhost:8000/fhir"
DOCUMENT_COLUMNS = ("uid", "title", "status", "author", "author_id", "date", "body")
LETTER_TYPE = {
    "coding": [{"system": "http://snomed.info/sct", "code": "823691000000103", "display": "Clinical letter"}],
    "text": "Clinical letter",
}
DOC_STATUS = {"draft": "preliminary", "final": "final"}


class Upstream(Protocol):
    """One pooled HTTP client: send a request, read the whole answer."""

    async def send(
        self, method: str, url: str, body: bytes | None = None
    ) -> tuple[int, str | None, bytes]: ...

    async def close(self) -> None: ...


class HttpxUpstream:
    """httpx, default transport (httpcore) or, with ``aiohttp_transport``, httpx-aiohttp's transport."""

    def __init__(self, *, aiohttp_transport: bool = False) -> None:
        import httpx

        limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
        timeout = httpx.Timeout(TIMEOUT_SECONDS)
        if aiohttp_transport:
            import aiohttp
            from httpx_aiohttp import AiohttpTransport

            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS))
            transport = AiohttpTransport(client=session, limits=limits)
            self.client = httpx.AsyncClient(transport=transport, timeout=timeout)
        else:
            self.client = httpx.AsyncClient(limits=limits, timeout=timeout)

    async def send(self, method: str, url: str, body: bytes | None = None) -> tuple[int, str | None, bytes]:
        headers = {"Content-Type": JSON} if body is not None else None
        response = await self.client.request(
            method, url, content=body, headers=headers, timeout=TIMEOUT_SECONDS
        )
        return response.status_code, response.headers.get("content-type"), response.content

    async def close(self) -> None:
        await self.client.aclose()


class AiohttpUpstream:
    """aiohttp's ``ClientSession`` on one ``TCPConnector``."""

    def __init__(self) -> None:
        import aiohttp

        self.timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS), timeout=self.timeout
        )

    async def send(self, method: str, url: str, body: bytes | None = None) -> tuple[int, str | None, bytes]:
        headers = {"Content-Type": JSON} if body is not None else None
        async with self.session.request(
            method, url, data=body, headers=headers, timeout=self.timeout
        ) as response:
            return response.status, response.headers.get("Content-Type"), await response.read()

    async def close(self) -> None:
        await self.session.close()


class PyreqwestUpstream:
    """pyreqwest (Rust reqwest/hyper under asyncio), default single-threaded runtime."""

    def __init__(self) -> None:
        from pyreqwest.client import ClientBuilder

        self.timeout = timedelta(seconds=TIMEOUT_SECONDS)
        self.client = (
            ClientBuilder()
            .max_connections(MAX_CONNECTIONS)
            .pool_max_idle_per_host(MAX_CONNECTIONS)
            .timeout(self.timeout)
            .build()
        )

    async def send(self, method: str, url: str, body: bytes | None = None) -> tuple[int, str | None, bytes]:
        builder = self.client.request(method, url).timeout(self.timeout)
        if body is not None:
            builder = builder.header("Content-Type", JSON).body_bytes(body)
        response = await builder.build().send()
        payload = await response.bytes()
        return response.status, response.get_header("content-type"), payload.to_bytes()

    async def close(self) -> None:
        await self.client.close()


def make_upstream(name: str) -> Upstream:
    """The client named ``name`` (one of :data:`CLIENTS`)."""
    if name == "httpx":
        return HttpxUpstream()
    if name == "httpx-aiohttp":
        return HttpxUpstream(aiohttp_transport=True)
    if name == "aiohttp":
        return AiohttpUpstream()
    if name == "pyreqwest":
        return PyreqwestUpstream()
    raise SystemExit(_unknown_client(name))


def _unknown_client(name: str) -> str:
    return f"baseline: BASELINE_CLIENT must be one of {', '.join(CLIENTS)}, not {name!r}"


class Floor:
    """``BASELINE_DB=1``: one indexed SELECT and one audit INSERT per request, on one pooled connection."""

    def __init__(self, url: str, size: int) -> None:
        from psycopg_pool import AsyncConnectionPool

        self.pool = AsyncConnectionPool(
            url, min_size=size, max_size=size, open=False, kwargs={"autocommit": True}
        )
        self.session_id: uuid.UUID | None = None

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30)
        async with self.pool.connection() as connection:
            cursor = await connection.execute("SELECT id FROM session ORDER BY created_at DESC LIMIT 1")
            row = await cursor.fetchone()
        if row is None:
            raise SystemExit("baseline: no session row in the database; log in once before starting")
        self.session_id = row[0]

    async def check_and_audit(self, action: str, patient_id: str) -> bool:
        """Whether the session row exists; records one audit row when it does."""
        async with self.pool.connection() as connection:
            cursor = await connection.execute(SELECT_SESSION, (self.session_id,))
            row = await cursor.fetchone()
            if row is None:
                return False
            await connection.execute(INSERT_AUDIT, (row[0], action, patient_id, patient_id))
        return True

    async def close(self) -> None:
        await self.pool.close()


def document_dict(row: dict[str, Any], patient_id: str) -> dict[str, Any]:
    """One result row as a DocumentReference-shaped ``dict`` (no model, no validation, no sealed id)."""
    uid = row["uid"]
    object_id, _, version = uid.partition("::")
    version = version.rpartition("::")[2]
    text = (row["body"] or "").encode()
    author: dict[str, Any] = {"display": row["author"]}
    if row["author_id"]:
        author["identifier"] = {"system": "urn:fhir-openehr-gateway:user-id", "value": row["author_id"]}
    return {
        "resourceType": "DocumentReference",
        "id": object_id,
        "meta": {"versionId": version, "lastUpdated": row["date"]},
        "masterIdentifier": {"system": "urn:fhir-openehr-gateway:openehr-version-uid", "value": uid},
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{object_id}"}],
        "status": "current",
        "docStatus": DOC_STATUS.get(row["status"], "final"),
        "type": LETTER_TYPE,
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": row["date"],
        "author": [author],
        "description": row["title"],
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain",
                    "data": base64.b64encode(text).decode(),
                    "size": len(text),
                    "hash": base64.b64encode(hashlib.sha1(text, usedforsecurity=False).digest()).decode(),
                    "title": row["title"],
                    "creation": row["date"],
                }
            }
        ],
        "context": {"period": {"start": row["date"]}},
    }


def document_bundle(result_set: dict[str, Any], patient_id: str, count: int) -> dict[str, Any]:
    """A ``searchset`` Bundle of the first ``count`` rows of the document query's result set."""
    names = [column["name"] for column in result_set["columns"]]
    index = [names.index(name) for name in DOCUMENT_COLUMNS]
    rows = [dict(zip(DOCUMENT_COLUMNS, (row[i] for i in index), strict=True)) for row in result_set["rows"]]
    url = f"{FHIR_BASE}/DocumentReference?patient={patient_id}&_count={count}"
    links = [{"relation": "self", "url": url}]
    if len(rows) > count:
        links.append({"relation": "next", "url": f"{url}&_offset={count}"})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "link": links}
    entries = []
    for row in rows[:count]:
        resource = document_dict(row, patient_id)
        entries.append(
            {
                "fullUrl": f"{FHIR_BASE}/DocumentReference/{resource['id']}",
                "resource": resource,
                "search": {"mode": "match"},
            }
        )
    if entries:
        bundle["entry"] = entries
    return bundle


def problem(status: int, body: bytes) -> Response:
    """A fixed problem-details answer."""
    return Response(body, status_code=status, media_type="application/problem+json")


def create_app() -> FastAPI:
    """The pass-through, configured from ``BASELINE_*`` environment variables (see the module docstring)."""
    upstream_base = os.environ.get("BASELINE_UPSTREAM", "http://127.0.0.1:18091").rstrip("/")
    client_name = os.environ.get("BASELINE_CLIENT", "httpx")
    if client_name not in CLIENTS:
        raise SystemExit(_unknown_client(client_name))
    floor: Floor | None = None
    if os.environ.get("BASELINE_DB") == "1":
        url = os.environ["BASELINE_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
        floor = Floor(url, int(os.environ.get("BASELINE_DB_POOL_SIZE", "20")))
    fhir = f"{upstream_base}/fhir"
    openehr = f"{upstream_base}/ehrbase/rest/openehr/v1"
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["upstream"] = make_upstream(client_name)
        if floor is not None:
            await floor.open()
        try:
            yield
        finally:
            await state["upstream"].close()
            if floor is not None:
                await floor.close()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    def unauthorized() -> Response:
        return problem(401, b'{"title":"Unauthorized"}')

    async def forward(
        action: str, patient_id: str, method: str, url: str, body: bytes | None = None
    ) -> Response:
        if floor is not None and not await floor.check_and_audit(action, patient_id):
            return unauthorized()
        status, content_type, payload = await state["upstream"].send(method, url, body)
        return Response(payload, status_code=status, media_type=content_type)

    def not_found() -> Response:
        return problem(404, b'{"title":"Not Found","status":404}')

    @app.get("/health")
    async def health() -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    @app.get("/patients/{patient_id}")
    async def read_patient(patient_id: str) -> Response:
        return await forward("patient.read", patient_id, "GET", f"{fhir}/Patient/{patient_id}")

    @app.get("/patients")
    async def search_patients(
        family: Annotated[str, Query(max_length=100)], count: Annotated[int, Query(ge=1, le=100)] = 20
    ) -> Response:
        query = urlencode({"family": family, "_count": count})
        return await forward("patient.search", "", "GET", f"{fhir}/Patient?{query}")

    @app.post("/patients/{patient_id}/letters")
    async def create_letter(patient_id: str, request: Request) -> Response:
        ehr_id = EHR_OF_PATIENT.get(patient_id)
        if ehr_id is None:
            return not_found()
        letter = orjson.loads(await request.body())
        composition = {
            "_type": "COMPOSITION",
            "name": {"_type": "DV_TEXT", "value": letter.get("title", "")},
            "content": [{"_type": "DV_TEXT", "value": letter.get("body", "")}],
            "status": letter.get("status", "final"),
        }
        url = f"{openehr}/ehr/{ehr_id}/composition"
        return await forward("letter.create", patient_id, "POST", url, orjson.dumps(composition))

    @app.get("/patients/{patient_id}/letters")
    async def list_letters(patient_id: str, limit: Annotated[int, Query(ge=1, le=100)] = 20) -> Response:
        ehr_id = EHR_OF_PATIENT.get(patient_id)
        if ehr_id is None:
            return not_found()
        query = {"q": AQL, "query_parameters": {"ehr_id": ehr_id}, "offset": 0, "fetch": limit}
        return await forward("letter.list", patient_id, "POST", f"{openehr}/query/aql", orjson.dumps(query))

    @app.get("/fhir/DocumentReference")
    async def search_documents(
        patient: Annotated[str, Query(max_length=64)],
        count: Annotated[int, Query(alias="_count", ge=1, le=100)] = 20,
    ) -> Response:
        ehr_id = EHR_OF_PATIENT.get(patient)
        if ehr_id is None:
            return not_found()
        if floor is not None and not await floor.check_and_audit("letter.list", patient):
            return unauthorized()
        query = {
            "q": LIST_LETTER_DOCUMENTS,
            "query_parameters": {"ehr_id": ehr_id, "template_id": TEMPLATE_ID},
            "offset": 0,
            "fetch": count + 1,
        }
        status, content_type, payload = await state["upstream"].send(
            "POST", f"{openehr}/query/aql", orjson.dumps(query)
        )
        if status != 200:
            return Response(payload, status_code=status, media_type=content_type)
        bundle = document_bundle(orjson.loads(payload), patient, count)
        return Response(orjson.dumps(bundle), media_type=FHIR_JSON)

    return app
