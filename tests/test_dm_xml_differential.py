"""The XML decoder against the one it replaced: expat's events, one Python call each, building the element tree.
Over encoded messages, hand-made edge cases (DTDs, entities, encodings, namespaces, depth, mixed content) and
seeded mutations of them, both accept the same inputs with equal trees and refuse the rest with the same error
class (CodecError, or LimitError for size)."""

from __future__ import annotations

import random
from xml.parsers import expat

import pytest

from fotadelta.dm import xml
from fotadelta.dm.codec import Encoding, encode
from fotadelta.dm.element import CodecError, Element, LimitError

from test_dm_model import every_command, message


def reference_decode(data: bytes, *, max_size: int = 1 << 20, max_decoded: int | None = None) -> Element:
    """The previous decoder (the oracle), kept as it was."""
    if len(data) > max_size:
        raise LimitError("too large")
    budget = [max_size if max_decoded is None else max_decoded]
    stack: list[Element] = []
    roots: list[Element] = []

    def start(name: str, _attributes: object) -> None:
        ns, _, tag = name.rpartition("}")
        element = Element(tag, [], None, xml._namespace(ns))
        if stack:
            if len(stack) > xml.MAX_DEPTH:
                raise CodecError("too deep")
            parent = stack[-1]
            if parent.content is not None:
                if isinstance(parent.content, str) and parent.content.strip():
                    raise CodecError("mixed")
                parent.content = None
            parent.children.append(element)
        else:
            roots.append(element)
        stack.append(element)

    def text(piece: str) -> None:
        if stack:
            element = stack[-1]
            element.content = element.content + piece if isinstance(element.content, str) else piece
            budget[0] -= len(piece)

    def end(_name: str) -> None:
        element = stack.pop()
        if element.content is not None:
            if element.children:
                if isinstance(element.content, str) and element.content.strip():
                    raise CodecError("mixed")
                element.content = None
            elif not element.content:
                element.content = None

    def refuse(*_: object) -> None:
        raise CodecError("a DTD")

    parser = expat.ParserCreate(namespace_separator="}")
    parser.buffer_text = True
    parser.buffer_size = max(len(data), 1)
    parser.ordered_attributes = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(data, True)
    except CodecError:
        raise
    except (expat.ExpatError, ValueError, LookupError):
        raise CodecError("not well-formed") from None
    if budget[0] < 0:
        raise LimitError("too much text")
    return roots[0]


def outcome(decoder: object, data: bytes, limits: dict[str, int]) -> tuple[str, Element | None]:
    assert callable(decoder)
    try:
        return "ok", decoder(data, **limits)
    except LimitError:
        return "limit", None
    except CodecError:
        return "codec", None


def nested(depth: int, inner: bytes) -> bytes:
    return b"<SyncML>" * depth + inner + b"</SyncML>" * depth


SEEDS = [encode(message([cmd]), Encoding.XML) for cmd in every_command()] + [
    encode(message(every_command()), Encoding.XML),
    b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "yy">]><a>&x;</a>', b"<!DOCTYPE a><a/>", b"<a>&x;</a>",
    b"<a> <b>x</b> </a>", b"<a>t<b>x</b></a>", b"<a><b>x</b>t</a>", b"<a><!--c--> <b>x<!--y-->z</b><![CDATA[ ]]></a>",
    b'<a xmlns="syncml:METINF"><b xmlns="syncml:syncml1.1">1</b><c xmlns="urn:x}y">2</c><d/></a>',
    b'<?xml version="1.0" encoding="ISO-8859-1"?><a>\xe9</a>', b'<?xml version="1.0" encoding="cp1252"?><a>\x80</a>',
    b'<?xml version="1.0" encoding="nope"?><a/>', '<?xml version="1.0" encoding="UTF-16"?><a>x</a>'.encode("utf-16"),
    b"\xef\xbb\xbf<a>\xc2\xa0<b/></a>", b"<a>\xc2\xa0</a>", b"", b"<a", b"<a/><b/>", b" <a/> ", b'<p:a xmlns:p="u"/>',
    b"<p:a/>", b"<?pi x?><a/>", b"<a>&#0;</a>", b"<a>&#13;&#10;x\r\ny</a>", b"<a>&amp;&lt;</a>",
    *(nested(d, inner) for d in (32, 33, 34, 35) for inner in (b"", b"x", b"<b/>", b" <b/> ")),
]
TOKENS = [b"<", b">", b"/", b"&", b"&amp;", b"<!--", b"-->", b"<![CDATA[", b"]]>", b"<!DOCTYPE x>", b" ", b"\xc2\xa0",
          b"\xff", b"<x>", b"</x>", b"<Meta>", b"</Meta>", b'xmlns="a"', b"\r", b"\x00", b"<?pi?>", b"}", b"<a:b>"]
# Edits after a tag's end that keep a document well-formed, so that mutants are also accepted.
BENIGN = [b" ", b"\n\t", b"<!--x-->", b"\xc2\xa0", b"<?p?>", b"<![CDATA[ ]]>", b"<Extra/>", b"text", b"<![CDATA[t]]>",
          b"&amp;", b"&#32;", b"<N xmlns='syncml:metinf'>1</N>"]


def mutant(rng: random.Random) -> bytes:
    data = bytearray(rng.choice(SEEDS))
    for _ in range(rng.randint(1, 4)):
        op, pos = rng.randrange(6), rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            data[pos:pos] = rng.choice(TOKENS)
        elif op == 2:
            del data[pos:pos + rng.randint(1, 20)]
        elif op == 3:  # a slice repeated elsewhere: elements move and duplicate
            start = rng.randrange(len(data) + 1)
            data[pos:pos] = data[start:start + rng.randint(1, 60)]
        else:
            ends = [i + 1 for i, byte in enumerate(data) if byte == ord(">")]
            if ends:
                end = rng.choice(ends)
                data[end:end] = rng.choice(BENIGN)
    return bytes(data)


@pytest.mark.parametrize("seed", range(4))
def test_the_decoder_agrees_with_the_previous_one(seed: int) -> None:
    rng = random.Random(seed)
    inputs = SEEDS + [mutant(rng) for _ in range(2500)]
    seen = {"ok": 0, "codec": 0, "limit": 0}
    for data in inputs:
        limits = rng.choice([{}, {"max_decoded": rng.randint(0, 3000)}, {"max_size": rng.randint(0, 3000)}])
        expected = outcome(reference_decode, data, limits)
        assert outcome(xml.decode, data, limits) == expected, (data[:200], limits)
        seen[expected[0]] += 1
    assert min(seen.values()) >= 50, seen  # (each outcome is exercised)
