"""The WBXML codec of the OMA DM stack (fotadelta.dm.wbxml): round trips, exact bytes, a
cross-check with libwbxml's xml2wbxml/wbxml2xml (Debian package libwbxml2-utils), and hostile
input that must always end in CodecError."""

from __future__ import annotations

import base64
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fotadelta.dm.element import METINF_NS, SYNCML_NS, CodecError, Element
from fotadelta.dm.wbxml import MAX_DEPTH, METINF_TAGS, SYNCML_TAGS, decode, encode

E = Element
HEADER = bytes([0x02, 0xA4, 0x01, 0x6A, 0x00])  # WBXML 1.2, public id 0x1201, UTF-8, no strtbl


def M(tag: str, content: str | bytes | None = None) -> Element:
    """A MetInf element (a child of Meta)."""
    return Element(tag, content=content, ns=METINF_NS)


def L(tag: str, content: str | bytes) -> Element:
    """A SyncML leaf element."""
    return Element(tag, content=content)


def header(session: str = "1", msg: str = "1") -> Element:
    return E("SyncHdr", [
        L("VerDTD", "1.2"), L("VerProto", "DM/1.2"), L("SessionID", session), L("MsgID", msg),
        E("Target", [L("LocURI", "https://dm.example.com/dm")]),
        E("Source", [L("LocURI", "IMEI:493005100592800"), L("LocName", "device")]),
        E("Meta", [M("MaxMsgSize", "10000"), M("MaxObjSize", "1048576")]),
    ])


def doc(*commands: Element, hdr: Element | None = None) -> Element:
    return E("SyncML", [hdr or header(), E("SyncBody", list(commands))])


STATUS_CHAL = E("Status", [
    L("CmdID", "1"), L("MsgRef", "1"), L("CmdRef", "0"), L("Cmd", "SyncHdr"),
    E("TargetRef", [], "IMEI:493005100592800"), L("SourceRef", "https://dm.example.com/dm"),
    E("Chal", [E("Meta", [M("Format", "b64"), M("Type", "syncml:auth-md5"),
                          M("NextNonce", "ZG1ub25jZQ==")])]),
    L("Data", "407"),
])

REPLACE_CHUNK = E("Replace", [
    L("CmdID", "2"),
    E("Meta", [M("Type", "application/octet-stream"), M("Format", "bin"), M("Size", "70000")]),
    E("Item", [E("Target", [L("LocURI", "./FUMO/Update/PkgData")]),
               L("Data", bytes(range(256)) * 3 + b"\x00\x00\xff"),
               E("MoreData")]),
])

EXEC_CORR = E("Exec", [
    L("CmdID", "3"), L("Correlator", "corr-7f3a"),
    E("Item", [E("Target", [L("LocURI", "./FUMO/Update")]), L("Data", "")]),
])

ATOMIC = E("Atomic", [
    L("CmdID", "4"), E("NoResp"),
    E("Sequence", [
        L("CmdID", "5"),
        E("Add", [L("CmdID", "6"), E("Item", [
            E("Target", [L("LocURI", "./a")]), E("Meta", [M("Format", "chr")]),
            L("Data", "é€😀")])]),
        E("Get", [L("CmdID", "7"), E("Item", [E("Target", [L("LocURI", "./DevInfo/Mod")])])]),
        E("Delete", [L("CmdID", "8"), E("Item", [E("Target", [L("LocURI", "./b")])])]),
    ]),
])

ALERT_GENERIC = E("Alert", [
    L("CmdID", "9"), L("Data", "1226"),
    E("Item", [E("Source", [L("LocURI", "./FUMO")]),
               E("Meta", [M("Type", "org.openmobilealliance.dm.firmwareupdate.devicerequest"),
                          M("Format", "chr"), M("Mark", "critical")]),
               L("Data", "0")]),
])

RESULTS = E("Results", [
    L("CmdID", "10"), L("MsgRef", "2"), L("CmdRef", "7"),
    E("Item", [E("Source", [L("LocURI", "./DevInfo/Mod")]), L("Data", "X1")]),
])

