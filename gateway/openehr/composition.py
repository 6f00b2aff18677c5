"""Canonical-JSON compositions of our clinical letter template, built and read back.

The gateway writes letters as **canonical JSON** (the openEHR RM serialisation), not FLAT: canonical
JSON is the format the openEHR REST specification defines, it does not depend on EHRbase's web-template
path naming (which changed in EHRbase 2.0), and EHRbase answers an unknown template with a clean 422
instead of a 500. See ``docs/openehr.md``.

Every archetype path the builder writes is listed in :data:`BUILDER_PATHS`; a unit test checks each one
exists in ``templates/gateway_clinical_letter.v1.opt``, so template and builder cannot drift apart.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

LetterStatus = Literal["draft", "final"]

COMPOSITION_ARCHETYPE = "openEHR-EHR-COMPOSITION.report.v1"
SECTION_ARCHETYPE = "openEHR-EHR-SECTION.adhoc.v1"
SYNOPSIS_ARCHETYPE = "openEHR-EHR-EVALUATION.clinical_synopsis.v1"
COMPOSITION_NAME = "Clinical letter"
#: Namespace and scheme of the composer's external reference: the gateway's own user ids.
COMPOSER_NAMESPACE = "gateway-users"
COMPOSER_SCHEME = "gateway-user-id"
RECIPIENT_FUNCTION = "recipient"
RM_VERSION = "1.0.4"

#: (archetype root, path inside it) of every node the builder writes. Checked against the OPT.
BUILDER_PATHS: tuple[tuple[str, str], ...] = (
    (COMPOSITION_ARCHETYPE, "/category"),
    (COMPOSITION_ARCHETYPE, "/name"),
    (COMPOSITION_ARCHETYPE, "/context/other_context[at0001]/items[at0005]/value"),
    (COMPOSITION_ARCHETYPE, f"/content[{SECTION_ARCHETYPE}]"),
    (SECTION_ARCHETYPE, f"/items[{SYNOPSIS_ARCHETYPE}]"),
    (SYNOPSIS_ARCHETYPE, "/data[at0001]/items[at0002]/value"),
)


@dataclass(frozen=True, slots=True)
class Composer:
    """The author of a letter version: always the authenticated gateway user."""

    user_id: uuid.UUID
    display_name: str


@dataclass(frozen=True, slots=True)
class LetterContent:
    """What a client may set on a letter."""

    title: str
    body: str
    status: LetterStatus
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Letter:
    """A letter read back from a canonical composition."""

    uid: str
    title: str
    body: str
    status: str
    author_name: str
    author_id: str | None
    date: str
    recipients: tuple[str, ...]


class CompositionShapeError(ValueError):
    """A composition that is not a letter of our template (or is malformed)."""


def _text(value: str) -> dict[str, Any]:
    return {"_type": "DV_TEXT", "value": value}


def _code(terminology: str, code: str) -> dict[str, Any]:
    return {
        "_type": "CODE_PHRASE",
        "terminology_id": {"_type": "TERMINOLOGY_ID", "value": terminology},
        "code_string": code,
    }


def _coded(value: str, terminology: str, code: str) -> dict[str, Any]:
    return {"_type": "DV_CODED_TEXT", "value": value, "defining_code": _code(terminology, code)}


def _archetyped(archetype_id: str, template_id: str) -> dict[str, Any]:
    return {
        "archetype_id": {"value": archetype_id},
        "template_id": {"value": template_id},
        "rm_version": RM_VERSION,
    }


def build_composition(
    content: LetterContent,
    *,
    composer: Composer,
    template_id: str,
    time: datetime,
    language: str = "en",
    territory: str = "GB",
) -> dict[str, Any]:
    """The canonical JSON COMPOSITION for one letter version.

    Args:
        content: title, body, status and recipients from the client.
        composer: the authenticated user; the only source of the author.
        template_id: our template id (``settings.letter_template_id``).
        time: when this version was written (``context/start_time``, the letter's date).
        language: ISO 639-1 language of the letter.
        territory: ISO 3166-1 territory.
    """
    participations = [
        {
            "_type": "PARTICIPATION",
            "function": _text(RECIPIENT_FUNCTION),
            "mode": _coded("not specified", "openehr", "193"),
            "performer": {"_type": "PARTY_IDENTIFIED", "name": recipient},
        }
        for recipient in content.recipients
    ]
    context: dict[str, Any] = {
        "_type": "EVENT_CONTEXT",
        "start_time": {"_type": "DV_DATE_TIME", "value": time.isoformat()},
        "setting": _coded("other care", "openehr", "238"),
        "other_context": {
            "_type": "ITEM_TREE",
            "name": _text("Tree"),
            "archetype_node_id": "at0001",
            "items": [
                {
                    "_type": "ELEMENT",
                    "name": _text("Status"),
                    "archetype_node_id": "at0005",
                    "value": _text(content.status),
                }
            ],
        },
    }
    if participations:
        context["participations"] = participations
    synopsis = {
        "_type": "EVALUATION",
        "name": _text("Clinical Synopsis"),
        "archetype_details": _archetyped(SYNOPSIS_ARCHETYPE, template_id),
        "archetype_node_id": SYNOPSIS_ARCHETYPE,
        "language": _code("ISO_639-1", language),
        "encoding": _code("IANA_character-sets", "UTF-8"),
        "subject": {"_type": "PARTY_SELF"},
        "data": {
            "_type": "ITEM_TREE",
            "name": _text("List"),
            "archetype_node_id": "at0001",
            "items": [
                {
                    "_type": "ELEMENT",
                    "name": _text("Synopsis"),
                    "archetype_node_id": "at0002",
                    "value": _text(content.body),
                }
            ],
        },
    }
    return {
        "_type": "COMPOSITION",
        "name": _text(COMPOSITION_NAME),
        "archetype_details": _archetyped(COMPOSITION_ARCHETYPE, template_id),
        "archetype_node_id": COMPOSITION_ARCHETYPE,
        "language": _code("ISO_639-1", language),
        "territory": _code("ISO_3166-1", territory),
        "category": _coded("event", "openehr", "433"),
        "composer": {
            "_type": "PARTY_IDENTIFIED",
            "external_ref": {
                "_type": "PARTY_REF",
                "id": {"_type": "GENERIC_ID", "value": str(composer.user_id), "scheme": COMPOSER_SCHEME},
                "namespace": COMPOSER_NAMESPACE,
                "type": "PERSON",
            },
            "name": composer.display_name,
        },
        "context": context,
        "content": [
            {
                "_type": "SECTION",
                "name": _text(content.title),
                "archetype_details": _archetyped(SECTION_ARCHETYPE, template_id),
                "archetype_node_id": SECTION_ARCHETYPE,
                "items": [synopsis],
            }
        ],
    }


def _get(node: Any, *keys: str | int) -> Any:
    for key in keys:
        if isinstance(key, int):
            if not isinstance(node, list) or len(node) <= key:
                return None
            node = node[key]
        else:
            if not isinstance(node, dict):
                return None
            node = node.get(key)
    return node


def _find(items: Any, node_id: str) -> dict[str, Any] | None:
    if not isinstance(items, list):
        return None
    for item in items:
        if isinstance(item, dict) and item.get("archetype_node_id") == node_id:
            return item
    return None


def template_of(composition: dict[str, Any]) -> str | None:
    """The template id a canonical composition was written with."""
    value = _get(composition, "archetype_details", "template_id", "value")
    return value if isinstance(value, str) else None


def parse_composition(composition: dict[str, Any], *, uid: str) -> Letter:
    """Read a letter back from its canonical JSON.

    Args:
        composition: the body of ``GET /ehr/{ehr_id}/composition/{uid}`` (canonical JSON).
        uid: the version uid of this version (from the ``ETag``), used when the body lacks one.

    Raises:
        CompositionShapeError: the composition is not a letter of our template.
    """
    if composition.get("archetype_node_id") != COMPOSITION_ARCHETYPE:
        raise CompositionShapeError("not a report composition")
    section = _find(composition.get("content"), SECTION_ARCHETYPE)
    synopsis = _find(_get(section, "items"), SYNOPSIS_ARCHETYPE)
    body_element = _find(_get(synopsis, "data", "items"), "at0002")
    status_element = _find(_get(composition, "context", "other_context", "items"), "at0005")
    title = _get(section, "name", "value")
    body = _get(body_element, "value", "value")
    status = _get(status_element, "value", "value")
    if not isinstance(title, str) or not isinstance(body, str) or not isinstance(status, str):
        raise CompositionShapeError("title, body or status missing")
    recipients = tuple(
        str(_get(p, "performer", "name"))
        for p in _get(composition, "context", "participations") or []
        if _get(p, "function", "value") == RECIPIENT_FUNCTION and _get(p, "performer", "name")
    )
    body_uid = _get(composition, "uid", "value")
    author_id = _get(composition, "composer", "external_ref", "id", "value")
    return Letter(
        uid=body_uid if isinstance(body_uid, str) else uid,
        title=title,
        body=body,
        status=status,
        author_name=str(_get(composition, "composer", "name") or ""),
        author_id=author_id if isinstance(author_id, str) else None,
        date=str(_get(composition, "context", "start_time", "value") or ""),
        recipients=recipients,
    )
