"""The typed SyncML DM model through both codecs: every command round-trips the same way in XML
and in WBXML, binary data survives each encoding's own form, content types are recognised, and
malformed messages end in CodecError (never another exception)."""

from __future__ import annotations

import base64
import copy
import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fotadelta.dm import codec, wbxml, xml
from fotadelta.dm.codec import Encoding, decode, encode, encoding_of
from fotadelta.dm.element import METINF_NS, CodecError, Element
from fotadelta.dm.model import (DM_1_1, DM_1_2, Add, Alert, Atomic, Chal, Command, Copy, Cred, Delete, Exec, Get, Item,
                                Message, Meta, Protocol, Replace, Results, Sequence, Status, SyncHdr, to_element)

BLOB = bytes(range(256)) * 3 + b"\x00\xff\x00"  # every byte value, NULs included


def full_header() -> SyncHdr:
    return SyncHdr("1A2B", 7, "http://dm.example.com/dm", "IMEI:493005100592800", source_name="Bruce2",
                   target_name="server", resp_uri="http://dm.example.com/dm?s=1A2B", no_resp=False,
                   cred=Cred("Zz6EivR3yeaaENcRN6lpAQ==", "syncml:auth-md5", "b64"),
                   meta=Meta(max_msg_size=2048, max_obj_size=1 << 20))


def every_command() -> list[Command]:
    fumo = "org.openmobilealliance.dm.firmwareupdate.downloadandupdate"
    return [
        Alert(1100, [Item(data="MINDT=10"), Item(data="Hello")]),
        Alert(1101, [Item(data="MINDT=30&MAXDT=60&DR=1"), Item(data="Install now?")]),
        Alert(1102, [Item(data="MAXLEN=8&IT=A&ET=T"), Item(data="Your name")]),
        Alert(1103, [Item(data="DR=2"), Item(data="Pick one"), Item(data="red"), Item(data="blue")]),
        Alert(1226, [Item(source="./FUMO/Firmware/DownloadAndUpdate",
                          meta=Meta(type=fumo, format="int", mark="critical"), data="410")], correlator="c0ffee"),
        Alert(1201, no_resp=True),
        Add([Item(target="./Ext/New", meta=Meta(format="chr", type="text/plain"), data="v")]),
        Add([Item(target="./Ext/Dir", meta=Meta(format="node"))], meta=Meta(type="text/plain"), no_resp=True),
        Replace([Item(target="./FUMO/Firmware/PkgName", data="pkg"),
                 Item(target="./FUMO/Firmware/Update/PkgData",
                      meta=Meta(format="bin", type="application/octet-stream"), data=BLOB)]),
        Delete([Item(target="./Ext/New")]),
        Copy([Item(target="./Ext/B", source="./Ext/A")]),
        Get([Item(target="./DevDetail?list=Struct")]),
        Get([Item(target="./DevDetail?list=StructData"), Item(target="./DevInfo/DevId")]),
        Exec(Item(target="./FUMO/Firmware/DownloadAndUpdate", data="go"), correlator="abc123",
             meta=Meta(format="chr")),
        Results(4, [Item(source="./DevInfo/DevId", meta=Meta(format="chr", type="text/plain"), data="IMEI:1"),
                    Item(source="./DevDetail", meta=Meta(format="node"), data="URI/FwV")],
                msg_ref=3, meta=Meta(type="text/plain"), target_refs=["./DevInfo/DevId"],
                source_refs=["./DevInfo/DevId"]),
        Status(6, 0, "SyncHdr", 401, target_refs=["IMEI:493005100592800"], source_refs=["http://dm.example.com/dm"],
               chal=Chal(Meta(format="b64", type="syncml:auth-md5", next_nonce="Tm9uY2U="))),
        Status(6, 3, "Alert", 200, items=[Item(data="2")]),
        Atomic([Replace([Item(target="./A", data="1")]), Delete([Item(target="./B")]),
                Sequence([Get([Item(target="./C")]), Exec(Item(target="./D"))])], meta=Meta(type="x")),
        Sequence([Alert(1101, [Item(data="MINDT=1"), Item(data="ok?")]),
                  Atomic([Add([Item(target="./E", data="e")])], no_resp=True),
                  Exec(Item(target="./F"), correlator="x")]),
        Replace([Item(target="./Big", meta=Meta(format="bin", size=100_000), data=BLOB[:500], more_data=True)]),
    ]


