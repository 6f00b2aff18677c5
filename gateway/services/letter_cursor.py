"""Opaque, signed paging cursors of the letter list (an offset bound to one patient).

The cursor is ``base64url(json) . base64url(HMAC-SHA256)`` with a key derived from
``GATEWAY_SECRET_KEY`` for this purpose only; a client cannot forge an offset or reuse a cursor of
another patient.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from gateway.errors import UnprocessableEntity
from gateway.security.keys import derive_key
from gateway.settings import Settings

MAX_OFFSET = 100_000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CursorCodec:
    """Encodes and checks letter-list cursors."""

    def __init__(self, settings: Settings) -> None:
        self._key = derive_key(settings, "letters-cursor")

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def encode(self, offset: int, *, patient_id: str) -> str:
        """A cursor for ``offset`` in ``patient_id``'s letter list."""
        payload = json.dumps({"o": offset, "p": patient_id}, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def decode(self, cursor: str, *, patient_id: str) -> int:
        """The offset in a cursor.

        Raises:
            UnprocessableEntity: ``invalid_cursor`` — forged, damaged, or of another patient.
        """
        invalid = UnprocessableEntity(
            "The cursor is not valid; start again without one.", code="invalid_cursor"
        )
        try:
            encoded, signature = cursor.split(".", 1)
            payload = _unb64(encoded)
            if not hmac.compare_digest(_unb64(signature), self._sign(payload)):
                raise invalid
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise invalid from None
        offset = data.get("o") if isinstance(data, dict) else None
        if data.get("p") != patient_id or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
            raise invalid
        return offset
