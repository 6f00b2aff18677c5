"""Payloads of the readiness endpoints of HAPI FHIR (``/metadata``) and EHRbase (``/rest/status``).

Shaped like HAPI JPA 8.x's CapabilityStatement (trimmed) and EHRbase 2.x's status answer; no real data.
"""

from __future__ import annotations

import httpx

FHIR_BASE = "http://fhir.test/fhir"
EHRBASE_BASE = "http://ehrbase.test/ehrbase"
FHIR_JSON = "application/fhir+json;charset=utf-8"


def capability_statement() -> httpx.Response:
    body = {
        "resourceType": "CapabilityStatement",
        "id": "0b6e1d2c-3f4a-4b5c-8d7e-9f0a1b2c3d4e",
        "name": "RestServer",
        "status": "active",
        "date": "2025-03-10T09:39:44.071+00:00",
        "publisher": "Not provided",
        "kind": "instance",
        "software": {"name": "HAPI FHIR Server", "version": "8.10.0"},
        "implementation": {"description": "HAPI FHIR R4 Server", "url": FHIR_BASE},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+xml", "xml", "application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {
                        "type": "Patient",
                        "profile": "http://hl7.org/fhir/StructureDefinition/Patient",
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                    }
                ],
            }
        ],
    }
    return httpx.Response(200, json=body, headers={"Content-Type": FHIR_JSON})


def ehrbase_status() -> httpx.Response:
    body = {
        "ehrbase_version": "2.31.0",
        "openehr_sdk_version": "2.26.0",
        "archie_version": "3.13.0",
        "jvm_version": "Eclipse Adoptium 25+36-LTS",
        "os_version": "Linux amd64 6.8.0",
        "postgres_version": "PostgreSQL 16.4 on x86_64-pc-linux-musl, 64-bit",
    }
    return httpx.Response(200, json=body)
