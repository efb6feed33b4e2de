"""The plain patch container (docs/format.md): header, hashes and compressed streams."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

import xxhash

from fotadelta import _core
from fotadelta.delta.codec import Buffer, Codec

MAGIC = b"FDLT"
# Version 2 adds the code transform, version 3 a flags byte for the Intel HEX layer and the
# differences grouped by byte or as sums, version 4 a 64-bit new digest instead of a 128-bit
# one, with the flags byte whatever it holds, and the UF2 layer, version 5 a 32-bit fingerprint
# and no length the rest of the header implies (docs/format.md). Patches are written as version
# 5; versions 1 to 4 are still read, and written where a Patch carries their fingerprint and
# digest lengths.
PLAIN_VERSION = 1
FORMAT_VERSION = 2
LAYERED_VERSION = 3
COMPACT_VERSION = 4
IMPLIED_VERSION = 5
_FLAG_CODE = 1
_FLAG_HEX = 2
_FLAG_BYTES = 4
_FLAG_SUMS = 8
_FLAG_SPAN_SHIFT = 4  # two bits: a span's bytes less one (version 4, with _FLAG_SUMS)
_FLAG_SPAN = 3 << _FLAG_SPAN_SHIFT
_FLAG_UF2 = 0x40  # version 4
_FLAG_RELOC = 0x80  # version 5, not with _FLAG_CODE
FINGERPRINT_LEN = 4  # version 5's; versions 1 to 4 carry LONG_FINGERPRINT_LEN
LONG_FINGERPRINT_LEN = 8
DIGEST_LEN = 8  # from version 4 on; versions 1 to 3 carry LONG_DIGEST_LEN
LONG_DIGEST_LEN = 16


class Kind(IntEnum):
    """What the patch carries."""

    DELTA = 0  # the four record streams against the old image, each compressed on its own
    FULL = 1  # the compressed new image (fallback when a delta would not be smaller)
    SOLID = 2  # the four record streams one after the other, compressed as one
    REFERENCED = 3  # the new image, zstd- or LZMA-coded with the old image as its prefix (codec.compress_referenced*)


class Grouping(IntEnum):
    """How a delta's differences are grouped (csrc/fd_format.h FD_GROUP_*, docs/format.md)."""

    WORDS = 0  # per changed 4-byte word, the differences of its bytes
    BYTES = 1  # per changed byte, its difference (a flag: version 3 or 4)
    SUMS = 2  # per changed 4-byte word, the little-endian sum that turns old into new (a flag)
    SPANS = 3  # per changed span of Patch.span bytes from any byte, its sum (flags: version 4)


_GROUPING_FLAGS = {Grouping.WORDS: 0, Grouping.BYTES: _FLAG_BYTES, Grouping.SUMS: _FLAG_SUMS,
                   Grouping.SPANS: _FLAG_SUMS}
SPAN_MIN, SPAN_MAX = _core.SPAN_MIN, _core.SPAN_MAX
RECORD_STREAMS = ("ctrl", "wmap", "words", "extra")
STREAM_NAMES: dict[Kind, tuple[str, ...]] = {  # after the layout and code streams, when there are
    Kind.DELTA: RECORD_STREAMS,
    Kind.FULL: ("image",),
    Kind.SOLID: ("records",),
    Kind.REFERENCED: ("image",),
}


class CodeRange(NamedTuple):
    """Code of one architecture in an image (csrc/fd_code.h): offset, length, run address."""

    arch: int
    start: int
    length: int
    addr: int


class Move(NamedTuple):
    """Old targets from `start` on (up to the next move) lie `delta` bytes further in the new image."""

    start: int
    delta: int


