"""Entropy coding of the delta streams: each stream takes the smallest of a few codecs."""

from __future__ import annotations

import lzma
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import zstandard

from fotadelta.errors import PatchError


class Codec(IntEnum):
    """Codec identifiers as stored in the patch (one byte per stream)."""

    STORED = 0
    ZSTD = 1
    LZMA = 2


# LZMA literal/position context bits (lc, lp, pb) worth trying: little or no
# context suits varint streams, 4- and 2-byte alignment suits 32-bit and Thumb
# code, and the default.
Shape = tuple[int, int, int]
_LZMA_SHAPES: tuple[Shape, ...] = ((1, 0, 0), (0, 2, 2), (0, 0, 0), (1, 1, 1), (3, 0, 2))
_LZMA_MAX_DICT = 1 << 27
# Streams this long or longer are coded with a shorter match search (nice_len 128 instead of
# preset 9e's 273): about 1% larger, several times faster.
_LARGE_STREAM = 1 << 14
# ...and streams this long the hash-chain match finder, for memory (see _lzma_filters).
_HUGE_STREAM = 1 << 23
# ...and so do lean streams (a full image) from this length, where memory starts to count.
_LEAN_STREAM = 1 << 20
# Shapes are ranked by a fast LZMA pass (preset 1) over at most this much of the stream; on
# ../shared/corpus the pick cost 0.2-0.3% against compressing every shape in full, at a tenth
# of the time.
_ESTIMATE_SAMPLE = 1 << 17
_ESTIMATE_PIECES = 8
_ESTIMATE_PRESET = 1
# Below this length zstd (whose frames carry less overhead) is also tried, for real: it costs
# well under a millisecond there.
_ZSTD_MAX = 1 << 12


def _dict_size(raw_len: int) -> int:
    """LZMA2 dictionary size; derived from the stream length so it need not be stored."""
    size = 1 << 12
    while size < raw_len and size < _LZMA_MAX_DICT:
        size <<= 1
    return size


def _lzma_filters(raw_len: int, shape: Shape | None = None, preset: int | None = None,
                  lean: bool = False) -> list[dict[str, int]]:
    """Decoder filters (shape None), else encoder ones. The encoder's dictionary is only as long
    as the stream (the decoder's, a power of two, may be larger: it never sees a longer match
    distance), and long streams use the hash-chain match finder: encoder memory is then about
    7.5 bytes per stream byte instead of up to 23 (docs/format.md)."""
    f = {"id": lzma.FILTER_LZMA2, "dict_size": _dict_size(raw_len)}
    if shape is not None:
        lc, lp, pb = shape
        f.update(preset=9 | lzma.PRESET_EXTREME, lc=lc, lp=lp, pb=pb)
        if raw_len >= _LARGE_STREAM:
            f.update(preset=9, nice_len=128)
        if preset is not None:
            f.update(preset=preset)
        f["dict_size"] = min(max(raw_len, 1 << 12), _LZMA_MAX_DICT)
        if raw_len >= _HUGE_STREAM or (lean and raw_len >= _LEAN_STREAM):
            f["mf"] = lzma.MF_HC4
    return [f]


def _zstd_params() -> zstandard.ZstdCompressionParameters:
    return zstandard.ZstdCompressionParameters.from_level(
        22, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_checksum=0, write_content_size=0,
        write_dict_id=0)


def _lzma(data: bytes, shape: Shape, preset: int | None = None, lean: bool = False) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(len(data), shape, preset, lean))


def lzma_best(data: bytes) -> bytes:
    """Raw LZMA2 with the best of the context shapes: for a single stream that must be LZMA."""
    return min((_lzma(data, shape) for shape in _LZMA_SHAPES), key=len)


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(compression_params=_zstd_params()).compress(data)


@dataclass(frozen=True)
class Estimate:
    """The LZMA shape a stream should be coded with and the bytes it is expected to take."""

    shape: Shape
    size: int


def _sample(data: bytes) -> bytes:
    """At most _ESTIMATE_SAMPLE bytes of data: all of it, or evenly spread 16-byte-aligned pieces
    (an image's parts differ: code, tables, compressed volumes, padding)."""
    if len(data) <= _ESTIMATE_SAMPLE:
        return data
    piece = _ESTIMATE_SAMPLE // _ESTIMATE_PIECES
    stride = (len(data) - piece) // (_ESTIMATE_PIECES - 1) & ~15
    return b"".join(data[i * stride:i * stride + piece] for i in range(_ESTIMATE_PIECES))


