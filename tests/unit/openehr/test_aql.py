"""The letter AQL carries values as query_parameters and results are read by column name."""

from __future__ import annotations

import pytest

from gateway.openehr.aql import LIST_LETTERS, ResultSetError, list_letters_request, parse_summaries

EHR_ID = "7d3b1a52-9a0e-4c55-8f0e-2c6d1e9b4f11"


def test_values_are_parameters_not_part_of_the_query() -> None:
    body = list_letters_request(ehr_id=EHR_ID, template_id="gateway.clinical_letter.v1", offset=40, fetch=21)
    assert body == {
        "q": LIST_LETTERS,
        "query_parameters": {"ehr_id": EHR_ID, "template_id": "gateway.clinical_letter.v1"},
        "offset": 40,
        "fetch": 21,
    }
    assert EHR_ID not in body["q"]
    assert "$ehr_id" in body["q"]
    assert "$template_id" in body["q"]


def test_hostile_values_stay_out_of_the_query_text() -> None:
    hostile = "x' OR 1=1 --"
    body = list_letters_request(ehr_id=hostile, template_id="t", offset=0, fetch=1)
    assert hostile not in body["q"]
    assert body["query_parameters"]["ehr_id"] == hostile


def test_rows_are_matched_to_columns_by_name() -> None:
    result = {
        "columns": [
            {"path": "c/context/start_time/value", "name": "date"},
            {"path": "c/uid/value", "name": "uid"},
            {"path": "s/name/value", "name": "title"},
            {"path": "c/context/other_context[at0001]/items[at0005]/value/value", "name": "status"},
            {"path": "c/composer/name", "name": "author"},
            {"path": "c/composer/external_ref/id/value", "name": "author_id"},
        ],
        "rows": [["2026-11-22T09:30:00Z", "a::s::2", "Letter", "final", "Dr A", None]],
    }
    [summary] = parse_summaries(result)
    assert summary.uid == "a::s::2"
    assert summary.date == "2026-11-22T09:30:00Z"
    assert summary.author_id is None


def test_a_result_set_without_a_column_is_refused() -> None:
    with pytest.raises(ResultSetError):
        parse_summaries({"columns": [{"path": "c/uid/value", "name": "uid"}], "rows": []})


def test_query_names_the_archetypes_the_builder_writes() -> None:
    from gateway.openehr.composition import COMPOSITION_ARCHETYPE, SECTION_ARCHETYPE

    assert f"COMPOSITION c[{COMPOSITION_ARCHETYPE}]" in LIST_LETTERS
    assert f"SECTION s[{SECTION_ARCHETYPE}]" in LIST_LETTERS
