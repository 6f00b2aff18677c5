"""HAPI FHIR R4-shaped payloads for tests (no real person).

Shapes and diagnostics texts are those of HAPI FHIR JPA 8.8.0 as run by ``just e2e`` (responses captured
from that server): ``Content-Type: application/fhir+json;charset=UTF-8``, weak ``ETag``, paging links
``<base>?_getpages=<search id>&_getpagesoffset=<n>&_count=<n>&_bundletype=searchset``, and
OperationOutcome diagnostics with HAPI's message codes (a stale update is ``HAPI-0550: HAPI-0989: …``, a
deleted resource has no code).
"""

from __future__ import annotations

from typing import Any

import httpx

BASE = "http://fhir.test/fhir"
FHIR_JSON = "application/fhir+json;charset=UTF-8"
LAST_MODIFIED = "Mon, 10 Mar 2025 09:40:12 GMT"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
VALID_NHS_NUMBER = "9434765919"


def patient(
    pid: str = "1001", version: str = "1", family: str = "Chalmers", nhs: str = VALID_NHS_NUMBER
) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "meta": {
            "versionId": version,
            "lastUpdated": "2025-03-10T09:40:12.684+00:00",
            "source": "#Qm7cT2vXh9LpA4sE",
        },
        "identifier": [{"system": NHS, "value": nhs}],
        "active": True,
        "name": [{"use": "official", "family": family, "given": ["Peter", "James"]}],
        "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1}],
        "gender": "male",
        "birthDate": "1974-12-25",
    }


def new_patient(family: str = "Chalmers", nhs: str = VALID_NHS_NUMBER) -> dict[str, Any]:
    body = patient(family=family, nhs=nhs)
    del body["id"], body["meta"]
    return body


def resource_response(body: dict[str, Any], status: int = 200) -> httpx.Response:
    version = body["meta"]["versionId"]
    headers = {"Content-Type": FHIR_JSON, "ETag": f'W/"{version}"', "Last-Modified": LAST_MODIFIED}
    if status == 201:
        location = f"{BASE}/Patient/{body['id']}/_history/{version}"
        headers |= {"Location": location, "Content-Location": location}
    return httpx.Response(status, json=body, headers=headers)


def searchset(
    patients: list[dict[str, Any]],
    *,
    total: int | None = None,
    next_offset: int | None = None,
    search_id: str = "5e9d3c1a-7b2f-4c8e-9a6d-0f1e2d3c4b5a",
    count: int = 20,
    base: str = BASE,
) -> httpx.Response:
    links = [{"relation": "self", "url": f"{base}/Patient?_count={count}&family=Chalmers"}]
    if next_offset is not None:
        links.append(
            {
                "relation": "next",
                "url": f"{base}?_getpages={search_id}&_getpagesoffset={next_offset}&_count={count}"
                "&_bundletype=searchset",
            }
        )
    body: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": search_id,
        "meta": {"lastUpdated": "2025-03-10T09:44:01.276+00:00"},
        "type": "searchset",
        "link": links,
    }
    if total is not None:
        body["total"] = total
    if patients:
        body["entry"] = [
            {"fullUrl": f"{base}/Patient/{p['id']}", "resource": p, "search": {"mode": "match"}}
            for p in patients
        ]
    return httpx.Response(200, json=body, headers={"Content-Type": FHIR_JSON})


def outcome(status: int, diagnostics: str, code: str = "processing") -> httpx.Response:
    return httpx.Response(
        status,
        json={
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
        },
        headers={"Content-Type": FHIR_JSON},
    )


def not_found(pid: str = "9999") -> httpx.Response:
    return outcome(404, f"HAPI-2001: Resource Patient/{pid} is not known")


def gone() -> httpx.Response:
    return outcome(410, "Resource was deleted at 2025-03-10T10:02:44.118+00:00")


def search_expired(search_id: str = "5e9d3c1a-7b2f-4c8e-9a6d-0f1e2d3c4b5a") -> httpx.Response:
    """A ``_getpages`` request for a search HAPI no longer holds."""
    return outcome(410, f'HAPI-0417: Search ID "{search_id}" does not exist and may have expired')


def version_conflict(pid: str = "1001", version: str = "1") -> httpx.Response:
    return outcome(
        409,
        f"HAPI-0550: HAPI-0989: Trying to update Patient/{pid}/_history/{version} "
        "but this is not the current version",
    )


def search_url_race(nhs: str = VALID_NHS_NUMBER) -> httpx.Response:
    """A conditional create that lost a race: HAPI 8.8's unique search-URL constraint (abridged)."""
    return outcome(
        409,
        "HAPI-0550: could not execute batch [Batch entry 0 insert into hfj_res_search_url (created_time,"  # noqa: S608 - HAPI's error text, not a query
        "partition_date,res_id,res_search_url,partition_id) values (('2026-12-02 02:23:55.05+00'),(NULL),"
        f"('1407'::int8),('Patient?identifier=https%3A%2F%2Ffhir.nhs.uk%2FId%2Fnhs-number%7C{nhs}'),"
        "('-1'::int4)) was aborted: ERROR: duplicate key value violates unique constraint "
        '"hfj_res_search_url_pkey"',
    )


def multiple_matches() -> httpx.Response:
    return outcome(
        412,
        "HAPI-0958: Failed to CREATE Patient with match URL "
        '"identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919" '
        "because this search matched 2 resources",
    )