MESSAGES = {
    "header-only": doc(E("Final")),
    "status-chal": doc(STATUS_CHAL, E("Final")),
    "replace-chunk": doc(REPLACE_CHUNK),
    "exec-correlator": doc(EXEC_CORR, E("Final")),
    "atomic-sequence": doc(ATOMIC, E("Final")),
    "alert-results": doc(ALERT_GENERIC, RESULTS, E("Final")),
    "everything": doc(STATUS_CHAL, REPLACE_CHUNK, EXEC_CORR, ATOMIC, ALERT_GENERIC, RESULTS,
                      E("Final")),
}


def walk(el: Element) -> list[Element]:
    out = [el]
    for c in el.children:
        out += walk(c)
    return out


# ------------------------------------------------------------------------------------ round trip

@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_round_trip(name: str) -> None:
    tree = MESSAGES[name]
    data = encode(tree)
    assert data[:5] == HEADER
    assert decode(data) == tree
    assert encode(decode(data)) == data


def test_metinf_elements_decode_with_metinf_namespace() -> None:
    tree = decode(encode(doc(STATUS_CHAL)))
    meta = walk(tree)
    nonce = next(e for e in meta if e.tag == "NextNonce")
    assert nonce.ns == METINF_NS and nonce.content == "ZG1ub25jZQ=="
    assert next(e for e in meta if e.tag == "Meta").ns == SYNCML_NS
    assert all(e.ns == (METINF_NS if e.tag in METINF_TAGS and e.tag != "Meta" else SYNCML_NS)
               for e in meta)


def test_opaque_and_empty_elements() -> None:
    tree = decode(encode(doc(REPLACE_CHUNK)))
    item = tree.children[1].children[0].child("Item")
    assert item is not None
    data = item.child("Data")
    assert data is not None and isinstance(data.content, bytes)
    assert data.content == bytes(range(256)) * 3 + b"\x00\x00\xff"
    more = item.child("MoreData")
    assert more == Element("MoreData")  # empty: no content, no children


def test_empty_text_is_kept_apart_from_no_content() -> None:
    # "" travels as an empty inline string, so it comes back as "" (libwbxml itself writes
    # <Data></Data> as an empty element, which decodes to content None).
    data = encode(doc(L("Data", ""), E("Data")))
    assert data.endswith(bytes([0x4F, 0x03, 0x00, 0x01, 0x0F, 0x01, 0x01]))
    assert [c.content for c in decode(data).children[1].children] == ["", None]


def test_text_with_nul_travels_as_opaque() -> None:
    data = encode(doc(L("Data", "a\x00b")))
    assert b"\xc3\x03a\x00b" in data  # OPAQUE, length 3
    body = decode(data).children[1]
    assert body.children[0].content == b"a\x00b"


# ------------------------------------------------------------------------------------ exact bytes

def test_exact_bytes_of_a_small_document() -> None:
    tree = E("SyncML", [
        E("SyncHdr", [L("VerDTD", "1.2"), E("Meta", [M("MaxMsgSize", "1024")])]),
        E("SyncBody", [L("Data", b"\x01\x02"), E("Final")]),
    ])
    expected = bytes([
        0x02,              # WBXML 1.2
        0xA4, 0x01,        # public id 0x1201 as mb_u_int32: 0x1201 = 0b0100100_0000001
        0x6A,              # charset 106, UTF-8
        0x00,              # string table length 0
        0x6D,              # SyncML (0x2D) | content
        0x6C,              # SyncHdr (0x2C) | content
        0x71, 0x03, *b"1.2", 0x00, 0x01,   # VerDTD, STR_I "1.2", END
        0x5A,              # Meta (0x1A) | content
        0x00, 0x01,        # SWITCH_PAGE 1 (MetInf)
        0x4C, 0x03, *b"1024", 0x00, 0x01,  # MaxMsgSize (0x0C) | content, STR_I, END
        0x01,              # END Meta (END needs no page)
        0x01,              # END SyncHdr
        0x00, 0x00,        # SWITCH_PAGE 0: the page persisted since the MetInf switch
        0x6B,              # SyncBody | content
        0x4F, 0xC3, 0x02, 0x01, 0x02, 0x01,  # Data, OPAQUE length 2, END
        0x12,              # Final: empty, no content flag, no END
        0x01, 0x01,        # END SyncBody, END SyncML
    ])
    assert encode(tree) == expected
    assert decode(expected) == tree


def test_mb_u_int32_lengths() -> None:
    for size, prefix in ((127, b"\x7f"), (128, b"\x81\x00"), (16384, b"\x81\x80\x00")):
        data = encode(doc(L("Data", b"x" * size)))
        assert b"\xc3" + prefix + b"x" * size in data
        assert decode(data).children[1].children[0].content == b"x" * size


