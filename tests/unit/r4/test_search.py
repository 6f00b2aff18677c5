"""Search parameters of the FHIR face: handling rules, _count, dates, status/type tokens, references."""

from __future__ import annotations

import pytest

from gateway.errors import ApiError
from gateway.r4 import search

BASE = "https://gateway.example/fhir"


def code_of(call: object) -> str:
    with pytest.raises(ApiError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code


class TestHandling:
    def test_strict_refuses_an_unknown_parameter(self) -> None:
        items = [("family", "x"), ("address", "y")]
        assert code_of(lambda: search.split_query(items, {"family"}, lenient=False)) == (
            "unknown_search_parameter"
        )

    def test_a_modifier_is_an_unknown_parameter(self) -> None:
        assert code_of(lambda: search.split_query([("name:exact", "x")], {"name"}, lenient=False)) == (
            "unknown_search_parameter"
        )

    def test_lenient_ignores_and_reports(self) -> None:
        query = search.split_query([("family", "x"), ("address", "y")], {"family"}, lenient=True)
        assert query.params == [("family", "x")]
        assert query.ignored == ["address"]

    @pytest.mark.parametrize(
        ("header", "lenient"),
        [
            (None, False),
            ("handling=strict", False),
            ("handling=lenient", True),
            ("return=minimal, handling=lenient", True),
        ],
    )
    def test_prefer_header(self, header: str | None, lenient: bool) -> None:
        assert search.is_lenient(header) is lenient

    def test_count_and_cursor_are_taken_out(self) -> None:
        query = search.split_query(
            [("_count", "5"), ("_cursor", "abc"), ("_format", "json")], set(), lenient=False
        )
        assert (query.count, query.cursor, query.params) == (5, "abc", [])

    @pytest.mark.parametrize("value", ["0", "101", "-1", "ten", "1.5", ""])
    def test_bad_count(self, value: str) -> None:
        assert code_of(lambda: search.parse_count(value)) == "invalid_count"

    @pytest.mark.parametrize("value", ["xml", "application/fhir+xml", "text/html"])
    def test_only_json_formats(self, value: str) -> None:
        assert code_of(lambda: search.check_format(value)) == "format_not_supported"
        search.check_format("application/fhir+json; fhirVersion=4.0")

    def test_repeated_single_parameter(self) -> None:
        assert code_of(lambda: search.single([("patient", "1"), ("patient", "2")], "patient")) == (
            "repeated_search_parameter"
        )


class TestDates:
    @pytest.mark.parametrize(
        ("values", "bounds"),
        [
            (["2026"], ("2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z")),
            (["2026-12"], ("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z")),
            (["eq2026-02-28"], ("2026-02-28T00:00:00Z", "2026-03-01T00:00:00Z")),
            (["ge2026-11"], ("2026-11-01T00:00:00Z", None)),
            (["gt2026-11"], ("2026-12-01T00:00:00Z", None)),
            (["sa2026-11-05"], ("2026-11-06T00:00:00Z", None)),
            (["le2026-11-05"], (None, "2026-11-06T00:00:00Z")),
            (["lt2026-11-05"], (None, "2026-11-05T00:00:00Z")),
            (["eb2026"], (None, "2026-01-01T00:00:00Z")),
            (["ge2026-11-05T10:30+01:00"], ("2026-11-05T09:30:00Z", None)),
            (["2026-11-05T10:30:15Z"], ("2026-11-05T10:30:15Z", "2026-11-05T10:30:16Z")),
            (["ge2026-01", "lt2026-07"], ("2026-01-01T00:00:00Z", "2026-07-01T00:00:00Z")),
            (["ge2026-01", "ge2026-03"], ("2026-03-01T00:00:00Z", None)),
            ([], (None, None)),
        ],
    )
    def test_bounds(self, values: list[str], bounds: tuple[str | None, str | None]) -> None:
        assert search.date_bounds(values) == bounds

    @pytest.mark.parametrize(
        "value", ["ne2026", "ap2026", "2026-13", "2026-02-30", "26-01-01", "2026-1", "today"]
    )
    def test_refused(self, value: str) -> None:
        assert code_of(lambda: search.date_bounds([value])) == "invalid_date"


class TestTokens:
    @pytest.mark.parametrize(
        ("value", "matches"),
        [
            (None, True),
            ("current", True),
            ("current,superseded", True),
            ("superseded", False),
            ("entered-in-error", False),
        ],
    )
    def test_status(self, value: str | None, matches: bool) -> None:
        assert search.status_matches(value) is matches

    @pytest.mark.parametrize(
        ("value", "matches"),
        [
            (None, True),
            ("823691000000103", True),
            ("http://snomed.info/sct|823691000000103", True),
            ("|823691000000103", True),
            ("http://loinc.org|34109-9", False),
            ("http://loinc.org|823691000000103", False),
            ("http://loinc.org|34109-9,http://snomed.info/sct|823691000000103", True),
        ],
    )
    def test_type(self, value: str | None, matches: bool) -> None:
        assert search.type_matches(value) is matches


class TestPatientReference:
    @pytest.mark.parametrize("value", ["1001", "Patient/1001", f"{BASE}/Patient/1001"])
    def test_forms(self, value: str) -> None:
        assert search.patient_reference(value, BASE) == "1001"

    @pytest.mark.parametrize(
        "value", ["Practitioner/1", "http://elsewhere.example/fhir/Patient/1", "a/b", "", "x" * 65]
    )
    def test_refused(self, value: str) -> None:
        assert code_of(lambda: search.patient_reference(value, BASE)) == "invalid_patient_reference"


def test_searchset_bundle_shape() -> None:
    bundle = search.searchset(
        self_url=f"{BASE}/Patient?family=x",
        entries=[(f"{BASE}/Patient/1", {"resourceType": "Patient", "id": "1"})],
        next_url=f"{BASE}/Patient?_cursor=c",
        total=7,
        ignored=["address"],
    )
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(bundle)
    assert [link["relation"] for link in bundle["link"]] == ["self", "next"]
    assert [entry["search"]["mode"] for entry in bundle["entry"]] == ["match", "outcome"]
