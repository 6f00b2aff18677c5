"""A small, fast stub of HAPI FHIR and EHRbase for the benchmark (stdlib asyncio, HTTP/1.1 keep-alive).

Fixed payloads shaped like the real servers' (HAPI JPA 8.x, EHRbase 2.x). Letters: EHR ``SMALL_EHR`` has
10 letters and ``LARGE_EHR`` 10,000; AQL answers slice them by ``offset``/``fetch`` as EHRbase does, so the
list cost seen through the gateway depends on the page size only. A query that selects the letter's text
(``… AS body``, the gateway's ``LIST_LETTER_DOCUMENTS`` of the FHIR DocumentReference search) gets a seventh
column, ``body``: a clinic letter of about 1.5 KB, slightly different for each letter.

Run: ``python -m tests.bench.stub PORT``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from typing import Any

SYSTEM_ID = "bench.ehrbase.local"
SMALL_EHR = "11111111-1111-4111-8111-111111111111"
LARGE_EHR = "22222222-2222-4222-8222-222222222222"
SMALL_PATIENT = "bench-small"
LARGE_PATIENT = "bench-large"
LETTER_COUNTS = {SMALL_EHR: 10, LARGE_EHR: 10_000}
FHIR_JSON = b"application/fhir+json;charset=utf-8"


def patient(pid: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "meta": {
            "versionId": "1",
            "lastUpdated": "2025-03-10T09:40:12.684+00:00",
            "source": "#Qm7cT2vXh9LpA4sE",
        },
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}],
        "active": True,
        "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
        "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1}],
        "gender": "male",
        "birthDate": "1974-12-25",
        "address": [
            {"use": "home", "line": ["534 Erewhon St"], "city": "PleasantVille", "postalCode": "3999"}
        ],
    }


def searchset(count: int) -> dict[str, Any]:
    base = "http://127.0.0.1/fhir"
    return {
        "resourceType": "Bundle",
        "id": "5e9d3c1a-7b2f-4c8e-9a6d-0f1e2d3c4b5a",
        "meta": {"lastUpdated": "2025-03-10T09:44:01.276+00:00"},
        "type": "searchset",
        "link": [{"relation": "self", "url": f"{base}/Patient?_count={count}&family=Chalmers"}],
        "entry": [
            {"fullUrl": f"{base}/Patient/p{i}", "resource": patient(f"p{i}"), "search": {"mode": "match"}}
            for i in range(count)
        ],
    }


def ehr(ehr_id: str) -> dict[str, Any]:
    return {
        "_type": "EHR",
        "system_id": {"_type": "HIER_OBJECT_ID", "value": SYSTEM_ID},
        "ehr_id": {"_type": "HIER_OBJECT_ID", "value": ehr_id},
        "ehr_status": {
            "_type": "OBJECT_REF",
            "id": {
                "_type": "OBJECT_VERSION_ID",
                "value": f"7e1d2c3b-4a59-4687-9a1b-2c3d4e5f6a7b::{SYSTEM_ID}::1",
            },
            "namespace": "local",
            "type": "EHR_STATUS",
        },
        "time_created": {"_type": "DV_DATE_TIME", "value": "2026-11-22T08:00:00.123+00:00"},
    }


def letter_row(i: int) -> list[Any]:
    return [
        f"{i:08x}-0000-4000-8000-000000000000::{SYSTEM_ID}::1",
        f"Letter {i}",
        "final",
        "Dr Bench",
        "00000000-0000-4000-8000-0000000000aa",
        f"2026-11-{1 + i % 28:02d}T10:00:00+00:00",
    ]


ROWS = {ehr_id: [letter_row(i) for i in range(n)] for ehr_id, n in LETTER_COUNTS.items()}
COLUMNS = [
    {"path": "c/uid/value", "name": "uid"},
    {"path": "s/name/value", "name": "title"},
    {"path": "c/context/other_context[at0001]/items[at0005]/value/value", "name": "status"},
    {"path": "c/composer/name", "name": "author"},
    {"path": "c/composer/external_ref/id/value", "name": "author_id"},
    {"path": "c/context/start_time/value", "name": "date"},
]
DOCUMENT_COLUMNS = [
    *COLUMNS,
    {
        "path": "s/items[openEHR-EHR-EVALUATION.clinical_synopsis.v1]/data[at0001]/items[at0002]/value/value",
        "name": "body",
    },
]
LETTER_TEXT = """Dear Dr Okafor,

Re: Peter James Chalmers, born 25/12/1974, NHS number 943 476 5919

I saw Mr Chalmers in the cardiology outpatient clinic on {date} (letter {number}). He was referred with \
exertional chest tightness over the last three months, coming on after about 200 metres on the flat and \
settling within five minutes of rest. There is no rest pain, no syncope and no palpitations. He has \
stopped smoking (20 pack-years) and drinks about 10 units of alcohol a week.

Past history: hypertension (2015), type 2 diabetes on metformin, right knee arthroscopy (2009).
Medication: metformin 1 g twice daily, ramipril 5 mg once daily, atorvastatin 20 mg at night.
Allergies: penicillin (rash).

On examination his blood pressure was 148/86 mmHg, pulse 72 regular, BMI 29. Heart sounds were normal \
with no murmurs; the chest was clear and there was no peripheral oedema. His resting ECG shows sinus \
rhythm with no acute changes. HbA1c 58 mmol/mol, total cholesterol 4.9 mmol/L, eGFR 78.

