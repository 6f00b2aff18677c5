"""Building a letter composition and reading it back."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from gateway.openehr.composition import (
    Composer,
    CompositionShapeError,
    LetterContent,
    build_composition,
    parse_composition,
    template_of,
)

USER = uuid.UUID("5b7a3c9e-1f2d-4e8a-9c0b-123456789abc")
TIME = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)


def _build(**changes: object) -> dict[str, object]:
    content = LetterContent(
        title="Discharge letter",
        body="Dear colleague,\n\n**Synthetic** text.",
        status="draft",
        recipients=("Dr Rivera", "Ward 7"),
    )
    values = {"content": content, "composer": Composer(USER, "Dr Ada Example"), "time": TIME}
    values.update(changes)
    return build_composition(template_id="gateway.clinical_letter.v1", **values)  # type: ignore[arg-type]


def test_composer_is_the_given_user_with_a_stable_external_id() -> None:
    composer = _build()["composer"]
    assert composer == {
        "_type": "PARTY_IDENTIFIED",
        "external_ref": {
            "_type": "PARTY_REF",
            "id": {"_type": "GENERIC_ID", "value": str(USER), "scheme": "gateway-user-id"},
            "namespace": "gateway-users",
            "type": "PERSON",
        },
        "name": "Dr Ada Example",
    }


def test_round_trip_keeps_every_field() -> None:
    letter = parse_composition(_build(), uid="u::s::1")
    assert letter.title == "Discharge letter"
    assert letter.body == "Dear colleague,\n\n**Synthetic** text."
    assert letter.status == "draft"
    assert letter.recipients == ("Dr Rivera", "Ward 7")
    assert letter.author_name == "Dr Ada Example"
    assert letter.author_id == str(USER)
    assert letter.date == "2026-11-22T09:30:00+00:00"
    assert letter.uid == "u::s::1"


def test_template_id_is_recorded_on_every_archetype_root() -> None:
    composition = _build()
    assert template_of(composition) == "gateway.clinical_letter.v1"
    section = composition["content"][0]  # type: ignore[index]
    assert section["archetype_details"]["template_id"]["value"] == "gateway.clinical_letter.v1"


def test_no_recipients_means_no_participations() -> None:
    composition = _build(content=LetterContent(title="t", body="b", status="final"))
    assert "participations" not in composition["context"]  # type: ignore[operator]
    assert parse_composition(composition, uid="x").recipients == ()


def test_a_composition_of_another_archetype_is_refused() -> None:
    with pytest.raises(CompositionShapeError):
        parse_composition({"archetype_node_id": "openEHR-EHR-COMPOSITION.encounter.v1"}, uid="x")


def test_a_letter_without_body_is_refused() -> None:
    composition = _build()
    composition["content"][0]["items"] = []  # type: ignore[index]
    with pytest.raises(CompositionShapeError):
        parse_composition(composition, uid="x")