@dataclass(frozen=True, slots=True)
class CodeTransform:
    """What a transformed delta was made between: both images' code ranges, the transform's
    block size and the moves applied to the old image's targets."""

    block_log: int
    old_ranges: tuple[CodeRange, ...]
    new_ranges: tuple[CodeRange, ...]
    moves: tuple[Move, ...] = ()

    def encode(self) -> bytes:
        out = bytearray((self.block_log,))
        for ranges in (self.old_ranges, self.new_ranges):
            out += encode_varint(len(ranges))
            end = 0
            for r in ranges:
                out.append(r.arch)
                out += encode_varint(r.start - end) + encode_varint(r.length) + encode_varint(r.addr)
                end = r.start + r.length
        return bytes(out + _encode_moves(self.moves))

    @classmethod
    def parse(cls, data: bytes, old_size: int, new_size: int) -> CodeTransform:
        """Parse and check against the image sizes (PatchError on anything out of bounds)."""
        return cls.of(_core.CodePlan(data, old_size, new_size))

    @classmethod
    def of(cls, plan: _core.CodePlan) -> CodeTransform:
        """The transform a parsed plan (csrc/fd_patch.h) holds."""
        return cls(plan.block_log, tuple(map(CodeRange._make, plan.old_ranges)),
                   tuple(map(CodeRange._make, plan.new_ranges)), tuple(map(Move._make, plan.moves)))


@dataclass(frozen=True, slots=True)
class Relocation:
    """What a delta with relocated copies relocates them by (csrc/fd_reloc.h): the architecture
    of the code and the moves, at old-image offsets."""

    arch: int
    moves: tuple[Move, ...] = ()

    def encode(self) -> bytes:
        return bytes((self.arch,)) + _encode_moves(self.moves)


# csrc/fd_code.h
CODE_ARCHS = {1: "thumb2", 2: "aarch64", 3: "x86_64", 4: "xtensa", 5: "riscv", 6: "power", 7: "sparc", 8: "x86_32",
              9: "a32"}
CODE_MAX_RANGES = 64
CODE_MAX_MOVES = 1 << 20
CODE_BLOCK_LOG_MIN, CODE_BLOCK_LOG_MAX = 8, 16


def _encode_moves(moves: tuple[Move, ...]) -> bytes:
    """Moves as the code transform and the relocation plan carry them: their count, then each
    start as the gap from the one before and its delta zigzagged."""
    out = bytearray(encode_varint(len(moves)))
    start = 0
    for m in moves:
        out += encode_varint(m.start - start) + encode_varint(_zigzag(m.delta))
        start = m.start
    return bytes(out)


def _zigzag(v: int) -> int:
    """Signed to unsigned, small magnitudes small (v within +-2**62 keeps it a valid varint)."""
    return (v << 1) ^ (v >> 63)


# Enum lookups by value; calling the Enum costs more than the rest of a small patch's parse.
_KINDS = {k.value: k for k in Kind}
_CODECS = {c.value: c for c in Codec}


class Stream(NamedTuple):
    """One compressed stream and the length it decodes to (data: a view into the parsed patch)."""

    codec: Codec
    raw_len: int
    data: bytes | memoryview


class Container(IntEnum):
    """The file format of a layered patch's images (the flag that names it): the delta is made
    between the bytes they program, their payloads."""

    HEX = _FLAG_HEX  # Intel HEX text (csrc/fd_hex.h)
    UF2 = _FLAG_UF2  # UF2 blocks (csrc/fd_uf2.h; version 4)


@dataclass(frozen=True, slots=True)
class Layer:
    """The payloads a layered patch's delta is made between (their sizes), and the layout that
    rebuilds the new image from its payload."""

    old_size: int
    new_size: int
    layout: Stream
    container: Container = Container.HEX