Impression: stable angina is likely. I have started aspirin 75 mg once daily and bisoprolol 2.5 mg once \
daily, with GTN spray as needed, and increased atorvastatin to 80 mg. I have requested a CT coronary \
angiogram and will see him again with the result in six weeks. He knows to call 999 if the pain comes \
on at rest or lasts more than 15 minutes despite GTN.

Yours sincerely,

Dr A Bench, Consultant Cardiologist
"""
DOCUMENT_MARKER = " AS body"


def document_row(i: int) -> list[Any]:
    """One row of the document query: the six summary columns and the letter's text."""
    row = letter_row(i)
    return [*row, LETTER_TEXT.format(date=row[5][:10], number=i)]


PATIENT_BODY = json.dumps(patient("bench-small")).encode()
SEARCH_BODY = json.dumps(searchset(20)).encode()


@functools.lru_cache(maxsize=256)
def aql_answer(q: str, ehr_id: str, offset: int, fetch: int) -> bytes:
    """The encoded result set of one AQL page (kept: the bench asks for the same few pages again and again,
    and encoding 17 KB of letters on every call would spend on the stub the CPU the servers share with it)."""
    rows = ROWS.get(ehr_id, [])
    page = rows[offset : offset + fetch]
    columns = COLUMNS
    if DOCUMENT_MARKER in q:
        # the texts are made for the page only (10,000 letters of 1.5 KB would be 15 MB held for nothing)
        columns = DOCUMENT_COLUMNS
        page = [document_row(i) for i in range(offset, offset + len(page))]
    result = {
        "meta": {
            "_type": "RESULTSET",
            "_schema_version": "1.0.3",
            "resultsize": len(page),
            "offset": offset,
            "fetch": fetch,
        },
        "q": q,
        "columns": columns,
        "rows": page,
    }
    return json.dumps(result).encode()


def respond(method: str, target: str, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    path, _, query = target.partition("?")
    if path.startswith("/fhir/Patient/"):
        pid = path.rsplit("/", 1)[-1]
        payload = PATIENT_BODY if pid == "bench-small" else json.dumps(patient(pid)).encode()
        return (
            200,
            [
                (b"Content-Type", FHIR_JSON),
                (b"ETag", b'W/"1"'),
                (b"Last-Modified", b"Mon, 10 Mar 2025 09:40:12 GMT"),
            ],
            payload,
        )
    if path == "/fhir/Patient":
        return 200, [(b"Content-Type", FHIR_JSON)], SEARCH_BODY
    if path == "/fhir/metadata":
        return (
            200,
            [(b"Content-Type", FHIR_JSON)],
            b'{"resourceType":"CapabilityStatement","fhirVersion":"4.0.1"}',
        )
    base = "/ehrbase/rest/openehr/v1"
    if path == "/ehrbase/rest/status":
        return 200, [(b"Content-Type", b"application/json")], b'{"ehrbase_version":"2.31.0"}'
    if path == f"{base}/ehr" and method == "GET":
        ehr_id = LARGE_EHR if LARGE_PATIENT in query else SMALL_EHR
        return 200, [(b"Content-Type", b"application/json")], json.dumps(ehr(ehr_id)).encode()
    if path.startswith(f"{base}/ehr/") and path.endswith("/composition") and method == "POST":
        ehr_id = path.split("/")[-2]
        composition = json.loads(body or b"{}")
        uid = (composition.get("uid") or {}).get(
            "value"
        ) or f"c0ffee00-1234-4abc-8def-0123456789ab::{SYSTEM_ID}::1"
        composition["uid"] = {"_type": "OBJECT_VERSION_ID", "value": uid}
        location = f"http://127.0.0.1{base}/ehr/{ehr_id}/composition/{uid.split('::')[0]}".encode()
        return (
            201,
            [(b"Content-Type", b"application/json"), (b"ETag", f'"{uid}"'.encode()), (b"Location", location)],
            json.dumps(composition).encode(),
        )
    if path.startswith(f"{base}/ehr/") and method == "GET":
        return (
            200,
            [(b"Content-Type", b"application/json")],
            json.dumps(ehr(path.rsplit("/", 1)[-1])).encode(),
        )
    if path == f"{base}/query/aql" and method == "POST":
        request = json.loads(body or b"{}")
        ehr_id = str(request.get("query_parameters", {}).get("ehr_id", ""))
        offset = int(request.get("offset", 0))
        fetch = int(request.get("fetch", len(ROWS.get(ehr_id, []))))
        payload = aql_answer(str(request.get("q", "")), ehr_id, offset, fetch)
        return 200, [(b"Content-Type", b"application/json")], payload
    return 404, [(b"Content-Type", b"application/json")], b'{"error":"Not Found","message":"no such path"}'


class Http(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buffer) < head_end + 4 + length:
                return
            body = self.buffer[head_end + 4 : head_end + 4 + length]
            self.buffer = self.buffer[head_end + 4 + length :]
            status, headers, payload = respond(method, target, body)
            reason = {200: b"OK", 201: b"Created", 404: b"Not Found"}[status]
            out = [b"HTTP/1.1 %d %s\r\n" % (status, reason), b"Content-Length: %d\r\n" % len(payload)]
            out += [name + b": " + value + b"\r\n" for name, value in headers]
            self.transport.write(b"".join(out) + b"\r\n" + payload)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
