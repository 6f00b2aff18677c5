"""EHRbase 2.x responses, shaped like the real ones.

Written for these tests: ids are synthetic; messages are EHRbase's own (checked against EHRbase 2.16.0 as
``just e2e`` runs it, and the 2.31 sources). Shapes: ``POST/GET /ehr`` bodies carry the whole
``ehr_status`` in 2.16 and only a reference to it from 2.30 on (``ehr(status_inline=…)``); errors are
``{"error": <reason phrase>, "message": <text>}``, and the same fields as XML on the template endpoints
(which are asked for XML: ``xml_error``);
composition writes answer 201 + body with ``Prefer: return=representation`` (else 204) and a quoted
``ETag`` version uid; AQL result sets have ``meta``, ``q``, ``columns`` ``{path, name}`` and ``rows``.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import httpx

BASE = "http://ehrbase.test/ehrbase/rest/openehr/v1"
ADMIN = "http://ehrbase.test/ehrbase/rest/admin"
SYSTEM_ID = "local.ehrbase.org"
EHR_ID = "2f6c1d7e-8a4b-4c3d-9e5f-0a1b2c3d4e5f"
OTHER_EHR_ID = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
LETTER_UUID = "c0ffee00-1234-4abc-8def-0123456789ab"
VERSION_1 = f"{LETTER_UUID}::{SYSTEM_ID}::1"
VERSION_2 = f"{LETTER_UUID}::{SYSTEM_ID}::2"


def error(status: int, message: str) -> httpx.Response:
    """An EHRbase error answer."""
    reason = {
        400: "Bad Request",
        404: "Not Found",
        409: "Conflict",
        412: "Precondition Failed",
        422: "Unprocessable Entity",
        500: "Internal Server Error",
    }[status]
    return httpx.Response(status, json={"error": reason, "message": message})


def xml_error(status: int, message: str) -> httpx.Response:
    """An EHRbase error answer to a request that accepts XML (the template endpoints)."""
    reason = error(status, message).json()["error"]
    body = (
        "<?xml version='1.0' encoding='UTF-8'?>"
        f"<HashMap><error>{reason}</error><message>{message}</message></HashMap>"
    )
    return httpx.Response(status, text=body, headers={"Content-Type": "application/xml;charset=UTF-8"})


def ehr(
    ehr_id: str = EHR_ID, status_code: int = 200, *, status_inline: bool = False, subject: str = "p1"
) -> httpx.Response:
    """``GET /ehr?subject_id=…``, ``GET /ehr/{id}`` (200) or ``POST /ehr`` with representation (201).

    Args:
        status_inline: EHRbase 2.16's shape (the whole EHR_STATUS in the body, no ``_type`` on the EHR);
            otherwise 2.30+'s (a reference to the EHR_STATUS).
    """
    status_uid = f"7e1d2c3b-4a59-4687-9a1b-2c3d4e5f6a7b::{SYSTEM_ID}::1"
    body: dict[str, Any] = {
        "system_id": {"_type": "HIER_OBJECT_ID", "value": SYSTEM_ID},
        "ehr_id": {"_type": "HIER_OBJECT_ID", "value": ehr_id},
    }
    if status_inline:
        body["ehr_status"] = {
            "uid": {"_type": "OBJECT_VERSION_ID", "value": status_uid},
            "archetype_node_id": "openEHR-EHR-EHR_STATUS.generic.v1",
            "name": {"_type": "DV_TEXT", "value": "EHR Status"},
            "subject": {
                "_type": "PARTY_SELF",
                "external_ref": {
                    "_type": "PARTY_REF",
                    "namespace": "fhir-patient",
                    "type": "PERSON",
                    "id": {"_type": "GENERIC_ID", "value": subject, "scheme": "fhir"},
                },
            },
            "is_queryable": True,
            "is_modifiable": True,
            "_type": "EHR_STATUS",
        }
    else:
        body = {"_type": "EHR", **body}
        body["ehr_status"] = {
            "_type": "OBJECT_REF",
            "id": {"_type": "OBJECT_VERSION_ID", "value": status_uid},
            "namespace": "local",
            "type": "EHR_STATUS",
        }
    body["time_created"] = {"_type": "DV_DATE_TIME", "value": "2026-11-22T08:00:00.619683Z"}
    headers = {
        "ETag": f'"{ehr_id}"',
        "Location": f"{BASE}/ehr/{ehr_id}",
        "Last-Modified": "Fri, 02 Jan 1970 10:12:04 GMT",
    }
    return httpx.Response(status_code, json=body, headers=headers)


def ehr_not_found_by_subject() -> httpx.Response:
    return error(404, "No EHR with supplied subject parameters found")


def subject_in_use(patient_id: str, namespace: str) -> httpx.Response:
    return error(
        409,
        f"Supplied partyId[{patient_id}] is used by a different EHR in the same partyNamespace[{namespace}].",
    )


def ehrbase_datetime(value: str) -> str:
    """A date-time as EHRbase 2.16 writes it back: UTC as ``Z``, no trailing zeros in the fraction."""
    moment = datetime.fromisoformat(value).astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def stored(composition: dict[str, Any], version_uid: str) -> dict[str, Any]:
    """A composition as EHRbase returns it: the submitted one with its ``uid``, times normalised.

    Seen end to end: EHRbase keeps every other node of our canonical JSON as sent.
    """
    body = copy.deepcopy(composition)
    body["uid"] = {"_type": "OBJECT_VERSION_ID", "value": version_uid}
    start = body.get("context", {}).get("start_time")
    if isinstance(start, dict) and isinstance(start.get("value"), str):
        start["value"] = ehrbase_datetime(start["value"])
    return body


def composition_written(
    ehr_id: str, composition: dict[str, Any] | None, version_uid: str, *, status_code: int = 201
) -> httpx.Response:
    """Create (201 + body, or 204 without ``Prefer``) or update (200/204) answer."""
    object_id = version_uid.split("::", 1)[0]
    headers = {
        "ETag": f'"{version_uid}"',
        "Location": f"{BASE}/ehr/{ehr_id}/composition/{object_id}",
        "Last-Modified": "Fri, 02 Jan 1970 10:12:04 GMT",
    }
    if composition is None or status_code == 204:
        return httpx.Response(204, headers=headers)
    return httpx.Response(status_code, json=stored(composition, version_uid), headers=headers)


def composition_read(ehr_id: str, composition: dict[str, Any], version_uid: str) -> httpx.Response:
    return composition_written(ehr_id, composition, version_uid, status_code=200)


def result_set(
    q: str, columns: list[tuple[str, str]], rows: list[list[Any]], offset: int, fetch: int
) -> dict[str, Any]:
    """A ``POST /query/aql`` answer."""
    return {
        "meta": {
            "_type": "RESULTSET",
            "_schema_version": "1.0.3",
            "_created": "2026-11-22T09:45:12.118273Z",
            "_executed_aql": q,
            "fetch": fetch,
            "offset": offset,
            "resultsize": len(rows),
        },
        "q": q,
        "columns": [{"path": path, "name": name} for name, path in columns],
        "rows": rows,
    }


LETTER_COLUMNS = [
    ("uid", "c/uid/value"),
    ("title", "s/name/value"),
    ("status", "c/context/other_context[at0001]/items[at0005]/value/value"),
    ("author", "c/composer/name"),
    ("author_id", "c/composer/external_ref/id/value"),
    ("date", "c/context/start_time/value"),
]


# --- EHRbase's own messages (EHRbase 2.16, as run by `just e2e`) ---------------------------------------


def composition_not_found(object_id: str) -> httpx.Response:
    """A composition read with an id this EHR does not hold (also: one of another EHR)."""
    return error(404, f"No COMPOSITION with given id: {object_id}")


def composition_exists(version_uid: str) -> httpx.Response:
    """A create whose client-chosen uid EHRbase already holds."""
    return error(412, f"Provided Id {version_uid} already exists")


def template_unknown(template_id: str) -> httpx.Response:
    """A composition write naming a template that was never uploaded."""
    return error(422, f"Could not retrieve template for template Id: {template_id}")
