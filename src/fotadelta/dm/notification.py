"""OMA DM 1.2 package #0 (server-initiated session trigger) and its WAP push over SMS.

Package #0 is a 16-byte MD5 digest followed by the trigger: a big-endian 64-bit header
(version 10 bits, UI mode 2, initiator 1, 27 reserved zero bits, session id 16, server-id
length 8), the server id and optional vendor data. The digest is keyed by the server
credential (server id, server password, server nonce).

For delivery the package travels as the body of a connectionless WSP Push PDU (WAP WSP),
addressed by WDP to port 2948 and carried in 8-bit data SMS whose user data header holds
16-bit application ports and, when needed, concatenation (3GPP TS 23.040)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from fotadelta.dm.auth import mac_digest

DIGEST_SIZE = 16
HEADER_SIZE = 8
VERSION_1_2 = 11
ACCEPTED_VERSIONS = (11, 12)
MAX_SERVER_ID = 255
ZERO_NONCE = bytes(4)

CONTENT_TYPE = "application/vnd.syncml.notification"
APPLICATION_ID = "x-wap-application:syncml.dm"
WDP_PORT = 2948  # WAP push, connectionless, unsecured
WSP_PORT = 9200  # WAP connectionless session service: the sender's port

_WSP_PUSH = 0x06
_WSP_CONTENT_TYPE = 0x44  # application/vnd.syncml.notification
_WSP_APPLICATION_ID_FIELD = 0x2F  # X-Wap-Application-Id
_WSP_APPLICATION_ID = 0x07  # x-wap-application:syncml.dm

_SMS_USER_DATA = 140  # octets of TP-User-Data in one 8-bit data SMS, UDH included
_IEI_CONCAT_8 = 0x00
_IEI_PORTS_16 = 0x05
_IEI_CONCAT_16 = 0x08
_PORTS_IE = bytes([_IEI_PORTS_16, 4]) + WDP_PORT.to_bytes(2, "big") + WSP_PORT.to_bytes(2, "big")
_CONCAT_IE_SIZE = 5


class NotificationError(ValueError):
    """A package #0, WAP push PDU or SMS segment is malformed or not authentic."""


class UiMode(IntEnum):
    """How the device involves the user in the session."""

    NOT_SPECIFIED = 0
    BACKGROUND = 1
    INFORMATIVE = 2
    USER_INTERACTION = 3


@dataclass(frozen=True)
class Notification:
    """The content of a package #0 (everything but the digest)."""

    session_id: int
    server_id: str
    ui_mode: UiMode = UiMode.BACKGROUND
    initiator_server: bool = True
    version: int = VERSION_1_2
    vendor: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.session_id <= 0xFFFF:
            raise NotificationError(f"session id {self.session_id} is not a 16-bit number")
        if self.version not in ACCEPTED_VERSIONS:
            raise NotificationError(f"notification version {self.version} is not DM 1.2 (11 or 12)")
        try:
            object.__setattr__(self, "ui_mode", UiMode(self.ui_mode))
        except ValueError:
            raise NotificationError(f"UI mode {self.ui_mode!r} is not 0-3") from None
        size = len(self._server_id_bytes())
        if not 1 <= size <= MAX_SERVER_ID:
            raise NotificationError(f"server id is {size} bytes, must be 1-{MAX_SERVER_ID}")

    def _server_id_bytes(self) -> bytes:
        try:
            return self.server_id.encode()
        except UnicodeEncodeError:
            raise NotificationError("server id is not encodable as UTF-8") from None

    def trigger(self) -> bytes:
        """Every byte after the digest: header, server id, vendor data."""
        server_id = self._server_id_bytes()
        word = (self.version << 54 | self.ui_mode << 52 | int(self.initiator_server) << 51
                | self.session_id << 8 | len(server_id))
        return word.to_bytes(HEADER_SIZE, "big") + server_id + self.vendor


def build(n: Notification, server_password: str, nonce: bytes) -> bytes:
    """Package #0: digest (server credential and nonce) followed by the trigger."""
    trigger = n.trigger()
    return mac_digest(n.server_id, server_password, nonce, trigger) + trigger


