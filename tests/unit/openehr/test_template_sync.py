"""Template sync: upload when missing, leave when equal, replace when changed (compared semantically)."""

from __future__ import annotations

from gateway.openehr.templates import SyncAction, digest, load_opt, sync_template

TEMPLATE_ID = "gateway.clinical_letter.v1"


class FakeStore:
    def __init__(self, stored: bytes | None) -> None:
        self.stored = stored
        self.replaced: list[bytes] = []

    async def upload_template(self, content: bytes) -> bool:
        if self.stored is None:
            self.stored = content
            return True
        return False

    async def fetch_template(self, template_id: str) -> bytes | None:
        return self.stored

    async def replace_template(self, template_id: str, content: bytes) -> None:
        self.replaced.append(content)
        self.stored = content


def _reserialised(content: bytes) -> bytes:
    """The OPT as EHRbase hands it back: other prefixes, no comments, other whitespace."""
    text = content.decode()
    text = text.replace(
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"',
        'xmlns:x="http://www.w3.org/2001/XMLSchema-instance"',
    )
    text = text.replace("xsi:type=", "x:type=")
    start = text.index("<!--")
    text = text[:start] + text[text.index("-->") + 3 :]
    return text.replace("\n  ", "\n").encode()


def test_digest_ignores_serialisation_details() -> None:
    content = load_opt(TEMPLATE_ID).content
    assert digest(_reserialised(content)) == digest(content)


def test_digest_sees_a_changed_constraint() -> None:
    content = load_opt(TEMPLATE_ID).content
    assert digest(content.replace(b"<list>final</list>", b"<list>signed</list>")) != digest(content)


async def test_missing_template_is_uploaded() -> None:
    store = FakeStore(None)
    result = await sync_template(store, load_opt(TEMPLATE_ID))
    assert result.action is SyncAction.created
    assert store.replaced == []


async def test_equal_template_is_left_alone() -> None:
    opt = load_opt(TEMPLATE_ID)
    store = FakeStore(_reserialised(opt.content))
    assert (await sync_template(store, opt)).action is SyncAction.unchanged
    assert store.replaced == []


async def test_changed_template_is_replaced() -> None:
    opt = load_opt(TEMPLATE_ID)
    store = FakeStore(opt.content.replace(b"<list>final</list>", b"<list>signed</list>"))
    assert (await sync_template(store, opt)).action is SyncAction.replaced
    assert store.replaced == [opt.content]
