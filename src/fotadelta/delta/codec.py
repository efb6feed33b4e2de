"""Entropy coding of the delta streams: each stream takes the smallest of a few codecs."""

from __future__ import annotations

import lzma
import mmap
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import zstandard

from fotadelta import _core
from fotadelta.errors import PatchError

# An image as the diff and apply take it: in memory or memory-mapped.
Buffer = bytes | bytearray | memoryview | mmap.mmap


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
# Streams this long or longer are coded with a longer match search (nice_len 128 instead of
# preset 9's 64). Preset 9e (nice_len 273 and more effort) was no smaller on the record
# streams of the small pairs of both corpora and took 13% longer.
_LARGE_STREAM = 1 << 14
# ...and streams this long the hash-chain match finder, for memory (see _lzma_filters).
_HUGE_STREAM = 1 << 23
# ...and so do lean streams (a full image) from this length, where memory starts to count.
_LEAN_STREAM = 1 << 20
# Shapes are ranked and sizes estimated by csrc/fd_est.c (a greedy parse priced with LZMA's
# models for all shapes at once, about half a millisecond cheaper per call than setting up an
# LZMA encoder) over at most this much of the stream. The pick costs 0.1-0.2% against
# compressing every shape in full; the sizes run 0-20% above LZMA's optimal parse, alike for
# every candidate. Against 128 KiB, 80 KiB left 62 of the 63 patches of both corpora the same
# (one 0.07% smaller) and took 29-30% of the instructions off the estimates of the 1 MB UEFI
# pairs ipxe-aa64 and shim-x64, where they had been 12-15% of the diff. 64 KiB changed no more
# patches but estimated a 200 KB stream of 4-byte words drawn from 5000 at 1.29x its LZMA size
# (1.18x at 80 KiB, 1.09x at 128 KiB; tests/test_roundtrip.py), enough to turn it to zstd; 32 KiB
# made three patches 1-9% larger.
_ESTIMATE_SAMPLE = 80 << 10
_ESTIMATE_PIECES = 8
# Apply time is weighed against patch size at one rate: a byte of patch is worth
# APPLY_NS_PER_BYTE nanoseconds of apply CPU time, and of two ways to code the same thing the
# one with the smaller size + apply_ns / APPLY_NS_PER_BYTE is kept (price()). Decode costs,
# measured (CPU time, whole-stream decode) on the streams of patches of both corpora: LZMA
# 55-62 ns per stored byte on streams of 8 KB or more (25-30 on 1 KB ones, where the figure
# overstates it) and about 4 us to set a decoder up; zstd 1-2 ns per decoded byte and about
# 5 us a stream. At 500 ns a byte LZMA is kept when it is about 12% smaller than zstd. The rate
# was chosen on both corpora (63 pairs) against HDiffPatch's apply CPU time, which 17-22 pairs
# exceeded under the rules this replaces (LZMA kept when 4% smaller than zstd, a transform when
# it saved 1/256 of the patch): at 1000 ns a byte (LZMA kept from about 6% smaller) 14 still
# did, most of them small code images whose transform and LZMA record stream were each worth
# it at that rate, for 1% of patch size (geomean); at 500, 9-10 did, for 3.3% (4.8% on
# ../shared/corpus; the worst pair 24%); 250 cost 7-13% (one patch 1.9x larger).
APPLY_NS_PER_BYTE = 500
_LZMA_NS_PER_BYTE = 60
_LZMA_NS_SETUP = 4000
_ZSTD_NS_PER_BYTE = 2
_ZSTD_NS_SETUP = 5000


def decode_ns(codec: int, stored: int, raw: int) -> int:
    """Expected CPU time to decode a stream of raw bytes stored in stored bytes."""
    if codec == Codec.LZMA:
        return _LZMA_NS_SETUP + _LZMA_NS_PER_BYTE * stored
    return _ZSTD_NS_SETUP + _ZSTD_NS_PER_BYTE * raw if codec == Codec.ZSTD else 0


def price(size: int, apply_ns: int) -> float:
    """Patch bytes and apply time as one figure, in bytes (see APPLY_NS_PER_BYTE)."""
    return size + apply_ns / APPLY_NS_PER_BYTE