def estimate(data: bytes) -> Estimate:
    """Rank the LZMA shapes on a fast pass over a sample of the stream; the size is scaled to
    the whole stream (an estimate for choices, never written). A size of len(data) means
    that the stream does not compress."""
    if not data:
        return Estimate(_LZMA_SHAPES[0], 0)
    sample = _sample(data)
    sizes = {shape: len(_lzma(sample, shape, _ESTIMATE_PRESET)) for shape in _LZMA_SHAPES}
    shape = min(sizes, key=lambda k: sizes[k])
    return Estimate(shape, min(len(data), sizes[shape] * len(data) // len(sample)))


def compress(data: bytes, guess: Estimate, lean: bool = False) -> tuple[Codec, bytes]:
    """Code a stream once, with LZMA of the estimated shape; short streams also try zstd. A
    stream estimated or found not to shrink is stored. lean: hash chains from 1 MiB on, for a
    stream as long as the image (7.5 bytes of encoder memory per byte instead of 11.5)."""
    if guess.size >= len(data):
        return Codec.STORED, data
    best = (Codec.LZMA, _lzma(data, guess.shape, lean=lean))
    if len(data) < _ZSTD_MAX:
        packed = _zstd(data)
        if len(packed) < len(best[1]):
            best = (Codec.ZSTD, packed)
    return best if len(best[1]) < len(data) else (Codec.STORED, data)


def estimate_streams(streams: Iterable[bytes], pool: ThreadPoolExecutor | None) -> list[Estimate]:
    """estimate() of each stream, in parallel when a pool is given."""
    return list(pool.map(estimate, streams) if pool else map(estimate, streams))


def compress_streams(streams: Iterable[bytes], guesses: Iterable[Estimate],
                     pool: ThreadPoolExecutor | None) -> list[tuple[Codec, bytes]]:
    """compress() of each stream with its estimate; in parallel, longest first, with a pool."""
    streams, guesses = list(streams), list(guesses)
    if pool is None:
        return [compress(data, guess) for data, guess in zip(streams, guesses)]
    order = sorted(range(len(streams)), key=lambda i: -len(streams[i]))
    futures = {i: pool.submit(compress, streams[i], guesses[i]) for i in order}
    return [futures[i].result() for i in range(len(streams))]


_local = threading.local()


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    """One decompression context per thread: creating one costs more than decoding a small stream."""
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "zstd", None)
    if dctx is None:
        dctx = _local.zstd = zstandard.ZstdDecompressor(format=zstandard.FORMAT_ZSTD1_MAGICLESS)
    return dctx


def _open_decoder(codec: int, raw_len: int) -> Any:
    if codec == Codec.LZMA:
        return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=_lzma_filters(raw_len))
    if codec == Codec.ZSTD:
        return _zstd_decompressor().decompressobj()
    raise PatchError(f"unknown stream codec {codec}")


# Input is fed to zstd in slices this small: a zstd block of 4 bytes can stand for 128 KiB, so one
# slice decodes to at most 8 MiB and a stream never decodes to much more than its header declares.
_ZSTD_SLICE = 256
_LZMA_SLICE = 1 << 12


class _Decoder:
    """One compressed stream decoded a piece at a time: never more than asked for (LZMA), or than
    asked for plus one slice's worth (zstd), so a stream that lies about its length costs no more
    memory than the length it declares."""

    def __init__(self, codec: int, data: bytes | memoryview, raw_len: int) -> None:
        self._dec = _open_decoder(codec, raw_len)
        self._lzma = codec == Codec.LZMA
        self._src = memoryview(data)
        self._fed = 0
        self._pending = bytearray()

    def read(self, n: int) -> bytes:
        """Up to n decoded bytes; fewer only at the end of the stream."""
        dec, src = self._dec, self._src
        out = self._pending
        try:
            while len(out) < n and not dec.eof:
                if self._lzma:
                    if dec.needs_input:
                        if self._fed == len(src):
                            break
                        chunk = src[self._fed:self._fed + _LZMA_SLICE]
                        self._fed += len(chunk)
                    else:
                        chunk = memoryview(b"")
                    out += dec.decompress(chunk, max_length=n - len(out))
                else:
                    if self._fed == len(src):
                        break
                    chunk = src[self._fed:self._fed + _ZSTD_SLICE]
                    self._fed += len(chunk)
                    out += dec.decompress(chunk)
        except (lzma.LZMAError, zstandard.ZstdError, EOFError) as exc:
            raise PatchError(f"corrupt compressed stream: {exc}") from None
        piece = bytes(out[:n])
        del out[:n]
        return piece

    def finish(self) -> None:
        """PatchError unless the stream has ended, with nothing after its end."""
        if self.read(1) or not self._dec.eof or self._dec.unused_data or self._fed != len(self._src):
            raise PatchError("compressed stream does not match its header")


def decompress(codec: int, data: bytes | memoryview, raw_len: int) -> bytes | memoryview:
    """Decode one whole stream; any mismatch with the declared length is a PatchError."""
    if codec == Codec.STORED:
        if len(data) != raw_len:
            raise PatchError("stored stream length does not match its header")
        return data
    dec = _Decoder(codec, data, raw_len)
    out = dec.read(raw_len)
    if len(out) != raw_len:
        raise PatchError("compressed stream does not match its header")
    dec.finish()
    return out


def open_stream(codec: int, data: bytes | memoryview, raw_len: int) -> Callable[[int], bytes]:
    """A read(n) -> bytes callable over the decoded stream, for streaming apply.

    Memory stays bounded; the stream must decode to exactly raw_len bytes and end where its data
    ends, else PatchError."""
    if codec == Codec.STORED:
        if len(data) != raw_len:
            raise PatchError("stored stream length does not match its header")
        src = memoryview(data)
        pos = 0

        def read_stored(n: int) -> bytes:
            nonlocal pos
            chunk = bytes(src[pos:pos + n])
            pos += len(chunk)
            return chunk

        return read_stored

    dec = _Decoder(codec, data, raw_len)
    produced = 0

    def read(n: int) -> bytes:
        nonlocal produced
        out = dec.read(min(n, raw_len - produced))
        produced += len(out)
        if len(out) < n:  # the declared end: the stream must end here too
            if produced != raw_len:
                raise PatchError("compressed stream does not match its header")
            dec.finish()
        return out

    return read
