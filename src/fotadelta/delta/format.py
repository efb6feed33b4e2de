"""The plain patch container (docs/format.md): header, hashes and compressed streams."""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from enum import IntEnum
from itertools import accumulate
from typing import NamedTuple

import xxhash

from fotadelta import _core
from fotadelta.delta.codec import Codec
from fotadelta.errors import PatchError

MAGIC = b"FDLT"
# Version 2 adds the code transform, version 3 a flags byte and the Intel HEX layer
# (docs/format.md). A patch is written with the lowest version that can carry it: version 1
# without either, 2 with a code transform alone, 3 with a layer; so every older reader still
# applies what it could apply before.
PLAIN_VERSION = 1
FORMAT_VERSION = 2
LAYERED_VERSION = 3
_FLAG_CODE = 1
_FLAG_HEX = 2
FINGERPRINT_LEN = 8
DIGEST_LEN = 16
_MAX_VARINT_BYTES = 10
Buffer = bytes | bytearray | memoryview | mmap.mmap
FD_WORD = 4  # csrc/fd_format.h
MAX_IMAGE = (1 << 31) - 1  # the diff takes images below 2 GiB: a patch declaring more is not one of ours


class Kind(IntEnum):
    """What the patch carries."""

    DELTA = 0  # the four record streams against the old image, each compressed on its own
    FULL = 1  # the compressed new image (fallback when a delta would not be smaller)
    SOLID = 2  # the four record streams one after the other, compressed as one