# zstd levels: the strongest below _ZSTD_MAX bytes (it costs well under a millisecond there),
# then one within a few tenths of a percent of it at a third of the time, then a fast one. Below
# _ZSTD_SMALL bytes the middle level is _ZSTD_SMALL_LEVEL: sized to such short inputs, levels 15
# and 17 find nearly the same matches; on the 39 streams of 4-16 KB the diffs of the pairs below
# 1 MB of both corpora code, 15 took 0.56x the time of 17 for 0.03% more bytes (1.5% at most on
# one stream); on 16-64 KB it would have cost 0.16% for 0.71x.
_ZSTD_MAX = 1 << 12
_ZSTD_SMALL = 1 << 14
_ZSTD_LONG = 1 << 20
_ZSTD_LEVELS = (22, 17, 9)
_ZSTD_SMALL_LEVEL = 15
_ZSTD_TABLE_SHIFT = 2
# A stream of _ZSTD_MAX bytes or more whose zstd at _ZSTD_SCREEN_LEVEL (a millisecond or two per
# 100 KB) is larger than its LZMA by more than _ZSTD_SCREEN_RATIO is kept as LZMA without coding
# it with the strong level (tens of milliseconds there). Of the 138 such streams the diffs of
# both corpora code, the 64 that zstd won when LZMA had to be 4% smaller had a fast zstd at most
# 1.296x LZMA; the 18 ruled out (mostly the difference bytes of images of 1 MB or more, 7-17x by
# LZMA) had taken a third of their pair's coding time. A stream wrongly ruled out only costs
# apply time: LZMA is smaller. At APPLY_NS_PER_BYTE zstd wins up to about 1.12x LZMA, and the
# fast level came out at up to 1.43x the strong one, so a ratio of 1.6 would rule out none that
# zstd wins: on both corpora it turned streams of three pairs to zstd (0.7-3.9% larger patches,
# each pair already applying in at most 0.61x HDiffPatch's time) and took 5.8% more diff time on
# the pairs of 1 MB or more (geomean; 53% on one); the ratio stays.
_ZSTD_SCREEN_LEVEL = 3
_ZSTD_SCREEN_RATIO = 1.3
# ...nor when the strong level could not win on price even if it came out _ZSTD_SCREEN_GAIN
# times smaller than the fast one (the most seen, above): zstd's price carries its decode time
# per raw byte, which on streams that compress well (the records of small images) outweighs the
# fast zstd being within 1.3x of LZMA. This one rules out only codings that cannot be kept.
_ZSTD_SCREEN_GAIN = 1.43
# The fast zstd is also coded first, and a stream shorter than _ZSTD_LONG whose fast zstd is
# below _ZSTD_FIRST_RATIO times its LZMA estimate (Estimate.size) is coded with zstd alone: LZMA,
# the slowest of the coders, would lose on price there. Of the 130 streams of 4 KB or more the
# diffs of both corpora code (pairs up to 8 MB), the one LZMA won with the lowest such ratio had
# 1.071 (zstd 1.116x its LZMA); the 71 below 1.06 were all won by zstd but one (a 48 KB stream
# of 281 bytes as LZMA, 259 as zstd: LZMA was kept on the price of decoding). Their LZMA coding
# had taken a third to two thirds of the coding time of the 1 MB UEFI pairs (31% shim-aa64,
# 63% ipxe-aa64). Longer streams, coded with the weaker zstd level, are left out: on a 30 MB
# x86-64 binary the rule made the patch 10% larger.
_ZSTD_FIRST_RATIO = 1.06
# A stream shorter than _ZSTD_MAX is coded with the strong zstd first (it has no fast one), and
# the same ratio keeps it zstd alone: of the 34 such streams the diffs of the 43 pairs below 1 MB
# of both corpora code, LZMA won 7, whose strong zstd came to 1.084x their estimate or more; the
# 21 below 1.06x were all kept as zstd (19) or stored (2). The LZMA coding, mostly the fixed cost
# of setting its encoder up, had taken a third of the diff time of the 6-7 KB ESP32 stubs.
# ...and _ZSTD_FIRST_DENSE on a dense stream, whose LZMA estimate is at least _DENSE of its
# length (the difference bytes of small images, mostly new code): there LZMA's optimal parse
# gains little over the estimate's greedy one (LZMA came to 0.90x the estimate or more, against
# 0.72x over all streams), and zstd wins on price. Of the 46 such streams of 4 KB-1 MB the diffs
# of 56 pairs of both corpora (all up to 3.5 MB) code, the one LZMA won with the lowest fast zstd
# had 1.161x its estimate; the 11 between 1.06x and 1.12x were all won by zstd, and their LZMA
# coding had taken a fifth to a third of the diff time of the small images among them (sun50i,
# ath9k, realtek-rtl8761bu, opensbi).
_DENSE = 0.6
_ZSTD_FIRST_DENSE = 1.12
# A stream of _ZSTD_PICK_MIN bytes or more that the rules above leave to both coders is also
# coded with zstd at _ZSTD_MID_LEVEL, and that level's gain over the fast one picks the coder: a
# stream that rewards zstd's deeper search little rewards LZMA's optimal parse little too. Where
# the mid level is at least _ZSTD_PICK_ZSTD times the fast one (and the fast one is below
# _ZSTD_PICK_EST times the LZMA estimate), zstd alone; below _ZSTD_PICK_LZMA times, LZMA alone;
# between, both as before. Of the 30 such streams the diffs of all 63 pairs of both corpora code,
# each choice is the one coding both made (the patches are the same), and the coding time of the
# 63 diffs fell by 27% (CPU time): the 259 KB difference bytes of shim-aa64 and the 1.4-3.7 MB
# UEFI volumes are no longer coded with LZMA, the 64 KB records of the rtw8852a Wi-Fi firmware no
# longer with the strong zstd. The bounds are close to the data: LZMA won at up to 0.954 within
# _ZSTD_PICK_EST (0.959 and 0.985 beyond it), zstd won at 0.929 at the lowest. Near the bounds
# either coder comes within a few percent of the other's price, which is what a wrong pick costs.
# The mid level is coded after LZMA where the fast zstd is _ZSTD_PICK_EST times the estimate or
# more, or the estimate is below _ZSTD_PICK_DENSE of the length (it kept zstd alone on none of
# those: the streams it did were estimated at 0.38-0.78 of theirs, while LZMA's optimal parse
# gains most on the most redundant ones), and not at all when the screens above keep LZMA: the
# 3 ms it had taken of the ESP32 pair's diff, a missed time target, are saved.
_ZSTD_PICK_MIN = 1 << 15
_ZSTD_MID_LEVEL = 9
_ZSTD_PICK_ZSTD = 0.96
_ZSTD_PICK_EST = 1.2
_ZSTD_PICK_LZMA = 0.92
_ZSTD_PICK_DENSE = 0.3
# Both rules that keep a stream zstd alone trust an estimate made on a sample, and the sample of
# a long stream misses repeats that lie far apart, which LZMA finds: of the 13 streams of
# 240 KB-1 MB the diffs of both corpora code, the whole stream's estimate came to 0.93-1.14x the
# sampled one. On the two MediaTek RAM code images (0.4-0.6 MB of mostly new code in the extra
# stream) the sample overstated it by 3% and 8%, enough to keep zstd alone by _ZSTD_FIRST_DENSE
# while LZMA was 0.86-0.89x zstd and won on price. So where the sample is at most
# 1 / _RECHECK_SHARE of a stream below _ZSTD_LONG, and either rule keeps zstd alone by a margin
# below _RECHECK_RATIO, the whole stream is estimated (about 40 ns a byte, a quarter of coding
# it with LZMA) and the rule is applied to that; the mid level then keeps zstd alone only where
# the whole estimate does not price below it (its premise fails on streams like those: LZMA's
# contexts, not its search, gain there). On both corpora this codes the two MediaTek streams
# with LZMA and no other stream differently: their patches are 11% and 14% smaller, and apply
# in 1.11x HDiffPatch's time instead of 0.06-0.08x. It costs a 0.97 MB stream of a third
# MediaTek image 51 ms of estimate (0.26 -> 0.43x HDiffPatch's diff time). Checking the mid
# level against the sampled estimate alone had sent four pairs to an LZMA coding that lost (up
# to 3.6x their diff time); a sampled LZMA / zstd ratio told winners from losers by 1%.
_RECHECK_SHARE = 3
_RECHECK_RATIO = 1.1
# Between the mid level's bounds, where LZMA and zstd come within a few percent of each other's
# price, zstd's own level is coded first, and LZMA only where it would win on price at
# _LZMA_LEAST of its estimate. On the 15 such streams the diffs of both corpora code, LZMA came
# to 0.865-0.97 of its estimate (0.76 on a 3 MB stream estimated on a fortieth of it: the rule
# waits for a whole estimate where the sample is a third of the stream or less). Every stream
# the rule keeps zstd alone was won by zstd where both were coded; the zstd of the LZMA winners
# priced 3-8% above the bound. Every patch of both corpora is the same, and six diffs no longer
# code LZMA to lose it: ipxe-loong64 (1.07 MB) 241 -> 199 ms, the two 1 MB rk3399 u-boot images
# 204-216 -> 167-170 ms, three others 16-25% faster. A stream it misjudges costs what LZMA would
# have saved: 2% at the lowest share seen.
_LZMA_LEAST = 0.88
# ...unless its level 3 is _SCREEN_LIKELY times the estimate or more: LZMA, coded first, is then
# likely to rule zstd's own level out by the screen (_ZSTD_SCREEN_RATIO; LZMA came to a median
# 0.9 of its estimate there). Of the 15 streams, one: shim-x64's 188 KB, which LZMA won that way
# (level 3 at 1.17 times its estimate, 1.31 times LZMA); coding zstd first had cost it 20 ms.
_SCREEN_LIKELY = 1.16
# The mid level's rule (_ZSTD_PICK_ZSTD) keeps a stream of _ZSTD_LONG bytes or more zstd alone
# only where LZMA could not win on price at _LZMA_LEAST of the whole stream's estimate. Such
# streams are the differences and new code of large images, whose repeats lie far apart, and the
# sample misses what LZMA's optimal parse and contexts gain on them: of the seven streams of 1 MB
# or more that the diffs of both corpora and the held-out set code and that compress, LZMA came
# to 0.70-0.88 of the whole estimate. The 1.9 MB differences of a 12 MB x86-64 module
# (zstandard's cffi backend, held out) had been kept zstd alone, the mid level at 0.961 of the
# fast one: LZMA came to 0.82 of the mid level, the patch 10% smaller, for 0.55 s of a 2.7 s
# diff. The rule's premise fails where LZMA's contexts gain (tests/test_roundtrip.py: words at
# one alignment, zstd's levels alike, LZMA 20% smaller). It costs a 1.4 MB UEFI volume that zstd
# shrinks by 16% an LZMA coding that loses (0.99 of the whole estimate): 72 to 412 ms, 0.69 of
# HDiffPatch's diff time in the benchmark. No other stream of the 56 pairs of 1 MB or more is coded differently.


