"""Search parameters of the FHIR face, and the Bundles that carry results.

**Handling of unknown parameters** follows FHIR's ``Prefer: handling=strict|lenient``. The gateway is
strict unless the client asks for lenient: an unknown or unsupported parameter (or modifier) is refused
with 400 ``unknown_search_parameter``, because silently dropping a criterion returns more records than
the client asked for, and for patient data that is the wrong way to fail. With ``handling=lenient`` the
parameter is ignored, left out of the ``self`` link and named in an OperationOutcome entry of the Bundle
(``search.mode = outcome``).

Paging: ``next`` links carry one opaque ``_cursor`` (signed, bound to the user, expiring; see
:mod:`gateway.services.cursors`) and nothing of an upstream URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from gateway.errors import BadRequest, NotAcceptable
from gateway.r4.documents import CLINICAL_LETTER, SNOMED

DEFAULT_COUNT = 20
MAX_COUNT = 100
#: ``_format`` values meaning JSON; XML ones are refused with 406.
JSON_FORMATS = {"json", "application/json", "application/fhir+json", "application/json+fhir"}
#: Parameters every search understands besides its own.
COMMON = {"_count", "_format", "_cursor"}
PATIENT_PARAMETERS = {"name", "family", "given", "birthdate", "gender", "identifier"}
DOCUMENT_PARAMETERS = {"patient", "subject", "date", "status", "type"}
_DATE = re.compile(
    r"^(?P<prefix>eq|ne|gt|lt|ge|le|sa|eb|ap)?"
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.\d{1,9})?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


@dataclass
class SearchRequest:
    """The query of a search split into what is used and what was ignored (lenient handling)."""

    params: list[tuple[str, str]]
    count: int
    cursor: str | None
    ignored: list[str] = field(default_factory=list)


def unknown_parameter(name: str) -> BadRequest:
    return BadRequest(
        f"Unknown or unsupported search parameter '{name}' (send 'Prefer: handling=lenient' to have "
        "unknown parameters ignored).",
        code="unknown_search_parameter",
    )


def is_lenient(prefer: str | None) -> bool:
    """Whether the client's ``Prefer`` header asks for ``handling=lenient``."""
    if not prefer:
        return False
    return any(part.strip().lower() == "handling=lenient" for part in prefer.split(","))


def check_format(value: str | None) -> None:
    """Refuse a ``_format`` other than JSON (406 ``format_not_supported``)."""
    if value is not None and value.split(";", 1)[0].strip().lower() not in JSON_FORMATS:
        raise NotAcceptable("Only JSON is supported (_format=json).", code="format_not_supported")


def split_query(items: list[tuple[str, str]], known: set[str], *, lenient: bool) -> SearchRequest:
    """Check a search's query items against the parameters ``known`` to the resource.

    Raises:
        BadRequest: an unknown parameter (strict), a bad ``_count``, or a repeated parameter.
    """
    params: list[tuple[str, str]] = []
    ignored: list[str] = []
    count = DEFAULT_COUNT
    cursor: str | None = None
    for name, value in items:
        if name == "_format":
            check_format(value)
        elif name == "_count":
            count = parse_count(value)
        elif name == "_cursor":
            cursor = value
        elif name in known:
            params.append((name, value))
        elif lenient:
            ignored.append(name)
        else:
            raise unknown_parameter(name)
    return SearchRequest(params, count, cursor, ignored)


def parse_count(value: str) -> int:
    """``_count``: 1 to :data:`MAX_COUNT`."""
    if not value.isdigit() or not 1 <= int(value) <= MAX_COUNT:
        raise BadRequest(f"_count must be a whole number from 1 to {MAX_COUNT}.", code="invalid_count")
    return int(value)


def single(params: list[tuple[str, str]], name: str) -> str | None:
    """The value of a parameter that may appear once."""
    values = [value for key, value in params if key == name]
    if len(values) > 1:
        raise BadRequest(f"'{name}' may be given once.", code="repeated_search_parameter")
    return values[0] if values else None


# --- DocumentReference ----------------------------------------------------------------------------
def patient_reference(value: str, fhir_base: str) -> str:
    """The Patient id in ``patient``/``subject``: ``123``, ``Patient/123`` or ``{base}/Patient/123``."""
    for prefix in (f"{fhir_base}/Patient/", "Patient/"):
        if value.startswith(prefix):
            value = value[len(prefix) :]
            break
    if not re.fullmatch(r"[A-Za-z0-9\-\.]{1,64}", value):
        raise BadRequest(
            "patient/subject must be a Patient id, 'Patient/<id>' or the Patient's full URL.",
            code="invalid_patient_reference",
        )
    return value


