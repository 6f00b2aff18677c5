"""Letter ids, If-Match values and signed list cursors."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.errors import PreconditionRequired, UnprocessableEntity
from gateway.services.letter_cursor import CursorCodec
from gateway.services.letter_ids import if_match_version, parse_letter_id
from gateway.settings import Settings

UID = "8849182c-82ad-4088-a07f-48ead4180515"


def test_a_uuid_means_the_latest_version() -> None:
    assert parse_letter_id(UID) == (UID, None)
    assert parse_letter_id(UID.upper()) == (UID, None)


def test_a_version_uid_names_one_version() -> None:
    assert parse_letter_id(f"{UID}::local.ehrbase.org::3") == (UID, f"{UID}::local.ehrbase.org::3")


@pytest.mark.parametrize(
    "value", ["", "x", f"{UID}::", f"{UID}::sys::0", f"{UID}::sys::-1", f"{UID}::a b::1", f"{UID}x"]
)
def test_anything_else_is_refused(value: str) -> None:
    with pytest.raises(UnprocessableEntity) as caught:
        parse_letter_id(value)
    assert caught.value.code == "invalid_letter_id"


@pytest.mark.parametrize("header", [f'"{UID}::s::2"', f"{UID}::s::2", f'W/"{UID}::s::2"'])
def test_if_match_accepts_quoted_and_unquoted_etags(header: str) -> None:
    assert if_match_version(header) == f"{UID}::s::2"


def test_missing_if_match_is_428() -> None:
    with pytest.raises(PreconditionRequired):
        if_match_version(None)


def test_cursor_round_trip_and_binding_to_the_patient(make_settings: Callable[..., Settings]) -> None:
    codec = CursorCodec(make_settings())
    cursor = codec.encode(40, patient_id="p1")
    assert codec.decode(cursor, patient_id="p1") == 40
    with pytest.raises(UnprocessableEntity):
        codec.decode(cursor, patient_id="p2")


@pytest.mark.parametrize(
    "mangle", [lambda c: c[:-2] + "AA", lambda c: "x" + c, lambda c: c.replace(".", ""), lambda c: "!!.!!"]
)
def test_tampered_cursors_are_refused(
    make_settings: Callable[..., Settings], mangle: Callable[[str], str]
) -> None:
    codec = CursorCodec(make_settings())
    with pytest.raises(UnprocessableEntity) as caught:
        codec.decode(mangle(codec.encode(20, patient_id="p1")), patient_id="p1")
    assert caught.value.code == "invalid_cursor"


def test_a_cursor_signed_with_another_secret_is_refused(make_settings: Callable[..., Settings]) -> None:
    other = CursorCodec(make_settings(gateway_secret_key="another-secret-key-0123456789abcdefghij"))
    with pytest.raises(UnprocessableEntity):
        CursorCodec(make_settings()).decode(other.encode(20, patient_id="p1"), patient_id="p1")