RECORD_STREAMS = ("ctrl", "wmap", "words", "extra")
STREAM_NAMES: dict[Kind, tuple[str, ...]] = {  # after the layout and code streams, when there are
    Kind.DELTA: RECORD_STREAMS,
    Kind.FULL: ("image",),
    Kind.SOLID: ("records",),
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
        out += encode_varint(len(self.moves))
        start = 0
        for m in self.moves:
            out += encode_varint(m.start - start) + encode_varint(_zigzag(m.delta))
            start = m.start
        return bytes(out)

    @classmethod
    def parse(cls, data: bytes, old_size: int, new_size: int) -> CodeTransform:
        """Parse and check against the image sizes (PatchError on anything out of bounds)."""
        r = _Reader(data)
        block_log = r.byte()
        if not CODE_BLOCK_LOG_MIN <= block_log <= CODE_BLOCK_LOG_MAX:
            raise PatchError(f"code block log {block_log} out of range")
        maps = []
        for size in (old_size, new_size):
            count = r.varint()
            if count > CODE_MAX_RANGES:
                raise PatchError(f"{count} code ranges (at most {CODE_MAX_RANGES})")
            ranges, end = [], 0
            for _ in range(count):
                arch = r.byte()
                if arch not in CODE_ARCHS:
                    raise PatchError(f"unknown code architecture {arch}")
                start = end + r.varint()
                length, addr = r.varint(), r.varint()
                if length == 0 or start + length > size:
                    raise PatchError("code range outside its image")
                ranges.append(CodeRange(arch, start, length, addr))
                end = start + length
            maps.append(tuple(ranges))
        count = r.varint()
        if count > CODE_MAX_MOVES:
            raise PatchError(f"{count} code moves (at most {CODE_MAX_MOVES})")
        # Thousands of moves on large images: read in C, checked over whole lists.
        fields, r.pos = _core.varints(data, r.pos, 2 * count)
        gaps, deltas = fields[0::2], fields[1::2]
        if 0 in gaps[1:]:
            raise PatchError("code moves are not in increasing order")
        starts = list(accumulate(gaps))
        if starts and starts[-1] >= 1 << 63:
            raise PatchError("code move out of range")
        moves = list(map(Move, starts, [(d >> 1) ^ -(d & 1) for d in deltas]))
        if r.pos != len(data):
            raise PatchError("unexpected bytes after the code transform")
        return cls(block_log, maps[0], maps[1], tuple(moves))

    def core_args(self) -> tuple[int, tuple[CodeRange, ...], tuple[CodeRange, ...], tuple[Move, ...]]:
        """The form _core.apply_memory/apply_stream take."""
        return self.block_log, self.old_ranges, self.new_ranges, self.moves


# csrc/fd_code.h
CODE_ARCHS = {1: "thumb2", 2: "aarch64", 3: "x86_64", 4: "xtensa", 5: "riscv"}
CODE_MAX_RANGES = 64
CODE_MAX_MOVES = 1 << 20
CODE_BLOCK_LOG_MIN, CODE_BLOCK_LOG_MAX = 8, 16
# Bound on the code stream before it is decoded: the ranges and the most moves, 20 bytes each.
CODE_RAW_MAX = 1 + 2 * (1 + CODE_MAX_RANGES * 31) + _MAX_VARINT_BYTES + CODE_MAX_MOVES * 20


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


@dataclass(frozen=True, slots=True)
class Layer:
    """The payloads an Intel HEX patch's delta is made between (their sizes), and the layout
    that rebuilds the new HEX text from its payload (csrc/fd_hex.h)."""

    old_size: int
    new_size: int
    layout: Stream


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
    code: Stream | None = None  # the encoded CodeTransform of a transformed delta (version 2)
    layer: Layer | None = None  # the HEX layer: the delta is between the payloads (version 3)

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
        if self.layer is not None:
            return LAYERED_VERSION
        return PLAIN_VERSION if self.code is None else FORMAT_VERSION

    def encode(self) -> bytes:
        out = bytearray(MAGIC)
        out += bytes((self.version, self.kind))
        if self.layer is not None:
            out.append((_FLAG_CODE if self.code is not None else 0) | _FLAG_HEX)
        out += encode_varint(self.old_size) + encode_varint(self.new_size)
        out += self.old_fingerprint + self.new_digest
        if self.layer is not None:
            out += encode_varint(self.layer.old_size) + encode_varint(self.layer.new_size)
            _put_stream(out, self.layer.layout)
        for n in self.parts:
            out += encode_varint(n)
        for s in self.streams if self.code is None else (self.code, *self.streams):
            _put_stream(out, s)
        return bytes(out)

    @classmethod
    def parse(cls, data: bytes) -> Patch:
        r = _Reader(bytes(data))
        if r.take(len(MAGIC)) != MAGIC:
            raise PatchError("not a fotadelta patch (bad magic)")
        version = r.byte()
        if version not in (PLAIN_VERSION, FORMAT_VERSION, LAYERED_VERSION):
            raise PatchError(f"unsupported patch format version {version} (this build reads "
                             f"{PLAIN_VERSION} to {LAYERED_VERSION})")
        kind_byte = r.byte()
        kind = _KINDS.get(kind_byte)
        if kind is None:
            raise PatchError(f"unknown patch kind {kind_byte}")
        flags = {PLAIN_VERSION: 0, FORMAT_VERSION: _FLAG_CODE}.get(version)
        if flags is None:
            flags = r.byte()
            if flags & ~(_FLAG_CODE | _FLAG_HEX) or not flags & _FLAG_HEX:
                raise PatchError(f"unknown patch flags {flags:#x}")
        if flags and kind == Kind.FULL:
            raise PatchError("a full image carries no code transform or layer")
        old_size, new_size = r.varint(), r.varint()
        fingerprint, digest = r.take(FINGERPRINT_LEN), r.take(DIGEST_LEN)
        layer = None
        if flags & _FLAG_HEX:
            inner_old, inner_new = r.varint(), r.varint()
            layout = r.stream("layout")
            # Each payload byte is two hex digits of its image; a layout operation stands for
            # a record of 11 characters or more and takes at most 13 bytes of its own.
            if inner_old > old_size // 2 or inner_new > new_size // 2 or layout.raw_len > 2 * new_size + 16:
                raise PatchError("HEX layer sizes do not fit the images")
            layer = Layer(inner_old, inner_new, layout)
        parts = tuple(r.varint() for _ in RECORD_STREAMS) if kind == Kind.SOLID else ()
        code = r.stream("code") if flags & _FLAG_CODE else None
        if code is not None and code.raw_len > CODE_RAW_MAX:
            raise PatchError("code transform stream is implausibly long")
        streams = tuple(r.stream(name) for name in STREAM_NAMES[kind])
        if r.pos != len(data):
            raise PatchError(f"{len(data) - r.pos} unexpected bytes after the last stream")
        patch = cls(kind, old_size, new_size, fingerprint, digest, streams, parts, code, layer)
        patch._check_lengths()
        return patch

    def _check_lengths(self) -> None:
        if self.old_size > MAX_IMAGE or self.new_size > MAX_IMAGE:
            raise PatchError("patch declares an image of 2 GiB or more")
        if self.kind == Kind.FULL:
            if self.streams[0].raw_len != self.new_size:
                raise PatchError("image stream length differs from the new image size")
            return
        if self.kind == Kind.SOLID and self.streams[0].raw_len != sum(self.parts):
            raise PatchError("record stream length differs from the sum of its parts")
        old_size, new_size = self.inner_sizes
        ctrl, wmap, words, extra = self.record_lengths
        if extra > new_size or words > new_size - extra:
            raise PatchError("data streams are longer than the new image")
        # One varint of at most 10 bytes per changed word.
        if wmap > _MAX_VARINT_BYTES * (new_size // FD_WORD + 1):
            raise PatchError("word map stream is implausibly long")
        # A record is at most three 10-byte varints and produces at least one byte.
        if ctrl > 3 * _MAX_VARINT_BYTES * new_size:
            raise PatchError("control stream is implausibly long")
        # ...and copies at most the whole old image: a bound checked before anything is allocated.
        if new_size > extra + ctrl // 3 * old_size:
            raise PatchError("new image size is larger than the records can produce")


def _put_stream(out: bytearray, s: Stream) -> None:
    out.append(s.codec)
    out += encode_varint(s.raw_len) + encode_varint(len(s.data))
    out += s.data


def source_fingerprint(image: Buffer) -> bytes:
    """XXH3-64 of the source image: tells a wrong source image before any work is done."""
    return xxhash.xxh3_64_digest(image)


def target_digest(image: Buffer) -> bytes:
    """XXH3-128 of the new image, checked after apply.

    It guards against corruption and wrong sources, not forgery: update packages sign
    SHA-256 hashes of both images (docs/format.md)."""
    return xxhash.xxh3_128_digest(image)


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        pos = self.pos
        if n > len(self.data) - pos:
            raise PatchError("patch is truncated")
        self.pos = pos + n
        return self.data[pos:pos + n]

    def view(self, n: int) -> memoryview:
        """The next n bytes without copying them."""
        pos = self.pos
        if n > len(self.data) - pos:
            raise PatchError("patch is truncated")
        self.pos = pos + n
        return memoryview(self.data)[pos:pos + n]

    def byte(self) -> int:
        pos = self.pos
        if pos >= len(self.data):
            raise PatchError("patch is truncated")
        self.pos = pos + 1
        return self.data[pos]

    def stream(self, name: str) -> Stream:
        codec_byte = self.byte()
        codec = _CODECS.get(codec_byte)
        if codec is None:
            raise PatchError(f"unknown codec {codec_byte} for stream {name}")
        raw_len, stored_len = self.varint(), self.varint()
        return Stream(codec, raw_len, self.view(stored_len))

    def varint(self) -> int:
        data, pos, value, shift = self.data, self.pos, 0, 0
        while shift < 7 * _MAX_VARINT_BYTES:
            if pos >= len(data):
                raise PatchError("patch is truncated")
            b = data[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if value >= 1 << 63:
                    break
                self.pos = pos
                return value
        raise PatchError("malformed length field")
