"""OMA DM 1.1.2 on the wire: SyncML 1.1 namespaces, VerDTD 1.1 / VerProto DM/1.1, WBXML public id 0x0FD3.

The codec keeps one model for both versions; the SyncHdr's Protocol says which one a message
speaks, and the encoders write that version's namespace (XML) or public id (WBXML). libwbxml
cross-checks the 1.1 token table both ways."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_dm_wbxml import wbxml2xml, xml2wbxml

from fotadelta.dm import wbxml, xml
from fotadelta.dm.codec import Encoding, decode, encode
from fotadelta.dm.element import SYNCML11_NS, SYNCML_NS, CodecError
from fotadelta.dm.model import (DM_1_1, DM_1_2, Alert, Exec, Get, Item, Message, Meta, Replace, Results, Status,
                                SyncHdr)

PROLOG_11 = ('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE SyncML PUBLIC "-//SYNCML//DTD SyncML 1.1//EN" '
             '"http://www.syncml.org/docs/syncml_represent_v11_20020213.dtd">\n')


def message_11(*commands: object, final: bool = True) -> Message:
    hdr = SyncHdr("4E", 2, "IMEI:351234567890123", "http://dm.example.com/dm", source_name="dmserver",
                  meta=Meta(max_msg_size=8000, max_obj_size=64000), protocol=DM_1_1)
    return Message(hdr, list(commands), final)  # type: ignore[arg-type]


def sample_11() -> Message:
    return message_11(Status(1, 0, "SyncHdr", 212), Get([Item(target="./FwUpdate/State")], cmd_id=2),
                      Replace([Item(target="./FwUpdate/PkgURL", data="http://x/p/1")], cmd_id=3),
                      Exec(Item(target="./FwUpdate/DownloadAndUpdate"), cmd_id=4),
                      Alert(1101, [Item(data="MINDT=30"), Item(data="Update now?")], cmd_id=5))


@pytest.mark.parametrize("encoding", list(Encoding))
def test_a_dm_1_1_message_round_trips_and_keeps_its_protocol(encoding: Encoding) -> None:
    msg = sample_11()
    back = decode(encode(msg, encoding), encoding)
    assert back.header.protocol is DM_1_1
    assert back == msg


def test_xml_uses_the_syncml_1_1_namespace_and_version_fields() -> None:
    body = encode(sample_11(), Encoding.XML)
    assert b'<SyncML xmlns="SYNCML:SYNCML1.1">' in body
    assert b"<VerDTD>1.1</VerDTD><VerProto>DM/1.1</VerProto>" in body
    assert b"SYNCML1.2" not in body and b"DM/1.2" not in body
    assert xml.decode(body).ns == SYNCML11_NS


def test_wbxml_uses_public_id_0x0fd3() -> None:
    body = encode(sample_11(), Encoding.WBXML)
    assert body[1:3] == bytes([0x9F, 0x53])  # 0x0FD3 as mb_u_int32
    root = wbxml.decode(body)
    assert root.ns == SYNCML11_NS and all(c.ns == SYNCML11_NS for c in root.children)
    assert encode(message_11().__class__(SyncHdr("1", 1, "t", "s")), Encoding.WBXML)[1:3] == bytes([0xA4, 0x01])


@pytest.mark.parametrize("element", ["Correlator", "SourceParent"])
def test_elements_that_syncml_1_1_lacks_are_refused_when_encoding(element: str) -> None:
    cmd = Exec(Item(target="./FwUpdate/Update"), correlator="c1", cmd_id=1) if element == "Correlator" else \
        Replace([Item(target="./a", source_parent="./b", data="x")], cmd_id=1)
    for encoding in Encoding:
        with pytest.raises(CodecError, match=element):
            encode(message_11(cmd), encoding)


def test_mismatched_version_fields_are_refused() -> None:
    body = encode(sample_11(), Encoding.XML).replace(b"<VerProto>DM/1.1", b"<VerProto>DM/1.2")
    with pytest.raises(CodecError, match="unsupported protocol"):
        decode(body, Encoding.XML)
    body = encode(sample_11(), Encoding.XML).replace(b"<VerDTD>1.1", b"<VerDTD>1.0")
    with pytest.raises(CodecError, match="unsupported protocol"):
        decode(body, Encoding.XML)


def test_a_1_2_message_is_unchanged_by_the_version_support() -> None:
    hdr = SyncHdr("1", 1, "http://s/dm", "IMEI:1")
    assert hdr.protocol is DM_1_2
    body = encode(Message(hdr, [Alert(1201, cmd_id=1)]), Encoding.XML)
    assert b'xmlns="SYNCML:SYNCML1.2"' in body and xml.decode(body).ns == SYNCML_NS


def test_libwbxml_encodes_a_dm_1_1_message_as_we_do(tmp_path: Path) -> None:
    # The SyncML 1.1 token table of an independent implementation, byte for byte. (No Replace data:
    # libwbxml always writes that as opaque, which we read, see test_dm_wbxml.)
    msg = sample_11()
    msg.commands = [c for c in msg.commands if not isinstance(c, Replace)]
    text = PROLOG_11 + encode(msg, Encoding.XML).split(b"?>", 1)[1].decode()
    assert xml2wbxml(text, tmp_path, "-n") == encode(msg, Encoding.WBXML)
    # And whatever it writes for the full message decodes to the same message.
    text = PROLOG_11 + encode(sample_11(), Encoding.XML).split(b"?>", 1)[1].decode()
    theirs = decode(xml2wbxml(text, tmp_path), Encoding.WBXML)
    replace = next(c for c in theirs.commands if isinstance(c, Replace))
    assert replace.items[0].data == b"http://x/p/1"  # (opaque: bytes)
    replace.items[0].data = "http://x/p/1"
    assert theirs == sample_11()


def test_libwbxml_reads_our_dm_1_1_wbxml(tmp_path: Path) -> None:
    back = wbxml2xml(encode(sample_11(), Encoding.WBXML), tmp_path)
    assert b"-//SYNCML//DTD SyncML 1.1//EN" in back and b"SYNCML:SYNCML1.1" in back
    # (Our XML reader refuses any DTD; the tool writes one, so it goes before reading.)
    without_doctype = back[back.index(b"<SyncML"):]
    assert decode(without_doctype, Encoding.XML) == sample_11()


def test_a_1_1_results_of_a_state_node_decodes() -> None:
    # What a DM 1.1.2 device sends back for Get of the FUMO State (its update result, there being no Generic Alert).
    msg = message_11(Results(2, [Item(source="./FwUpdate/State", meta=Meta(format="int"), data="100")], msg_ref=2,
                             cmd_id=1))
    back = decode(encode(msg, Encoding.WBXML), Encoding.WBXML)
    assert isinstance(back.commands[0], Results) and back.commands[0].items[0].text == "100"