# A lower bound of what compress() makes of a whole image: _FLOOR_RATIO times its fast zstd
# (_ZSTD_SCREEN_LEVEL, about a millisecond per 100 KB). On the images below 1 MB of both corpora
# (old and new), the smaller of LZMA with the best of the five shapes and zstd at the strong
# level came to at least 0.71x the fast zstd; on a table of aligned 8-byte records, which LZMA's
# position contexts suit and zstd's matches do not, 0.42x (tests/test_roundtrip.py).
_FLOOR_RATIO = 0.4


def size_floor(data: bytes) -> int:
    """Bytes data cannot be coded in by compress(), whatever its estimate (see _FLOOR_RATIO)."""
    return int(_FLOOR_RATIO * len(_zstd(data, _ZSTD_SCREEN_LEVEL)))


def _dict_size(raw_len: int) -> int:
    """LZMA2 dictionary size; derived from the stream length so it need not be stored."""
    size = 1 << 12
    while size < raw_len and size < _LZMA_MAX_DICT:
        size <<= 1
    return size


def _lzma_filters(raw_len: int, shape: Shape | None = None, lean: bool = False,
                  window: int | None = None) -> list[dict[str, int]]:
    """Decoder filters (shape None), else encoder ones. The encoder's dictionary is only as long
    as the stream, and at most window bytes (the decoder's, a power of two, may be larger: it
    never sees a longer match distance), and long streams use the hash-chain match finder:
    encoder memory is then about 7.5 bytes per stream byte instead of up to 23
    (docs/format.md)."""
    f = {"id": lzma.FILTER_LZMA2, "dict_size": _dict_size(raw_len)}
    if shape is not None:
        lc, lp, pb = shape
        f.update(preset=9, lc=lc, lp=lp, pb=pb)
        if raw_len >= _LARGE_STREAM:
            f.update(nice_len=128)
        f["dict_size"] = max(min(raw_len, _LZMA_MAX_DICT, window or _LZMA_MAX_DICT), 1 << 12)
        if raw_len >= _HUGE_STREAM or (lean and raw_len >= _LEAN_STREAM):
            f["mf"] = lzma.MF_HC4
    return [f]


