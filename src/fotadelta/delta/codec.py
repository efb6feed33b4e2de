"""Entropy coding of the delta streams: each stream takes the smallest of a few codecs."""

from __future__ import annotations

import lzma
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from enum import IntEnum
from functools import partial
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
# code, and the default. The first two are the ones tried on long streams.
_LZMA_SHAPES = ((1, 0, 0), (0, 2, 2), (0, 0, 0), (1, 1, 1), (3, 0, 2))
_LZMA_MAX_DICT = 1 << 27
# Streams this long or longer try fewer candidates: for them zstd never won
# and the shapes differ by about 1% (measured on ../shared/corpus), while each
# LZMA pass costs about 0.3 s per MB.
_LARGE_STREAM = 1 << 14


def _dict_size(raw_len: int) -> int:
    """LZMA2 dictionary size; derived from the stream length so it need not be stored."""
    size = 1 << 12
    while size < raw_len and size < _LZMA_MAX_DICT:
        size <<= 1
    return size


def _lzma_filters(raw_len: int, shape: tuple[int, int, int] | None = None) -> list[dict[str, int]]:
    f = {"id": lzma.FILTER_LZMA2, "dict_size": _dict_size(raw_len)}
    if shape is not None:
        lc, lp, pb = shape
        f.update(preset=9 | lzma.PRESET_EXTREME, lc=lc, lp=lp, pb=pb)
        if raw_len >= _LARGE_STREAM:
            f.update(preset=9, nice_len=128)
    return [f]


def _zstd_params() -> zstandard.ZstdCompressionParameters:
    return zstandard.ZstdCompressionParameters.from_level(
        22, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_checksum=0, write_content_size=0,
        write_dict_id=0)


def _lzma(data: bytes, shape: tuple[int, int, int]) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(len(data), shape))


def lzma_best(data: bytes) -> bytes:
    """Raw LZMA2 with the best of the context shapes: for a single stream that must be LZMA."""
    return min((_lzma(data, shape) for shape in _LZMA_SHAPES), key=len)


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(compression_params=_zstd_params()).compress(data)


def _candidates(data: bytes) -> list[tuple[Codec, Callable[[], bytes]]]:
    if len(data) >= _LARGE_STREAM:
        return [(Codec.LZMA, partial(_lzma, data, shape)) for shape in _LZMA_SHAPES[:2]]
    cands: list[tuple[Codec, Callable[[], bytes]]] = [(Codec.STORED, lambda: data)]
    if data:
        cands.append((Codec.ZSTD, partial(_zstd, data)))
        cands.extend((Codec.LZMA, partial(_lzma, data, shape)) for shape in _LZMA_SHAPES)
    return cands


def compress_streams(streams: Iterable[bytes], pool: ThreadPoolExecutor) -> list[tuple[Codec, bytes]]:
    """Compress each stream with its candidate codecs in parallel; keep the smallest per stream."""
    streams = list(streams)
    jobs: list[list[tuple[Codec, Future[bytes]]]] = [[] for _ in streams]
    # Longest streams first, so that the slowest job starts at once.
    for i in sorted(range(len(streams)), key=lambda i: -len(streams[i])):
        jobs[i] = [(codec, pool.submit(fn)) for codec, fn in _candidates(streams[i])]
    best: list[tuple[Codec, bytes]] = []
    for stream_jobs in jobs:
        results = [(codec, fut.result()) for codec, fut in stream_jobs]
        best.append(min(results, key=lambda r: len(r[1])))
    return best


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

    def __init__(self, codec: int, data: bytes, raw_len: int) -> None:
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


def decompress(codec: int, data: bytes, raw_len: int) -> bytes:
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


def open_stream(codec: int, data: bytes, raw_len: int) -> Callable[[int], bytes]:
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