@dataclass(frozen=True, slots=True)
class Patch:
    """A parsed patch; parse() checks every length and field."""

    kind: Kind
    old_size: int
    new_size: int
    old_fingerprint: bytes
    new_digest: bytes
    streams: tuple[Stream, ...]
    parts: tuple[int, ...] = ()  # SOLID: raw lengths of the four record streams in its one stream
    code: Stream | None = None  # the encoded CodeTransform of a transformed delta (version 2 or a flag)
    layer: Layer | None = None  # the HEX or UF2 layer: the delta is between the payloads (a flag)
    grouping: Grouping = Grouping.WORDS  # of the differences
    span: int = 0  # Grouping.SPANS: bytes per span (SPAN_MIN to SPAN_MAX)
    relocation: Stream | None = None  # the encoded Relocation of a delta with relocated copies (a flag)

    @property
    def record_lengths(self) -> tuple[int, ...]:
        """Raw lengths of ctrl, wmap, words and extra (deltas only)."""
        return self.parts if self.kind == Kind.SOLID else tuple(s.raw_len for s in self.streams)

    @property
    def inner_sizes(self) -> tuple[int, int]:
        """Sizes of what the records turn into what: the payloads of a layered patch, else the
        images."""
        return (self.layer.old_size, self.layer.new_size) if self.layer else (self.old_size, self.new_size)

    @property
    def version(self) -> int:
        if len(self.old_fingerprint) == FINGERPRINT_LEN:
            return IMPLIED_VERSION
        if len(self.new_digest) == DIGEST_LEN:
            return COMPACT_VERSION
        if self.layer is not None or self.grouping != Grouping.WORDS:
            return LAYERED_VERSION
        return PLAIN_VERSION if self.code is None else FORMAT_VERSION

    def encode(self) -> bytes:
        version = self.version
        implied = version == IMPLIED_VERSION
        if implied:
            self._check_implied()
        out = bytearray(MAGIC)
        out += bytes((version, self.kind))
        if (self.grouping == Grouping.SPANS) != (SPAN_MIN <= self.span <= SPAN_MAX and version >= COMPACT_VERSION):
            raise ValueError(f"span {self.span} with grouping {self.grouping.name} in format version {version}")
        if self.layer is not None and self.layer.container == Container.UF2 and version < COMPACT_VERSION:
            raise ValueError(f"a UF2 layer in format version {version}")
        if self.relocation is not None and (version < IMPLIED_VERSION or self.code is not None):
            raise ValueError(f"relocated copies in format version {version}, or with a code transform")
        if version >= LAYERED_VERSION:
            out.append((_FLAG_CODE if self.code is not None else 0) | (self.layer.container if self.layer else 0)
                       | _GROUPING_FLAGS[self.grouping] | (self.span - 1 << _FLAG_SPAN_SHIFT if self.span else 0)
                       | (_FLAG_RELOC if self.relocation is not None else 0))
        out += encode_varint(self.old_size) + encode_varint(self.new_size)
        out += self.old_fingerprint + self.new_digest
        if self.layer is not None:
            out += encode_varint(self.layer.old_size) + encode_varint(self.layer.new_size)
            _put_stream(out, self.layer.layout, implied)
        for n in self.parts:
            out += encode_varint(n)
        for plan in (self.code, self.relocation):
            if plan is not None:
                _put_stream(out, plan, implied)
        # The raw length of the one stream of a full, referenced or solid patch is implied: the
        # new size, the sum of the parts.
        for s in self.streams:
            _put_stream(out, s, implied, raw_implied=self.kind != Kind.DELTA)
        return bytes(out)

    def _check_implied(self) -> None:
        """ValueError unless the patch can be written as version 5: a 64-bit digest, and every
        length version 5 leaves out the one the header implies (written, a length that
        disagreed would make another patch)."""
        if len(self.new_digest) != DIGEST_LEN:
            raise ValueError(f"a {len(self.new_digest)}-byte digest in format version {IMPLIED_VERSION}")
        implied_raw = sum(self.parts) if self.kind == Kind.SOLID else self.new_size
        if self.kind != Kind.DELTA and self.streams[0].raw_len != implied_raw:
            raise ValueError(f"a {self.kind.name.lower()} stream of raw length {self.streams[0].raw_len}, "
                             f"not {implied_raw}, in format version 5")
        optional = (self.code, self.relocation, self.layer.layout if self.layer is not None else None)
        streams = (*self.streams, *(s for s in optional if s is not None))
        if any(s.codec == Codec.STORED and len(s.data) != s.raw_len for s in streams):
            raise ValueError("a stored stream whose length is not its raw length, in format version 5")

    @classmethod
    def parse(cls, data: bytes) -> Patch:
        """Parse and check every field and length (csrc/fd_patch.h); PatchError on anything
        malformed. The streams are views into the patch."""
        data = bytes(data)  # a caller's bytearray may not change under the views
        (version, kind, flags, old_size, new_size, fingerprint, fingerprint_len, digest, digest_len, inner, parts,
         layout, code, streams) = _core.parse_patch(data)
        view = memoryview(data)

        def stream(s: tuple[int, int, int, int]) -> Stream:
            codec, raw_len, at, n = s
            return Stream(_CODECS[codec], raw_len, view[at:at + n])
        layer = None if inner is None or layout is None else Layer(
            *inner, stream(layout), Container.UF2 if flags & _FLAG_UF2 else Container.HEX)
        plan = None if code is None else stream(code)
        relocated = bool(flags & _FLAG_RELOC)
        return cls(_KINDS[kind], old_size, new_size, data[fingerprint:fingerprint + fingerprint_len],
                   data[digest:digest + digest_len], tuple(map(stream, streams)), parts,
                   None if relocated else plan, layer, *_grouping(flags), relocation=plan if relocated else None)