def _zstd_params(size: int, level: int = 22) -> zstandard.ZstdCompressionParameters:
    """Level 22 (or level) sized to the input (its tables for unknown sizes take 1.5 ms to set
    up), with its hash and chain tables at most a quarter of the window's entries: the level's
    own take 9-17 bytes of memory per byte of a 0.3-1 MB stream, coded beside LZMA's encoders
    on the other threads, which put the diff over 10 bytes per old-image byte."""
    base = zstandard.ZstdCompressionParameters.from_level(level, source_size=size)
    return _capped(base, max(base.window_log - _ZSTD_TABLE_SHIFT, 12))


def _capped(base: zstandard.ZstdCompressionParameters, table_log: int) -> zstandard.ZstdCompressionParameters:
    """base with hash and chain tables of at most 2**table_log entries, written as a magicless
    frame without checksum, content size or dictionary id."""
    return zstandard.ZstdCompressionParameters(
        window_log=base.window_log, chain_log=min(base.chain_log, table_log), hash_log=min(base.hash_log, table_log),
        search_log=base.search_log, min_match=base.min_match, target_length=base.target_length,
        strategy=base.strategy, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_checksum=0,
        write_content_size=0, write_dict_id=0)


def _lzma(data: bytes, shape: Shape, lean: bool = False, window: int | None = None) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(len(data), shape, lean, window))


def lzma_best(data: bytes) -> bytes:
    """Raw LZMA2 with the best of the context shapes: for a single stream that must be LZMA."""
    return min((_lzma(data, shape) for shape in _LZMA_SHAPES), key=len)


def _zstd(data: bytes, level: int = 22) -> bytes:
    return zstandard.ZstdCompressor(compression_params=_zstd_params(len(data), level)).compress(data)


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


