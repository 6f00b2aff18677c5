"""Opaque, stable ``DocumentReference`` ids that reveal nothing of EHRbase.

A letter is addressed in EHRbase by (EHR id, composition id), two UUIDs. Its FHIR id is those 32 bytes
sealed with AES-SIV (deterministic authenticated encryption, RFC 5297) under a key derived from
``GATEWAY_SECRET_KEY`` for this purpose only: the same letter always gets the same id, the id tells a
client nothing, and a forged or damaged id is recognised without asking any store. The 48 sealed bytes
are written in base64 with ``-`` and ``.`` for ``+`` and ``/``: exactly 64 characters of FHIR's id
alphabet ``[A-Za-z0-9-.]``.

The ids stay the same for as long as ``GATEWAY_SECRET_KEY`` does; rotating that secret changes every
DocumentReference id (see docs/fhir.md).
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from gateway.security.keys import derive_key
from gateway.settings import Settings

_TO_FHIR = bytes.maketrans(b"+/", b"-.")
_FROM_FHIR = bytes.maketrans(b"-.", b"+/")
ID_LENGTH = 64


@dataclass(frozen=True, slots=True)
class LetterAddress:
    """Where a letter lives in EHRbase."""

    ehr_id: str
    composition_id: str


class DocumentIds:
    """Seals letter addresses into DocumentReference ids and opens them again."""

    def __init__(self, settings: Settings) -> None:
        key = derive_key(settings, "fhir:document-id:1") + derive_key(settings, "fhir:document-id:2")
        self._siv = AESSIV(key)  # 64 bytes: AES-256-SIV

    def encode(self, address: LetterAddress) -> str:
        """The DocumentReference id of a letter (64 characters)."""
        plain = uuid.UUID(address.ehr_id).bytes + uuid.UUID(address.composition_id).bytes
        sealed = self._siv.encrypt(plain, None)
        return base64.b64encode(sealed).translate(_TO_FHIR).decode()

    def decode(self, document_id: str) -> LetterAddress | None:
        """The letter a DocumentReference id names; None when the id is not one the gateway made."""
        if len(document_id) != ID_LENGTH or not document_id.isascii():
            return None
        try:
            sealed = base64.b64decode(document_id.encode().translate(_FROM_FHIR), validate=True)
            plain = self._siv.decrypt(sealed, None)
        except (ValueError, InvalidTag):
            return None
        if len(plain) != 32:
            return None
        return LetterAddress(str(uuid.UUID(bytes=plain[:16])), str(uuid.UUID(bytes=plain[16:])))
