"""Our operational templates and their synchronisation with EHRbase.

``gateway templates sync`` (and, optionally, start-up) uploads each OPT under ``templates/`` that EHRbase
lacks, and replaces one whose content changed while its id did not. EHRbase re-serialises an uploaded OPT
(XMLBeans), so "changed" is decided on a **normalised** form — element names, attribute values with
namespace prefixes dropped, trimmed text; no comments or formatting — never on bytes.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from lxml import etree

TEMPLATES_DIR = Path(__file__).parent / "templates"
OPT_NS = "http://schemas.openehr.org/v1"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
logger = logging.getLogger("gateway.openehr")


class SyncAction(StrEnum):
    created = "created"
    unchanged = "unchanged"
    replaced = "replaced"


@dataclass(frozen=True, slots=True)
class Opt:
    """One operational template file."""

    template_id: str
    path: Path
    content: bytes


@dataclass(frozen=True, slots=True)
class SyncResult:
    template_id: str
    action: SyncAction


class TemplateStore(Protocol):
    """What template sync needs from EHRbase (implemented by ``EhrbaseClient``, admin credentials)."""

    async def upload_template(self, content: bytes) -> bool:
        """Upload an OPT; True when created, False when EHRbase already has that template id (409)."""
        ...

    async def fetch_template(self, template_id: str) -> bytes | None:
        """The stored OPT XML, or None when EHRbase does not know the id."""
        ...

    async def replace_template(self, template_id: str, content: bytes) -> None:
        """Replace a stored OPT through the admin API."""
        ...


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        remove_blank_text=True, remove_comments=True, resolve_entities=False, no_network=True
    )


def template_id_of(content: bytes) -> str:
    """The ``template_id/value`` of an OPT.

    Raises:
        ValueError: the document is not an OPT with a template id.
    """
    root = etree.fromstring(content, _parser())
    value = root.findtext(f"{{{OPT_NS}}}template_id/{{{OPT_NS}}}value")
    if not value:
        raise ValueError("not an operational template: template_id/value missing")
    return value.strip()


def load_opts(directory: Path = TEMPLATES_DIR) -> list[Opt]:
    """Every ``*.opt`` file of ``directory`` with its template id, sorted by file name."""
    opts = []
    for path in sorted(directory.glob("*.opt")):
        content = path.read_bytes()
        opts.append(Opt(template_id=template_id_of(content), path=path, content=content))
    return opts


def load_opt(template_id: str, directory: Path = TEMPLATES_DIR) -> Opt:
    """The OPT with ``template_id``.

    Raises:
        LookupError: no file holds that template id.
    """
    for opt in load_opts(directory):
        if opt.template_id == template_id:
            return opt
    raise LookupError(f"no OPT with template id {template_id!r} in {directory}")


def _local(name: str) -> str:
    return name.split(":", 1)[-1]


def _normalise(element: etree._Element, out: list[str]) -> None:
    attributes = []
    for raw_key, raw_value in sorted(element.attrib.items()):
        key, value = str(raw_key), str(raw_value)
        attributes.append(f"{key}={_local(value) if key == XSI_TYPE else value}")
    text = (element.text or "").strip()
    out.append(f"<{element.tag} {' '.join(attributes)}>{text}")
    for child in element:
        if isinstance(child.tag, str):
            _normalise(child, out)
    out.append(f"</{element.tag}>")


def digest(content: bytes) -> str:
    """A SHA-256 of the OPT's normalised form: equal for the same template however it is serialised."""
    root = etree.fromstring(content, _parser())
    parts: list[str] = []
    _normalise(root, parts)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


async def sync_template(store: TemplateStore, opt: Opt) -> SyncResult:
    """Make EHRbase hold ``opt``: upload it if missing, replace it if it differs, else leave it."""
    if await store.upload_template(opt.content):
        return SyncResult(opt.template_id, SyncAction.created)
    stored = await store.fetch_template(opt.template_id)
    if stored is not None and digest(stored) == digest(opt.content):
        return SyncResult(opt.template_id, SyncAction.unchanged)
    await store.replace_template(opt.template_id, opt.content)
    return SyncResult(opt.template_id, SyncAction.replaced)


async def sync_all(store: TemplateStore, directory: Path = TEMPLATES_DIR) -> list[SyncResult]:
    """Synchronise every OPT of ``directory``."""
    return [await sync_template(store, opt) for opt in load_opts(directory)]


async def sync_at_startup(store: TemplateStore) -> None:
    """Start-up variant of :func:`sync_all`: logs what it did; a failure is logged, not raised."""
    from gateway.errors import ApiError

    try:
        for result in await sync_all(store):
            logger.info("openEHR template %s: %s", result.template_id, result.action)
    except ApiError as exc:
        logger.warning("openEHR template sync failed at start-up: %s (%s)", exc.detail or exc.title, exc.code)