def estimate(data: bytes, shapes: Sequence[Shape] = _LZMA_SHAPES, whole: bool = False) -> Estimate:
    """Rank the LZMA shapes on a sample of the stream (on all of it if whole) and estimate
    its coded size, scaled to the whole stream (for choices, never written). A size of len(data)
    means that the stream does not compress. One shape costs a third of five: enough to compare
    candidates."""
    if not data:
        return Estimate(shapes[0], 0)
    sample = data if whole else _sample(data)
    bits = _core.lzma_estimate(sample, shapes)
    best = min(range(len(bits)), key=bits.__getitem__)
    return Estimate(shapes[best], min(len(data), bits[best] * len(data) // (8 * len(sample))))


# The shape each record stream (ctrl, wmap, words, extra) most often takes: what candidate
# deltas are compared with before the chosen one is coded.
RECORD_SHAPES: tuple[Shape, ...] = ((1, 0, 0), (1, 0, 0), (0, 2, 2), (0, 0, 0))


def zstd_level(size: int) -> int:
    """The zstd level a stream of size bytes is coded with (_ZSTD_LEVELS)."""
    if size < _ZSTD_MAX:
        return _ZSTD_LEVELS[0]
    if size < _ZSTD_SMALL:
        return _ZSTD_SMALL_LEVEL
    return _ZSTD_LEVELS[1] if size < _ZSTD_LONG else _ZSTD_LEVELS[2]


def compress(data: bytes, guess: Estimate, lean: bool = False, window: int | None = None) -> tuple[Codec, bytes]:
    """Code a stream once with LZMA of the estimated shape and once with zstd, and keep the one
    of lower price() (LZMA decodes an order of magnitude slower); the stream as it is when
    neither prices below its length (it was estimated not to shrink or does not). A fast zstd
    first (the strong one on short streams) rules out either coder where it cannot win
    (_ZSTD_FIRST_RATIO, _ZSTD_FIRST_DENSE, _ZSTD_SCREEN_RATIO), and on long streams a mid level
    picks one (_ZSTD_PICK_ZSTD), or between its bounds leaves LZMA only where it may win
    (_LZMA_LEAST). lean: hash chains from 1 MiB on, for a stream as long as the image (7.5
    bytes of encoder memory per byte instead of 11.5). window bounds the LZMA dictionary, and
    so the encoder's memory."""
    level = zstd_level(len(data))
    if guess.size >= len(data):
        if len(data) <= _ESTIMATE_SAMPLE:
            return Codec.STORED, data
        return _far_repeats(data, level)
    screen = len(_zstd(data, _ZSTD_SCREEN_LEVEL)) if len(data) >= _ZSTD_MAX else None
    first = _ZSTD_FIRST_DENSE if guess.size >= _DENSE * len(data) else _ZSTD_FIRST_RATIO
    rechecked = False  # whether guess is an estimate of the whole stream (_RECHECK_SHARE)
    if screen is not None and len(data) < _ZSTD_LONG and screen < first * guess.size:
        if _recheckable(data) and _RECHECK_RATIO * screen >= first * guess.size:
            guess, rechecked = estimate(data, (guess.shape,), whole=True), True
        if screen < first * guess.size:
            return _zstd_alone(data, _zstd(data, level))
    strong = _zstd(data, level) if screen is None else None
    if strong is not None and len(strong) < _ZSTD_FIRST_RATIO * guess.size:
        return _zstd_alone(data, strong)
    pick = len(data) >= _ZSTD_PICK_MIN
    # The mid level is coded before LZMA only where it may rule LZMA out.
    mid = (_zstd(data, _ZSTD_MID_LEVEL)
           if pick and screen is not None and screen < _ZSTD_PICK_EST * guess.size
           and guess.size >= _ZSTD_PICK_DENSE * len(data) else None)
    if screen is not None and mid is not None and len(mid) >= _ZSTD_PICK_ZSTD * screen:
        by_mid = _zstd_price(len(mid), len(data))
        long = len(data) >= _ZSTD_LONG  # estimated whole, and LZMA given _LZMA_LEAST of it
        if not rechecked and (long or (_recheckable(data)
                                       and _lzma_price(guess.size, len(data)) < _RECHECK_RATIO * by_mid)):
            guess, rechecked = estimate(data, (guess.shape,), whole=True), True
        at_best = int(_LZMA_LEAST * guess.size) if long else guess.size
        if not (rechecked and _lzma_price(at_best, len(data)) < by_mid):
            return _zstd_alone(data, _own_level(data, level, mid))
    fast = None  # zstd at the stream's own level, once coded
    if (screen is not None and mid is not None and len(mid) >= _ZSTD_PICK_LZMA * screen
            and screen < _SCREEN_LIKELY * guess.size
            and (rechecked or not _thinly_sampled(data))):
        # Between the mid level's bounds: zstd's own level first, LZMA only where it may win.
        fast = _own_level(data, level, mid)
        if _zstd_price(len(fast), len(data)) <= _lzma_price(int(_LZMA_LEAST * guess.size), len(data)):
            return _zstd_alone(data, fast)
    packed = _lzma(data, guess.shape, lean, window)
    by_lzma = _lzma_price(len(packed), len(data))
    if screen is not None and fast is None:
        best_zstd = int(screen / _ZSTD_SCREEN_GAIN)
        if (screen > _ZSTD_SCREEN_RATIO * len(packed)
                or _zstd_price(best_zstd, len(data)) > by_lzma):
            return (Codec.LZMA, packed) if len(packed) < len(data) else (Codec.STORED, data)
        if pick and mid is None:
            mid = _zstd(data, _ZSTD_MID_LEVEL)
        if mid is not None and len(mid) < _ZSTD_PICK_LZMA * screen:
            return (Codec.LZMA, packed) if len(packed) < len(data) else (Codec.STORED, data)
    if fast is None:
        fast = strong if strong is not None else _own_level(data, level, mid)
    by_zstd = _zstd_price(len(fast), len(data))
    best = (Codec.ZSTD, fast) if by_zstd <= by_lzma else (Codec.LZMA, packed)
    return best if min(by_zstd, by_lzma) < len(data) else (Codec.STORED, data)


def _far_repeats(data: bytes, level: int) -> tuple[Codec, bytes]:
    """A stream whose sample did not shrink: stored, unless zstd's mid level over the whole
    stream finds what the sample could not, repeats that lie far apart (encrypted CPU microcode
    holds its blobs twice: a 1.2 MB stream of them, stored, had made a patch 9% larger than
    xdelta3's). The fast level's small tables lose far positions in random bytes; the mid one
    takes about 2 ms per MB of them. Only repeats gain there, which zstd finds as well as LZMA
    and decodes faster: zstd alone, at its own level."""
    mid = _zstd(data, _ZSTD_MID_LEVEL)
    if _zstd_price(len(mid), len(data)) >= len(data):
        return Codec.STORED, data
    return _zstd_alone(data, min(mid, _own_level(data, level, mid), key=len))


def _thinly_sampled(data: bytes) -> bool:
    """Whether the estimate's sample is at most 1 / _RECHECK_SHARE of the stream."""
    return len(data) >= _RECHECK_SHARE * _ESTIMATE_SAMPLE


def _recheckable(data: bytes) -> bool:
    """Whether a stream below _ZSTD_LONG is thinly sampled (its whole estimate is worth taking)."""
    return _thinly_sampled(data) and len(data) < _ZSTD_LONG


def _own_level(data: bytes, level: int, mid: bytes | None) -> bytes:
    """data coded with zstd at its own level, the mid level's coding when that is the one."""
    return mid if mid is not None and level == _ZSTD_MID_LEVEL else _zstd(data, level)


def _lzma_price(size: int, raw: int) -> float:
    """price() of raw bytes coded by LZMA in size bytes."""
    return price(size, decode_ns(Codec.LZMA, size, raw))


def _zstd_price(size: int, raw: int) -> float:
    """price() of raw bytes coded by zstd in size bytes."""
    return price(size, decode_ns(Codec.ZSTD, size, raw))


def _zstd_alone(data: bytes, coded: bytes) -> tuple[Codec, bytes]:
    """The zstd coding of data, or data as it is when that does not price below its length."""
    by_zstd = _zstd_price(len(coded), len(data))
    return (Codec.ZSTD, coded) if by_zstd < len(data) else (Codec.STORED, data)


def estimate_streams(streams: Iterable[bytes], pool: ThreadPoolExecutor | None,
                     shapes: Sequence[Shape] | None = None) -> list[Estimate]:
    """estimate() of each stream, in parallel when a pool is given; with shapes, one each."""
    def one(k: int, data: bytes) -> Estimate:
        return estimate(data) if shapes is None else estimate(data, (shapes[k],))
    streams = list(streams)
    return list(pool.map(one, range(len(streams)), streams) if pool else map(one, range(len(streams)), streams))


def compress_streams(streams: Iterable[bytes], guesses: Iterable[Estimate],
                     pool: ThreadPoolExecutor | None, window: int | None = None) -> list[tuple[Codec, bytes]]:
    """compress() of each stream with its estimate (and window); in parallel, longest first,
    with a pool."""
    streams, guesses = list(streams), list(guesses)
    if pool is None:
        return [compress(data, guess, window=window) for data, guess in zip(streams, guesses)]
    order = sorted(range(len(streams)), key=lambda i: -len(streams[i]))
    futures = {i: pool.submit(compress, streams[i], guesses[i], False, window) for i in order}
    return [futures[i].result() for i in range(len(streams))]


_local = threading.local()


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    """One decompression context per thread for whole-stream decoding: creating one costs more than
    decoding a small stream."""
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "zstd", None)
    if dctx is None:
        dctx = _local.zstd = zstandard.ZstdDecompressor(format=zstandard.FORMAT_ZSTD1_MAGICLESS)
    return dctx


def _open_decoder(codec: int, raw_len: int) -> Any:
    if codec == Codec.LZMA:
        return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=_lzma_filters(raw_len))
    if codec == Codec.ZSTD:
        # A context of its own: decompressobj()s of one ZstdDecompressor share its context, and
        # streams read in turn (apply_file) would corrupt each other. Its window is bounded by the
        # stream's declared length: a hostile frame may not make it allocate zstd's default 128 MiB.
        window = 1 << max(10, (raw_len - 1).bit_length())
        return zstandard.ZstdDecompressor(format=zstandard.FORMAT_ZSTD1_MAGICLESS,
                                          max_window_size=window).decompressobj()
    raise PatchError(f"unknown stream codec {codec}")


