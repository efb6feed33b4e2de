"""SyncML DM in XML: the element tree to and from bytes.

Parsing refuses any DTD (expat reads the prolog alone first): without one a document declares no
entity, so a message cannot expand itself or reach outside (an undeclared entity is a parse error),
and its text is never longer than itself; the size is checked first. ElementTree's C parser then
builds the tree with no Python call per event, and one walk turns it into our elements, checking
depth, mixed content and the text budget. (A too-deep document is now refused after it is parsed,
not at its 34th level: it costs what a flat document of the same size always did.)"""

from __future__ import annotations

import base64
import re
from xml.etree import ElementTree
from xml.parsers import expat
from xml.sax.saxutils import escape

from fotadelta.dm.element import METINF_NS, SYNCML11_NS, SYNCML_NS, CodecError, Element, LimitError
from fotadelta.dm.model import (DM_1_1, Alert, Atomic, Command, Exec, Item, Message, Meta, Results, Status,
                                command_name, to_element)

MAX_DEPTH = 32
# Characters outside XML 1.0's Char production: no XML document can hold them, escaped or not.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ASCII_XML_CHARS = bytes([9, 10, 13, *range(0x20, 0x80)])
_ATTRIBUTE = {'"': "&quot;", "\n": "&#10;", "\t": "&#09;"}  # (besides & < >, as ElementTree escapes attributes)


def encode(msg: Message) -> bytes:
    """UTF-8 XML of msg: what the element tree of `to_element(msg, binary=False)` reads as, written straight
    from the model (both sides encode every message of every session). The SyncML namespace (1.2 or 1.1) is on
    the root, MetInf's on each Meta's children."""
    h = msg.header
    protocol = h.protocol
    out = [f'<?xml version="1.0" encoding="UTF-8"?><SyncML xmlns="{escape(protocol.namespace, _ATTRIBUTE)}">'
           f'<SyncHdr>{_leaf("VerDTD", protocol.dtd)}{_leaf("VerProto", protocol.proto)}']
    add = out.append
    add(_leaf("SessionID", h.session_id))
    add(f"<MsgID>{h.msg_id}</MsgID>")
    _loc("Target", h.target, h.target_name, out)
    _loc("Source", h.source, h.source_name, out)
    if h.resp_uri is not None:
        add(_leaf("RespURI", h.resp_uri))
    if h.no_resp:
        add("<NoResp />")
    if h.cred is not None:
        add("<Cred>")
        _meta(Meta(format=h.cred.format, type=h.cred.type), out)
        add(f"{_leaf('Data', h.cred.data)}</Cred>")
    if h.meta is not None:
        _meta(h.meta, out, always=False)
    add("</SyncHdr><SyncBody>")
    # (SyncML 1.1 lacks a few elements: the commands say when they would write one.)
    old = protocol is DM_1_1
    for cmd in msg.commands:
        _command(cmd, out, old)
    add("<Final /></SyncBody></SyncML>" if msg.final else "</SyncBody></SyncML>")
    text = "".join(out)
    # (One check of the whole; the element the character is in is found after. Most messages are ASCII, where
    # deleting the allowed bytes is several times quicker than the regular expression.)
    data = text.encode("ascii") if text.isascii() else None
    if data.translate(None, _ASCII_XML_CHARS) if data is not None else _NOT_XML_CHAR.search(text):
        _check_chars(to_element(msg, binary=False))
        raise CodecError("a tag or namespace holds a character XML cannot carry")
    # A parser turns a raw CR into LF; as a character reference it survives. Only text holds a CR (tags and our
    # attributes never do).
    return (text.encode("utf-8") if data is None else data).replace(b"\r", b"&#13;")


def _text(value: str | int) -> str:
    """value as XML text (an int as its digits)."""
    text = value if isinstance(value, str) else str(value)
    if "&" in text or "<" in text or ">" in text:
        return escape(text)
    return text


def _leaf(tag: str, text: str) -> str:
    if "&" in text or "<" in text or ">" in text:
        text = escape(text)
    return f"<{tag}>{text}</{tag}>" if text else f"<{tag} />"


