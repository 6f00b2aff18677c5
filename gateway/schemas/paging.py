"""The one paging shape of the API: ``Page[T]`` (``items`` and a ``next`` cursor) and its parameters.

Every list takes ``limit`` (the page size) and ``cursor`` (from the previous page's ``next``) and answers
``{"items": [...], "next": "<cursor>" | null}``. Lists with more to say (the patient search's ``total``, the
account list's ``total``) add fields to their subclass; the subclass's name is its OpenAPI component name.
See docs/api/README.md#paging-with-cursors. The older names (``count`` on ``/patients``, ``next_cursor`` on
letters, ``offset`` on ``/admin/users``) are still accepted or sent for one release, marked deprecated.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, Field

from gateway.errors import UnprocessableEntity

T = TypeVar("T")

NEXT_DESCRIPTION = "Pass as `cursor` for the next page; null on the last page."


class Page(BaseModel, Generic[T]):
    """One page of a list."""

    items: list[T]
    next: str | None = Field(default=None, description=NEXT_DESCRIPTION)


def page_size(limit: int | None, deprecated: int | None, *, default: int, name: str) -> int:
    """The page size from ``limit``, or from a deprecated parameter ``name`` when only that was sent.

    Raises:
        UnprocessableEntity: ``conflicting_page_size`` — both were sent with different values.
    """
    if limit is not None and deprecated is not None and limit != deprecated:
        raise UnprocessableEntity(
            f"Send the page size once, as 'limit' ('{name}' is its deprecated name).",
            code="conflicting_page_size",
        )
    if limit is not None:
        return limit
    return deprecated if deprecated is not None else default