def message(commands: list[Command], final: bool = True) -> Message:
    return Message(full_header(), commands, final)


def elements(e: Element) -> list[Element]:
    """e and everything below it, parents first."""
    return [e, *(d for c in e.children for d in elements(c))]


@pytest.mark.parametrize("index", range(len(every_command())))
def test_every_command_round_trips_alike_in_both_encodings(index: int) -> None:
    msg = message([every_command()[index]])
    for msg_in in (msg, message([every_command()[index]], final=False)):
        via_xml = decode(encode(msg_in, Encoding.XML), Encoding.XML)
        via_wbxml = decode(encode(msg_in, Encoding.WBXML), Encoding.WBXML)
        assert via_xml == via_wbxml
        assert via_xml.final is msg_in.final
        # And the round trip is stable: encoding what was decoded gives the same message again.
        assert decode(encode(via_xml, Encoding.XML), Encoding.XML) == via_xml
        assert decode(encode(via_wbxml, Encoding.WBXML), Encoding.WBXML) == via_wbxml


def test_a_message_of_every_command_keeps_every_field() -> None:
    msg = message(every_command())
    for enc in Encoding:
        got = decode(encode(msg, enc), enc)
        assert got.header == msg.header
        assert got.final
        # Commands come back field for field; only binary items change Meta/Format to "bin".
        assert [type(c) for c in got.commands] == [type(c) for c in msg.commands]
        fumo = got.commands[4]
        assert isinstance(fumo, Alert) and fumo.correlator == "c0ffee"
        assert fumo.items[0].meta == Meta(type="org.openmobilealliance.dm.firmwareupdate.downloadandupdate",
                                          format="int", mark="critical")
        assert fumo.items[0].source == "./FUMO/Firmware/DownloadAndUpdate" and fumo.items[0].data == "410"
        ex = got.commands[13]
        assert isinstance(ex, Exec) and ex.correlator == "abc123"
        assert ex.item.target == "./FUMO/Firmware/DownloadAndUpdate" and ex.item.data == "go"
        res = got.commands[14]
        assert isinstance(res, Results)
        assert (res.msg_ref, res.cmd_ref, res.target_refs, res.source_refs) == (3, 4, ["./DevInfo/DevId"],
                                                                                  ["./DevInfo/DevId"])
        chal = got.commands[15]
        assert isinstance(chal, Status) and chal.chal is not None
        assert chal.chal.meta == Meta(format="b64", type="syncml:auth-md5", next_nonce="Tm9uY2U=")
        assert chal.target_refs == ["IMEI:493005100592800"] and chal.code == 401 and chal.cmd == "SyncHdr"
        ui = got.commands[16]
        assert isinstance(ui, Status) and ui.items == [Item(data="2")]
        atomic = got.commands[17]
        assert isinstance(atomic, Atomic) and not isinstance(atomic, Sequence)
        inner = atomic.commands[2]
        assert isinstance(inner, Sequence) and isinstance(inner.commands[1], Exec)
        seq = got.commands[18]
        assert isinstance(seq, Sequence) and isinstance(seq.commands[1], Atomic) and seq.commands[1].no_resp
        big = got.commands[19]
        assert isinstance(big, Replace) and big.items[0].more_data and big.items[0].meta is not None
        assert big.items[0].meta.size == 100_000 and big.items[0].data == BLOB[:500]
        assert [c.cmd_id for c in got.commands] == [c.cmd_id for c in msg.commands]


def test_header_fields_round_trip() -> None:
    hdr = full_header()
    for enc in Encoding:
        got = decode(encode(Message(hdr, [], True), enc), enc).header
        assert got == hdr
        assert got.cred == Cred("Zz6EivR3yeaaENcRN6lpAQ==", "syncml:auth-md5", "b64")
        assert got.source_name == "Bruce2" and got.resp_uri == "http://dm.example.com/dm?s=1A2B"
        assert got.meta == Meta(max_msg_size=2048, max_obj_size=1 << 20)