def _loc(tag: str, uri: str, name: str | None, out: list[str]) -> None:
    if name is None:
        out.append(f"<{tag}>{_leaf('LocURI', uri)}</{tag}>")
    else:
        out.append(f"<{tag}>{_leaf('LocURI', uri)}{_leaf('LocName', name)}</{tag}>")


def _not_in_1_1(tag: str) -> CodecError:
    return CodecError(f"<{tag}> is not part of SyncML 1.1 (OMA DM 1.1.2)")


_METINF = tuple((name, f'<{tag} xmlns="{METINF_NS}">', f"</{tag}>", f'<{tag} xmlns="{METINF_NS}" />')
                for name, tag in (("format", "Format"), ("type", "Type"), ("mark", "Mark"), ("size", "Size"),
                                  ("next_nonce", "NextNonce"), ("max_msg_size", "MaxMsgSize"),
                                  ("max_obj_size", "MaxObjSize")))


def _meta(meta: Meta, out: list[str], *, always: bool = True) -> None:
    """<Meta> with meta's fields; when it has none, <Meta /> if always, else nothing."""
    parts = []
    for name, start, end, empty in _METINF:
        value = getattr(meta, name)
        if value is not None:
            text = _text(value)
            parts.append(f"{start}{text}{end}" if text else empty)
    if parts:
        out.append(f"<Meta>{''.join(parts)}</Meta>")
    elif always:
        out.append("<Meta />")


def _item(item: Item, out: list[str], old: bool) -> None:
    add = out.append
    add("<Item>")
    if item.target is not None:
        _loc("Target", item.target, None, out)
    if item.source is not None:
        _loc("Source", item.source, None, out)
    if item.source_parent is not None:
        if old:
            raise _not_in_1_1("SourceParent")
        _loc("SourceParent", item.source_parent, None, out)
    if item.target_parent is not None:
        if old:
            raise _not_in_1_1("TargetParent")
        _loc("TargetParent", item.target_parent, None, out)
    meta, data = item.meta, item.data
    if isinstance(data, bytes):
        # XML cannot carry raw bytes: send them base64-encoded and say so in the item's Meta.
        meta = Meta(**vars(meta)) if meta else Meta()
        meta.format = "b64"
        data = base64.b64encode(data).decode()
    if meta is not None:
        _meta(meta, out, always=False)
    if data is not None:
        add(_leaf("Data", data))
    add("<MoreData /></Item>" if item.more_data else "</Item>")


def _command(cmd: Command, out: list[str], old: bool) -> None:
    add = out.append
    name = command_name(cmd)
    add(f"<{name}><CmdID>{cmd.cmd_id}</CmdID>")
    if isinstance(cmd, Status):
        add(f"<MsgRef>{cmd.msg_ref}</MsgRef><CmdRef>{cmd.cmd_ref}</CmdRef>{_leaf('Cmd', cmd.cmd)}")
        for ref in cmd.target_refs:
            add(_leaf("TargetRef", ref))
        for ref in cmd.source_refs:
            add(_leaf("SourceRef", ref))
        if cmd.chal is not None:
            add("<Chal>")
            _meta(cmd.chal.meta, out)
            add("</Chal>")
        add(f"<Data>{cmd.code}</Data>")
        for item in cmd.items:
            _item(item, out, old)
    elif isinstance(cmd, Results):
        if cmd.msg_ref is not None:
            add(f"<MsgRef>{cmd.msg_ref}</MsgRef>")
        add(f"<CmdRef>{cmd.cmd_ref}</CmdRef>")
        if cmd.meta is not None:
            _meta(cmd.meta, out)
        for ref in cmd.target_refs:
            add(_leaf("TargetRef", ref))
        for ref in cmd.source_refs:
            add(_leaf("SourceRef", ref))
        for item in cmd.items:
            _item(item, out, old)
    else:
        if cmd.no_resp:
            add("<NoResp />")
        if isinstance(cmd, Alert):
            add(f"<Data>{cmd.data}</Data>")
            if cmd.correlator is not None:
                if old:
                    raise _not_in_1_1("Correlator")
                add(_leaf("Correlator", cmd.correlator))
            for item in cmd.items:
                _item(item, out, old)
        else:
            if cmd.meta is not None:
                _meta(cmd.meta, out)
            if isinstance(cmd, Exec):
                if cmd.correlator is not None:
                    if old:
                        raise _not_in_1_1("Correlator")
                    add(_leaf("Correlator", cmd.correlator))
                _item(cmd.item, out, old)
            elif isinstance(cmd, Atomic):
                for inner in cmd.commands:
                    _command(inner, out, old)
            else:
                for item in cmd.items:
                    _item(item, out, old)
    add(f"</{name}>")


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
    # ElementTree's parser builds the whole tree in C (expat's events reach no Python function: a handler call per
    # event cost more than the parsing), but it would take a DTD. So expat reads the prolog first, alone: a DTD
    # can only come before the root element, and the reading stops at the root's start.
    prolog = expat.ParserCreate(namespace_separator="}")
    prolog.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    prolog.StartDoctypeDeclHandler = _refuse_dtd
    prolog.StartElementHandler = _root_reached
    parser = ElementTree.XMLParser()
    try:
        try:
            prolog.Parse(data, True)
        except _RootReached:
            pass
        parser.feed(data)
        root = parser.close()
    except CodecError:
        raise  # (a DTD)
    except (expat.ExpatError, ElementTree.ParseError, ValueError, LookupError) as exc:
        # (LookupError: an XML declaration naming an encoding Python does not know.)
        raise CodecError(f"not well-formed XML: {exc}") from None
    budget = [limit]
    element = _element(root, 1, budget)
    if budget[0] < 0:
        raise LimitError(f"the message decodes to more than {limit} characters of text")
    return element


