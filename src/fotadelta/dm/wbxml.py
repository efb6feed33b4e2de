"""WBXML codec for OMA DM 1.2 (SyncML DM) messages.

Converts between the neutral element tree of :mod:`fotadelta.dm.element` (root ``SyncML``) and
WBXML 1.2 bytes (WAP-192-WBXML), with the token tables of the SyncML Representation Protocol 1.2
(OMA-TS-SyncML_RepPro-V1_2, section "WBXML Definition"):

* code page 0 is SyncML (``SYNCML_NS``), code page 1 is MetInf (``METINF_NS``, the children of
  ``Meta``);
* the public identifier is 0x1201 (``-//SYNCML//DTD SyncML 1.2//EN``), or 0x0FD3
  (``-//SYNCML//DTD SyncML 1.1//EN``) for OMA DM 1.1.2 messages, whose SyncML elements then carry
  the 1.1 namespace; the charset is UTF-8 (106);
* ``str`` content travels as inline strings (STR_I), ``bytes`` content as OPAQUE.

The encoder writes no string table and switches code pages only when the next tag needs another
page. The decoder also takes string tables (STR_T), ENTITY, SWITCH_PAGE and the public id given
as a string-table reference, since other implementations (libwbxml, handsets) emit them. It
treats its input as hostile: every length and index is checked, nesting is bounded, and any
malformed input raises :class:`~fotadelta.dm.element.CodecError`, never another exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from fotadelta.dm.element import METINF_NS, SYNCML11_NS, SYNCML_NS, CodecError, Element, LimitError

__all__ = [
    "CHARSET_UTF8",
    "MAX_DEPTH",
    "METINF_TAGS",
    "PUBLIC_ID",
    "PUBLIC_ID_11",
    "PUBLIC_ID_TEXT",
    "SYNCML_TAGS",
    "WBXML_VERSION",
    "decode",
    "encode",
]

WBXML_VERSION = 0x02  # WBXML 1.2: major-1 in the high nibble, minor in the low one
PUBLIC_ID = 0x1201  # SyncML 1.2 (OMA DM 1.2 uses the SyncML 1.2 representation)
PUBLIC_ID_TEXT = "-//SYNCML//DTD SyncML 1.2//EN"
PUBLIC_ID_11 = 0x0FD3  # SyncML 1.1, the representation of OMA DM 1.1.2
# The SyncML namespace of each public id, by number and by text (a string-table public id).
_NS_OF_PUBLIC_ID: dict[int | str, str] = {PUBLIC_ID: SYNCML_NS, PUBLIC_ID_TEXT: SYNCML_NS,
                                          PUBLIC_ID_11: SYNCML11_NS, "-//SYNCML//DTD SyncML 1.1//EN": SYNCML11_NS}
_PUBLIC_ID_OF_NS = {SYNCML_NS: PUBLIC_ID, SYNCML11_NS: PUBLIC_ID_11}
CHARSET_UTF8 = 106  # IANA MIBenum of UTF-8
MAX_DEPTH = 32  # deepest element nesting accepted (the root is at depth 1)

# Global tokens (WAP-192-WBXML section 7.1). Their low six bits are below 5 on every page, which
# is how a tag token (5..63, plus the content/attribute flags) is told apart from them.
_SWITCH_PAGE = 0x00
_END = 0x01
_ENTITY = 0x02
_STR_I = 0x03
_STR_T = 0x83
_OPAQUE = 0xC3
_TAG_CONTENT = 0x40  # the element has content (children or text) and ends with END
_TAG_ATTRS = 0x80  # the element has attributes: SyncML defines none, so this is refused
_TAG_MASK = 0x3F

_SYNCML_PAGE = 0
_METINF_PAGE = 1

SYNCML_TAGS: Mapping[str, int] = MappingProxyType({
    "Add": 0x05, "Alert": 0x06, "Archive": 0x07, "Atomic": 0x08, "Chal": 0x09, "Cmd": 0x0A,
    "CmdID": 0x0B, "CmdRef": 0x0C, "Copy": 0x0D, "Cred": 0x0E, "Data": 0x0F, "Delete": 0x10,
    "Exec": 0x11, "Final": 0x12, "Get": 0x13, "Item": 0x14, "Lang": 0x15, "LocName": 0x16,
    "LocURI": 0x17, "Map": 0x18, "MapItem": 0x19, "Meta": 0x1A, "MsgID": 0x1B, "MsgRef": 0x1C,
    "NoResp": 0x1D, "NoResults": 0x1E, "Put": 0x1F, "Replace": 0x20, "RespURI": 0x21,
    "Results": 0x22, "Search": 0x23, "Sequence": 0x24, "SessionID": 0x25, "SftDel": 0x26,
    "Source": 0x27, "SourceRef": 0x28, "Status": 0x29, "Sync": 0x2A, "SyncBody": 0x2B,
    "SyncHdr": 0x2C, "SyncML": 0x2D, "Target": 0x2E, "TargetRef": 0x2F,
    # 0x30 is reserved
    "VerDTD": 0x31, "VerProto": 0x32, "NumberOfChanges": 0x33, "MoreData": 0x34, "Field": 0x35,
    "Filter": 0x36, "Record": 0x37, "FilterType": 0x38, "SourceParent": 0x39,
    "TargetParent": 0x3A, "Move": 0x3B, "Correlator": 0x3C,
})
"""Code page 0 (SyncML): tag name -> token (without the content flag)."""

METINF_TAGS: Mapping[str, int] = MappingProxyType({
    "Anchor": 0x05, "EMI": 0x06, "Format": 0x07, "FreeID": 0x08, "FreeMem": 0x09, "Last": 0x0A,
    "Mark": 0x0B, "MaxMsgSize": 0x0C, "Mem": 0x0D, "MetInf": 0x0E, "Next": 0x0F,
    "NextNonce": 0x10, "SharedMem": 0x11, "Size": 0x12, "Type": 0x13, "Version": 0x14,
    "MaxObjSize": 0x15, "FieldLevel": 0x16,
})
"""Code page 1 (MetInf): tag name -> token (without the content flag)."""

_PAGE_OF_NS: dict[str, int] = {SYNCML_NS: _SYNCML_PAGE, SYNCML11_NS: _SYNCML_PAGE, METINF_NS: _METINF_PAGE}
_TAGS_OF_PAGE: dict[int, Mapping[str, int]] = {_SYNCML_PAGE: SYNCML_TAGS, _METINF_PAGE: METINF_TAGS}
_NAMES_OF_PAGE: dict[int, dict[int, str]] = {
    page: {token: name for name, token in tags.items()} for page, tags in _TAGS_OF_PAGE.items()
}

_MB_MAX_BYTES = 5  # a 32-bit value needs at most five 7-bit groups
_MB_MAX = 0xFFFF_FFFF


# --------------------------------------------------------------------------------------- encode

def _mb_u_int32(value: int) -> bytes:
    """The WBXML multi-byte integer: 7-bit groups, most significant first, high bit = more."""
    if not 0 <= value <= _MB_MAX:
        raise CodecError(f"{value} does not fit a WBXML mb_u_int32")
    groups = [value & 0x7F]
    value >>= 7
    while value:
        groups.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(groups))


class _Encoder:
    """Writes one document; remembers the current code page, which persists across elements."""

    def __init__(self, public_id: int) -> None:
        # Version, public id, charset, and an empty string table: the encoder never needs one.
        self.out = bytearray([WBXML_VERSION]) + _mb_u_int32(public_id) + _mb_u_int32(CHARSET_UTF8) + _mb_u_int32(0)
        self.page = _SYNCML_PAGE

    def element(self, el: Element, depth: int) -> None:
        if depth > MAX_DEPTH:
            # The decoder would refuse it, so do not produce it.
            raise CodecError(f"elements nested deeper than {MAX_DEPTH}")
        page = _PAGE_OF_NS.get(el.ns)
        if page is None:
            raise CodecError(f"<{el.tag}>: namespace {el.ns!r} has no WBXML code page")
        token = _TAGS_OF_PAGE[page].get(el.tag)
        if token is None:
            raise CodecError(f"<{el.tag}> is not a tag of the {el.ns!r} code page")
        if el.children and el.content is not None:
            raise CodecError(f"<{el.tag}> has both child elements and content")
        if page != self.page:
            self.out += bytes([_SWITCH_PAGE, page])
            self.page = page
        if not el.children and el.content is None:
            self.out.append(token)  # empty element: no content flag, no END
            return
        self.out.append(token | _TAG_CONTENT)
        if el.content is not None:
            self.content(el.tag, el.content)
        for child in el.children:
            self.element(child, depth + 1)
        self.out.append(_END)

    def content(self, tag: str, content: str | bytes) -> None:
        if isinstance(content, str):
            try:
                raw = content.encode("utf-8")
            except UnicodeEncodeError:
                raise CodecError(f"<{tag}> text is not encodable as UTF-8") from None
            if b"\x00" not in raw:
                self.out.append(_STR_I)
                self.out += raw
                self.out.append(0)
                return
            # An inline string ends at its first NUL, so such text can only travel as opaque.
            content = raw
        data = bytes(content)
        self.out.append(_OPAQUE)
        self.out += _mb_u_int32(len(data))
        self.out += data


def encode(root: Element) -> bytes:
    """Encode a ``SyncML`` element tree as a WBXML 1.2 document.

    Raises :class:`CodecError` for a tree WBXML cannot carry: a root other than ``SyncML``, a tag
    unknown on its namespace's code page, an element with both children and content, text that
    is not encodable as UTF-8, or nesting deeper than :data:`MAX_DEPTH`.
    """
    public_id = _PUBLIC_ID_OF_NS.get(root.ns)
    if root.tag != "SyncML" or public_id is None:
        raise CodecError(f"the root element must be SyncML, not <{root.tag}> in {root.ns!r}")
    enc = _Encoder(public_id)
    enc.element(root, 1)
    return bytes(enc.out)


# --------------------------------------------------------------------------------------- decode

class _Reader:
    """Bounds-checked cursor over the input; every read names what it reads for the error."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def byte(self, what: str) -> int:
        if self.pos >= len(self.data):
            raise CodecError(f"truncated WBXML: missing {what} at offset {self.pos}")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def mb_u_int32(self, what: str) -> int:
        start = self.pos
        value = 0
        for _ in range(_MB_MAX_BYTES):
            b = self.byte(what)
            value = (value << 7) | (b & 0x7F)
            if not b & 0x80:
                if value > _MB_MAX:
                    raise CodecError(f"{what} at offset {start} exceeds 32 bits")
                return value
        raise CodecError(f"{what} at offset {start} is longer than {_MB_MAX_BYTES} bytes")

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise CodecError(f"truncated WBXML: {what} of {n} bytes at offset {self.pos} runs "
                             f"past the end ({len(self.data) - self.pos} bytes left)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def cstring(self, what: str) -> bytes:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise CodecError(f"truncated WBXML: {what} at offset {self.pos} has no terminating NUL")
        chunk = self.data[self.pos:end]
        self.pos = end + 1
        return chunk


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CodecError(f"{what} is not valid UTF-8: {e.reason} at byte {e.start}") from None


def _table_string(table: bytes, index: int, what: str) -> str:
    """The NUL-terminated string at ``index`` of the string table."""
    if index >= len(table):
        raise CodecError(f"{what}: string table index {index} is outside the table "
                         f"({len(table)} bytes)")
    end = table.find(b"\x00", index)
    if end < 0:
        raise CodecError(f"{what}: string table entry at {index} has no terminating NUL")
    return _utf8(table[index:end], what)


class _Open:
    """An element whose END has not been read yet, with the content pieces read so far."""

    __slots__ = ("element", "pieces")

    def __init__(self, element: Element) -> None:
        self.element = element
        self.pieces: list[str | bytes] = []

    def close(self) -> None:
        el = self.element
        if el.children:
            # Whitespace between child elements is what an XML-to-WBXML tool keeps when told to
            # keep "ignorable" whitespace: not content. Anything else is mixed content.
            if any(isinstance(p, bytes) or p.strip() for p in self.pieces):
                raise CodecError(f"<{el.tag}> mixes child elements and content")
        elif self.pieces:
            if all(isinstance(p, str) for p in self.pieces):
                el.content = "".join(p for p in self.pieces if isinstance(p, str))
            else:
                # Text next to opaque data: keep every byte rather than guess an encoding.
                el.content = b"".join(p.encode("utf-8") if isinstance(p, str) else p
                                      for p in self.pieces)


def _check_header(r: _Reader, max_size: int) -> tuple[bytes, str]:
    """Read and check the document header; return the string table and the SyncML namespace."""
    version = r.byte("version")
    # 1.1 to 1.3 share this header layout and these tokens; 1.0 has no charset field.
    if version not in (0x01, 0x02, 0x03):
        raise CodecError(f"unsupported WBXML version byte 0x{version:02X} (want 0x02, WBXML 1.2)")
    public_id = r.mb_u_int32("public id")
    public_index = r.mb_u_int32("public id string index") if public_id == 0 else None
    charset = r.mb_u_int32("charset")
    if charset != CHARSET_UTF8:
        raise CodecError(f"unsupported charset MIBenum {charset} (want {CHARSET_UTF8}, UTF-8)")
    table_len = r.mb_u_int32("string table length")
    if table_len > max_size:
        raise CodecError(f"string table of {table_len} bytes exceeds the limit of {max_size}")
    table = r.take(table_len, "string table")
    if public_index is not None:
        name = _table_string(table, public_index, "public id")
        if name not in _NS_OF_PUBLIC_ID:
            raise CodecError(f"public id {name!r} is not {PUBLIC_ID_TEXT!r} (or SyncML 1.1)")
        return table, _NS_OF_PUBLIC_ID[name]
    if public_id not in _NS_OF_PUBLIC_ID:
        raise CodecError(f"public id 0x{public_id:X} is not SyncML 1.2 (0x{PUBLIC_ID:X}) or 1.1 "
                         f"(0x{PUBLIC_ID_11:04X})")
    return table, _NS_OF_PUBLIC_ID[public_id]


def decode(data: bytes, *, max_size: int = 1 << 20, max_decoded: int | None = None) -> Element:
    """Decode a WBXML SyncML 1.2 (or 1.1) document into its element tree.

    Text (inline, string-table or entity) becomes ``str`` content, OPAQUE becomes ``bytes``.
    MetInf elements (code page 1) get ``ns=METINF_NS``. Raises :class:`CodecError` for anything
    malformed or beyond the limits: input over ``max_size`` bytes, content decoding to more than
    ``max_decoded`` characters and bytes in all (default ``max_size``: string-table references
    repeat text, so a small message could otherwise decode to gigabytes; :class:`LimitError`),
    nesting over :data:`MAX_DEPTH`, attributes, literal or extension tokens, processing
    instructions, unknown code pages or tags, bad UTF-8, truncation, or bytes after the root element.
    """
    if len(data) > max_size:
        raise LimitError(f"WBXML message of {len(data)} bytes exceeds the limit of {max_size}")
    limit = max_size if max_decoded is None else max_decoded
    budget = limit
    r = _Reader(bytes(data))
    table, syncml_ns = _check_header(r, max_size)
    ns_of_page = {_SYNCML_PAGE: syncml_ns, _METINF_PAGE: METINF_NS}

    page = _SYNCML_PAGE
    stack: list[_Open] = []
    root: Element | None = None
    # An explicit stack instead of recursion: the depth limit is ours, not the interpreter's.
    while True:
        at = r.pos
        if r.at_end():
            raise CodecError("truncated WBXML: no root element" if root is None else
                             f"truncated WBXML: <{stack[-1].element.tag}> is not closed")
        tok = r.byte("token")
        if tok == _SWITCH_PAGE:
            page = r.byte("code page")
            if page not in _NAMES_OF_PAGE:
                raise CodecError(f"unknown code page {page} at offset {at}")
            continue
        if tok == _END:
            if not stack:
                raise CodecError(f"END without an open element at offset {at}")
            stack.pop().close()
            if not stack:
                break
            continue
        if tok in (_STR_I, _STR_T, _ENTITY, _OPAQUE):
            if not stack:
                raise CodecError(f"content outside the root element at offset {at}")
            piece = _read_content(r, tok, table)
            budget -= len(piece)
            if budget < 0:
                raise LimitError(f"the message decodes to more than {limit} characters of content")
            stack[-1].pieces.append(piece)
            continue
        if tok & _TAG_MASK < 0x05:
            # LITERAL*, EXT_*, PI: SyncML's DTD needs none of them.
            raise CodecError(f"unsupported global token 0x{tok:02X} at offset {at}")
        if tok & _TAG_ATTRS:
            raise CodecError(f"tag token 0x{tok:02X} at offset {at} has attributes, which "
                             "SyncML does not use")
        name = _NAMES_OF_PAGE[page].get(tok & _TAG_MASK)
        if name is None:
            raise CodecError(f"unknown tag 0x{tok & _TAG_MASK:02X} on code page {page} "
                             f"at offset {at}")
        if len(stack) >= MAX_DEPTH:  # this element would be one level too deep
            raise CodecError(f"elements nested deeper than {MAX_DEPTH} at offset {at}")
        element = Element(name, ns=ns_of_page[page])
        if root is None:
            if name != "SyncML" or page != _SYNCML_PAGE:
                raise CodecError(f"the root element is <{name}>, not <SyncML>")
            root = element
        else:
            stack[-1].element.children.append(element)
        if tok & _TAG_CONTENT:
            stack.append(_Open(element))
        if not stack:
            break  # an empty root: the document is complete
    if root is None:  # unreachable: the loop leaves only once the root is complete
        raise CodecError("no root element")
    if not r.at_end():
        raise CodecError(f"{len(r.data) - r.pos} bytes of trailing data after the root element "
                         f"at offset {r.pos}")
    return root


def _read_content(r: _Reader, tok: int, table: bytes) -> str | bytes:
    """One content piece: the token's operand as text (or bytes for OPAQUE)."""
    at = r.pos - 1
    if tok == _STR_I:
        return _utf8(r.cstring("inline string"), f"inline string at offset {at}")
    if tok == _STR_T:
        index = r.mb_u_int32("string table reference")
        return _table_string(table, index, f"string reference at offset {at}")
    if tok == _ENTITY:
        code = r.mb_u_int32("entity")
        # NUL and surrogates are no characters; above 0x10FFFF is no code point.
        if code == 0 or 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
            raise CodecError(f"entity at offset {at} is not a valid character (U+{code:X})")
        return chr(code)
    length = r.mb_u_int32("opaque length")
    return r.take(length, "opaque data")
