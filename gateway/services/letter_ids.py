"""Letter ids, version uids and ``If-Match`` values: parsing with precise 422/428 errors.

A letter id is the composition's versioned object id (a UUID, the same for every version); a version uid
is ``<uuid>::<system id>::<version>`` (EHRbase's ``ETag``). Paths accept either.
"""

from __future__ import annotations

import re

from gateway.errors import PreconditionFailed, UnprocessableEntity, UpstreamIssue
from gateway.services.if_match import parse_if_match

UUID_RE = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
LETTER_ID_RE = re.compile(
    rf"^(?P<uuid>{UUID_RE})(?:::(?P<system>[A-Za-z0-9._\-]{{1,200}})::(?P<version>[1-9][0-9]{{0,8}}))?$"
)
VERSION_UID_RE = re.compile(rf"{UUID_RE}::[A-Za-z0-9._\-]{{1,200}}::[1-9][0-9]{{0,8}}")


def parse_letter_id(letter_id: str) -> tuple[str, str | None]:
    """Split a letter id into (versioned object uuid, full version uid or None).

    Raises:
        UnprocessableEntity: ``invalid_letter_id`` — neither a UUID nor ``<uuid>::<system>::<version>``.
    """
    match = LETTER_ID_RE.match(letter_id)
    if match is None:
        raise UnprocessableEntity(
            "The letter id must be a UUID or a version uid '<uuid>::<system id>::<version>'.",
            code="invalid_letter_id",
        )
    object_id = match["uuid"].lower()
    return object_id, (letter_id if match["version"] else None)


def if_match_version(value: str | None) -> str:
    """The version uid in an ``If-Match`` header (quotes and ``W/`` removed).

    Raises:
        PreconditionRequired: the header is missing (428 ``if_match_required``).
        UnprocessableEntity: it is not a version uid (422 ``invalid_if_match``).
    """
    return parse_if_match(
        value, version=VERSION_UID_RE, what="the letter", example='"<uuid>::<system id>::<version>"'
    )


def stale_version(
    *, current_version: str | None = None, upstream_issues: list[UpstreamIssue] | None = None
) -> PreconditionFailed:
    """412 ``stale_version``: the letter changed since the client read it (``current_version`` if known)."""
    return PreconditionFailed(
        "The letter changed since you read it; reload it and retry.",
        code="stale_version",
        current_version=current_version,
        upstream_issues=upstream_issues,
    )
