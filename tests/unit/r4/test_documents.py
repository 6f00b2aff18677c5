"""The letter → DocumentReference mapping, one test per row of the table in docs/fhir.md."""

from __future__ import annotations

import base64
import hashlib

import pytest
from fhir.resources.R4B.documentreference import DocumentReference

from gateway.r4.documents import (
    CLINICAL_LETTER,
    SNOMED,
    URI_SYSTEM,
    USER_ID_SYSTEM,
    VERSION_UID_SYSTEM,
    LetterVersion,
    document_reference,
)

BASE = "https://gateway.example/fhir"
DOC_ID = "A" * 64
UUID = "c0ffee00-1234-4abc-8def-0123456789ab"


def letter(**changes: object) -> LetterVersion:
    values: dict[str, object] = {
        "document_id": DOC_ID,
        "version_uid": f"{UUID}::local.ehrbase.org::2",
        "patient_id": "1001",
        "title": "Discharge letter",
        "status": "final",
        "author_name": "Dr Ada Example",
        "author_id": "7d3c1b2a-0000-4000-8000-000000000001",
        "date": "2026-11-20T10:15:00.25Z",
        "body": "Dear colleague,\n\nSeen today.",
        "latest": True,
    }
    values.update(changes)
    return LetterVersion(**values)  # type: ignore[arg-type]


def mapped(version: LetterVersion, inline_max_bytes: int = 1000) -> DocumentReference:
    resource = document_reference(version, fhir_base=BASE, inline_max_bytes=inline_max_bytes)
    # What is sent must read back as a valid R4 DocumentReference.
    return DocumentReference.model_validate(resource.model_dump(mode="json", exclude_none=True))


@pytest.mark.parametrize(
    ("stored", "amended", "doc_status"),
    [
        ("draft", False, "preliminary"),
        ("final", False, "final"),
        ("final", True, "amended"),
        ("draft", True, "preliminary"),  # cannot happen (final never goes back), and is not "amended"
    ],
)
def test_doc_status_follows_the_letter_status(stored: str, amended: bool, doc_status: str) -> None:
    assert mapped(letter(status=stored, amended=amended)).docStatus == doc_status


def test_an_unknown_stored_status_leaves_doc_status_out() -> None:
    assert mapped(letter(status="something else")).docStatus is None


@pytest.mark.parametrize(("latest", "status"), [(True, "current"), (False, "superseded")])
def test_status_is_current_only_for_the_latest_version(latest: bool, status: str) -> None:
    assert mapped(letter(latest=latest)).status == status


def test_type_is_snomed_clinical_letter() -> None:
    coding = mapped(letter()).type.coding[0]
    assert (coding.system, coding.code, coding.display) == (SNOMED, CLINICAL_LETTER, "Clinical letter")


def test_subject_author_date_and_context() -> None:
    doc = mapped(letter())
    assert doc.subject.reference == "Patient/1001"
    assert doc.author[0].display == "Dr Ada Example"
    assert doc.author[0].identifier.system == USER_ID_SYSTEM
    assert doc.author[0].identifier.value == "7d3c1b2a-0000-4000-8000-000000000001"
    assert doc.date.isoformat().startswith("2026-11-20T10:15:00.25")
    assert doc.context.period.start == doc.date
    assert doc.description == "Discharge letter"


def test_an_author_without_an_id_keeps_the_display() -> None:
    doc = mapped(letter(author_id=None))
    assert doc.author[0].identifier is None
    assert doc.author[0].display == "Dr Ada Example"


def test_version_and_identifiers() -> None:
    doc = mapped(letter())
    assert doc.id == DOC_ID
    assert doc.meta.versionId == "2"
    assert (doc.masterIdentifier.system, doc.masterIdentifier.value) == (
        VERSION_UID_SYSTEM,
        f"{UUID}::local.ehrbase.org::2",
    )
    assert [(i.system, i.value) for i in doc.identifier] == [(URI_SYSTEM, f"urn:uuid:{UUID}")]
    assert "ehr" not in doc.id.lower()


def test_a_short_text_is_inlined_as_plain_text() -> None:
    text = "Dear colleague,\n\nSeen today."
    resource = document_reference(letter(body=text), fhir_base=BASE, inline_max_bytes=1000)
    attachment = resource.model_dump(mode="json", exclude_none=True)["content"][0]["attachment"]
    assert attachment["contentType"] == "text/plain"
    assert base64.b64decode(attachment["data"]).decode() == text
    assert attachment["title"] == "Discharge letter"
    assert attachment["size"] == len(text.encode())
    assert (
        attachment["hash"]
        == base64.b64encode(hashlib.sha1(text.encode(), usedforsecurity=False).digest()).decode()
    )
    assert "url" not in attachment


def test_a_long_text_is_linked_as_binary_version_specific_when_superseded() -> None:
    long_text = "é" * 600  # 1,200 UTF-8 bytes: over the limit although 600 characters
    current = mapped(letter(body=long_text), inline_max_bytes=1000).content[0].attachment
    assert current.data is None
    assert current.url == f"{BASE}/Binary/{DOC_ID}"
    older = mapped(letter(body=long_text, latest=False), inline_max_bytes=1000).content[0].attachment
    assert older.url == f"{BASE}/Binary/{DOC_ID}/_history/2"


def test_without_a_body_only_the_url_is_given() -> None:
    attachment = mapped(letter(body=None)).content[0].attachment
    assert attachment.url == f"{BASE}/Binary/{DOC_ID}"
    assert attachment.size is None