def date_bounds(values: list[str]) -> tuple[str | None, str | None]:
    """The ``[from, to)`` instants (UTC, to the second) meant by ``date`` parameters.

    Supported prefixes: ``eq`` (default), ``ge``, ``gt``/``sa``, ``le``, ``lt``/``eb``; several values
    narrow the range (``date=ge2025-01&date=lt2025-07``).

    Raises:
        BadRequest: ``invalid_date`` — malformed, or ``ne``/``ap`` (not supported).
    """
    low: datetime | None = None
    high: datetime | None = None
    for value in values:
        start, end, prefix = _date_range(value)
        lower, upper = {
            "eq": (start, end),
            "ge": (start, None),
            "gt": (end, None),
            "sa": (end, None),
            "le": (None, end),
            "lt": (None, start),
            "eb": (None, start),
        }[prefix]
        if lower is not None and (low is None or lower > low):
            low = lower
        if upper is not None and (high is None or upper < high):
            high = upper
    return (_instant(low) if low else None, _instant(high) if high else None)


def _date_range(value: str) -> tuple[datetime, datetime, str]:
    match = _DATE.fullmatch(value)
    if match is None or match["prefix"] in ("ne", "ap"):
        raise BadRequest(
            "date must be [eq|ge|gt|le|lt|sa|eb]YYYY[-MM[-DD[Thh:mm[:ss][zone]]]].", code="invalid_date"
        )
    prefix = match["prefix"] or "eq"
    try:
        year, month, day = int(match["year"]), int(match["month"] or 1), int(match["day"] or 1)
        hour, minute, second = int(match["hour"] or 0), int(match["minute"] or 0), int(match["second"] or 0)
        zone = match["zone"]
        tz = UTC if zone in (None, "Z") else datetime.strptime(zone.replace(":", ""), "%z").tzinfo
        start = datetime(year, month, day, hour, minute, second, tzinfo=tz).astimezone(UTC)
    except ValueError:
        raise BadRequest("date is not a valid date.", code="invalid_date") from None
    if match["second"] is not None:
        end = start + timedelta(seconds=1)
    elif match["hour"] is not None:
        end = start + timedelta(minutes=1)
    elif match["day"] is not None:
        end = start + timedelta(days=1)
    elif match["month"] is not None:
        end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    else:
        end = datetime(year + 1, 1, 1, tzinfo=UTC)
    return start, end, prefix


def _instant(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def status_matches(value: str | None) -> bool:
    """Whether ``status`` selects the letters a search returns (always their ``current`` version)."""
    return value is None or "current" in value.split(",")


def type_matches(value: str | None) -> bool:
    """Whether ``type`` (``[system|]code``, comma-separated) selects the clinical letter type."""
    if value is None:
        return True
    for token in value.split(","):
        system, sep, code = token.rpartition("|")
        if code == CLINICAL_LETTER and (not sep or system in ("", SNOMED)):
            return True
    return False


# --- Bundles --------------------------------------------------------------------------------------
def search_url(base: str, resource_type: str, params: list[tuple[str, str]]) -> str:
    """The ``self`` link of a search: the gateway's URL with the parameters actually used."""
    query = urlencode(params)
    return f"{base}/{resource_type}?{query}" if query else f"{base}/{resource_type}"


def searchset(
    *,
    self_url: str,
    entries: list[tuple[str, dict[str, Any]]],
    next_url: str | None,
    total: int | None = None,
    ignored: list[str] | None = None,
) -> dict[str, Any]:
    """A ``searchset`` Bundle of (fullUrl, resource) matches.

    Args:
        ignored: parameters dropped under lenient handling; reported in an OperationOutcome entry.
    """
    links = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    items: list[dict[str, Any]] = [
        {"fullUrl": url, "resource": resource, "search": {"mode": "match"}} for url, resource in entries
    ]
    if ignored:
        items.append(
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "warning",
                            "code": "not-supported",
                            "diagnostics": f"Ignored search parameter '{name}'.",
                        }
                        for name in ignored
                    ],
                },
                "search": {"mode": "outcome"},
            }
        )
    if items:
        bundle["entry"] = items
    return bundle
