"""The plain patch container (docs/format.md): header, hashes and compressed streams."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from fotadelta.delta.codec import Codec
from fotadelta.errors import PatchError

MAGIC = b"FDLT"
FORMAT_VERSION = 1
FINGERPRINT_LEN = 8
SHA256_LEN = 32
_MAX_VARINT_BYTES = 10
FD_WORD = 4  # csrc/fd_format.h


class Kind(IntEnum):
    """What the patch carries."""

    DELTA = 0  # record streams against the old image
    FULL = 1  # the compressed new image (fallback when a delta would not be smaller)


STREAM_NAMES: dict[Kind, tuple[str, ...]] = {
    Kind.DELTA: ("ctrl", "wmap", "words", "extra"),
    Kind.FULL: ("image",),
}


@dataclass(frozen=True)
class Stream:
    """One compressed stream and the length it decodes to."""

    codec: Codec
    raw_len: int
    data: bytes


@dataclass(frozen=True)
class Patch:
    """A parsed patch; parse() checks every length and field."""

    kind: Kind
    old_size: int
    new_size: int
    old_fingerprint: bytes
    new_sha256: bytes
    streams: tuple[Stream, ...]

    def encode(self) -> bytes:
        out = bytearray(MAGIC)
        out += bytes((FORMAT_VERSION, self.kind))
        out += encode_varint(self.old_size) + encode_varint(self.new_size)
        out += self.old_fingerprint + self.new_sha256
        for s in self.streams:
            out.append(s.codec)
            out += encode_varint(s.raw_len) + encode_varint(len(s.data)) + s.data
        return bytes(out)

    @classmethod
    def parse(cls, data: bytes) -> Patch:
        r = _Reader(data)
        if r.take(len(MAGIC)) != MAGIC:
            raise PatchError("not a fotadelta patch (bad magic)")
        version = r.byte()
        if version != FORMAT_VERSION:
            raise PatchError(f"unsupported patch format version {version} (this build reads {FORMAT_VERSION})")
        kind_byte = r.byte()
        try:
            kind = Kind(kind_byte)
        except ValueError:
            raise PatchError(f"unknown patch kind {kind_byte}") from None
        old_size, new_size = r.varint(), r.varint()
        fingerprint, new_sha = r.take(FINGERPRINT_LEN), r.take(SHA256_LEN)
        streams = []
        for name in STREAM_NAMES[kind]:
            codec_byte = r.byte()
            try:
                codec = Codec(codec_byte)
            except ValueError:
                raise PatchError(f"unknown codec {codec_byte} for stream {name}") from None
            raw_len, stored_len = r.varint(), r.varint()
            streams.append(Stream(codec, raw_len, r.take(stored_len)))
        if r.pos != len(data):
            raise PatchError(f"{len(data) - r.pos} unexpected bytes after the last stream")
        patch = cls(kind, old_size, new_size, fingerprint, new_sha, tuple(streams))
        patch._check_lengths()
        return patch

    def _check_lengths(self) -> None:
        if self.kind == Kind.FULL:
            if self.streams[0].raw_len != self.new_size:
                raise PatchError("image stream length differs from the new image size")
            return
        ctrl, wmap, words, extra = self.streams
        if extra.raw_len > self.new_size or words.raw_len > self.new_size - extra.raw_len:
            raise PatchError("data streams are longer than the new image")
        # One varint of at most 10 bytes per changed word.
        if wmap.raw_len > _MAX_VARINT_BYTES * (self.new_size // FD_WORD + 1):
            raise PatchError("word map stream is implausibly long")
        # A record is at most three 10-byte varints and produces at least one byte.
        if ctrl.raw_len > 3 * _MAX_VARINT_BYTES * self.new_size:
            raise PatchError("control stream is implausibly long")


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
        if n > len(self.data) - self.pos:
            raise PatchError("patch is truncated")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return bytes(chunk)

    def byte(self) -> int:
        return self.take(1)[0]

    def varint(self) -> int:
        value = 0
        for i in range(_MAX_VARINT_BYTES):
            b = self.byte()
            value |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                if value >= 1 << 63:
                    break
                return value
        raise PatchError("malformed length field")