def test_binary_data_is_base64_in_xml_and_opaque_in_wbxml() -> None:
    item = Item(target="./FUMO/Firmware/Update/PkgData", meta=Meta(format="bin"), data=BLOB)
    msg = message([Replace([item])])
    xml = encode(msg, Encoding.XML)
    assert base64.b64encode(BLOB) in xml and b"<Format xmlns=\"syncml:metinf\">b64</Format>" in xml
    wbxml = encode(msg, Encoding.WBXML)
    assert BLOB in wbxml and base64.b64encode(BLOB) not in wbxml
    for enc, data in ((Encoding.XML, xml), (Encoding.WBXML, wbxml)):
        got = decode(data, enc).commands[0]
        assert isinstance(got, Replace) and got.items[0].data == BLOB
        assert got.items[0].meta is not None and got.items[0].meta.format == "bin"
    # The caller's item is not changed by encoding it as XML.
    assert item.meta == Meta(format="bin")


def test_bytes_without_a_format_come_back_alike() -> None:
    # No Meta at all: XML must say b64 to carry the bytes; both encodings then agree on "bin".
    msg = message([Results(2, [Item(source="./Ext/Blob", data=b"\x00\x01binary\xff")], msg_ref=1)])
    via_xml = decode(encode(msg, Encoding.XML), Encoding.XML)
    via_wbxml = decode(encode(msg, Encoding.WBXML), Encoding.WBXML)
    assert via_xml == via_wbxml
    got = via_xml.commands[0]
    assert isinstance(got, Results) and got.items[0].data == b"\x00\x01binary\xff"


def test_b64_text_from_a_peer_becomes_bytes() -> None:
    # A peer may send b64 text itself (XML or WBXML inline string): the model decodes it.
    msg = message([Replace([Item(target="./X", meta=Meta(format="b64"), data=base64.b64encode(b"raw").decode())])])
    for enc in Encoding:
        got = decode(encode(msg, enc), enc).commands[0]
        assert isinstance(got, Replace) and got.items[0].data == b"raw"


@pytest.mark.parametrize("content_type, expected", [
    ("application/vnd.syncml.dm+xml", Encoding.XML),
    ("application/vnd.syncml.dm+wbxml", Encoding.WBXML),
    ("application/vnd.syncml+xml", Encoding.XML),
    ("application/vnd.syncml+wbxml", Encoding.WBXML),
    ("application/vnd.syncml.dm+xml; charset=UTF-8", Encoding.XML),
    ("Application/VND.SyncML.DM+WBXML;charset=utf-8", Encoding.WBXML),
    ("application/vnd.syncml+xml ; charset=\"utf-8\"", Encoding.XML),
])
def test_encoding_of_accepts(content_type: str, expected: Encoding) -> None:
    assert encoding_of(content_type) is expected


@pytest.mark.parametrize("content_type", [None, "", "text/xml", "application/xml", "application/vnd.syncml.dm",
                                          "application/vnd.syncml.notification", "application/vnd.syncml.ds+xml",
                                          "application/vnd.syncml.dm+xml+wbxml", "multipart/mixed; a=b"])
def test_encoding_of_refuses(content_type: str | None) -> None:
    with pytest.raises(CodecError):
        encoding_of(content_type)


HDR = ('<SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto><SessionID>1</SessionID><MsgID>1</MsgID>'
       '<Target><LocURI>http://s/dm</LocURI></Target><Source><LocURI>IMEI:1</LocURI></Source></SyncHdr>')


def doc(body: str, hdr: str = HDR, prolog: str = "") -> bytes:
    return f'{prolog}<SyncML xmlns="SYNCML:SYNCML1.2">{hdr}<SyncBody>{body}<Final/></SyncBody></SyncML>'.encode()


def test_the_minimal_document_decodes() -> None:
    msg = decode(doc('<Alert><CmdID>1</CmdID><Data>1201</Data></Alert>'), Encoding.XML)
    assert msg.commands == [Alert(1201, cmd_id=1)] and msg.final


