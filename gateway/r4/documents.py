"""The letter → ``DocumentReference`` mapping (FHIR R4), built with fhir.resources models.

One row of the mapping table in ``docs/fhir.md`` per element below. A letter version becomes:

* ``id``: the opaque id of :mod:`gateway.r4.ids`; ``meta.versionId``: the composition's version number;
* ``status``: ``current`` for the latest version, ``superseded`` for earlier ones;
* ``docStatus``: ``preliminary`` (draft), ``final``, ``amended`` (a final letter written again: this
  version and the one before it are both final);
* ``type``: SNOMED CT 823691000000103 "Clinical letter" (UK Core's DocumentType value set);
* ``subject``: the FHIR Patient; ``author``: the gateway user who wrote the version (display and id);
* ``date`` and ``context.period.start``: when the version was written;
* ``description`` and ``content.attachment.title``: the letter's title;
* ``content.attachment``: the text as ``text/plain`` data, or a ``Binary`` URL when it is large;
* ``identifier``: the composition's versioned object id (``urn:uuid:…``, the JSON API's letter id);
  ``masterIdentifier``: the version uid ``<uuid>::<system>::<n>`` of exactly this version.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the models are imported where a letter is mapped, not when the app starts (~9 MB)
    from fhir.resources.R4B.attachment import Attachment
    from fhir.resources.R4B.codeableconcept import CodeableConcept
    from fhir.resources.R4B.documentreference import DocumentReference

SNOMED = "http://snomed.info/sct"
CLINICAL_LETTER = "823691000000103"
CLINICAL_LETTER_DISPLAY = "Clinical letter"
#: Identifier systems of the gateway's own ids.
USER_ID_SYSTEM = "urn:fhir-openehr-gateway:user-id"
VERSION_UID_SYSTEM = "urn:fhir-openehr-gateway:openehr-version-uid"
URI_SYSTEM = "urn:ietf:rfc:3986"
TEXT_PLAIN = "text/plain"
#: Stored letter status → ``docStatus`` (``amended`` is derived from the version before: see LetterVersion).
DOC_STATUS = {"draft": "preliminary", "final": "final"}


@dataclass(frozen=True, slots=True)
class LetterVersion:
    """One version of a letter, as the mapping needs it (no EHRbase ids but the version uid)."""

    document_id: str
    version_uid: str
    patient_id: str
    title: str
    status: str
    author_name: str
    author_id: str | None
    date: str
    body: str | None
    latest: bool
    #: The version before this one was final too: a released letter written again (``docStatus`` amended).
    amended: bool = False

    @property
    def version(self) -> str:
        """The version number: the last part of ``<uuid>::<system>::<n>``."""
        return self.version_uid.rsplit("::", 1)[-1]

    @property
    def object_id(self) -> str:
        """The composition's versioned object id (the same for every version)."""
        return self.version_uid.split("::", 1)[0]


def letter_type() -> CodeableConcept:
    """``DocumentReference.type`` of every letter."""
    from fhir.resources.R4B.codeableconcept import CodeableConcept
    from fhir.resources.R4B.coding import Coding

    return CodeableConcept(
        coding=[Coding(system=SNOMED, code=CLINICAL_LETTER, display=CLINICAL_LETTER_DISPLAY)],
        text=CLINICAL_LETTER_DISPLAY,
    )


def binary_url(fhir_base: str, letter: LetterVersion) -> str:
    """Where the letter's text can be fetched on its own (``Binary``, version-specific when not latest)."""
    url = f"{fhir_base}/Binary/{letter.document_id}"
    return url if letter.latest else f"{url}/_history/{letter.version}"


def _attachment(letter: LetterVersion, *, fhir_base: str, inline_max_bytes: int) -> Attachment:
    from fhir.resources.R4B.attachment import Attachment

    fields: dict[str, object] = {"contentType": TEXT_PLAIN, "title": letter.title, "creation": letter.date}
    data = letter.body.encode() if letter.body is not None else None
    if data is not None:
        fields["size"] = len(data)
        fields["hash"] = base64.b64encode(hashlib.sha1(data, usedforsecurity=False).digest()).decode()
    if data is not None and len(data) <= inline_max_bytes:
        fields["data"] = base64.b64encode(data).decode()
    else:
        fields["url"] = binary_url(fhir_base, letter)
    return Attachment.model_validate(fields)


def document_reference(letter: LetterVersion, *, fhir_base: str, inline_max_bytes: int) -> DocumentReference:
    """The DocumentReference of one letter version.

    Args:
        letter: the version; ``body`` None leaves the text to the ``Binary`` URL.
        fhir_base: the gateway's public FHIR base (``…/fhir``), for the ``Binary`` URL.
        inline_max_bytes: texts longer than this (UTF-8) are not inlined but linked.
    """
    from fhir.resources.R4B.documentreference import (
        DocumentReference,
        DocumentReferenceContent,
        DocumentReferenceContext,
    )
    from fhir.resources.R4B.identifier import Identifier
    from fhir.resources.R4B.meta import Meta
    from fhir.resources.R4B.period import Period
    from fhir.resources.R4B.reference import Reference

    author = Reference(
        display=letter.author_name or None,
        identifier=Identifier(system=USER_ID_SYSTEM, value=letter.author_id) if letter.author_id else None,
    )
    return DocumentReference(
        id=letter.document_id,
        meta=Meta(versionId=letter.version, lastUpdated=letter.date),
        masterIdentifier=Identifier(system=VERSION_UID_SYSTEM, value=letter.version_uid),
        identifier=[Identifier(system=URI_SYSTEM, value=f"urn:uuid:{letter.object_id}")],
        status="current" if letter.latest else "superseded",
        docStatus="amended" if letter.amended and letter.status == "final" else DOC_STATUS.get(letter.status),
        type=letter_type(),
        subject=Reference(reference=f"Patient/{letter.patient_id}"),
        date=letter.date,
        author=[author],
        description=letter.title,
        content=[
            DocumentReferenceContent(
                attachment=_attachment(letter, fhir_base=fhir_base, inline_max_bytes=inline_max_bytes)
            )
        ],
        context=DocumentReferenceContext(period=Period(start=letter.date)),
    )
