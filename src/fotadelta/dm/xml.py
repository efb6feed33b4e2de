"""SyncML DM in XML: the element tree to and from bytes.

Parsing goes through defusedxml, which refuses DTDs, entity declarations and external
references, so a message cannot expand itself or reach outside; the size is checked first."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from fotadelta.dm.element import METINF_NS, SYNCML11_NS, SYNCML_NS, CodecError, Element, LimitError

MAX_DEPTH = 32
# Characters outside XML 1.0's Char production: no XML document can hold them, escaped or not.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ATTRIBUTE = {'"': "&quot;", "\n": "&#10;", "\t": "&#09;"}  # (besides & < >, as ElementTree escapes attributes)


def encode(root: Element) -> bytes:
    """UTF-8 XML with the root's SyncML namespace (1.2 or 1.1) on the root, MetInf's on each Meta's children."""
    out = ['<?xml version="1.0" encoding="UTF-8"?>']
    _write(root, out, top=True)
    # A parser turns a raw CR into LF; as a character reference it survives. Only text holds a CR (tags and our
    # attributes never do).
    return "".join(out).encode("utf-8").replace(b"\r", b"&#13;")


def _write(e: Element, out: list[str], *, top: bool = False) -> None:
    """e as XML text onto out: what ElementTree writes for it, without building its tree (a message is
    encoded on every turn of a session, by both sides)."""
    if isinstance(e.content, bytes):
        raise CodecError(f"<{e.tag}> holds bytes, which XML cannot carry (the model base64-encodes them)")
    if e.content is not None and (bad := _NOT_XML_CHAR.search(e.content)):
        raise CodecError(f"<{e.tag}> holds U+{ord(bad.group()):04X}, which XML cannot carry")
    start = f'<{e.tag} xmlns="{escape(e.ns, _ATTRIBUTE)}"' if top or e.ns == METINF_NS else f"<{e.tag}"
    if not e.content and not e.children:
        out.append(f"{start} />")
        return
    out.append(f"{start}>{escape(e.content)}" if e.content else f"{start}>")
    for c in e.children:
        _write(c, out)
    out.append(f"</{e.tag}>")


def decode(data: bytes, *, max_size: int = 1 << 20, max_decoded: int | None = None) -> Element:
    """The element tree of an XML SyncML message; CodecError on anything malformed, LimitError over
    max_size bytes or over max_decoded characters of text (default max_size)."""
    if len(data) > max_size:
        raise LimitError(f"the message is {len(data)} bytes, over the {max_size}-byte limit")
    try:
        # forbid_dtd: defusedxml's default takes a DTD without entities; SyncML DM needs none at all.
        root = fromstring(data, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException, ValueError, LookupError) as exc:
        # (LookupError: an XML declaration naming an encoding Python does not know.)
        raise CodecError(f"not well-formed XML: {exc}") from None
    limit = max_size if max_decoded is None else max_decoded
    budget = [limit]
    element = _convert(root, 0, budget)
    if budget[0] < 0:
        raise LimitError(f"the message decodes to more than {limit} characters of text")
    return element


def _convert(node: ET.Element, depth: int, budget: list[int]) -> Element:
    """node as an Element; budget[0] is what text may still be taken (without entities, XML text
    is never longer than the document, so counting is enough: the bound is the same as WBXML's)."""
    if depth > MAX_DEPTH:
        raise CodecError(f"elements nest deeper than {MAX_DEPTH}")
    ns, _, tag = node.tag[1:].partition("}") if node.tag[0] == "{" else ("", "", node.tag)
    text = node.text or ""
    budget[0] -= len(text)
    if len(node):
        children = [_convert(c, depth + 1, budget) for c in node]
        if text.strip() or any(c.tail and c.tail.strip() for c in node):
            raise CodecError(f"<{tag}> mixes text and elements")
        return Element(tag, children, None, _namespace(ns))
    return Element(tag, [], text or None, _namespace(ns))


def _namespace(ns: str) -> str:
    """The namespace an element is read in. Namespaces are compared without case (deployed clients vary); an
    unknown one is read as SyncML 1.2, and the SyncHdr's VerDTD/VerProto decide the version in the end."""
    if ns == SYNCML_NS or ns == METINF_NS:
        return ns
    return METINF_NS if ns.lower() == METINF_NS else SYNCML11_NS if ns.upper() == SYNCML11_NS else SYNCML_NS
