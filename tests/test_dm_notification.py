"""Package #0: the worked example, strict parsing, digest checks with the zero-nonce recovery,
damage of every byte, and its WAP push / SMS encoding with exact header bytes."""

from __future__ import annotations

import random

import pytest

from fotadelta.dm import notification as n0
from fotadelta.dm.auth import mac_digest
from fotadelta.dm.notification import Notification, NotificationError, UiMode

EXAMPLE_TRIGGER = bytes.fromhex("02d800000012340866756e616d626f6c")
EXAMPLE_DIGEST = bytes.fromhex("9a403422e88f44f375df58917d2ba0f6")
NONCE = bytes.fromhex("6e6f6e6365313233")


def example() -> Notification:
    return Notification(session_id=0x1234, server_id="funambol")


def test_worked_example() -> None:
    n = Notification(session_id=0x1234, server_id="funambol", ui_mode=UiMode.BACKGROUND,
                     initiator_server=True, version=11)
    assert n == example()
    assert n.trigger() == EXAMPLE_TRIGGER
    pkg = n0.build(n, "srvpwd", bytes(4))
    assert pkg == EXAMPLE_DIGEST + EXAMPLE_TRIGGER
    assert n0.parse(pkg) == n
    assert n0.verify(pkg, "srvpwd", bytes(4)) == n


def test_digest_formula() -> None:
    pkg = n0.build(example(), "srvpwd", NONCE)
    assert pkg[:16] == mac_digest("funambol", "srvpwd", NONCE, EXAMPLE_TRIGGER)


@pytest.mark.parametrize("n", [
    Notification(0, "s"),
    Notification(0xFFFF, "x" * 255, UiMode.USER_INTERACTION, False, 12, b"\x00\xff" * 40),
    Notification(7, "serveur-\u00e9t\u00e9", UiMode.INFORMATIVE, vendor=b"v"),
    Notification(0x8001, "srv", UiMode.NOT_SPECIFIED, initiator_server=False),
])
def test_round_trip(n: Notification) -> None:
    pkg = n0.build(n, "secret", NONCE)
    assert len(pkg) == 16 + 8 + len(n.server_id.encode()) + len(n.vendor)
    assert n0.parse(pkg) == n
    assert n0.verify(pkg, "secret", NONCE) == n
    assert isinstance(n0.parse(pkg).ui_mode, UiMode)


def test_header_bit_positions() -> None:
    t = Notification(0xABCD, "ab", UiMode.USER_INTERACTION, False, 12).trigger()
    word = int.from_bytes(t[:8], "big")
    assert word >> 54 == 12
    assert (word >> 52) & 3 == 3
    assert (word >> 51) & 1 == 0
    assert (word >> 24) & ((1 << 27) - 1) == 0
    assert (word >> 8) & 0xFFFF == 0xABCD
    assert word & 0xFF == 2
    assert t[8:] == b"ab"


def test_int_ui_mode_is_normalised() -> None:
    n = Notification(1, "s", ui_mode=2)  # type: ignore[arg-type]
    assert n.ui_mode is UiMode.INFORMATIVE


def test_zero_nonce_fallback() -> None:
    pkg = n0.build(example(), "srvpwd", bytes(4))
    # The device's stored nonce no longer matches; the zero nonce still authenticates.
    assert n0.verify(pkg, "srvpwd", NONCE) == example()


def test_fallback_is_only_the_zero_nonce() -> None:
    pkg = n0.build(example(), "srvpwd", b"\x00\x00\x00\x01")
    with pytest.raises(NotificationError, match="digest"):
        n0.verify(pkg, "srvpwd", NONCE)


def test_wrong_password_fails() -> None:
    pkg = n0.build(example(), "srvpwd", NONCE)
    with pytest.raises(NotificationError, match="digest"):
        n0.verify(pkg, "srvpwe", NONCE)
    with pytest.raises(NotificationError, match="digest"):
        n0.verify(pkg, "srvpwd", NONCE + b"x")


