"""Encoding and decoding whole SyncML DM messages, chosen by MIME type."""

from __future__ import annotations

from enum import Enum

from fotadelta.dm import wbxml, xml
from fotadelta.dm.element import CodecError
from fotadelta.dm.model import Message, from_element, to_element

XML_TYPE = "application/vnd.syncml.dm+xml"
WBXML_TYPE = "application/vnd.syncml.dm+wbxml"
# Deployed clients sometimes send the data-sync types; the message inside is the same.
_ALIASES = {XML_TYPE: XML_TYPE, WBXML_TYPE: WBXML_TYPE,
            "application/vnd.syncml+xml": XML_TYPE, "application/vnd.syncml+wbxml": WBXML_TYPE}


class Encoding(Enum):
    XML = XML_TYPE
    WBXML = WBXML_TYPE

    @property
    def content_type(self) -> str:
        return self.value


def encoding_of(content_type: str | None) -> Encoding:
    """The encoding an HTTP Content-Type names; CodecError for anything that is not SyncML DM."""
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime not in _ALIASES:
        raise CodecError(f"unsupported content type {content_type!r}")
    return Encoding(_ALIASES[mime])


def encode(msg: Message, encoding: Encoding) -> bytes:
    if encoding is Encoding.WBXML:
        return wbxml.encode(to_element(msg, binary=True))
    return xml.encode(to_element(msg, binary=False))


def decode(data: bytes, encoding: Encoding, *, max_size: int = 1 << 20) -> Message:
    root = wbxml.decode(data, max_size=max_size) if encoding is Encoding.WBXML else xml.decode(data, max_size=max_size)
    return from_element(root)


__all__ = ["CodecError", "Encoding", "XML_TYPE", "WBXML_TYPE", "encoding_of", "encode", "decode"]