@pytest.mark.parametrize("data", [
    # entity expansion and DTDs
    doc("", prolog='<!DOCTYPE SyncML [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>').replace(
        b"<Final/>", b"<Alert><CmdID>1</CmdID><Data>&b;</Data></Alert><Final/>"),
    doc("", prolog='<!DOCTYPE SyncML SYSTEM "http://example.com/syncml.dtd">'),
    doc("", prolog='<!DOCTYPE SyncML>'),
    doc("", prolog='<!DOCTYPE SyncML [<!ENTITY x SYSTEM "file:///etc/passwd">]>').replace(
        b"<Final/>", b"<Alert><CmdID>1</CmdID><Data>&x;</Data></Alert><Final/>"),
    # mixed content
    doc('<Alert>text<CmdID>1</CmdID><Data>1201</Data></Alert>'),
    doc('<Alert><CmdID>1</CmdID>tail<Data>1201</Data></Alert>'),
    # missing SyncHdr parts
    doc("", hdr=HDR.replace("<SessionID>1</SessionID>", "")),
    doc("", hdr=HDR.replace("<VerDTD>1.2</VerDTD>", "")),
    doc("", hdr=HDR.replace("<Target><LocURI>http://s/dm</LocURI></Target>", "")),
    doc("", hdr=HDR.replace("<LocURI>IMEI:1</LocURI>", "")),
    doc("", hdr=HDR.replace("<MsgID>1</MsgID>", "")),
    doc("", hdr=""),
    doc("", hdr=HDR.replace("DM/1.2", "DM/1.1")),
    # numbers that are not numbers
    doc('<Alert><CmdID>one</CmdID><Data>1201</Data></Alert>'),
    doc('<Alert><CmdID></CmdID><Data>1201</Data></Alert>'),
    doc('<Alert><Data>1201</Data></Alert>'),
    doc('<Alert><CmdID>\u00b2</CmdID><Data>1201</Data></Alert>'),  # a digit to str.isdigit, not to int()
    doc('<Alert><CmdID>--1</CmdID><Data>1201</Data></Alert>'),
    doc('<Alert><CmdID>1</CmdID><Data>12x</Data></Alert>'),
    doc('<Alert><CmdID>1</CmdID><Data>' + "9" * 5000 + '</Data></Alert>'),  # beyond int()'s digit limit
    doc("", hdr=HDR.replace("<MsgID>1</MsgID>", "<MsgID>1.5</MsgID>")),
    doc('<Status><CmdID>1</CmdID><MsgRef>1</MsgRef><CmdRef>x</CmdRef><Cmd>Alert</Cmd><Data>200</Data></Status>'),
    # Exec takes exactly one item
    doc('<Exec><CmdID>1</CmdID><Item><Target><LocURI>./A</LocURI></Target></Item>'
        '<Item><Target><LocURI>./B</LocURI></Target></Item></Exec>'),
    doc('<Exec><CmdID>1</CmdID></Exec>'),
    # other structural faults
    doc('<Get><CmdID>1</CmdID></Get>'),
    doc('<Atomic><CmdID>1</CmdID></Atomic>'),
    doc('<Sync><CmdID>1</CmdID></Sync>'),
    doc('<Replace><CmdID>1</CmdID><Item><Meta><Format xmlns="syncml:metinf">b64</Format></Meta>'
        '<Data>!!not base64!!</Data></Item></Replace>'),
    doc('<Replace><CmdID>1</CmdID><Item><Data><X>structured</X></Data></Item></Replace>'),
    doc('<Replace><CmdID>1</CmdID><Item><Meta><Size xmlns="syncml:metinf">big</Size></Meta>'
        '<Data>x</Data></Item></Replace>'),
    b'<NotSyncML/>',
    b'<SyncML xmlns="SYNCML:SYNCML1.2"><SyncHdr/></SyncML>',
    b'not xml at all',
    b'',
    b'<SyncML xmlns="SYNCML:SYNCML1.2">' + b'<a>' * 100 + b'</a>' * 100 + b'</SyncML>',
], ids=lambda d: d[:60].decode("utf-8", "replace"))
def test_malformed_xml_is_a_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode(data, Encoding.XML)


def test_malformed_messages_are_codec_errors_in_wbxml_too() -> None:
    # The same structural faults, carried in WBXML: the model's checks do not depend on the encoding.
    for body in ('<Alert><CmdID>one</CmdID><Data>1201</Data></Alert>',
                 ('<Exec><CmdID>1</CmdID><Item><Target><LocURI>./A</LocURI></Target></Item>'
                  '<Item><Target><LocURI>./B</LocURI></Target></Item></Exec>')):
        tree = xml.decode(doc(body))
        with pytest.raises(CodecError):
            decode(wbxml.encode(tree), Encoding.WBXML)
    tree = xml.decode(doc("", hdr=HDR.replace("<SessionID>1</SessionID>", "")))
    with pytest.raises(CodecError):
        decode(wbxml.encode(tree), Encoding.WBXML)


