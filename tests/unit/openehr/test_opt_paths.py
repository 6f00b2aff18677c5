"""Our OPT is well-formed, carries the configured template id, and holds every path the builder writes."""

from __future__ import annotations

import re

import pytest
from lxml import etree

from gateway.openehr.composition import BUILDER_PATHS, COMPOSITION_ARCHETYPE
from gateway.openehr.templates import OPT_NS, load_opt, load_opts
from gateway.settings import Settings

NS = {"o": OPT_NS}
SEGMENT = re.compile(r"/(?P<attr>[a-z_]+)(?:\[(?P<node>[^\]]+)\])?")


def _root_of(tree: etree._Element, archetype_id: str) -> etree._Element:
    if tree.findtext("o:definition/o:archetype_id/o:value", namespaces=NS) == archetype_id:
        return tree.find("o:definition", NS)
    for node in tree.iter(f"{{{OPT_NS}}}children"):
        if node.findtext("o:archetype_id/o:value", namespaces=NS) == archetype_id:
            return node
    raise AssertionError(f"archetype root {archetype_id} not in the OPT")


def _resolve(node: etree._Element, path: str) -> etree._Element:
    for match in SEGMENT.finditer(path):
        attribute = next(
            (
                a
                for a in node.findall("o:attributes", NS)
                if a.findtext("o:rm_attribute_name", namespaces=NS) == match["attr"]
            ),
            None,
        )
        assert attribute is not None, f"attribute {match['attr']} missing at {path}"
        children = attribute.findall("o:children", NS)
        wanted = match["node"]
        if wanted is None:
            assert children, f"no constraint under {match['attr']}"
            node = children[0]
            continue
        found = [
            c
            for c in children
            if c.findtext("o:node_id", namespaces=NS) == wanted
            or c.findtext("o:archetype_id/o:value", namespaces=NS) == wanted
        ]
        assert found, f"node {wanted} missing at {path}"
        node = found[0]
    return node


@pytest.fixture(scope="module")
def opt_tree() -> etree._Element:
    opt = load_opt(Settings.model_fields["letter_template_id"].default)
    return etree.fromstring(opt.content)


def test_template_id_is_the_configured_one() -> None:
    ids = [opt.template_id for opt in load_opts()]
    assert Settings.model_fields["letter_template_id"].default in ids


@pytest.mark.parametrize(("archetype", "path"), BUILDER_PATHS)
def test_every_builder_path_exists_in_the_opt(opt_tree: etree._Element, archetype: str, path: str) -> None:
    _resolve(_root_of(opt_tree, archetype), path)


def test_an_unknown_path_is_refused(opt_tree: etree._Element) -> None:
    with pytest.raises(AssertionError):
        _resolve(_root_of(opt_tree, COMPOSITION_ARCHETYPE), "/context/other_context[at0001]/items[at0099]")


def test_status_is_limited_to_draft_and_final(opt_tree: etree._Element) -> None:
    value = _resolve(
        _root_of(opt_tree, COMPOSITION_ARCHETYPE), "/context/other_context[at0001]/items[at0005]/value"
    )
    allowed = value.xpath(".//o:item/o:list/text()", namespaces=NS)
    assert sorted(allowed) == ["draft", "final"]


def test_every_archetype_root_defines_its_node_ids(opt_tree: etree._Element) -> None:
    roots = [
        opt_tree.find("o:definition", NS),
        *opt_tree.xpath("//o:children[o:archetype_id]", namespaces=NS),
    ]
    for root in roots:
        defined = set(root.xpath("o:term_definitions/@code", namespaces=NS))
        used: set[str] = set()
        for node_id in root.iter(f"{{{OPT_NS}}}node_id"):
            owner = node_id.getparent()
            nearest_root = (
                next(a for a in owner.iterancestors() if a.find("o:archetype_id", NS) is not None)
                if owner is not root
                else root
            )
            if nearest_root is root and owner.find("o:archetype_id", NS) is None and node_id.text:
                used.add(node_id.text)
        assert used <= defined, f"{root.findtext('o:archetype_id/o:value', namespaces=NS)}: {used - defined}"