# Input is fed to zstd in slices this small: a zstd block of 4 bytes can stand for 128 KiB, so one
# slice decodes to at most 8 MiB and a stream never decodes to much more than its header declares.
_ZSTD_SLICE = 256
_ZSTD_MAX_GROWTH = (128 << 10) // 4  # decoded bytes per stored byte, at most
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
    """Decode one whole stream in one call, into at most raw_len bytes; any mismatch with the
    declared length is a PatchError. (Fed in slices, as open_stream does, a long stream cost
    several copies and thousands of interpreted steps.)"""
    if codec == Codec.STORED:
        if len(data) != raw_len:
            raise PatchError("stored stream length does not match its header")
        return data
    try:
        if codec == Codec.LZMA:
            dec = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=_lzma_filters(raw_len))
            out = dec.decompress(data, max_length=raw_len)
            # At exactly raw_len bytes the end marker may not have been read yet.
            ended = dec.eof or (len(out) == raw_len and not dec.decompress(b"", max_length=1) and dec.eof)
            ok = ended and not dec.unused_data
        elif codec == Codec.ZSTD:
            # One frame, decoded into a buffer of raw_len bytes: a longer frame or bytes after it fail.
            _check_zstd_header(data, raw_len)
            out = _zstd_decompressor().decompress(data, max_output_size=max(raw_len, 1), allow_extra_data=False)
            ok = True
        else:
            raise PatchError(f"unknown stream codec {codec}")
    except (lzma.LZMAError, zstandard.ZstdError, EOFError) as exc:
        raise PatchError(f"corrupt compressed stream: {exc}") from None
    if not ok or len(out) != raw_len:
        raise PatchError("compressed stream does not match its header")
    return out