def _grouping(flags: int) -> tuple[Grouping, int]:
    """The grouping of the differences a (checked) flags byte names, and the bytes per span."""
    if flags & _FLAG_SPAN:
        return Grouping.SPANS, (flags >> _FLAG_SPAN_SHIFT & 3) + 1
    return Grouping.BYTES if flags & _FLAG_BYTES else Grouping.SUMS if flags & _FLAG_SUMS else Grouping.WORDS, 0


def _put_stream(out: bytearray, s: Stream, implied: bool = False, raw_implied: bool = False) -> None:
    """A stream's codec, lengths and bytes; implied (version 5): without the lengths the header
    implies, the raw one where raw_implied and the stored one of a stored stream."""
    out.append(s.codec)
    if not (implied and raw_implied):
        out += encode_varint(s.raw_len)
    if not (implied and s.codec == Codec.STORED):
        out += encode_varint(len(s.data))
    out += s.data


def source_fingerprint(image: Buffer, length: int = FINGERPRINT_LEN) -> bytes:
    """The first length bytes of XXH3-64 of the source image: tells a wrong source image before
    any work is done (FINGERPRINT_LEN from version 5 on, as the target digest guards the result:
    a wrong source that passed 32 bits would still fail it)."""
    return xxhash.xxh3_64_digest(image)[:length]


def target_digest(image: Buffer, length: int = DIGEST_LEN) -> bytes:
    """XXH3-64 of the new image (XXH3-128 for a length of LONG_DIGEST_LEN, versions 1 to 3),
    checked after apply.

    It guards against corruption and wrong sources, not forgery: update packages sign
    SHA-256 hashes of both images (docs/format.md)."""
    return _TARGET_HASHES[length][0](image)


def target_hasher(length: int) -> xxhash.xxh3_64 | xxhash.xxh3_128:
    """The hasher of target_digest() for a digest of length bytes (streaming apply feeds it)."""
    return _TARGET_HASHES[length][1]()


# By digest length: the one-call digest (a small patch's apply is a few microseconds, and a
# hasher object costs a fraction of one) and the hasher.
_TARGET_HASHES: dict[int, tuple[Callable[[Buffer], bytes], type[xxhash.xxh3_64] | type[xxhash.xxh3_128]]] = {
    DIGEST_LEN: (xxhash.xxh3_64_digest, xxhash.xxh3_64),
    LONG_DIGEST_LEN: (xxhash.xxh3_128_digest, xxhash.xxh3_128),
}


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
