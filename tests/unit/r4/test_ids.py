"""Opaque DocumentReference ids: stable, FHIR-shaped, tamper-evident, secret-bound."""

from __future__ import annotations

import re
import uuid

import pytest

from gateway.r4.ids import DocumentIds, LetterAddress
from gateway.settings import Settings

ADDRESS = LetterAddress(str(uuid.uuid4()), str(uuid.uuid4()))


@pytest.fixture
def ids() -> DocumentIds:
    return DocumentIds(Settings(gateway_secret_key="k" * 40))


def test_round_trip_and_stable(ids: DocumentIds) -> None:
    first = ids.encode(ADDRESS)
    assert ids.encode(ADDRESS) == first
    assert ids.decode(first) == ADDRESS


def test_is_a_valid_fhir_id_revealing_neither_uuid(ids: DocumentIds) -> None:
    document_id = ids.encode(ADDRESS)
    assert re.fullmatch(r"[A-Za-z0-9\-\.]{1,64}", document_id)
    for part in (ADDRESS.ehr_id, ADDRESS.composition_id):
        assert part.replace("-", "") not in document_id
        assert part not in document_id


def test_different_letters_of_one_ehr_share_no_visible_part(ids: DocumentIds) -> None:
    one = ids.encode(LetterAddress(ADDRESS.ehr_id, str(uuid.uuid4())))
    two = ids.encode(LetterAddress(ADDRESS.ehr_id, str(uuid.uuid4())))
    assert not any(one[i : i + 8] in two for i in range(0, 56, 8))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda i: i[:-1] + ("B" if i[-1] != "B" else "C"),
        lambda i: i[:-1],
        lambda i: i + "A",
        lambda i: "x" * 64,
        lambda i: i.replace(i[10], "_", 1),
        lambda i: "é" * 64,
    ],
)
def test_damaged_or_forged_ids_open_to_nothing(ids: DocumentIds, mangle: object) -> None:
    assert ids.decode(mangle(ids.encode(ADDRESS))) is None  # type: ignore[operator]


def test_another_secret_cannot_open_them(ids: DocumentIds) -> None:
    other = DocumentIds(Settings(gateway_secret_key="z" * 40))
    assert other.decode(ids.encode(ADDRESS)) is None
