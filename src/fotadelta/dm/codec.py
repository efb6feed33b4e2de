"""Encoding and decoding whole SyncML DM messages, chosen by MIME type."""

from __future__ import annotations

from enum import Enum

from fotadelta.dm import wbxml, xml
from fotadelta.dm.element import CodecError, LimitError
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
    return xml.encode(msg)


def decode(data: bytes, encoding: Encoding, *, max_size: int = 1 << 20, max_decoded: int | None = None) -> Message:
    """The message in data; CodecError if it is malformed, LimitError (a CodecError) if it is over
    max_size bytes or decodes to more than max_decoded characters and bytes of content."""
    codec = wbxml if encoding is Encoding.WBXML else xml
    return from_element(codec.decode(data, max_size=max_size, max_decoded=max_decoded))


__all__ = ["CodecError", "LimitError", "Encoding", "XML_TYPE", "WBXML_TYPE", "encoding_of", "encode", "decode"]