def parse(data: bytes) -> Notification:
    """Decode a package #0 without checking its digest."""
    if len(data) < DIGEST_SIZE + HEADER_SIZE:
        raise NotificationError(f"package #0 is {len(data)} bytes, shorter than its header")
    word = int.from_bytes(data[DIGEST_SIZE:DIGEST_SIZE + HEADER_SIZE], "big")
    version = word >> 54
    if version not in ACCEPTED_VERSIONS:
        raise NotificationError(f"package #0 version {version} is not DM 1.2 (11 or 12)")
    if (word >> 24) & ((1 << 27) - 1):
        raise NotificationError("package #0 has reserved bits set")
    start = DIGEST_SIZE + HEADER_SIZE
    end = start + (word & 0xFF)
    if len(data) < end:
        raise NotificationError("package #0 is truncated inside the server id")
    try:
        server_id = data[start:end].decode()
    except UnicodeDecodeError:
        raise NotificationError("package #0 server id is not UTF-8") from None
    return Notification(session_id=(word >> 8) & 0xFFFF, server_id=server_id,
                        ui_mode=UiMode((word >> 52) & 3), initiator_server=bool(word >> 51 & 1),
                        version=version, vendor=bytes(data[end:]))


def verify(data: bytes, server_password: str, nonce: bytes) -> Notification:
    """Decode a package #0 and check its digest against the server credential.

    On a mismatch the digest is tried once more with the nonce reset to four zero bytes,
    the recovery rule for a device and server whose nonces drifted apart."""
    n = parse(data)
    trigger = data[DIGEST_SIZE:]
    for candidate in (nonce, ZERO_NONCE):
        if hmac.compare_digest(data[:DIGEST_SIZE],
                               mac_digest(n.server_id, server_password, candidate, trigger)):
            return n
    raise NotificationError(f"digest mismatch: package #0 is not from server {n.server_id!r} "
                            "with this password and nonce")


def session_id_text(session_id: int) -> str:
    """The SyncHdr SessionID for a package #0 session: uppercase hex, no leading zeros."""
    if not 0 <= session_id <= 0xFFFF:
        raise NotificationError(f"session id {session_id} is not a 16-bit number")
    return f"{session_id:X}"


# A device's session ids that its next session's must differ from: those of its last this many sessions
# (the server reads them from its store, a client keeps its own).
RECENT_SESSIONS = 8


def fresh_session_id(start: int, recent: Iterable[str]) -> int:
    """A 16-bit session id (1-0xFFFF) that is none of recent (SessionID texts): start, or the next one
    after it that is free. A device's consecutive sessions must differ in it, as the server and the logs
    tell them apart by it, whether the client took it from a clock or the server drew it at random."""
    taken = set(recent)
    session_id = (start - 1) % 0xFFFF + 1
    for _ in range(0xFFFF):
        if session_id_text(session_id) not in taken:
            return session_id
        session_id = session_id % 0xFFFF + 1
    raise NotificationError("every 16-bit session id is taken")


# ---- WSP connectionless Push PDU ------------------------------------------------------

def wap_push(pkg0: bytes, transaction_id: int = 0) -> bytes:
    """A connectionless WSP Push PDU carrying ``pkg0`` to the DM client."""
    if not 0 <= transaction_id <= 0xFF:
        raise NotificationError(f"transaction id {transaction_id} is not an octet")
    if not pkg0:
        raise NotificationError("empty package #0")
    headers = bytes([0x80 | _WSP_CONTENT_TYPE,
                     0x80 | _WSP_APPLICATION_ID_FIELD, 0x80 | _WSP_APPLICATION_ID])
    return bytes([transaction_id, _WSP_PUSH]) + _uintvar(len(headers)) + headers + pkg0


def _uintvar(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | value & 0x7F)
        value >>= 7
    return bytes(reversed(out))


