"""SyncML DM in XML: the element tree to and from bytes.

Parsing runs expat (C) straight into our elements, refusing any DTD at its start: without one a
document declares no entity, so a message cannot expand itself or reach outside (an undeclared
entity is a parse error), and its text is never longer than itself; the size is checked first.
(defusedxml did the same refusing through ElementTree's pure-Python parser, several times slower:
both sides parse every message of every session.)"""

from __future__ import annotations

import re
from xml.parsers import expat
from xml.sax.saxutils import escape

from fotadelta.dm.element import METINF_NS, SYNCML11_NS, SYNCML_NS, CodecError, Element, LimitError

MAX_DEPTH = 32
# Characters outside XML 1.0's Char production: no XML document can hold them, escaped or not.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ATTRIBUTE = {'"': "&quot;", "\n": "&#10;", "\t": "&#09;"}  # (besides & < >, as ElementTree escapes attributes)


def encode(root: Element) -> bytes:
    """UTF-8 XML with the root's SyncML namespace (1.2 or 1.1) on the root, MetInf's on each Meta's children."""
    out = ['<?xml version="1.0" encoding="UTF-8"?>']
    _write(root, out, top=True)
    text = "".join(out)
    if _NOT_XML_CHAR.search(text):  # (one search of the whole; the element it is in is found after)
        _check_chars(root)
        raise CodecError("a tag or namespace holds a character XML cannot carry")
    # A parser turns a raw CR into LF; as a character reference it survives. Only text holds a CR (tags and our
    # attributes never do).
    return text.encode("utf-8").replace(b"\r", b"&#13;")


def _write(e: Element, out: list[str], *, top: bool = False) -> None:
    """e as XML text onto out: what ElementTree writes for it, without building its tree (a message is
    encoded on every turn of a session, by both sides)."""
    content, tag = e.content, e.tag
    if isinstance(content, bytes):
        raise CodecError(f"<{tag}> holds bytes, which XML cannot carry (the model base64-encodes them)")
    start = f'<{tag} xmlns="{escape(e.ns, _ATTRIBUTE)}"' if top or e.ns == METINF_NS else f"<{tag}"
    if e.children:
        out.append(f"{start}>{escape(content)}" if content else f"{start}>")
        for c in e.children:
            _write(c, out)
        out.append(f"</{tag}>")
    elif content:
        if "&" in content or "<" in content or ">" in content:
            content = escape(content)
        out.append(f"{start}>{content}</{tag}>")
    else:
        out.append(f"{start} />")


def _check_chars(e: Element) -> None:
    """CodecError naming the first element whose text holds a character outside XML's."""
    if isinstance(e.content, str) and (bad := _NOT_XML_CHAR.search(e.content)):
        raise CodecError(f"<{e.tag}> holds U+{ord(bad.group()):04X}, which XML cannot carry")
    for c in e.children:
        _check_chars(c)


def decode(data: bytes, *, max_size: int = 1 << 20, max_decoded: int | None = None) -> Element:
    """The element tree of an XML SyncML message; CodecError on anything malformed, LimitError over
    max_size bytes or over max_decoded characters of text (default max_size)."""
    if len(data) > max_size:
        raise LimitError(f"the message is {len(data)} bytes, over the {max_size}-byte limit")
    limit = max_size if max_decoded is None else max_decoded
    builder = _Builder(limit)
    parser = expat.ParserCreate(namespace_separator="}")
    parser.buffer_text = True  # (one call per run of text, not per line or entity)
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.text
    try:
        parser.Parse(data, True)
    except CodecError:
        raise  # (from the handlers: a DTD, too deep, mixed content)
    except (expat.ExpatError, ValueError, LookupError) as exc:
        # (LookupError: an XML declaration naming an encoding Python does not know.)
        raise CodecError(f"not well-formed XML: {exc}") from None
    if builder.budget < 0:
        raise LimitError(f"the message decodes to more than {limit} characters of text")
    assert builder.root is not None  # (expat accepts no document without a root element)
    return builder.root


def _refuse_dtd(*_: object) -> None:
    raise CodecError("a DTD in the message (SyncML DM messages carry none)")


class _Builder:
    """Elements from expat's events. budget is what text may still be taken (without entities, XML text is
    never longer than the document, so counting is enough: the bound is the same as WBXML's)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.root: Element | None = None
        # Per open element: it and its pieces of text (its own, or the whitespace between its children).
        self._open: list[tuple[Element, list[str]]] = []
        self._names: dict[str, tuple[str, str]] = {}  # expat's names read as tag and namespace (few repeat often)

    def start(self, name: str, _attributes: object) -> None:
        if len(self._open) > MAX_DEPTH:
            raise CodecError(f"elements nest deeper than {MAX_DEPTH}")
        named = self._names.get(name)
        if named is None:
            ns, _, tag = name.rpartition("}")
            named = self._names[name] = (tag, _namespace(ns))
        element = Element(named[0], [], None, named[1])
        if self._open:
            self._open[-1][0].children.append(element)
        else:
            self.root = element
        self._open.append((element, []))

    def text(self, piece: str) -> None:
        if self._open:  # (outside the root there is only whitespace: expat refuses anything else)
            self._open[-1][1].append(piece)
            self.budget -= len(piece)

    def end(self, _name: str) -> None:
        element, pieces = self._open.pop()
        if pieces:
            text = pieces[0] if len(pieces) == 1 else "".join(pieces)
            if not element.children:
                element.content = text or None
            elif text.strip():
                raise CodecError(f"<{element.tag}> mixes text and elements")


def _namespace(ns: str) -> str:
    """The namespace an element is read in. Namespaces are compared without case (deployed clients vary); an
    unknown one is read as SyncML 1.2, and the SyncHdr's VerDTD/VerProto decide the version in the end."""
    if ns == SYNCML_NS or ns == METINF_NS:
        return ns
    return METINF_NS if ns.lower() == METINF_NS else SYNCML11_NS if ns.upper() == SYNCML11_NS else SYNCML_NS
