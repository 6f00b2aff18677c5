"""Opaque, signed paging cursors of the letter list: an offset bound to one patient.

Built on :class:`gateway.services.cursors.SignedCursor` (HMAC under a key derived for this purpose only,
with an expiry), so a client cannot forge an offset or reuse a cursor of another patient.
"""

from __future__ import annotations

from gateway.services.cursors import SignedCursor, invalid_cursor
from gateway.settings import Settings

MAX_OFFSET = 100_000


class CursorCodec:
    """Encodes and checks letter-list cursors."""

    def __init__(self, settings: Settings) -> None:
        self._signed = SignedCursor(settings, "letters")

    def encode(self, offset: int, *, patient_id: str) -> str:
        """A cursor for ``offset`` in ``patient_id``'s letter list."""
        return self._signed.encode({"o": offset}, bound_to=patient_id)

    def decode(self, cursor: str, *, patient_id: str) -> int:
        """The offset in a cursor.

        Raises:
            UnprocessableEntity: ``invalid_cursor`` — forged, damaged, expired, or of another patient.
        """
        offset = self._signed.decode(cursor, bound_to=patient_id).get("o")
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_OFFSET:
            raise invalid_cursor()
        return offset
