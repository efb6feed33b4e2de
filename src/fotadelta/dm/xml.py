"""SyncML DM in XML: the element tree to and from bytes.

Parsing goes through defusedxml, which refuses DTDs, entity declarations and external
references, so a message cannot expand itself or reach outside; the size is checked first."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from fotadelta.dm.element import METINF_NS, SYNCML_NS, CodecError, Element

MAX_DEPTH = 32


def encode(root: Element) -> bytes:
    """UTF-8 XML with the SyncML namespace on the root and the MetInf namespace on each Meta's children."""
    body: bytes = ET.tostring(_build(root, top=True), encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>' + body


def _build(e: Element, *, top: bool = False) -> ET.Element:
    node = ET.Element(e.tag)
    if top or e.ns == METINF_NS:
        node.set("xmlns", e.ns)
    if isinstance(e.content, bytes):
        raise CodecError(f"<{e.tag}> holds bytes, which XML cannot carry (the model base64-encodes them)")
    node.text = e.content
    for c in e.children:
        node.append(_build(c))
    return node


def decode(data: bytes, *, max_size: int = 1 << 20) -> Element:
    """The element tree of an XML SyncML message; CodecError on anything malformed or too large."""
    if len(data) > max_size:
        raise CodecError(f"the message is {len(data)} bytes, over the {max_size}-byte limit")
    try:
        root = fromstring(data)
    except (ET.ParseError, DefusedXmlException, ValueError) as exc:
        raise CodecError(f"not well-formed XML: {exc}") from None
    return _convert(root, 0)


def _convert(node: ET.Element, depth: int) -> Element:
    if depth > MAX_DEPTH:
        raise CodecError(f"elements nest deeper than {MAX_DEPTH}")
    ns, _, tag = node.tag[1:].partition("}") if node.tag.startswith("{") else ("", "", node.tag)
    children = [_convert(c, depth + 1) for c in node]
    text = node.text or ""
    if children and (text.strip() or any((c.tail or "").strip() for c in node)):
        raise CodecError(f"<{tag}> mixes text and elements")
    namespace = METINF_NS if ns.lower() == METINF_NS else SYNCML_NS
    return Element(tag, children, None if children or not text else text, namespace)