def _read_uintvar(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(5):  # a uintvar holds at most 32 bits
        if pos + i >= len(data):
            raise NotificationError("WAP push: truncated uintvar")
        octet = data[pos + i]
        value = value << 7 | octet & 0x7F
        if not octet & 0x80:
            return value, pos + i + 1
    raise NotificationError("WAP push: uintvar longer than 5 octets")


def _read_text(data: bytes, pos: int, end: int) -> tuple[str, int]:
    nul = data.find(b"\0", pos, end)
    if nul < 0:
        raise NotificationError("WAP push: unterminated text string")
    text = data[pos:nul]
    # A quote octet (127, or '"' for Quoted-string) may precede the characters.
    if text[:1] in (b"\x7f", b'"'):
        text = text[1:]
    return text.decode("latin-1"), nul + 1


def _read_value(data: bytes, pos: int, end: int) -> tuple[int | str | bytes, int]:
    """One WSP field value: a short integer (int), a text string (str) or the data of a
    length-prefixed value (bytes)."""
    if pos >= end:
        raise NotificationError("WAP push: header value missing")
    octet = data[pos]
    if octet >= 0x80:
        return octet & 0x7F, pos + 1
    if octet >= 32:
        return _read_text(data, pos, end)
    if octet == 31:
        size, start = _read_uintvar(data, pos + 1)
    else:
        size, start = octet, pos + 1
    if start + size > end:
        raise NotificationError("WAP push: header value runs past the headers")
    return data[start:start + size], start + size


def _integer(value: int | str | bytes) -> int | str:
    """An Integer-value (short, or long as length-prefixed octets) or a text value."""
    if isinstance(value, bytes):
        if not 1 <= len(value) <= 30:
            raise NotificationError("WAP push: malformed long integer")
        return int.from_bytes(value, "big")
    return value


def _media_type(value: int | str | bytes) -> int | str:
    if isinstance(value, bytes):  # Content-general-form: media type, then ignored parameters
        media, _ = _read_value(value, 0, len(value))
        return _integer(media)
    return value


def parse_wap_push(pdu: bytes) -> bytes:
    """The package #0 inside a connectionless WSP Push PDU addressed to the DM client.

    Content type and application id may be binary or textual; other headers are skipped."""
    if len(pdu) < 3:
        raise NotificationError("WAP push PDU is too short")
    if pdu[1] != _WSP_PUSH:
        raise NotificationError(f"WSP PDU type {pdu[1]:#04x} is not Push")
    headers_len, pos = _read_uintvar(pdu, 2)
    end = pos + headers_len
    if end > len(pdu):
        raise NotificationError("WAP push headers run past the PDU")
    content_type, pos = _read_value(pdu, pos, end)
    media = _media_type(content_type)
    if media != _WSP_CONTENT_TYPE and not (isinstance(media, str) and media.lower() == CONTENT_TYPE):
        raise NotificationError(f"WAP push content type {media!r} is not {CONTENT_TYPE}")
    app_ids: list[int | str] = []
    page = 1  # header code page; X-Wap-Application-Id is on the default page
    while pos < end:
        octet = pdu[pos]
        if octet == 0x7F:  # shift delimiter, then the page
            if pos + 1 >= end:
                raise NotificationError("WAP push: truncated header page shift")
            page, pos = pdu[pos + 1], pos + 2
        elif 1 <= octet <= 31:  # short-cut shift
            page, pos = octet, pos + 1
        elif octet >= 0x80:
            value, pos = _read_value(pdu, pos + 1, end)
            if page == 1 and octet & 0x7F == _WSP_APPLICATION_ID_FIELD:
                app_ids.append(_integer(value))
        elif octet >= 32:  # application header: name and value as text
            name, pos = _read_text(pdu, pos, end)
            text, pos = _read_text(pdu, pos, end)
            if name.lower() == "x-wap-application-id":
                app_ids.append(text)
        else:
            raise NotificationError("WAP push: malformed header")
    if len(app_ids) != 1:
        raise NotificationError(f"WAP push has {len(app_ids)} X-WAP-Application-ID headers, wants 1")
    app_id = app_ids[0]
    if app_id != _WSP_APPLICATION_ID and not (isinstance(app_id, str)
                                              and app_id.lower() == APPLICATION_ID):
        raise NotificationError(f"WAP push application id {app_id!r} is not {APPLICATION_ID}")
    if end == len(pdu):
        raise NotificationError("WAP push has no body")
    return pdu[end:]


# ---- SMS (3GPP TS 23.040 user data header, WDP ports) --------------------------------

def sms_segments(pdu: bytes, *, reference: int = 0) -> list[bytes]:
    """The TP-User-Data of each 8-bit data SMS carrying ``pdu``, UDH length octet included.

    One SMS holds 133 octets of PDU; longer PDUs are cut into 128-octet parts, each with a
    concatenation element (8-bit ``reference``, total, sequence from 1)."""
    if not pdu:
        raise NotificationError("empty WAP push PDU")
    if not 0 <= reference <= 0xFF:
        raise NotificationError(f"concatenation reference {reference} is not an octet")
    single_room = _SMS_USER_DATA - 1 - len(_PORTS_IE)
    if len(pdu) <= single_room:
        return [bytes([len(_PORTS_IE)]) + _PORTS_IE + pdu]
    room = single_room - _CONCAT_IE_SIZE
    chunks = [pdu[i:i + room] for i in range(0, len(pdu), room)]
    if len(chunks) > 0xFF:
        raise NotificationError(f"a {len(pdu)}-byte PDU needs more than 255 SMS")
    udhl = len(_PORTS_IE) + _CONCAT_IE_SIZE
    return [bytes([udhl]) + _PORTS_IE + bytes([_IEI_CONCAT_8, 3, reference, len(chunks), seq])
            + chunk for seq, chunk in enumerate(chunks, 1)]


@dataclass(frozen=True)
class _Segment:
    ports: tuple[int, int]  # destination, source
    concat: tuple[int, int, int, int] | None  # kind (IEI), reference, total, sequence
    payload: bytes


def _parse_segment(data: bytes) -> _Segment:
    if not data:
        raise NotificationError("empty SMS segment")
    if len(data) > _SMS_USER_DATA:
        raise NotificationError(f"SMS user data is {len(data)} octets, more than {_SMS_USER_DATA}")
    end = 1 + data[0]
    if end > len(data):
        raise NotificationError("SMS user data header runs past the segment")
    ports: tuple[int, int] | None = None
    concat: tuple[int, int, int, int] | None = None
    pos = 1
    # Of a repeated element the last occurrence counts and unknown ones are skipped (23.040).
    while pos < end:
        if pos + 2 > end or pos + 2 + data[pos + 1] > end:
            raise NotificationError("SMS user data header element runs past the header")
        iei, body = data[pos], data[pos + 2:pos + 2 + data[pos + 1]]
        pos += 2 + len(body)
        if iei == _IEI_PORTS_16:
            if len(body) != 4:
                raise NotificationError("malformed 16-bit port addressing element")
            ports = (int.from_bytes(body[:2], "big"), int.from_bytes(body[2:], "big"))
        elif iei in (_IEI_CONCAT_8, _IEI_CONCAT_16):
            if len(body) != (3 if iei == _IEI_CONCAT_8 else 4):
                raise NotificationError("malformed concatenation element")
            ref, total, seq = int.from_bytes(body[:-2], "big"), body[-2], body[-1]
            # 23.040: a zero total, or a sequence outside 1..total, voids the element.
            concat = (iei, ref, total, seq) if 1 <= seq <= total else None
    if ports is None:
        raise NotificationError("SMS segment has no 16-bit application port addressing")
    if ports[0] != WDP_PORT:
        raise NotificationError(f"SMS segment is for port {ports[0]}, not {WDP_PORT}")
    return _Segment(ports, concat, data[end:])


def join_sms_segments(segments: Iterable[bytes]) -> bytes:
    """Reassemble the WAP push PDU from SMS user data received in any order."""
    parts = [_parse_segment(s) for s in segments]
    if not parts:
        raise NotificationError("no SMS segments")
    if len({p.ports for p in parts}) != 1:
        raise NotificationError("SMS segments disagree on ports")
    numbered = [(p.concat, p.payload) for p in parts if p.concat is not None]
    if not numbered:
        if len(parts) != 1:
            raise NotificationError("several SMS segments without concatenation")
        pdu = parts[0].payload
    else:
        if len(numbered) != len(parts):
            raise NotificationError("SMS segments mix concatenated and single messages")
        if len({concat[:3] for concat, _ in numbered}) != 1:
            raise NotificationError("SMS segments disagree on concatenation reference or total")
        total = numbered[0][0][2]
        by_seq: dict[int, bytes] = {}
        for (_, _, _, seq), payload in numbered:
            if seq in by_seq:
                raise NotificationError(f"SMS segment {seq} received twice")
            by_seq[seq] = payload
        missing = sorted(set(range(1, total + 1)) - by_seq.keys())
        if missing:
            raise NotificationError(f"SMS segments {missing} of {total} missing")
        pdu = b"".join(by_seq[i] for i in range(1, total + 1))
    if not pdu:
        raise NotificationError("SMS segments carry no data")
    return pdu