def decompress_into(data: bytes | memoryview, out: memoryview) -> None:
    """Decode one whole zstd stream straight into out, whose length is its raw length, with the
    checks of decompress. (Decoded into a buffer of its own, a stream of a few MB had cost
    more in that buffer's page faults than in decoding, and a copy out of it.)"""
    raw_len = len(out)
    try:
        _check_zstd_header(data, raw_len)
        if _zstd_frame_len(data) != len(data):
            raise PatchError("compressed stream does not match its header")
        reader = _zstd_decompressor().stream_reader(data, read_size=max(len(data), 1), read_across_frames=False)
        got = 0
        while got < raw_len and (n := reader.readinto(out[got:])):
            got += n
        ok = got == raw_len and not reader.read(1)
    except (zstandard.ZstdError, EOFError) as exc:
        raise PatchError(f"corrupt compressed stream: {exc}") from None
    if not ok:
        raise PatchError("compressed stream does not match its header")


def _check_zstd_header(data: bytes | memoryview, raw_len: int) -> None:
    """PatchError unless the frame's declared content size (if any) is raw_len and raw_len is within
    the growth bound. zstandard sizes its output by the frame's own content size when it has one,
    whatever it is told, so a hostile frame could ask for exabytes: checked before decoding."""
    _check_content_size(data, raw_len)
    if raw_len > len(data) * _ZSTD_MAX_GROWTH:
        raise PatchError("compressed stream does not match its header")


def _check_content_size(data: bytes | memoryview, raw_len: int) -> None:
    """PatchError unless the frame's declared content size, if it has one, is raw_len."""
    declared = zstandard.get_frame_parameters(data, format=zstandard.FORMAT_ZSTD1_MAGICLESS).content_size
    if declared not in (raw_len, zstandard.CONTENTSIZE_UNKNOWN):
        raise PatchError("compressed stream does not match its header")


def _zstd_frame_len(data: bytes | memoryview) -> int:
    """Bytes of the magicless zstd frame at the start of data, from its header and block
    headers (RFC 8878); past the end of data when it is cut short."""
    flags = data[0] if data else 0
    fcs_bytes = (1 if flags & 0x20 else 0, 2, 4, 8)[flags >> 6]
    at = 1 + (0 if flags & 0x20 else 1) + (0, 1, 2, 4)[flags & 3] + fcs_bytes
    last = False
    while not last and at + 3 <= len(data):
        header = data[at] | data[at + 1] << 8 | data[at + 2] << 16
        last = bool(header & 1)
        at += 3 + (1 if (header >> 1) & 3 == 1 else header >> 3)
    return at + (4 if flags & 0x04 else 0) if last else len(data) + 1


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


