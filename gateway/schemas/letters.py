"""Request and response bodies of ``/patients/{patient_id}/letters``."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from gateway.openehr.composition import LetterContent
from gateway.schemas.paging import Page

MAX_TITLE = 200
MAX_BODY = 100_000
MAX_RECIPIENTS = 20
MAX_REASON = 1000
#: C0 controls except TAB, LF, CR; DEL; C1 controls.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_LINE_BREAK = re.compile(r"[\r\n]")


def _no_controls(value: str) -> str:
    found = _CONTROL.search(value)
    if found:
        raise ValueError(
            f"control character U+{ord(found.group()):04X} at position {found.start()} is not allowed "
            "(only tab, line feed and carriage return)"
        )
    return value


def _one_line(value: str) -> str:
    _no_controls(value)
    if _LINE_BREAK.search(value) or "\t" in value:
        raise ValueError("must be a single line (no tab or line break)")
    if not value.strip():
        raise ValueError("must not be blank")
    return value.strip()


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Title = Annotated[str, Field(min_length=1, max_length=MAX_TITLE), AfterValidator(_one_line)]
Body = Annotated[
    str,
    Field(min_length=1, max_length=MAX_BODY, description="Markdown text."),
    AfterValidator(_no_controls),
    AfterValidator(_not_blank),
]
Recipient = Annotated[str, Field(min_length=1, max_length=MAX_TITLE), AfterValidator(_one_line)]
Status = Literal["draft", "final"]


class LetterWrite(BaseModel):
    """A new letter. The author is always the signed-in user; it cannot be sent."""

    model_config = ConfigDict(extra="forbid")

    title: Title
    body: Body
    status: Status = Field(description="`draft` or `final`.")
    recipients: list[Recipient] = Field(default_factory=list, max_length=MAX_RECIPIENTS)

    def content(self) -> LetterContent:
        return LetterContent(
            title=self.title, body=self.body, status=self.status, recipients=tuple(self.recipients)
        )


class LetterAmend(LetterWrite):
    """A new version of a letter; amending a final letter needs a ``reason``."""

    reason: Annotated[str, Field(min_length=1, max_length=MAX_REASON), AfterValidator(_one_line)] | None = (
        Field(default=None, description="Why the letter is amended; required for final letters; audited.")
    )


class Author(BaseModel):
    """The gateway user who wrote this version."""

    name: str
    id: str | None = Field(default=None, description="The author's gateway user id.")


class LetterSummary(BaseModel):
    """One row of the letter list."""

    id: str = Field(description="The letter id (stays the same across versions).")
    version_uid: str = Field(description="The current version uid `<id>::<system id>::<version>`.")
    title: str
    status: str
    author: Author
    date: str = Field(description="When this version was written (ISO 8601).")


class LetterOut(LetterSummary):
    """A letter with its text."""

    patient_id: str
    body: str = Field(description="Markdown text.")
    recipients: list[str]


class LetterPage(Page[LetterSummary]):
    """A page of letter summaries, newest first."""

    next_cursor: str | None = Field(
        default=None,
        deprecated=True,
        description="Deprecated: the same as `next`; removed in the next release.",
    )
