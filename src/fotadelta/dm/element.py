"""The neutral element tree between the SyncML model and its two encodings (XML and WBXML).

An element has a tag, a namespace (SyncML 1.2 or 1.1, or MetInf for Meta's children), and either children
or content. Content is text, or opaque bytes where the encoding carries binary (WBXML opaque
data; the XML codec refuses bytes, the model base64-encodes them for XML)."""

from __future__ import annotations

from dataclasses import dataclass, field

SYNCML_NS = "SYNCML:SYNCML1.2"
SYNCML11_NS = "SYNCML:SYNCML1.1"  # OMA DM 1.1.2 messages use the SyncML 1.1 representation
SYNCML_NAMESPACES = (SYNCML_NS, SYNCML11_NS)
METINF_NS = "syncml:metinf"


class CodecError(ValueError):
    """A message is not well-formed SyncML in its encoding, or exceeds a size limit."""


class LimitError(CodecError):
    """A message is over a size limit: too large as sent, or as decoded."""


@dataclass(slots=True)  # (slots: both codecs make and read tens of elements per message)
class Element:
    tag: str
    children: list[Element] = field(default_factory=list)
    content: str | bytes | None = None
    ns: str = SYNCML_NS

    def child(self, tag: str) -> Element | None:
        """The first child with this tag, if any."""
        for c in self.children:
            if c.tag == tag:
                return c
        return None

    def all(self, tag: str) -> list[Element]:
        return [c for c in self.children if c.tag == tag]

    def text(self, tag: str) -> str | None:
        """The text content of the first child with this tag (bytes decoded as UTF-8)."""
        c = self.child(tag)
        if c is None:
            return None
        if isinstance(c.content, bytes):
            try:
                return c.content.decode()
            except UnicodeDecodeError:
                raise CodecError(f"<{tag}> holds bytes that are not UTF-8 text") from None
        return c.content if c.content is not None else ""
