"""Opaque, signed paging cursors.

A cursor is ``base64url(json) . base64url(HMAC-SHA256)`` under a key derived from
``GATEWAY_SECRET_KEY`` for one purpose. It carries only what the gateway needs to continue, is
bound to whatever the caller binds it to (a user, a patient) and expires; anything forged, damaged,
expired or presented by someone else is refused with 422 ``invalid_cursor``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any, Protocol, TypeVar

from sqlmodel.sql.expression import SelectOfScalar

from auth_db.engine import SessionFactory
from gateway.errors import UnprocessableEntity
from gateway.security.keys import derive_key
from gateway.settings import Settings

DEFAULT_TTL_SECONDS = 3600


class _HasId(Protocol):
    @property
    def id(self) -> int | None: ...


Row = TypeVar("Row", bound=_HasId)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def invalid_cursor() -> UnprocessableEntity:
    return UnprocessableEntity("The cursor is not valid; start again without one.", code="invalid_cursor")


class SignedCursor:
    """Encodes and checks cursors for one purpose (e.g. ``"patients"``)."""

    def __init__(self, settings: Settings, purpose: str, *, ttl_seconds: int = DEFAULT_TTL_SECONDS) -> None:
        self._key = derive_key(settings, f"cursor:{purpose}")
        self.ttl_seconds = ttl_seconds

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def encode(self, data: dict[str, Any], *, bound_to: str) -> str:
        """A cursor carrying ``data``, valid only for ``bound_to`` and for the TTL."""
        payload = json.dumps(
            {"d": data, "b": bound_to, "x": int(time.time()) + self.ttl_seconds}, separators=(",", ":")
        ).encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def decode(self, cursor: str, *, bound_to: str) -> dict[str, Any]:
        """The data in ``cursor``.

        Raises:
            UnprocessableEntity: ``invalid_cursor``.
        """
        if len(cursor) > 2048:
            raise invalid_cursor()
        try:
            encoded, signature = cursor.split(".", 1)
            payload = _unb64(encoded)
            if not hmac.compare_digest(_unb64(signature), self._sign(payload)):
                raise invalid_cursor()
            envelope = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise invalid_cursor() from None
        if (
            not isinstance(envelope, dict)
            or envelope.get("b") != bound_to
            or not isinstance(envelope.get("x"), int)
            or envelope["x"] < time.time()
            or not isinstance(envelope.get("d"), dict)
        ):
            raise invalid_cursor()
        data: dict[str, Any] = envelope["d"]
        return data


async def newest_first_by_id(
    factory: SessionFactory,
    statement: SelectOfScalar[Row],
    id_column: Any,
    *,
    codec: SignedCursor,
    cursor: str | None,
    bound_to: str,
    limit: int,
) -> tuple[list[Row], str | None]:
    """One page of ``statement``'s rows, newest (highest id) first, and the cursor of the next page.

    Keyset paging on an integer primary key: the cursor holds the last id returned, so a page costs
    the same however deep the client has paged, and rows added meanwhile never shift it.

    Raises:
        UnprocessableEntity: ``invalid_cursor`` (forged, expired, of another user, or not an id).
    """
    if cursor is not None:
        after = codec.decode(cursor, bound_to=bound_to).get("i")
        if not isinstance(after, int) or isinstance(after, bool):
            raise invalid_cursor()
        statement = statement.where(id_column < after)
    async with factory() as session:
        rows = list(await session.exec(statement.order_by(id_column.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = codec.encode({"i": rows[-1].id}, bound_to=bound_to) if more and rows else None
    return rows, next_cursor