def test_page_switch_only_when_needed() -> None:
    # Two Meta blocks in a row: one switch to page 1 each time, one back to page 0 each time.
    tree = doc(E("Get", [L("CmdID", "1"), E("Meta", [M("Type", "a"), M("Format", "b")]),
                         E("Meta", [M("Type", "c")])]))
    data = encode(tree)
    assert data.endswith(bytes([
        0x53, 0x4B, 0x03, *b"1", 0x00, 0x01,                 # Get, CmdID (page 0 since header)
        0x5A, 0x00, 0x01,                                    # Meta, switch to MetInf
        0x53, 0x03, *b"a", 0x00, 0x01, 0x47, 0x03, *b"b", 0x00, 0x01,  # Type, Format: no switch
        0x01,                                                # END Meta
        0x00, 0x00, 0x5A, 0x00, 0x01,                        # back to page 0 for Meta, and out
        0x53, 0x03, *b"c", 0x00, 0x01, 0x01,
        0x01, 0x01, 0x01]))                                  # END Get, SyncBody, SyncML
    assert decode(data) == tree


# ---------------------------------------------------------------------------- decoder extensions

def test_public_id_as_string_table_reference_and_str_t() -> None:
    table = b"-//SYNCML//DTD SyncML 1.2//EN\x00./Vendor/shared\x00"
    ref = len(b"-//SYNCML//DTD SyncML 1.2//EN\x00")
    data = bytes([0x02, 0x00, 0x00, 0x6A, len(table)]) + table + bytes([
        0x6D, 0x6B,
        0x57, 0x83, ref, 0x01,                       # LocURI from the string table
        0x57, 0x83, ref + 9, 0x03, *b"!", 0x00, 0x01,  # a suffix reference, then more text
        0x01, 0x01])
    tree = decode(data)
    body = tree.children[0]
    assert [c.content for c in body.children] == ["./Vendor/shared", "shared!"]


def test_entity_and_split_text_concatenate() -> None:
    data = HEADER + bytes([0x6D, 0x6B, 0x4F, 0x03, *b"a", 0x00, 0x02, 0x81, 0x69, 0x03, *b"b",
                           0x00, 0x01, 0x01, 0x01])
    assert decode(data).children[0].children[0].content == "a\u00e9b"


def test_whitespace_between_children_is_ignored() -> None:
    data = HEADER + bytes([0x6D, 0x03, *b"\n  ", 0x00, 0x6B, 0x12, 0x01, 0x03, *b"\n", 0x00, 0x01])
    assert decode(data) == E("SyncML", [E("SyncBody", [E("Final")])])


def test_switch_page_before_root_and_repeated() -> None:
    data = (bytes([0x02, 0xA4, 0x01, 0x6A, 0x00, 0x00, 0x01, 0x00, 0x00, 0x6D, 0x5A, 0x00, 0x01,
                   0x00, 0x01, 0x53, 0x03, *b"t", 0x00, 0x01, 0x01, 0x01]))
    assert decode(data) == E("SyncML", [E("Meta", [M("Type", "t")])])


def test_other_wbxml_minor_versions_accepted() -> None:
    body = encode(doc(E("Final")))[1:]
    assert decode(b"\x03" + body) == decode(b"\x01" + body) == doc(E("Final"))


# ------------------------------------------------------------------------------ encoder refusals