# Referenced coding (Kind.REFERENCED): the new image as one stream whose matches may reach into
# the old image: a zstd frame with the old image as its prefix (a raw-content dictionary), as
# `zstd --patch-from` does, or raw LZMA2 whose dictionary starts filled with the old image
# (liblzma's preset dictionary). Where the changes are dense and short (compiler output rebuilt
# with another toolchain, object files, board data), LZ77 with repeat offsets codes them in fewer
# bytes than a delta's copy records and their differences (docs/format.md).
# The largest old and new images a referenced patch may name: diff makes them for images below
# 512 KiB, and apply decodes them in memory with a copy of the old image as the prefix (a frame
# of a few bytes may stand for an image the size of its window).
REFERENCED_MAX_IMAGE = 1 << 24
# On five images of 60 KB-1 MB, nice_len 32 took 0.76-0.85 times the time of 64 for streams
# 0.3-0.9% larger; the fast parser 0.22-0.54 times the time for streams 4-10% larger.
_REFERENCED_NICE = 64


def _referenced_window(reference_len: int, raw_len: int) -> int:
    """The window a referenced frame needs (its matches reach back over the whole prefix), a
    power of two within zstd's bounds."""
    return 1 << max(10, min(31, (reference_len + raw_len - 1).bit_length()))


def compress_referenced(reference: Buffer, data: Buffer, level: int) -> bytes:
    """data as a magicless zstd frame at level, with reference as its prefix. Its hash and chain
    tables have at most half as many entries as the window has bytes: level 9's own (twice the
    window) took 1.8 MB of memory for two 51 KB images, 1.0 MB so, for a frame 0.1% larger."""
    prefix = zstandard.ZstdCompressionDict(bytes(reference), dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    window_log = _referenced_window(len(reference), len(data)).bit_length() - 1
    base = zstandard.ZstdCompressionParameters.from_level(level, source_size=len(data), window_log=window_log)
    params = _capped(base, window_log - 1)
    return zstandard.ZstdCompressor(dict_data=prefix, compression_params=params).compress(bytes(data))


# The shape of a referenced LZMA stream is estimated over this much of the middle of the new
# image: on the 42 pairs screened in it came within 0.2% of the best of the five shapes (geomean;
# 2.0% at worst; 16 KiB did no better), where estimating the whole image (80 KiB sampled) took up
# to 7 ms, as long as the coding of a 60 KB image.
_SHAPE_SAMPLE = 4 << 10


def sampled_shape(data: Buffer) -> Shape:
    """The LZMA shape estimated smallest over the middle _SHAPE_SAMPLE bytes of data."""
    mid = len(data) // 2
    piece = bytes(data[max(0, mid - _SHAPE_SAMPLE // 2):mid + _SHAPE_SAMPLE // 2])
    bits = _core.lzma_estimate(piece, _LZMA_SHAPES)
    return _LZMA_SHAPES[bits.index(min(bits))]


def compress_referenced_lzma(reference: Buffer, data: Buffer, shape: Shape, limit: int) -> bytes | None:
    """data as raw LZMA2 of the given shape, its dictionary filled with reference first (hash
    chains, the normal parser, nice_len _REFERENCED_NICE); None when that takes more than limit
    bytes (the coding stops there). The dictionary spans both images: one of the old image and a
    quarter of the new one had made a GPU firmware's stream 19% larger (its new code matches the
    start of the old image from far into the new one). Its hash chains take about 7.5 bytes of
    memory per byte of it: 16-25 bytes of diff memory per old-image byte where it is coded."""
    dict_size = max(len(reference) + len(data), 1 << 12)
    return _core.lzma_referenced_compress(reference, data, dict_size, shape, _REFERENCED_NICE, limit)


def decompress_referenced(codec: int, reference: Buffer, data: bytes | memoryview, raw_len: int) -> bytes:
    """A referenced stream (zstd or LZMA) decoded against reference into exactly raw_len bytes
    (both at most REFERENCED_MAX_IMAGE): PatchError on any mismatch. The decoder's window is
    bounded by the reference and raw_len, so a hostile stream may not make it allocate more."""
    if raw_len > REFERENCED_MAX_IMAGE or len(reference) > REFERENCED_MAX_IMAGE:
        raise PatchError(f"a referenced patch names images of at most {REFERENCED_MAX_IMAGE} bytes, "
                         f"not {len(reference)} and {raw_len}")
    if codec == Codec.LZMA:
        return _core.lzma_referenced_decompress(reference, data, raw_len)
    if codec != Codec.ZSTD:
        raise PatchError(f"a referenced image must be zstd- or LZMA-coded, not codec {codec}")
    prefix = zstandard.ZstdCompressionDict(bytes(reference), dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    dctx = zstandard.ZstdDecompressor(dict_data=prefix, format=zstandard.FORMAT_ZSTD1_MAGICLESS,
                                      max_window_size=_referenced_window(len(reference), raw_len))
    try:
        _check_content_size(data, raw_len)
        out = dctx.decompress(data, max_output_size=max(raw_len, 1), allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise PatchError(f"corrupt compressed stream: {exc}") from None
    if len(out) != raw_len:
        raise PatchError("compressed stream does not match its header")
    return out
