"""Pure patient rules: NHS number check, search criteria, If-Match parsing, business identifier."""

from __future__ import annotations

import pytest

from gateway.errors import PreconditionRequired, UnprocessableEntity
from gateway.services import patients as service


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("9434765919", True),
        ("943 476 5919", True),
        ("9434765918", False),
        ("943476591", False),
        ("94347659190", False),
        ("abcdefghij", False),
        ("0000000000", True),
        ("1234567881", True),
    ],
)
def test_nhs_number_modulus_11(value: str, valid: bool) -> None:
    assert service.is_valid_nhs_number(value) is valid


def test_nhs_number_with_check_digit_ten_is_invalid() -> None:
    digits = "100000001"
    total = sum(int(d) * w for d, w in zip(digits, range(10, 1, -1), strict=True))
    assert 11 - total % 11 == 10
    assert not any(service.is_valid_nhs_number(f"{digits}{d}") for d in range(10))


@pytest.mark.parametrize(
    ("header", "version"),
    [('W/"3"', "3"), ('"3"', "3"), ("3", "3"), (' W/"12" ', "12")],
)
def test_if_match_parsing(header: str, version: str) -> None:
    assert service.version_from_if_match(header) == version


def test_if_match_missing_is_428_and_malformed_is_422() -> None:
    with pytest.raises(PreconditionRequired):
        service.version_from_if_match(None)
    with pytest.raises(UnprocessableEntity):
        service.version_from_if_match('W/"1", W/"2"')


def test_search_params_keep_identifier_system_and_value() -> None:
    params = service.search_params(
        name=None,
        family="Chalmers",
        given=None,
        birthdate="ge1970-01",
        gender="male",
        identifier="https://fhir.nhs.uk/Id/nhs-number|9434765919",
    )
    assert params == [
        ("family", "Chalmers"),
        ("birthdate", "ge1970-01"),
        ("gender", "male"),
        ("identifier", "https://fhir.nhs.uk/Id/nhs-number|9434765919"),
    ]


def test_business_identifier_prefers_the_nhs_number() -> None:
    resource = {
        "identifier": [
            {"system": "urn:oid:1.2.3", "value": "x"},
            {"system": service.NHS_NUMBER_SYSTEM, "value": "9434765919"},
        ]
    }
    assert service.business_identifier(resource) == f"{service.NHS_NUMBER_SYSTEM}|9434765919"