def test_oversize_message_is_refused() -> None:
    msg = message([Replace([Item(target="./X", meta=Meta(format="bin"), data=BLOB * 10)])])
    for enc in Encoding:
        data = encode(msg, enc)
        with pytest.raises(CodecError):
            decode(data, enc, max_size=len(data) - 1)
        assert decode(data, enc, max_size=len(data)).commands


def test_text_that_xml_cannot_carry_is_refused_when_encoding() -> None:
    # Control characters are not XML characters: the XML encoder must not write a document no one can read.
    msg = message([Status(1, 1, "Alert", 200, items=[Item(data="bell\x07")])])
    with pytest.raises(CodecError):
        encode(msg, Encoding.XML)
    # WBXML carries any text.
    got = decode(encode(msg, Encoding.WBXML), Encoding.WBXML).commands[0]
    assert isinstance(got, Status) and got.items[0].data == "bell\x07"


def test_encoding_does_not_change_the_message() -> None:
    msg = message(every_command())
    before = copy.deepcopy(msg)
    codec.encode(msg, Encoding.XML)
    codec.encode(msg, Encoding.WBXML)
    assert msg == before


def test_carriage_returns_and_unicode_survive_xml() -> None:
    text = "line one\r\nline two\rthree\n\u00e9\u20ac\U0001f600 <&> ]]>"
    msg = message([Alert(1100, [Item(data="MINDT=1"), Item(data=text)])])
    for enc in Encoding:
        got = decode(encode(msg, enc), enc).commands[0]
        assert isinstance(got, Alert) and got.items[1].data == text


def test_a_raw_opaque_next_nonce_from_a_wbxml_peer_is_taken_as_its_base64() -> None:
    # libwbxml and handsets send NextNonce in WBXML as OPAQUE raw bytes (see test_dm_wbxml); the
    # model keeps nonces as base64 text, as XML carries them.
    raw = bytes([0x00, 0xFF, 0x10, 0x80, 0x7F, 0xC3])
    msg = message([Status(1, 0, "SyncHdr", 407, chal=Chal(Meta(format="b64", type="syncml:auth-md5",
                                                                   next_nonce="placeholder")))])
    tree = to_element(msg, binary=True)
    nonce_el = next(e for e in elements(tree) if e.tag == "NextNonce")
    assert nonce_el.ns == METINF_NS
    for content, expected in ((raw, base64.b64encode(raw).decode()), (b"AAECAw==", "AAECAw==")):
        nonce_el.content = content
        got = decode(wbxml.encode(tree), Encoding.WBXML).commands[0]
        assert isinstance(got, Status) and got.chal is not None and got.chal.meta.next_nonce == expected


def test_opaque_base64_item_data_from_a_wbxml_peer_is_decoded() -> None:
    # libwbxml writes every Add/Replace Data as OPAQUE: b64 text arrives as ASCII bytes.
    msg = message([Replace([Item(target="./X", meta=Meta(format="b64"), data="cGF5bG9hZA==")])])
    tree = to_element(msg, binary=True)
    data_el = next(e for e in elements(tree) if e.tag == "Data")
    data_el.content = b"cGF5bG9hZA=="
    got = decode(wbxml.encode(tree), Encoding.WBXML).commands[0]
    assert isinstance(got, Replace) and got.items[0].data == b"payload"
    assert got.items[0].meta is not None and got.items[0].meta.format == "bin"


# What XML carries: text without the characters XML 1.0 cannot hold (markup characters, quotes, CR, tabs
# and non-ASCII included); empty text is no text.
_xml_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00\ufffe\uffff",
                                  max_codepoint=0x1F600).filter(lambda c: c in "\t\n\r" or c >= " "),
                    min_size=1, max_size=20)


@given(_xml_text, st.sampled_from([DM_1_2, DM_1_1]))
def test_xml_written_from_the_model_reads_back_as_the_element_tree_wbxml_writes(text: str, protocol: Protocol) -> None:
    # The XML encoder writes the model straight to text; WBXML's goes through to_element. They must agree.
    commands = every_command() if protocol is DM_1_2 else []  # (SyncML 1.1 has no Correlator)
    item = Item(target=text, source=text, meta=Meta(format=text, type=text, size=3), data=text)
    commands.append(Status(1, 2, text, 200, target_refs=[text], source_refs=[text], items=[item]))
    msg = Message(dataclasses.replace(full_header(), session_id=text, protocol=protocol), commands, final=False)
    assert xml.decode(xml.encode(msg)) == to_element(msg, binary=False)
