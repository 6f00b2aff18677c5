"""``If-Match``: one parser for every route that updates a versioned resource.

A client sends back the ``ETag`` it read: ``W/"3"`` for a patient (FHIR's weak version ids), the quoted
version uid ``"<uuid>::<system id>::<n>"`` for a letter. The header is unwrapped the same way for both
(``W/`` and quotes dropped); each resource then says what a version looks like. A missing header is always
``428 if_match_required``, a malformed one ``422 invalid_if_match``.
"""

from __future__ import annotations

import re

from gateway.errors import PreconditionRequired, UnprocessableEntity
from gateway.upstream.ehrbase_errors import strip_etag


def parse_if_match(value: str | None, *, version: re.Pattern[str], what: str, example: str) -> str:
    """The version an ``If-Match`` header names.

    Args:
        value: the header as sent (None when absent).
        version: what a version of this resource looks like (matched in full).
        what: the resource, for the messages ("the patient", "the letter").
        example: an ETag of this kind, for the message.

    Raises:
        PreconditionRequired: ``if_match_required`` — the header is missing.
        UnprocessableEntity: ``invalid_if_match`` — it does not name a version of this kind.
    """
    unwrapped = strip_etag(value)
    if unwrapped is None:
        raise PreconditionRequired(
            f"Send If-Match with the ETag of your last read of {what}, so a concurrent change is not "
            "overwritten."
        )
    if not version.fullmatch(unwrapped):
        raise UnprocessableEntity(
            f"If-Match must be {what}'s ETag, such as {example}.", code="invalid_if_match"
        )
    return unwrapped