def _damaged_package() -> bytes:
    n = Notification(0x0102, "dm.example.org", UiMode.INFORMATIVE, vendor=b"\x01\x02\x03")
    return n0.build(n, "srvpwd", NONCE)


def test_every_truncation_is_rejected() -> None:
    pkg = _damaged_package()
    for size in range(len(pkg)):
        with pytest.raises(NotificationError):
            n0.verify(pkg[:size], "srvpwd", NONCE)
        if size < 16 + 8 + len("dm.example.org"):
            with pytest.raises(NotificationError):
                n0.parse(pkg[:size])


def test_every_byte_flip_is_rejected() -> None:
    pkg = _damaged_package()
    structural = 0
    for i in range(len(pkg)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(pkg)
            bad[i] ^= mask
            with pytest.raises(NotificationError) as err:
                n0.verify(bytes(bad), "srvpwd", NONCE)
            if "digest" not in str(err.value):
                structural += 1
                with pytest.raises(NotificationError):
                    n0.parse(bytes(bad))
    assert structural > 0  # version, reserved bits and length flips fail before the digest


def test_appended_byte_is_rejected() -> None:
    with pytest.raises(NotificationError, match="digest"):
        n0.verify(_damaged_package() + b"\x00", "srvpwd", NONCE)


def _with_word(word: int, tail: bytes = b"ab") -> bytes:
    return bytes(16) + word.to_bytes(8, "big") + tail


@pytest.mark.parametrize("version", [11, 12])
def test_versions_accepted(version: int) -> None:
    assert n0.parse(_with_word(version << 54 | 1 << 52 | 2)).version == version


@pytest.mark.parametrize("version", [0, 10, 13, 0x3FF])
def test_versions_refused(version: int) -> None:
    with pytest.raises(NotificationError, match="version"):
        n0.parse(_with_word(version << 54 | 2))
    with pytest.raises(NotificationError):
        Notification(1, "s", version=version)


@pytest.mark.parametrize("bit", range(24, 51))
def test_reserved_bits_refused(bit: int) -> None:
    with pytest.raises(NotificationError, match="reserved"):
        n0.parse(_with_word(11 << 54 | 1 << bit | 2))


def test_parse_strictness() -> None:
    with pytest.raises(NotificationError, match="server id"):
        n0.parse(_with_word(11 << 54 | 0))  # empty server id
    with pytest.raises(NotificationError, match="UTF-8"):
        n0.parse(_with_word(11 << 54 | 2, b"\xff\xfe"))
    with pytest.raises(NotificationError, match="truncated"):
        n0.parse(_with_word(11 << 54 | 3))
    assert n0.parse(_with_word(11 << 54 | 2, b"abXYZ")).vendor == b"XYZ"


@pytest.mark.parametrize("kwargs", [
    {"session_id": -1}, {"session_id": 0x10000}, {"server_id": ""}, {"server_id": "x" * 256},
    {"server_id": "\u00e9" * 128}, {"server_id": "\ud800"}, {"ui_mode": 4}, {"version": 10},
])
def test_notification_validation(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"session_id": 1, "server_id": "s"}
    args.update(kwargs)
    with pytest.raises(NotificationError):
        Notification(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("sid", "text"), [
    (0, "0"), (1, "1"), (0xA, "A"), (0x0ABC, "ABC"), (0x1234, "1234"), (0xFFFF, "FFFF"),
    (0x00FF, "FF"), (0xbeef, "BEEF"),
])
def test_session_id_text(sid: int, text: str) -> None:
    assert n0.session_id_text(sid) == text


@pytest.mark.parametrize("sid", [-1, 0x10000])
def test_session_id_text_range(sid: int) -> None:
    with pytest.raises(NotificationError):
        n0.session_id_text(sid)


# ---- WAP push ----------------------------------------------------------------------

PKG = EXAMPLE_DIGEST + EXAMPLE_TRIGGER


def test_wap_push_bytes() -> None:
    pdu = n0.wap_push(PKG, transaction_id=0x5A)
    # TID, Push, headers length 3, content type 0x44, X-Wap-Application-Id 0x2F = 0x07.
    assert pdu == bytes([0x5A, 0x06, 0x03, 0xC4, 0xAF, 0x87]) + PKG
    assert n0.parse_wap_push(pdu) == PKG
    assert n0.wap_push(PKG)[0] == 0
    assert n0.CONTENT_TYPE == "application/vnd.syncml.notification"


@pytest.mark.parametrize("headers", [
    b"\xc4\xaf\x87",
    # Textual content type and application id, a general-form content type with a parameter.
    b"application/vnd.syncml.notification\x00\xaf\x87",
    b"\xc4\xafx-wap-application:syncml.dm\x00",
    b"\x03\xc4\x81\xea\xaf\x87",
    # Long-integer application id, other headers before and after, an application header.
    b"\xc4\xaf\x01\x07",
    b"\xc4\x8d\x82\xaf\x87\xb4\x80",
    b"\xc4X-Wap-Application-Id\x00x-wap-application:syncml.dm\x00",
    b"\xc4X-Other\x00value\x00\xaf\x87",
])
def test_parse_wap_push_variants(headers: bytes) -> None:
    pdu = bytes([1, 0x06, len(headers)]) + headers + PKG
    assert n0.parse_wap_push(pdu) == PKG


def test_parse_wap_push_long_headers_length() -> None:
    headers = b"\xc4" + b"X-Pad\x00" + b"p" * 200 + b"\x00" + b"\xaf\x87"
    assert 128 <= len(headers) < 256  # a two-octet uintvar
    pdu = bytes([1, 0x06, 0x81, len(headers) - 128]) + headers + PKG
    assert n0.parse_wap_push(pdu) == PKG


@pytest.mark.parametrize(("pdu", "match"), [
    (b"", "short"),
    (b"\x00\x06", "short"),
    (bytes([0, 0x07, 3, 0xC4, 0xAF, 0x87]) + PKG, "Push"),
    (bytes([0, 0x06, 9, 0xC4, 0xAF, 0x87]), "past"),
    (bytes([0, 0x06, 3, 0xC4, 0xAF, 0x87]), "body"),
    (bytes([0, 0x06, 3, 0xC3, 0xAF, 0x87]) + PKG, "content type"),
    (bytes([0, 0x06, 3, 0xC4, 0xAF, 0x84]) + PKG, "application id"),
    (bytes([0, 0x06, 1, 0xC4]) + PKG, "0 X-WAP"),
    (bytes([0, 0x06, 5, 0xC4, 0xAF, 0x87, 0xAF, 0x87]) + PKG, "2 X-WAP"),
    (bytes([0, 0x06, 4, 0xC4, 0x02, 0xAF, 0x87]) + PKG, "0 X-WAP"),  # on another code page
    (bytes([0, 0x06, 2, 0xC4, 0x7F]) + PKG, "page shift"),
    (bytes([0, 0x06, 2, 0xC4, 0xAF]) + PKG, "value missing"),
    (bytes([0, 0x06, 4, 0xC4, 0xAF, 0x05, 0x07]) + PKG, "past the headers"),
    (bytes([0, 0x06, 3, 0xC4, 0xAF, 0x00]) + PKG, "long integer"),
    (bytes([0, 0x06, 4, 0xC4, 0xAF, 0x87, 0x00]) + PKG, "malformed header"),
    (bytes([0, 0x06, 3, 0xC4, 0xAF, ord("x")]) + PKG, "unterminated"),
    (bytes([0, 0x06, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]) + PKG, "5 octets"),
    (bytes([0, 0x06, 0x80]), "uintvar"),
    (bytes([0, 0x06, 3, 0xC4, 0x7F, 0x87]) + PKG, "0 X-WAP"),
])
def test_parse_wap_push_rejects(pdu: bytes, match: str) -> None:
    with pytest.raises(NotificationError, match=match):
        n0.parse_wap_push(pdu)


def test_parse_wap_push_truncations() -> None:
    pdu = n0.wap_push(PKG)
    for size in range(6):
        with pytest.raises(NotificationError):
            n0.parse_wap_push(pdu[:size])


def test_wap_push_arguments() -> None:
    with pytest.raises(NotificationError):
        n0.wap_push(PKG, transaction_id=256)
    with pytest.raises(NotificationError):
        n0.wap_push(b"")


# ---- SMS -------------------------------------------------------------------------

PORTS = bytes.fromhex("05040b8423f0")  # 16-bit ports: destination 2948, source 9200


def test_sms_single() -> None:
    pdu = n0.wap_push(PKG)
    (seg,) = n0.sms_segments(pdu)
    assert seg == bytes.fromhex("06") + PORTS + pdu
    assert n0.join_sms_segments([seg]) == pdu


def test_sms_largest_single_and_smallest_double() -> None:
    (seg,) = n0.sms_segments(b"x" * 133)
    assert len(seg) == 140
    segs = n0.sms_segments(b"x" * 134)
    assert [len(s) for s in segs] == [140, 12 + 6]


def test_sms_long() -> None:
    n = Notification(0x4242, "dm.example.org", vendor=bytes(range(256)) * 2)
    pdu = n0.wap_push(n0.build(n, "srvpwd", NONCE), transaction_id=3)
    segs = n0.sms_segments(pdu, reference=0x3F)
    total = -(-len(pdu) // 128)
    assert len(segs) == total == 5
    for seq, seg in enumerate(segs, 1):
        assert seg[:12] == bytes([0x0B]) + PORTS + bytes([0x00, 0x03, 0x3F, total, seq])
        assert seg[12:] == pdu[(seq - 1) * 128:seq * 128]
        assert len(seg) <= 140
    assert all(len(s) == 140 for s in segs[:-1])
    shuffled = segs[:]
    random.Random(5).shuffle(shuffled)
    assert shuffled != segs
    assert n0.join_sms_segments(shuffled) == pdu
    assert n0.verify(n0.parse_wap_push(n0.join_sms_segments(reversed(segs))), "srvpwd", NONCE) == n


def test_sms_too_long() -> None:
    assert len(n0.sms_segments(b"x" * 128 * 255)) == 255
    with pytest.raises(NotificationError, match="255"):
        n0.sms_segments(b"x" * (128 * 255 + 1))


def test_sms_arguments() -> None:
    with pytest.raises(NotificationError):
        n0.sms_segments(b"")
    with pytest.raises(NotificationError):
        n0.sms_segments(b"x", reference=256)


def _long_segments(ref: int = 7) -> list[bytes]:
    return n0.sms_segments(bytes(range(256)) * 2 + b"!", reference=ref)  # 4 full parts + 1


def test_sms_missing_and_duplicate() -> None:
    segs = _long_segments()
    assert len(segs) == 5
    with pytest.raises(NotificationError, match=r"missing"):
        n0.join_sms_segments(segs[:2] + segs[3:])
    with pytest.raises(NotificationError, match="twice"):
        n0.join_sms_segments(segs + [segs[1]])
    with pytest.raises(NotificationError, match="twice"):
        n0.join_sms_segments(segs[:4] + [segs[0]])
    with pytest.raises(NotificationError, match="no SMS"):
        n0.join_sms_segments([])


def test_sms_mixed_messages() -> None:
    segs = _long_segments()
    with pytest.raises(NotificationError, match="reference"):
        n0.join_sms_segments(segs[:4] + _long_segments(8)[4:])
    other_total = n0.sms_segments(b"y" * 200, reference=7)  # 2 parts, same reference
    assert len(other_total) == 2
    with pytest.raises(NotificationError, match="total"):
        n0.join_sms_segments(segs[:1] + other_total[1:])
    single = n0.sms_segments(b"single")
    with pytest.raises(NotificationError, match="mix"):
        n0.join_sms_segments(segs + single)
    with pytest.raises(NotificationError, match="without concatenation"):
        n0.join_sms_segments(single + single)


def _segment(udh: bytes, data: bytes = b"data") -> bytes:
    return bytes([len(udh)]) + udh + data


def test_sms_header_variants() -> None:
    # Concatenation before the ports, an unknown element skipped, a 16-bit reference.
    a = _segment(bytes.fromhex("000309020124020000") + PORTS, b"AB")
    b = _segment(PORTS + bytes.fromhex("0003090202"), b"CD")
    assert n0.join_sms_segments([b, a]) == b"ABCD"
    c = _segment(PORTS + bytes.fromhex("0804abcd0201"), b"12")
    d = _segment(PORTS + bytes.fromhex("0804abcd0202"), b"34")
    assert n0.join_sms_segments([d, c]) == b"1234"
    # Any source port, as long as all segments agree.
    other_src = bytes.fromhex("05040b841234")
    assert n0.join_sms_segments([_segment(other_src)]) == b"data"
    # A concatenation element numbering 1 of 1 is still one message.
    assert n0.join_sms_segments([_segment(PORTS + bytes.fromhex("0003010101"))]) == b"data"
    # 23.040: an element with sequence 0 or beyond the total is ignored.
    assert n0.join_sms_segments([_segment(PORTS + bytes.fromhex("0003010100"))]) == b"data"
    assert n0.join_sms_segments([_segment(PORTS + bytes.fromhex("0003010203"))]) == b"data"
    # 23.040: of a repeated element the last counts.
    assert n0.join_sms_segments([_segment(bytes.fromhex("050400010002") + PORTS)]) == b"data"


@pytest.mark.parametrize(("seg", "match"), [
    (b"", "empty"),
    (b"\x00data", "port"),
    (_segment(bytes.fromhex("0402b0f0")), "port"),  # 8-bit ports only
    (_segment(bytes.fromhex("05040b8523f0")), "2949"),
    (_segment(bytes.fromhex("05030b8423")), "port addressing"),
    (_segment(PORTS + bytes.fromhex("00020101")), "concatenation"),
    (_segment(PORTS + bytes.fromhex("0803010101")), "concatenation"),
    (bytes([7]) + PORTS, "runs past the segment"),
    (bytes([7]) + PORTS + b"\x00", "element runs past"),
    (bytes([8]) + PORTS + b"\x00\x05" + b"xxxxx", "element runs past"),
    (_segment(PORTS, b"x" * 134), "more than 140"),
    (_segment(PORTS, b""), "no data"),
])
def test_sms_segment_rejects(seg: bytes, match: str) -> None:
    with pytest.raises(NotificationError, match=match):
        n0.join_sms_segments([seg])


def test_sms_ports_must_agree() -> None:
    a = _segment(PORTS + bytes.fromhex("0003010201"))
    b = _segment(bytes.fromhex("05040b841234") + bytes.fromhex("0003010202"))
    with pytest.raises(NotificationError, match="ports"):
        n0.join_sms_segments([a, b])


def test_end_to_end() -> None:
    n = Notification(0x00FF, "fota-server", UiMode.USER_INTERACTION)
    segs = n0.sms_segments(n0.wap_push(n0.build(n, "pw", NONCE)))
    got = n0.verify(n0.parse_wap_push(n0.join_sms_segments(segs)), "pw", NONCE)
    assert got == n
    assert n0.session_id_text(got.session_id) == "FF"


def test_a_fresh_session_id_is_none_of_the_recent_ones() -> None:
    assert n0.fresh_session_id(0x4C1D, []) == 0x4C1D
    assert n0.fresh_session_id(0x4C1D, ["4C1D", "4C1E"]) == 0x4C1F
    # 0 is no session id: a clock's 0 (or any multiple of 0xFFFF) becomes 0xFFFF, and 0xFFFF is followed by 1.
    assert n0.fresh_session_id(0, []) == 0xFFFF
    assert n0.fresh_session_id(0xFFFF, ["FFFF"]) == 1
    assert n0.fresh_session_id(1 << 40, []) in range(1, 0x10000)
    taken = [n0.session_id_text(k) for k in range(1, 0x10000) if k != 77]
    assert n0.fresh_session_id(5, taken) == 77
    with pytest.raises(NotificationError, match="every 16-bit session id is taken"):
        n0.fresh_session_id(5, taken + ["4D"])
