"""The AQL the gateway runs, always with ``query_parameters`` (values are never spliced into the text).

Each query is a constant; callers pass values only through :func:`aql_request`, which puts them in the
``query_parameters`` object of ``POST /query/aql``. EHRbase binds ``$name`` placeholders itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Letter summaries of one EHR and one template, newest first. A literal: nothing is ever formatted in.
LIST_LETTERS = (
    "SELECT c/uid/value AS uid, "
    "s/name/value AS title, "
    "c/context/other_context[at0001]/items[at0005]/value/value AS status, "
    "c/composer/name AS author, "
    "c/composer/external_ref/id/value AS author_id, "
    "c/context/start_time/value AS date "
    "FROM EHR e "
    "CONTAINS COMPOSITION c[openEHR-EHR-COMPOSITION.report.v1] "
    "CONTAINS SECTION s[openEHR-EHR-SECTION.adhoc.v1] "
    "WHERE e/ehr_id/value = $ehr_id "
    "AND c/archetype_details/template_id/value = $template_id "
    "ORDER BY c/context/start_time/value DESC"
)

SUMMARY_COLUMNS = ("uid", "title", "status", "author", "author_id", "date")

_DOCUMENT_SELECT = (
    "SELECT c/uid/value AS uid, "
    "s/name/value AS title, "
    "c/context/other_context[at0001]/items[at0005]/value/value AS status, "
    "c/composer/name AS author, "
    "c/composer/external_ref/id/value AS author_id, "
    "c/context/start_time/value AS date, "
    "s/items[openEHR-EHR-EVALUATION.clinical_synopsis.v1]/data[at0001]/items[at0002]/value/value AS body "
    "FROM EHR e "
    "CONTAINS COMPOSITION c[openEHR-EHR-COMPOSITION.report.v1] "
    "CONTAINS SECTION s[openEHR-EHR-SECTION.adhoc.v1] "
    "WHERE e/ehr_id/value = $ehr_id "
    "AND c/archetype_details/template_id/value = $template_id "
)
#: Letters of one EHR with their text, newest first (the FHIR DocumentReference search).
LIST_LETTER_DOCUMENTS = _DOCUMENT_SELECT + "ORDER BY c/context/start_time/value DESC"
#: The same, written at or after ``$from`` and before ``$to`` (ISO 8601; EHRbase compares to the second).
LIST_LETTER_DOCUMENTS_BETWEEN = (
    _DOCUMENT_SELECT
    + "AND c/context/start_time/value >= $from AND c/context/start_time/value < $to "
    + "ORDER BY c/context/start_time/value DESC"
)


@dataclass(frozen=True, slots=True)
class LetterRow:
    """One row of :data:`LIST_LETTERS`."""

    uid: str
    title: str
    status: str
    author: str
    author_id: str | None
    date: str
    #: The letter's text, in the rows of :data:`LIST_LETTER_DOCUMENTS` only.
    body: str | None = None


class ResultSetError(ValueError):
    """An AQL result set without the columns the gateway asked for."""


def aql_request(
    query: str, parameters: dict[str, str], *, offset: int | None = None, fetch: int | None = None
) -> dict[str, Any]:
    """The body of ``POST /query/aql``.

    Args:
        query: one of this module's constants (placeholders ``$name``).
        parameters: the value of every placeholder.
        offset: rows to skip.
        fetch: rows to return at most.
    """
    body: dict[str, Any] = {"q": query, "query_parameters": dict(parameters)}
    if offset is not None:
        body["offset"] = offset
    if fetch is not None:
        body["fetch"] = fetch
    return body


def list_letters_request(*, ehr_id: str, template_id: str, offset: int, fetch: int) -> dict[str, Any]:
    """The AQL request listing letter summaries of ``ehr_id`` (one page)."""
    return aql_request(
        LIST_LETTERS, {"ehr_id": ehr_id, "template_id": template_id}, offset=offset, fetch=fetch
    )


def list_documents_request(
    *,
    ehr_id: str,
    template_id: str,
    date_from: str | None,
    date_to: str | None,
    offset: int,
    fetch: int,
) -> dict[str, Any]:
    """The AQL request of one page of letters with their text, optionally within ``[date_from, date_to)``."""
    parameters = {"ehr_id": ehr_id, "template_id": template_id}
    if date_from is None and date_to is None:
        return aql_request(LIST_LETTER_DOCUMENTS, parameters, offset=offset, fetch=fetch)
    parameters["from"] = date_from or "0001-01-01T00:00:00Z"
    parameters["to"] = date_to or "9999-12-31T23:59:59Z"
    return aql_request(LIST_LETTER_DOCUMENTS_BETWEEN, parameters, offset=offset, fetch=fetch)


def parse_summaries(result_set: dict[str, Any]) -> list[LetterRow]:
    """Letter rows from an AQL result set, matched to columns by name (not position); ``body`` if selected.

    Raises:
        ResultSetError: a column is missing or a row is malformed.
    """
    columns = result_set.get("columns")
    has_body = isinstance(columns, list) and any(
        isinstance(column, dict) and column.get("name") == "body" for column in columns
    )
    summaries: list[LetterRow] = []
    for row in named_rows(result_set, (*SUMMARY_COLUMNS, "body") if has_body else SUMMARY_COLUMNS):
        uid, author_id, body = row["uid"], row["author_id"], row.get("body")
        if not isinstance(uid, str):
            raise ResultSetError("row without uid")
        summaries.append(
            LetterRow(
                uid=uid,
                title=str(row["title"] or ""),
                status=str(row["status"] or ""),
                author=str(row["author"] or ""),
                author_id=str(author_id) if author_id is not None else None,
                date=str(row["date"] or ""),
                body=str(body) if body is not None else None,
            )
        )
    return summaries


# --- link integrity (``gateway check links``) ------------------------------------------------------

#: EHRs whose subject is in one namespace, with the subject's id. Ordered by EHR id so that ``offset`` and
#: ``fetch`` walk the EHRs in a stable order (EHRbase 2.x orders only by a path that is also selected).
LIST_SUBJECT_EHRS = (
    "SELECT e/ehr_id/value AS ehr_id, "
    "e/ehr_status/subject/external_ref/id/value AS subject_id, "
    "e/ehr_status/subject/external_ref/namespace AS namespace "
    "FROM EHR e "
    "WHERE e/ehr_status/subject/external_ref/namespace = $namespace "
    "ORDER BY e/ehr_id/value"
)

#: One EHR and its subject, whatever the namespace (no row: EHRbase holds no EHR of this id).
EHR_SUBJECT = (
    "SELECT e/ehr_id/value AS ehr_id, "
    "e/ehr_status/subject/external_ref/id/value AS subject_id, "
    "e/ehr_status/subject/external_ref/namespace AS namespace "
    "FROM EHR e "
    "WHERE e/ehr_id/value = $ehr_id"
)

#: How many compositions (of any template) one EHR holds. ``COUNT`` of a path, not ``COUNT(*)``: EHRbase
#: before 2.25 fails to bind parameters in a query with ``COUNT(*)``.
COUNT_COMPOSITIONS = (
    "SELECT COUNT(c/uid/value) AS compositions "
    "FROM EHR e CONTAINS COMPOSITION c "
    "WHERE e/ehr_id/value = $ehr_id"
)

EHR_SUBJECT_COLUMNS = ("ehr_id", "subject_id", "namespace")


def list_subject_ehrs_request(*, namespace: str, offset: int, fetch: int) -> dict[str, Any]:
    """The AQL request for one page of the EHRs whose subject is in ``namespace``."""
    return aql_request(LIST_SUBJECT_EHRS, {"namespace": namespace}, offset=offset, fetch=fetch)


def ehr_subject_request(*, ehr_id: str) -> dict[str, Any]:
    """The AQL request reading the subject of EHR ``ehr_id``."""
    return aql_request(EHR_SUBJECT, {"ehr_id": ehr_id})


def count_compositions_request(*, ehr_id: str) -> dict[str, Any]:
    """The AQL request counting the compositions of EHR ``ehr_id``."""
    return aql_request(COUNT_COMPOSITIONS, {"ehr_id": ehr_id})


def named_rows(result_set: dict[str, Any], names: tuple[str, ...]) -> list[dict[str, Any]]:
    """The rows of an AQL result set as ``{column name: value}``, for the columns ``names`` only.

    Raises:
        ResultSetError: a column is missing or a row is malformed.
    """
    columns = result_set.get("columns")
    rows = result_set.get("rows")
    if not isinstance(columns, list) or not isinstance(rows, list):
        raise ResultSetError("result set without columns/rows")
    found = [column.get("name") if isinstance(column, dict) else None for column in columns]
    try:
        index = {name: found.index(name) for name in names}
    except ValueError:
        raise ResultSetError(f"result set lacks one of the columns {', '.join(names)}") from None
    parsed: list[dict[str, Any]] = []
    for row in rows:
        if not isinstance(row, list) or len(row) < len(found):
            raise ResultSetError("malformed row")
        parsed.append({name: row[position] for name, position in index.items()})
    return parsed