@pytest.mark.parametrize("tree, message", [
    (E("SyncBody"), "root element must be SyncML"),
    (E("SyncML", ns=METINF_NS), "root element must be SyncML"),
    (doc(E("Bogus")), "not a tag"),
    (doc(E("Get", [E("Meta", [E("MaxMsgSize", content="1")])])), "not a tag"),  # wrong ns
    (doc(M("Add")), "not a tag"),
    (doc(Element("Add", ns="syncml:devinf")), "no WBXML code page"),
    (doc(Element("Data", [E("Final")], content="x")), "both child elements and content"),
    (doc(L("Data", "\ud800")), "not encodable"),
])
def test_encode_refuses(tree: Element, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        encode(tree)


def nested(depth: int) -> Element:
    """A SyncML root with ``depth`` levels in all (Atomic inside Atomic ...)."""
    inner = E("Final")
    for _ in range(depth - 2):
        inner = E("Atomic", [inner])
    return E("SyncML", [inner])


def test_depth_limit_both_ways() -> None:
    ok = nested(MAX_DEPTH)
    assert decode(encode(ok)) == ok
    with pytest.raises(CodecError, match="nested deeper"):
        encode(nested(MAX_DEPTH + 1))


# ------------------------------------------------------------------------------ decoder refusals

def body(*tokens: int) -> bytes:
    return HEADER + bytes(tokens)


GOOD = body(0x6D, 0x6B, 0x12, 0x01, 0x01)


@pytest.mark.parametrize("data, message", [
    (b"", "truncated"),
    (b"\x00\xa4\x01\x6a\x00" + GOOD[5:], "version"),          # WBXML 1.0: another header layout
    (b"\x12\xa4\x01\x6a\x00" + GOOD[5:], "version"),
    (b"\x02\x01\x6a\x00" + GOOD[5:], "public id 0x1 "),         # unknown public id
    (b"\x02\x9f\x51\x6a\x00" + GOOD[5:], "public id 0xFD1"),   # SyncML 1.0 (0x0FD1): not a DM version
    (b"\x02\xa4\x02\x6a\x00" + GOOD[5:], "public id 0x1202"),  # MetInf 1.2, not a message
    (b"\x02\x00\x00\x6a\x04abc\x00" + GOOD[5:], "'abc' is not"),
    (b"\x02\x00\x05\x6a\x04abc\x00" + GOOD[5:], "outside the table"),
    (b"\x02\x00\x00\x6a\x03abc" + GOOD[5:], "no terminating NUL"),
    (b"\x02\xa4\x01\x04\x00" + GOOD[5:], "charset"),
    (b"\x02\xa4\x01\x6a\x7f" + GOOD[5:], "string table of 127 bytes runs past|runs past"),
    (b"\x02\xa4\x01\x6a\x90\x80\x80\x80\x00", "exceeds 32 bits"),
    (b"\x02\xa4\x01\x6a\x80\x80\x80\x80\x80\x00", "longer than 5"),
    (body(0x6D, 0x6B, 0x12, 0x01), "truncated"),
    (GOOD + b"\x00", "trailing"),
    (GOOD + b"\x6d\x01", "trailing"),
    (body(0x01), "END without"),
    (body(0x03, 0x61, 0x00, 0x6D, 0x01), "content outside"),
    (body(0x6B, 0x12, 0x01), "root element is <SyncBody>"),
    (body(0x00, 0x01, 0x4E, 0x01), "root element is <MetInf>"),
    (body(0x6D, 0x00, 0x02, 0x01), "unknown code page 2"),
    (body(0x6D, 0x70, 0x01, 0x01), "unknown tag 0x30"),
    (body(0x6D, 0x3F, 0x01), "unknown tag 0x3F"),
    (body(0x6D, 0x00, 0x01, 0x17, 0x01), "unknown tag 0x17 on code page 1"),
    (body(0x6D, 0xEB, 0x01, 0x01, 0x01), "attributes"),
    (body(0x6D, 0xAB, 0x01, 0x01), "attributes"),
    (body(0x6D, 0x04, 0x00, 0x01), "global token 0x04"),  # LITERAL
    (body(0x6D, 0x44, 0x00, 0x01, 0x01), "global token 0x44"),
    (body(0x6D, 0x43, 0x01), "global token 0x43"),  # PI
    (body(0x6D, 0x40, 0x61, 0x00, 0x01), "global token 0x40"),  # EXT_I_0
    (body(0x6D, 0x80, 0x00, 0x01), "global token 0x80"),  # EXT_T_0
    (body(0x6D, 0xC0, 0x01), "global token 0xC0"),  # EXT_0
    (body(0x6D, 0x4F, 0x03, 0xFF, 0xFE, 0x00, 0x01, 0x01), "not valid UTF-8"),
    (body(0x6D, 0x4F, 0x03, 0xED, 0xA0, 0x80, 0x00, 0x01, 0x01), "not valid UTF-8"),  # surrogate
    (body(0x6D, 0x4F, 0x03, 0x61), "no terminating NUL"),
    (body(0x6D, 0x4F, 0x83, 0x00, 0x01, 0x01), "outside the table"),
    (body(0x6D, 0x4F, 0xC3, 0x05, 0x61, 0x01, 0x01), "runs past the end"),
    (body(0x6D, 0x4F, 0xC3, 0x8F, 0xFF, 0xFF, 0xFF, 0x7F), "runs past the end"),
    (body(0x6D, 0x4F, 0x02, 0x00, 0x01, 0x01), "not a valid character"),
    (body(0x6D, 0x4F, 0x02, 0x83, 0xB0, 0x00, 0x01, 0x01), "not a valid character"),  # U+D800
    (body(0x6D, 0x4F, 0x02, 0xC4, 0x80, 0x00, 0x01, 0x01), "not a valid character"),
    (body(0x6D, 0x6B, 0x03, 0x61, 0x00, 0x12, 0x01, 0x01), "mixes child elements"),
    (body(0x6D, 0x6B, 0x12, 0xC3, 0x01, 0x20, 0x01, 0x01), "mixes child elements"),
])
def test_decode_refuses(data: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode(data)


def test_depth_bomb() -> None:
    bomb = HEADER + b"\x6d" + b"\x48" * 100_000 + b"\x01" * 100_001
    with pytest.raises(CodecError, match="nested deeper than 32"):
        decode(bomb)
    # Exactly at the limit is fine: SyncML + 30 Atomic + Final (empty) = 32 levels.
    at_limit = HEADER + b"\x6d" + b"\x48" * 30 + b"\x12" + b"\x01" * 31
    assert decode(at_limit) == nested(MAX_DEPTH)
    with pytest.raises(CodecError, match="nested deeper"):
        decode(HEADER + b"\x6d" + b"\x48" * 31 + b"\x12" + b"\x01" * 32)


def test_oversize_input() -> None:
    data = encode(doc(L("Data", b"\x00" * 5000)))
    assert decode(data, max_size=len(data)) is not None
    with pytest.raises(CodecError, match="exceeds the limit"):
        decode(data, max_size=len(data) - 1)
    with pytest.raises(CodecError, match="exceeds the limit"):
        decode(b"\x00" * ((1 << 20) + 1))
    # A string table length claiming more than max_size is refused before anything is read.
    with pytest.raises(CodecError, match="string table of 4096 bytes exceeds"):
        decode(b"\x02\xa4\x01\x6a\xa0\x00" + b"\x00" * 100, max_size=1000)


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_truncation_is_refused(name: str) -> None:
    data = encode(MESSAGES[name])
    for n in range(len(data)):
        with pytest.raises(CodecError):
            decode(data[:n])


# ------------------------------------------------------------------------------------ hypothesis

SAMPLE = encode(MESSAGES["everything"])

text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)
content = st.one_of(st.none(), text, st.binary(max_size=40))


@st.composite
def element_trees(draw: st.DrawFn, depth: int = 1) -> Element:
    metinf = draw(st.booleans())
    tag = draw(st.sampled_from(sorted(METINF_TAGS if metinf else SYNCML_TAGS)))
    ns = METINF_NS if metinf else SYNCML_NS
    if depth < 6 and draw(st.booleans()):
        kids = draw(st.lists(element_trees(depth + 1), max_size=4))
        return Element(tag, kids, None, ns)
    return Element(tag, [], draw(content), ns)


@given(st.lists(element_trees(2), max_size=5))
def test_random_trees_round_trip(children: list[Element]) -> None:
    tree = Element("SyncML", children)
    assert decode(encode(tree)) == tree


@given(st.lists(st.tuples(st.integers(0, len(SAMPLE) - 1), st.integers(1, 255)),
                min_size=1, max_size=6))
def test_byte_flips_raise_only_codec_error(flips: list[tuple[int, int]]) -> None:
    data = bytearray(SAMPLE)
    for pos, xor in flips:
        data[pos] ^= xor
    try:
        tree = decode(bytes(data))
    except CodecError:
        return
    # Whatever the decoder accepts, the encoder can send again, and it reads back the same.
    assert decode(encode(tree)) == tree


@given(st.integers(0, len(SAMPLE)), st.binary(min_size=1, max_size=8), st.integers(0, 16))
def test_splices_raise_only_codec_error(pos: int, insert: bytes, cut: int) -> None:
    data = SAMPLE[:pos] + insert + SAMPLE[pos + cut:]
    try:
        tree = decode(data)
    except CodecError:
        return
    assert decode(encode(tree)) == tree


@given(st.binary(max_size=200))
def test_garbage_after_a_valid_header_raises_only_codec_error(junk: bytes) -> None:
    try:
        decode(HEADER + junk)
    except CodecError:
        pass


# ------------------------------------------------------------------- cross-check with libwbxml

INSTALL = ("libwbxml's command-line tools are missing: install the Debian package "
           "libwbxml2-utils (apt-get install -y libwbxml2-utils)")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found. {INSTALL}")
    return path


def xml2wbxml(xml: str, tmp_path: Path, *flags: str) -> bytes:
    src, out = tmp_path / "in.xml", tmp_path / "out.wbxml"
    src.write_text(xml, encoding="utf-8")
    subprocess.run([tool("xml2wbxml"), "-v", "1.2", *flags, "-o", str(out), str(src)],
                   check=True, capture_output=True, timeout=30)
    return out.read_bytes()


def wbxml2xml(data: bytes, tmp_path: Path) -> bytes:
    src, out = tmp_path / "in.wbxml", tmp_path / "out.xml"
    src.write_bytes(data)
    subprocess.run([tool("wbxml2xml"), "-m", "0", "-o", str(out), str(src)],
                   check=True, capture_output=True, timeout=30)
    return out.read_bytes()


def from_xml(xml: bytes | str) -> Element:
    """The element tree of a (trusted, tool-made) XML document; ElementTree names tags
    '{namespace}Tag', and SyncML's two namespace URIs are exactly our ns values."""
    def conv(x: ET.Element) -> Element:
        ns, _, tag = x.tag[1:].partition("}")
        kids = [conv(c) for c in x]
        assert not kids or not (x.text or "").strip()
        return Element(tag, kids, None if kids else x.text, ns)
    return conv(ET.fromstring(xml))


def to_xml(el: Element, parent_ns: str = "") -> str:
    """A tree as SyncML XML (text content only, escaped)."""
    attr = f' xmlns="{el.ns}"' if el.ns != parent_ns else ""
    if el.children:
        inner = "".join(to_xml(c, el.ns) for c in el.children)
    elif el.content is None:
        return f"<{el.tag}{attr}/>"
    else:
        assert isinstance(el.content, str)
        inner = el.content.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f"<{el.tag}{attr}>{inner}</{el.tag}>"


def normal(el: Element) -> tuple[object, ...]:
    """Compare text and opaque content by their bytes: libwbxml turns CDATA into OPAQUE."""
    c = el.content.encode() if isinstance(el.content, str) else el.content
    return (el.tag, el.ns, c or None, tuple(normal(k) for k in el.children))


PROLOG = ('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE SyncML PUBLIC '
          '"-//SYNCML//DTD SyncML 1.2//EN" '
          '"http://www.openmobilealliance.org/tech/DTD/OMA-TS-SyncML_RepPro_DTD-V1_2.dtd">\n')

# Text content only, none of it empty (libwbxml writes <Data></Data> as an empty element) and
# no Item/Data in Add or Replace (libwbxml always writes those as OPAQUE).
TEXT_ONLY = doc(STATUS_CHAL, E("Exec", [L("CmdID", "3"), L("Correlator", "corr-7f3a"),
                                       E("Item", [E("Target", [L("LocURI", "./FUMO/Update")])])]),
                E("Atomic", [L("CmdID", "4"), E("Sequence", [
                    L("CmdID", "5"), E("Add", [L("CmdID", "6"), E("Item", [
                        E("Target", [L("LocURI", "./a")]), E("Meta", [M("Format", "node")])])])])]),
                E("Replace", [L("CmdID", "12"), E("Item", [
                    E("Target", [L("LocURI", "./Vendor/Name")])]),
                    L("Data", "é€😀 outside Item")]),
                E("Alert", [L("CmdID", "13"), L("Data", "1226"),
                            E("Item", [L("Data", "é€😀 Alert/Item/Data")])]),
                ALERT_GENERIC, RESULTS,
                E("Put", [L("CmdID", "11"), E("Item", [L("Data", "a < b & c > d")])]),
                E("Final"))


def test_libwbxml_encodes_exactly_as_we_do(tmp_path: Path) -> None:
    # Without a string table (-n), libwbxml's output for text-only SyncML is byte-identical.
    theirs = xml2wbxml(PROLOG + to_xml(TEXT_ONLY), tmp_path, "-n")
    assert theirs == encode(TEXT_ONLY)


def test_libwbxml_to_us_with_string_table_and_cdata(tmp_path: Path) -> None:
    # Pretty-printed XML, a repeated long string (libwbxml puts it in the string table and
    # references it with STR_T), and CDATA (which libwbxml encodes as OPAQUE).
    uri = "./Vendor/Example/FirmwareUpdate/Download/PkgURL"
    xml = PROLOG + f"""<SyncML xmlns="SYNCML:SYNCML1.2">
  <SyncHdr>
    <VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto><SessionID>42</SessionID><MsgID>2</MsgID>
    <Target><LocURI>IMEI:493005100592800</LocURI></Target>
    <Source><LocURI>https://dm.example.com/dm</LocURI></Source>
    <Meta><MaxMsgSize xmlns="syncml:metinf">10000</MaxMsgSize></Meta>
  </SyncHdr>
  <SyncBody>
    <Replace>
      <CmdID>1</CmdID>
      <Item>
        <Target><LocURI>{uri}</LocURI></Target><Data><![CDATA[http://x/?a=1&b=<2>]]></Data>
      </Item>
    </Replace>
    <Get><CmdID>2</CmdID><Item><Target><LocURI>{uri}</LocURI></Target></Item></Get>
    <Final/>
  </SyncBody>
</SyncML>"""
    theirs = xml2wbxml(xml, tmp_path)
    assert b"\x83" in theirs and theirs[4] != 0  # a string table and a STR_T reference
    ours = decode(theirs)
    assert normal(ours) == normal(from_xml(xml.encode()))
    get_uri = ours.children[1].children[1].children[1].children[0].children[0]
    assert get_uri.content == uri
    data = ours.children[1].children[0].children[1].children[1]
    assert data.content == b"http://x/?a=1&b=<2>"  # CDATA arrived as OPAQUE

    # Keeping "ignorable" whitespace (-k) gives text between elements, which we ignore.
    assert normal(decode(xml2wbxml(xml, tmp_path, "-k"))) == normal(ours)


def test_libwbxml_sends_add_and_replace_item_data_as_opaque(tmp_path: Path) -> None:
    # libwbxml writes Item/Data of Add and Replace as OPAQUE whatever the text, so a peer's
    # node values arrive as bytes: the layer above must take str or bytes there.
    tree = doc(ATOMIC, E("Replace", [L("CmdID", "9"), E("Item", [L("Data", "42")])]))
    theirs = xml2wbxml(PROLOG + to_xml(tree), tmp_path, "-n")
    assert b"\xc3\x09" + "é€😀".encode() in theirs and b"\xc3\x0242" in theirs
    ours = decode(theirs)
    assert normal(ours) == normal(tree)
    assert [e.content for e in walk(ours) if e.tag == "Data"] == ["é€😀".encode(), b"42"]


def test_us_to_libwbxml(tmp_path: Path) -> None:
    for tree in (TEXT_ONLY, MESSAGES["header-only"]):
        assert from_xml(wbxml2xml(encode(tree), tmp_path)) == tree
    # Empty text: libwbxml shows <Data></Data>, which XML parsers read as no text at all.
    tree = doc(EXEC_CORR)
    assert normal(from_xml(wbxml2xml(encode(tree), tmp_path))) == normal(tree)
    # Opaque (printable, so that the tool's XML stays well-formed) in Item/Data: libwbxml
    # writes it as CDATA, which reads back as the same bytes.
    tree = doc(E("Replace", [L("CmdID", "1"), E("Item", [L("Data", b"<bin & data>"),
                                                         E("MoreData")])]))
    assert normal(from_xml(wbxml2xml(encode(tree), tmp_path))) == normal(tree)


def test_libwbxml_shows_an_opaque_nonce_as_base64(tmp_path: Path) -> None:
    # What an XML peer of libwbxml sees for a binary NextNonce sent as OPAQUE: its base64.
    nonce = bytes([0x00, 0xFF, 0x10, 0x80, 0x7F])
    tree = doc(E("Status", [L("CmdID", "1"), E("Chal", [E("Meta", [
        M("Format", "b64"), M("Type", "syncml:auth-md5"), M("NextNonce", nonce)])])]))
    back = from_xml(wbxml2xml(encode(tree), tmp_path))
    shown = next(e for e in walk(back) if e.tag == "NextNonce")
    assert shown.content == base64.b64encode(nonce).decode()