class _RootReached(Exception):
    """The prolog is read: the root element starts."""


def _root_reached(*_: object) -> None:
    raise _RootReached


def _refuse_dtd(*_: object) -> None:
    raise CodecError("a DTD in the message (SyncML DM messages carry none)")


# ElementTree's names read as tag and namespace: few, and the same in every message (bounded: a hostile peer may
# send any number of names).
_NAMES: dict[str, tuple[str, str]] = {}
_MAX_NAMES = 512


def _element(e: ElementTree.Element, depth: int, budget: list[int]) -> Element:
    """Our element of e at depth (the root's is 1), taking its text from budget: children whose text around them
    is only whitespace (dropped), or text (without entities, XML text is never longer than the document, so
    counting is enough: the bound is the same as WBXML's)."""
    tag, ns = _NAMES.get(e.tag) or _name(e.tag)
    text = e.text
    if not len(e):
        if text:
            budget[0] -= len(text)
            return Element(tag, [], text, ns)
        return Element(tag, [], None, ns)
    if depth > MAX_DEPTH:
        raise CodecError(f"elements nest deeper than {MAX_DEPTH}")
    children: list[Element] = []
    add = children.append
    for c in e:
        if text:
            if text.strip():
                raise CodecError(f"<{tag}> mixes text and elements")
            budget[0] -= len(text)
        if len(c):
            add(_element(c, depth + 1, budget))
        else:  # (most elements are leaves: made here rather than by a call each)
            leaf_tag, leaf_ns = _NAMES.get(c.tag) or _name(c.tag)
            leaf_text = c.text
            if leaf_text:
                budget[0] -= len(leaf_text)
                add(Element(leaf_tag, [], leaf_text, leaf_ns))
            else:
                add(Element(leaf_tag, [], None, leaf_ns))
        text = c.tail
    if text:
        if text.strip():
            raise CodecError(f"<{tag}> mixes text and elements")
        budget[0] -= len(text)
    return Element(tag, children, None, ns)


def _name(name: str) -> tuple[str, str]:
    """ElementTree's "{namespace}tag" as (tag, namespace), kept in _NAMES while there is room."""
    ns, _, tag = name[1:].rpartition("}") if name[:1] == "{" else ("", "", name)
    named = (tag, _namespace(ns))
    if len(_NAMES) < _MAX_NAMES:
        _NAMES[name] = named
    return named


def _namespace(ns: str) -> str:
    """The namespace an element is read in. Namespaces are compared without case (deployed clients vary); an
    unknown one is read as SyncML 1.2, and the SyncHdr's VerDTD/VerProto decide the version in the end."""
    if ns == SYNCML_NS or ns == METINF_NS:
        return ns
    return METINF_NS if ns.lower() == METINF_NS else SYNCML11_NS if ns.upper() == SYNCML11_NS else SYNCML_NS
