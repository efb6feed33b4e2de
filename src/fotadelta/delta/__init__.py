"""Plain binary deltas: make a patch from two images, apply it, describe it."""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from fotadelta import _core
from fotadelta.delta import code as code_transform
from fotadelta.delta.codec import (
    RECORD_SHAPES,
    REFERENCED_MAX_IMAGE,
    Buffer,
    Codec,
    Shape,
    compress,
    compress_referenced,
    compress_referenced_lzma,
    compress_streams,
    decode_ns,
    decompress,
    decompress_into,
    decompress_referenced,
    estimate,
    estimate_streams,
    open_stream,
    price,
    sampled_shape,
    size_floor,
)
from fotadelta.delta.format import (
    CODE_ARCHS,
    SPAN_MAX,
    SPAN_MIN,
    STREAM_NAMES,
    CodeTransform,
    Container,
    Grouping,
    Kind,
    Layer,
    Patch,
    Relocation,
    Stream,
    source_fingerprint,
    target_digest,
    target_hasher,
)
from fotadelta.errors import PatchError
from fotadelta.files import atomic_writer, write_atomic

__all__ = ["Buffer", "PatchError", "PatchInfo", "apply", "apply_file", "diff", "diff_file", "info"]

Progress = Callable[[int, int], None]

# Record streams shorter than this in all are also tried as one solid stream: on small
# deltas that saves the per-stream overhead (4-8% on ../shared/corpus's MCU images) and
# three decoder set-ups on apply; on large ones separate streams compress better. For a new
# image below _SMALL bytes the limit is _SOLID_MAX_SMALL: of the 10 such pairs of both corpora
# whose streams came to 32-128 KiB, solid was estimated smaller on three and came out larger on
# two of them (2.2% and 8.8%; 0.8% smaller on the third), and its estimate had taken a tenth of
# those pairs' diff time (the target furthest from being met there).
_SOLID_MAX = 1 << 17
_SOLID_MAX_SMALL = 1 << 15
# ...estimated with the two shapes that won wherever solid did: on the 43 pairs below 1 MB of
# both corpora, 33 tried solid, and the other three shapes came out best only on two where it
# lost (the patches are the same). Those three had cost about 40% of the solid estimate, the
# largest of a small diff's.
_SOLID_SHAPES: tuple[Shape, ...] = ((0, 0, 0), (1, 0, 0))
# A delta at least this fraction of the new image is worth comparing with the full image.
_FULL_IMAGE_CHECK_RATIO = 0.125
_FULL_IMAGE_SLACK = 16
# ...after an estimate with the one shape the new images of both corpora take best or within
# 2.7% of the best (the others came within 3.3-4.6%).
_FULL_SCREEN_SHAPES: tuple[Shape, ...] = ((0, 2, 2),)
_FULL_SCREEN_SLACK = 1.1
# ...and it is coded for real only when its estimate is below _FULL_CODE_SHARE of the delta's:
# on the images of both corpora and ten unseen ones (QEMU's firmware, Debian 12 -> 13) where the
# full image was coded, it ran 1-4% further above its estimate than the delta did above its
# own, and lost wherever its estimate was 0.977-0.995 of the delta's (a mostly new 96 KB s390x
# loader, where its coding took 23 of the diff's 60 ms, and three UEFI images of 2-3.6 MB); it
# won at 0.952 (a 64 KB x86 boot ROM). It is coded up to the delta's estimate as before where
# the image does not compress (it is then stored, which costs nothing to code) and where the
# delta copies less than _FULL_COPIED_SHARE of the new image (the delta is then the new image
# plus its records, within the estimates' error of the full image, which applies to any source).
_FULL_CODE_SHARE = 0.97
_FULL_COPIED_SHARE = 1 / 16
# A full image coded below this share of the delta's estimate is kept without coding the delta:
# the delta came within 0-4% below its estimate where the full image was coded (both corpora and
# the QEMU images), so it could not have been the smaller by more than about 1%. On a 64 KB x86
# boot ROM whose full image wins (0.963 of the delta's estimate) that saved 5 of the diff's 18 ms.
_FULL_SURE = 0.97


# Match thresholds (fd_diff_params.min_gain), one scan per diff: FIRST_GAIN from _SMALL bytes on
# (where the diff time target changes from twice HDiffPatch's to HDiffPatch's), SMALL_GAIN below
# that, TINY_GAIN below _TINY bytes (with a second scan: TINY_GAINS). The best threshold of 3, 4,
# 5, 6, 8, 12 and 16, on the pairs below 1 MiB of both corpora: 8 on the images whose changes are
# few and large (Intel HEX text, several shared libraries), 5 or 6 on most, 3 on the smallest
# images. Each scan with its estimates had taken a tenth to a sixth of a small diff's time:
# against scanning with 8, then 5, then (below 128 KiB) 3 while each was estimated smaller, one
# scan with 6 (then 3 below _TINY) made the patches of the 43 pairs below 1 MB of both corpora
# 0.4% larger on /work/fwcorpus/bench and 0.2% smaller on ../shared/corpus (geomean; 4.6% larger
# at worst, an AMD GPU firmware that 8 suits, 1.5% smaller at best). Between 32 and 128 KiB a
# second scan with 3 changed one patch of the seven (1.5% smaller). Below _TINY, 3 was estimated
# smaller than 6 on all seven pairs of both corpora (the 6-15 KB ESP32 and ESP8266 flasher stubs,
# a 23 KB Cortex-M programmer), and the scan with 6 and its estimates had taken a fifth of their
# diff time (19% of the instructions of the 6 KB ESP32 stub's, 24% of the 15 KB ESP8266 one's),
# where it was twice HDiffPatch's: they were scanned with 3 alone (see TINY_GAINS). Once the scan
# charged detours their seeks (DETOUR_WEIGHT in csrc/fd_diff.c), 5 made the patches of the 112
# pairs of 32 KiB to 1 MB of both corpora 0.44% smaller than 6 (63 smaller, 18 larger; 4: 0.37%),
# and those of the 31 such held-out pairs 1.3% (15 smaller, 8 larger); on the 48 pairs of 1 MB or
# more, 7 and 6 changed nothing (1.0001 and 0.9995 of 8's sizes).
FIRST_GAIN = 8
SMALL_GAIN = 5
TINY_GAIN = 3
# Below _TINY bytes, where a scan takes a millisecond or two, the image is scanned with each of
# TINY_GAINS and the delta estimated smaller is kept. 3 alone had made a 28 KB AArch64 GRUB module
# of a pair drawn at random (seed 2 of firmware_samples/draw.py) 132 records where 6 makes 22:
# 2,680 bytes against bsdiff4's 1,472 (1,074 with 6). On the 55 pairs below 32 KiB of every set
# (benchmark, held-out, the drawn set and two other random draws), the pair of scans made the
# patches 1.8% smaller (price 1.6%, geomean; that module 0.40, a GRUB bfs module 0.87), two larger
# (an Intel Wi-Fi PNVM 7.4% where the estimates missed, KVM's option ROM by one byte), for 12%
# more diff time (geomean of 41 of them, 1.33 at most); 3 and 5 had made three larger, by up to
# 12%.
TINY_GAINS = (TINY_GAIN, 6)
# With extreme, the image is scanned with each of these and the delta estimated smallest kept: on
# the 156 pairs of both corpora below 8 MB without a HEX layer, the best of them came to 0.979
# times the patches of the thresholds above (geomean) and the one estimated smallest to 0.989
# (9 patches over 1% larger, 10% at most; 0.80-0.86 on two x86-64 extension modules with
# 3, a rebuilt one with 32, GRUB's x86-64 EFI images with 3, SLOF with 4).
EXTREME_GAINS = (3, 4, 6, 8, 12, 16, 24, 32)
# ...and the two estimated smallest are made into patches, with the usual threshold's (so that
# the patch is never costlier than without extreme), the one of lower price kept: the estimates
# of neighbouring thresholds are often within a few per cent while their patches are not. A
# referenced stream's coding stops past _EXTREME_REFERENCED_LIMIT times the smallest estimate
# only: at 0.9 times it had stopped short on an Intel audio DSP firmware and a 64 KB x86 boot
# ROM, whose other threshold's estimate was 10% below the delta that was made of it.
_EXTREME_KEPT = 2
_EXTREME_REFERENCED_LIMIT = 1.5
_TINY = 1 << 15
_SMALL = 1_000_000
# Thresholds an in-place diff tries (it has no time target): no single value is best
# everywhere, 4 suits ELF files with debug info, 6-8 raw MCU images, 16 a few.
GAINS_SMALL = (4, 6, 8, 16)
_PARALLEL_CODING = 1 << 20
# A plan is tried (the delta between the transformed images estimated) only when it gains at
# least this share of the references of the new image in copied code: one that leaves most of
# them changed makes the regular differences of moved code (every call past a moved function
# changed by the same offset) irregular ones. On both corpora every transform kept had gained
# 7.2% or more; the plans that gained 2.2-6.9% (five raw images, an ELF kernel) all lost their
# trial: on a 1.2 MB ESP32 image the plan's 2.9% made the differences stream 1.9x larger.
_MIN_GAIN_SHARE = 1 / 16
# Referenced patches (Kind.REFERENCED: the new image coded with the old image as its prefix)
# coded by zstd are tried when both images are _REFERENCED_MAX bytes or less (ROMs of 32 KiB
# included; LZMA: see _REFERENCED_LZMA_MAX): zstd's contexts take 0.4-1 MB even for small
# images, and on the 41-123 KB images of both corpora where one was tried the diff's peak came
# to 14-18 bytes per old-image byte (8 before; 10 is the budget) for patches 0-4% smaller
# (2-11 MB and 1-2% on 270-400 KB images); below 32 KiB it won by 1-21%, where the diff's fixed
# costs are over that budget anyway. They are tried when the delta is estimated
# below _REFERENCED_MAX_SHARE of the new image (above it the new image is mostly new data, which
# the full image covers) and its control stream has a byte per _REFERENCED_DENSITY bytes of the
# new image or more (about four records per KiB: changes dense and short, where LZ77 wins; on
# sparser deltas it won only on two Wi-Fi board files whose patches were 300-1400 bytes, for 2 ms
# of coding against a 2-4 ms diff). First with a fast level
# (_REFERENCED_SCREEN_LEVEL, 0.1-1 ms there), then, where that came within _REFERENCED_SCREEN
# times the delta's estimate, with _REFERENCED_LEVEL (0.3-1.3 ms; level 19 was 4-9% smaller again
# but took 2-12 ms, as long as the whole diff or longer). On 35 pairs the engine had not been
# tuned on (bootloader modules rebuilt by another toolchain, Wi-Fi board data, Bluetooth patches),
# zstd --patch-from had been smaller than the delta on 16, by up to 37%; on all but one of those
# the fast level had come within 1.16 times the delta. A referenced stream whose price() is
# below _REFERENCED_SURE times the estimate is kept without coding the delta, which on these
# small images costs more than the rest of the diff (the coded deltas' prices came to 0.96-1.06
# times their estimates on the 31 pairs where a referenced stream was made; at 0.98 none of them
# kept a referenced patch that the coded delta would have beaten). Not tried on
# larger images whose new data repeats with the same edits (Wi-Fi board data files adding
# boards, where the referenced patch was 10-24% smaller): a referenced patch decodes the whole
# new image through zstd, 100 us for a 170 KB board file whose delta applies in 26 us and
# HDiffPatch's patch in 17 (compare.py), and loses on price() there.
_REFERENCED_MAX = 32 << 10
_REFERENCED_MAX_SHARE = 0.75
_REFERENCED_DENSITY = 64
_REFERENCED_SCREEN_LEVEL = 3
_REFERENCED_SCREEN = 1.16
_REFERENCED_LEVEL = 9
_REFERENCED_SURE = 0.98
# Referenced patches coded by LZMA (the old image as the preset dictionary) are tried for images
# below _REFERENCED_LZMA_MAX bytes whose delta is estimated at _REFERENCED_LZMA_MIN_SHARE of the
# new image or more (and below _REFERENCED_MAX_SHARE), where the zstd screen above passes. On the
# 145 pairs below 4.5 MB of both corpora, the new image coded so had been smaller than the delta
# on 62, by up to 30% (rebuilt GRUB modules and loaders, GPU microengine and audio DSP firmware,
# boot ROMs: changes too dense for copy records, short matches into the old image everywhere),
# and had lost where the records are long (MCU releases, UEFI images, a kept code transform).
# Below 1/32 it had won on 2 of 15 pairs (Wi-Fi board data, Alpha PALcode), where the screen's
# zstd coding would have cost the others, small MCU and Wi-Fi images, 10-30% of their diff time.
# The screen let through all those that could win on price() (LZMA decodes at codec.decode_ns's
# pace): 32 of the 151 pairs were coded, and 19 kept (12 of the others stopped at the limit). The
# coding stops once past _REFERENCED_LZMA_LIMIT of the delta's estimate, where it cannot win on
# price; it takes 0.1-0.35 us per byte of the new image, as long as the rest of the diff or
# longer: images of 700 KB-1 MB (U-Boot, Bluetooth firmware), where it came within 4-9% of the
# delta, would have taken 2-3 times HDiffPatch's diff time, so they are not tried. Its hash
# chains span both images: where it is coded the diff takes 16-25 bytes of memory per old-image
# byte, over the budget of 10 that the larger images keep (10 MB at most here).
_REFERENCED_LZMA_MAX = 512 << 10
_REFERENCED_LZMA_MIN_SHARE = 1 / 32
_REFERENCED_LZMA_LIMIT = 0.9
# Differences are also grouped by single bytes (format.Grouping.BYTES) where they make this
# share of the delta's estimate or more: debug sections and tables whose changes are one byte
# here and there (DWARF offsets that moved), and x86-64 code, whose instructions put a changed
# displacement anywhere in a word, where a word's other bytes and the change's place in it cost
# more than the byte itself. The estimates favour byte grouping, as LZMA finds more repeats in
# words than the estimate's sample shows: on the 24 pairs of both corpora (159 without a HEX
# layer) that pass the gates here, a whole delta's coded ratio (bytes to words) came to 0.98-1.42
# times its estimated one, 1.08 the median (_BYTEWISE_BIAS; 0.90 estimated was 1.03 coded on an
# ESP32 image). So a byte grouping estimated below _BYTEWISE_SURE times the words' (the 8 that
# were coded to 0.53-0.97) is kept as it is, and one below _BYTEWISE_SCREEN is coded for
# real along with the words' and kept where its price is lower (the winner's coding is kept for
# the patch, so the check costs one coding of the differences). Over the 164 pairs of both
# corpora that made 17 patches 0.4-16% smaller (6 x86-64 extension modules 3-16%, transformed
# deltas among them) and one 3% larger for half its apply time (zstd-coded bytes instead of
# LZMA-coded words).
_BYTEWISE_SHARE = 1 / 4
_BYTEWISE_BIAS = 1.08
_BYTEWISE_SURE = 0.88
_BYTEWISE_SCREEN = 0.95
# ...and only where the changes are mostly one byte to a word (1.03-1.58 changed bytes per
# changed word where it won): relocated addresses and rebuilt code of fixed-width instruction
# sets change two or more, and the check would code both groupings of a 30 MB Rust executable
# (2.15 there, 1.05 times the words' coded by byte).
_BYTEWISE_BYTES_PER_WORD = 1.6
# A changed word's differences are also written as the digits of the little-endian sum that
# turns the copied word into the new one (format.Grouping.SUMS): an address or offset that moved
# by a constant is then one constant, whatever carries it crosses, where its byte differences
# vary with them. Kept where the estimate of the words stream so is below _SUMS_SURE times that
# of the byte differences: of the 78 deltas of both corpora (164 pairs) whose sums were
# estimated smaller, 24 were estimated at 0.98-1.0 of the byte differences and 14 of them coded
# larger (by up to 2.9%: U-Boot images for AArch64, an ESP32-C3 stub), against one of the 54
# below (by 12 bytes); those coded to 0.47-0.99 of the byte differences.
_SUMS_SURE = 0.98
# Differences are also written as the sums of spans of _SPAN bytes that start at any changed byte
# (format.Grouping.SPANS): offsets packed at any alignment (DWARF's, the displacements of x86-64
# instructions) that moved by a constant are then one constant each, where by byte a carry is one
# more changed byte (a 4-byte DWARF offset that moved by 103 carries into its second byte about
# two times in five, and by word it is anywhere in one or two words). Made where the
# differences make _SPANS_SHARE of the delta's estimate or more. Measured on the 208 pairs of
# both corpora and the held-out set (the differences of each delta coded every way): spans of 2
# bytes took the coded differences of 191 deltas to 0.966 of the best of the other groupings
# (geomean), of 3 or 4 bytes (the better of them per pair) to 0.963; on a 5.5 MB x86-64 module
# whose .debug_info offsets moved they were 0.31 of them (23.6 KB to 7.1 KB). Their estimates
# favour them as the byte grouping's do (coded against estimated, relative to the words': 1.07
# the median), so they compete through _BYTEWISE_BIAS. They are weighed against the delta by
# word as it is coded (its sums where those are kept), not the plain words the byte grouping's
# screens were set on: words moved by a constant are one sum each, where spans of 2 bytes may
# take two. Of the deltas whose spans were estimated below _SPANS_SURE times that (the whole
# delta), every one coded smaller than the other groupings (0.33-0.99); between it and
# _SPANS_SCREEN they are coded for real and kept where they price lower, where their streams
# are below _SPANS_CODED_MAX bytes. Coding both groupings is one more coding of the differences
# (on a 12 MB x86-64 module 2.1 s, against 2.5 s for the rest of its diff): with the screen at
# 0.96 the diffs of the 208 pairs took 1.10 times as long as without spans (geomean; up to twice
# as long on small images), at 0.90 1.05, for patches 0.7% larger. Above 0.90 spans had won by 2-5% where they
# won (by up to 15% on a 23 MB GPU firmware where they lost: estimated at 0.91, coded at 1.15).
_SPAN = 2
_SPANS_SHARE = 1 / 8
_SPANS_SURE = 0.80
_SPANS_SCREEN = 0.90
_SPANS_CODED_MAX = 1 << 20
_VARINT_ENDS = bytes(range(128))
_WINDOW_DIVISOR = 4
_WINDOW_MIN = 1 << 18
# Bytes of container overhead per stream (codec, two length varints), for comparing layouts.
_STREAM_OVERHEAD = 4


def encoder_window(old_len: int) -> int:
    """The longest LZMA dictionary a diff of an old image of old_len bytes codes with. LZMA's
    encoder takes up to 13 bytes per dictionary byte (binary trees; hash chains 8): a quarter of
    the old image keeps it near 3 bytes per old-image byte, so that the coding of a delta that
    is mostly new data (UEFI images of compressed volumes) stays within the diff's budget of 10
    bytes per old-image byte, like the index before it (4.5-6, images 2). Streams shorter than
    the window, nearly all, are coded as before."""
    return max(old_len // _WINDOW_DIVISOR, _WINDOW_MIN)


def default_threads() -> int:
    """Threads a diff uses unless told: one per core."""
    return os.cpu_count() or 1


def diff(old: Buffer, new: Buffer, *, progress: Progress | None = None, threads: int | None = None,
         gain: int | None = None, code: bool = True, extreme: bool = False) -> bytes:
    """Return a patch that turns old into new.

    progress(done, total) is called now and then. threads (default: one per core) share the
    work; the patch is the same whatever their number. gain fixes the match threshold (else
    one per image size). With code (the default) a delta between the images with their machine
    code transformed (fotadelta.delta.code), and one whose copies of code are relocated for
    where they land (docs/format.md#relocated-copies-flags-bit-7), are also made, and kept when
    smaller. The result carries the new image coded against the old one (small images whose
    changes are dense and short), or the compressed new image, instead of a delta when that is
    smaller; of the candidates, the one of lowest codec.price() (size and apply time) is kept.

    extreme keeps the smallest patch instead, of more candidates: every threshold of
    EXTREME_GAINS and the usual one scanned (unless gain is given) and the deltas of the two
    estimated smallest and the usual one made, each with every grouping of its differences
    (spans of each length), and the new image coded against the old one at any size up to
    codec.REFERENCED_MAX_IMAGE. It takes 1.4-18 times the diff time (5.1 the median) and up to
    30 bytes of memory per old-image byte; stream codecs and the code transform are still
    chosen on price."""
    return _diff(old, new, None, progress=progress, threads=threads, gain=gain, code=code, extreme=extreme)


Header = tuple[int, int, bytes, bytes]
Streams = tuple[bytes, bytes, bytes, bytes]


class _Delta:
    """Record streams of one candidate delta and their estimated size (each stream estimated
    with the shape it most often takes, alike for every candidate)."""

    def __init__(self, raw: Streams, stats: dict[str, int], sums: bytes, gain: int,
                 transform: CodeTransform | _Relocator | None, pool: ThreadPoolExecutor | None,
                 like: _Delta | None = None, grouping: Grouping = Grouping.WORDS, span: int = 0) -> None:
        """sums: its differences by word as sums (Grouping.SUMS; empty by byte), made into
        by_sums where their stream is estimated below _SUMS_SURE times the byte differences'.
        transform: the code transform its images are transformed by, or the relocation of its
        copies. like: a delta whose estimates are taken for the streams equal to its own (the
        transformed delta keeps the plain one's records, so its ctrl stream), and whose records
        (the plain ctrl stream, records) it was made along. grouping: that of its differences
        (format.Grouping), span the bytes per span of Grouping.SPANS."""
        self.raw, self.stats, self.gain, self.transform = raw, stats, gain, transform
        self.records: bytes = raw[0] if like is None else like.records
        self.grouping, self.span = grouping, span
        if like is None:
            self.estimates = estimate_streams(raw, pool, RECORD_SHAPES)
        else:
            todo = [k for k, (a, b) in enumerate(zip(raw, like.raw)) if a != b]
            fresh = dict(zip(todo, estimate_streams([raw[k] for k in todo], pool, [RECORD_SHAPES[k] for k in todo])))
            self.estimates = [fresh.get(k, e) for k, e in enumerate(like.estimates)]
        self.code: bytes = (b"" if transform is None else like.code if like is not None and like.transform is transform
                            else transform.encode())
        self.size = sum(e.size + _STREAM_OVERHEAD for e in self.estimates) + len(self.code)
        self.coded: dict[int, tuple[Codec, bytes]] = {}  # streams coded already, by index
        self.by_sums: _Delta | None = None
        if sums and stats["carried"]:  # without a carry the sums are the byte differences
            by_sums = _Delta((raw[0], raw[1], sums, raw[3]), stats, b"", gain, transform, pool, self, Grouping.SUMS)
            if by_sums.estimates[2].size < _SUMS_SURE * self.estimates[2].size:
                self.by_sums = by_sums

    @property
    def by_word(self) -> _Delta:
        """Itself, or its differences as sums where those were estimated smaller."""
        return self if self.by_sums is None else self.by_sums

    def differences_price(self, pool: ThreadPoolExecutor | None, window: int) -> float:
        """price() of its differences (wmap and words streams) coded for real; the codings are
        kept for encode."""
        self._code((1, 2), pool, window)
        return sum(_stream_price(Stream(self.coded[k][0], len(self.raw[k]), self.coded[k][1])) for k in (1, 2))

    def _code(self, indices: Sequence[int], pool: ThreadPoolExecutor | None, window: int) -> None:
        todo = [k for k in indices if k not in self.coded]
        coded = compress_streams([self.raw[k] for k in todo], [self.estimates[k] for k in todo], pool, window)
        self.coded.update(zip(todo, coded))

    def encode(self, header: Header, layer: _Split | None, pool: ThreadPoolExecutor | None, window: int,
               smallest: bool = False) -> bytes:
        """The patch, each stream coded with the shape it was estimated with (LZMA dictionaries
        of at most window bytes; estimating every shape again picked patches no smaller, 0.04%
        on the pairs below 1 MB of both corpora); a small delta as one solid stream when that is
        estimated smaller, and, where some of its streams were coded for real already (its
        differences, _grouped), when it also prices lower than the separate streams.
        smallest (diff's extreme): a small delta is coded both ways and the smaller kept."""
        plan = _coded(self.code, pool) if self.transform is not None else None
        code, relocation = (plan, None) if isinstance(self.transform, CodeTransform) else (None, plan)
        file_layer = None if layer is None else Layer(len(layer.old), len(layer.new), _coded(layer.layout, pool),
                                                      layer.container)
        guesses = self.estimates
        by_solid = None
        # Joined only when short enough to go solid: a copy of a long delta is memory for nothing.
        if sum(map(len, self.raw)) < (_SOLID_MAX if header[1] >= _SMALL else _SOLID_MAX_SMALL):
            records = b"".join(self.raw)
            solid = estimate(records, _SOLID_SHAPES)
            if smallest or solid.size + len(self.raw) * 2 < sum(e.size + _STREAM_OVERHEAD for e in guesses):
                coded = compress_streams((records,), (solid,), pool, window)
                by_solid = Patch(Kind.SOLID, *header, _streams((records,), coded), tuple(map(len, self.raw)), code,
                                 file_layer, self.grouping, self.span, relocation).encode()
                if not (self.coded or smallest):
                    return by_solid
        self._code(range(len(self.raw)), pool, window)
        coded = [self.coded[k] for k in range(len(self.raw))]
        patch = Patch(Kind.DELTA, *header, _streams(self.raw, coded), code=code, layer=file_layer,
                      grouping=self.grouping, span=self.span, relocation=relocation).encode()
        return _cheaper(patch, by_solid, len if smallest else _patch_price)


class _Relocator(NamedTuple):
    """A relocation (format.Relocation) and its parsed plan, which the core relocates by."""

    relocation: Relocation
    plan: _core.RelocPlan

    @classmethod
    def of(cls, relocation: Relocation) -> _Relocator:
        return cls(relocation, _core.RelocPlan(relocation.encode()))

    def encode(self) -> bytes:
        return self.relocation.encode()


def _reloc(delta: _Delta) -> _core.RelocPlan | None:
    """The plan delta's copies are relocated by, None for none."""
    return delta.transform.plan if isinstance(delta.transform, _Relocator) else None


def _coded(raw: bytes, pool: ThreadPoolExecutor | None) -> Stream:
    """One stream, compressed as its estimate says."""
    ((codec, data),) = compress_streams((raw,), (estimate(raw),), pool)
    return Stream(codec, len(raw), data)


class _Split(NamedTuple):
    """Intel HEX or UF2 images as their payloads (what the delta is made between) and the
    layout of the new one (csrc/fd_hex.h, csrc/fd_uf2.h)."""

    old: bytes
    new: bytes
    layout: bytes
    container: Container


class _ContainerFile(NamedTuple):
    """How a container file is split into payload and layout and joined back, and its names in
    info() and in errors."""

    split: Callable[[Buffer], tuple[bytes, bytes] | None]
    join: Callable[[Buffer, Buffer, int], bytes]
    name: str
    title: str


_CONTAINERS = {
    Container.HEX: _ContainerFile(_core.hex_split, _core.hex_join, "ihex", "Intel HEX"),
    Container.UF2: _ContainerFile(_core.uf2_split, _core.uf2_join, "uf2", "UF2 image"),
}


def _layer_split(old: Buffer, new: Buffer) -> _Split | None:
    """Both images as payloads when both are Intel HEX, or both UF2 (a delta of the file is up
    to several times one of the bytes it programs), else None."""
    for container, file in _CONTAINERS.items():
        split_old = file.split(old)
        split_new = file.split(new) if split_old is not None else None
        if split_old is not None and split_new is not None:
            return _Split(split_old[0], split_new[0], split_new[1], container)
    return None


def _diff(old: Buffer, new: Buffer, index: _core.OldIndex | None, *, progress: Progress | None = None,
          threads: int | None = None, gain: int | None = None, code: bool = True, extreme: bool = False) -> bytes:
    """diff, with the index of old given when the caller has built it already (inplace.diff).

    Choices are made on estimates (csrc/fd_est.h) and mostly only the chosen delta is
    compressed: the plain delta; the delta between the code-transformed images along the plain
    records (one pass); its differences grouped by byte (coded for real where the estimates are
    close); for small images, the new image coded with the old one as its dictionary; the full
    image when the delta is large."""
    threads = default_threads() if threads is None else threads
    if threads < 1:
        raise ValueError("threads must be at least 1")
    if gain is not None and gain < 0:
        raise ValueError("gain must not be negative")
    header = (len(old), len(new), source_fingerprint(old), target_digest(new))
    image = new  # the new image as given, for the full-image fallback
    layer = _layer_split(old, new)
    if layer is not None:
        old, new, index = layer.old, layer.new, None
    own_index = index is None
    if index is None:
        index = _core.OldIndex(old, threads)
    # Below _PARALLEL_CODING bytes the coders' work is shorter than a thread hand-off (which
    # takes tens of milliseconds on a loaded machine): it runs on this thread.
    parallel = threads > 1 and len(new) >= _PARALLEL_CODING
    with ThreadPoolExecutor(max_workers=threads) if parallel else nullcontext() as pool:
        plans = _code_plans(old, new) if code else []
        if len(plans) > 1:
            # A raw image (no ELF or PE headers) is tried only as the architectures its
            # references read as (code_transform.likely): learning a plan for each of the first five
            # had taken a third of the diff time of a small Cortex-M image. (An Arm ELF image's
            # two maps are both learnt.)
            plans = [plans[k] for k in code_transform.likely(new, [n for _o, n in plans])]
        usual = _gain(len(new)) if gain is None else gain
        # With extreme the usual threshold is scanned too: its patch is a candidate, so extreme's
        # is never the larger.
        if extreme and gain is None:
            gains, kept = tuple(sorted({*EXTREME_GAINS, usual})), _EXTREME_KEPT
        else:
            gains, kept = (TINY_GAINS if gain is None and len(new) < _TINY else (usual,)), 1
        scans: list[_Delta] = []  # the kept smallest estimated, and with extreme the usual threshold's
        for trial, g in enumerate(gains):
            report = _scaled(progress, trial, len(gains))
            scans.append(_Delta(*index.diff_streams(new, min_gain=g, progress=report), g, None, pool))
            scans = [d for k, d in enumerate(sorted(scans, key=lambda d: d.size))
                     if k < kept or (extreme and d.gain == usual)]
        if own_index:
            del index  # its suffix arrays (4 bytes per old byte) are not needed any more
        window = encoder_window(len(old))
        candidates = [_refined(old, new, plans, scan, pool, extreme) for scan in scans]
        del scans
        if progress is not None:
            progress(len(new), len(new))  # the scan's last step is not reported
        # The screens below were set on the word grouping's estimates; their early returns are
        # taken against the finer groupings' too, where they may win.
        best, finer = min(candidates, key=lambda c: _smaller(*c))
        # With extreme the smallest patch is kept (nothing is kept before every candidate is made);
        # else the one of lowest price().
        rank = len if extreme else _patch_price
        lowest = 0 if extreme else _smaller(best, finer)
        referenced = _referenced(old, new, best, extreme) if layer is None else None
        by_reference = None
        if referenced is not None:
            by_reference = Patch(Kind.REFERENCED, *header, (referenced,)).encode()
            if _stream_price(referenced) < _REFERENCED_SURE * lowest:
                return by_reference
        # The full image is coded first where it may win: below _FULL_SURE of the delta's
        # estimate it is kept without coding the delta.
        full = _full(header, image, best, window) if best.size >= _FULL_IMAGE_CHECK_RATIO * len(image) else None
        if full is not None and len(full) < _FULL_SURE * lowest:
            return _cheaper(full, by_reference)
        del best, finer
        # With extreme every grouping of each candidate is made.
        finals = ([d for word, finer in candidates for d in (word, word.by_sums, *finer) if d is not None] if extreme
                  else [_grouped(*c, pool, window) for c in candidates])
        patch = min((d.encode(header, layer, pool, window, extreme) for d in finals), key=rank)
        # Within a few bytes the full image wins: it applies to any source image.
        if full is not None and len(full) <= len(patch) + _FULL_IMAGE_SLACK:
            patch = full
    return _cheaper(patch, by_reference, rank)


def _refined(old: Buffer, new: Buffer, plans: list[tuple[code_transform.Ranges, code_transform.Ranges]],
             plain: _Delta, pool: ThreadPoolExecutor | None, extreme: bool = False) -> tuple[_Delta, list[_Delta]]:
    """Of the plain delta, the delta between the code-transformed images along its records and
    the delta along its records with relocated copies, the one that prices lowest (each with its
    finer groupings, _finer, where those are estimated smaller), and its finer groupings."""
    best, finer = plain, _finer(old, new, plain, pool, extreme)
    lowest = float(_smaller(best, finer))
    learnt = _learn(old, new, plans, plain.raw[0], pool)
    transform = _best(learnt, _MIN_GAIN_SHARE)
    if transform is not None:
        best, finer, lowest = _transformed(old, new, transform, plain, (best, finer, lowest), pool, extreme)
    relocation = _relocation(old, new, plans, learnt, plain.raw[0], pool)
    if relocation is None:
        return best, finer
    relocator = _Relocator.of(relocation)
    relocated = _Delta(*_core.delta_along(old, new, plain.raw[0], reloc=relocator.plan), plain.gain, relocator, pool,
                       plain)
    # Its finer groupings are made only where its words beat the kept delta's: they gain alike.
    if not relocated.stats["relocated"] or relocated.by_word.size >= best.by_word.size:
        return best, finer
    relocated_finer = _finer(old, new, relocated, pool, extreme)
    if price(_smaller(relocated, relocated_finer), code_transform.relocation_ns(relocation.arch,
                                                                               relocated.stats["relocated"])) < lowest:
        best, finer = relocated, relocated_finer
    return best, finer


def _transformed(old: Buffer, new: Buffer, transform: CodeTransform, plain: _Delta,
                 kept: tuple[_Delta, list[_Delta], float], pool: ThreadPoolExecutor | None, extreme: bool
                 ) -> tuple[_Delta, list[_Delta], float]:
    """The delta between the images transformed by transform along plain's records, with its
    finer groupings and its price, where that prices below kept's; else kept."""
    t_old = code_transform.transformed(old, transform.old_ranges, transform.moves)
    t_new = code_transform.transformed(new, transform.new_ranges)
    # The transformed images take the plain delta's records: an index and a scan of their own
    # made patches 1.3% smaller (geomean; 3.5% on the median pair whose transform was kept,
    # 6.4% at most) on the pairs below 1 MB of both corpora, for 15% more diff time, where the
    # diff time is the target furthest from being met.
    coded = _Delta(*_core.delta_along(t_old, t_new, plain.raw[0]), plain.gain, transform, pool, plain)
    # Apply transforms the code of both images (on a device, a block for each short copy): the
    # transform is kept when it pays for that time at the rate patch bytes are traded for apply
    # time (codec.APPLY_NS_PER_BYTE). On UEFI images of compressed volumes it had saved 0.01% and
    # cost most of the apply time; on a 159 KB Cortex-M image it saved 9 bytes of 691 and doubled
    # the apply time. Each is taken with its finer groupings where those are estimated smaller
    # (x86-64 code: a transformed delta may lose by words and win by bytes).
    coded_finer = _finer(t_old, t_new, coded, pool, extreme)
    coded_price = price(_smaller(coded, coded_finer), code_transform.apply_ns(transform))
    return (coded, coded_finer, coded_price) if coded_price < kept[2] else kept


def _relocation(old: Buffer, new: Buffer, plans: list[tuple[code_transform.Ranges, code_transform.Ranges]],
                learnt: list[tuple[CodeTransform, int, int]], ctrl: bytes, pool: ThreadPoolExecutor | None
                ) -> Relocation | None:
    """The relocation of copies for the images: the moves of the plan that gains most, learnt
    with the code addressed by image offset (what copies are relocated by; the plans learnt
    already where their code is, as in raw images), None when none gains."""
    by_offset = [(code_transform.offsets(o), code_transform.offsets(n)) for o, n in plans]
    transform = _best(learnt if by_offset == plans else _learn(old, new, by_offset, ctrl, pool))
    if transform is None:
        return None
    return Relocation(transform.old_ranges[0].arch, transform.moves)


def _finer(old: Buffer, new: Buffer, delta: _Delta, pool: ThreadPoolExecutor | None,
           extreme: bool = False) -> list[_Delta]:
    """delta with its differences grouped finer than by aligned words, along the same records
    (old and new: the images the delta is between): of its byte grouping (_by_byte) and its
    spans of _SPAN bytes (_by_span), the one estimated smaller, where one is estimated below
    its screen; with extreme, each that is (spans of every length). Unscreened, extreme's
    groupings had taken its diff time from 4.1 to 6.0 times the default's (median, 164 pairs)
    for patches 0.55% smaller."""
    lengths = range(SPAN_MIN, SPAN_MAX + 1) if extreme else (_SPAN,)
    spans = [_by_span(old, new, delta, pool, n) for n in lengths]
    made = [d for d in (_by_byte(old, new, delta, pool), *spans) if d is not None]
    if extreme or not made:
        return made
    return [min(made, key=lambda d: d.size)]


def _by_byte(old: Buffer, new: Buffer, delta: _Delta, pool: ThreadPoolExecutor | None) -> _Delta | None:
    """delta with its differences grouped by single bytes instead of words, along the same
    records, where the differences make _BYTEWISE_SHARE of its estimate or more and a changed
    word has _BYTEWISE_BYTES_PER_WORD changed bytes or fewer, and it is estimated below
    _BYTEWISE_SCREEN times delta; else None."""
    if sum(e.size for e in delta.estimates[1:3]) < _BYTEWISE_SHARE * delta.size:
        return None
    if delta.stats["changed"] > _BYTEWISE_BYTES_PER_WORD * _varint_count(delta.raw[1]):
        return None
    by_byte = _Delta(*_core.delta_along(old, new, delta.records, _core.GROUP_BYTES, reloc=_reloc(delta)), delta.gain,
                     delta.transform, pool, delta, Grouping.BYTES)
    return by_byte if by_byte.size < _BYTEWISE_SCREEN * delta.size else None


def _by_span(old: Buffer, new: Buffer, delta: _Delta, pool: ThreadPoolExecutor | None, span: int) -> _Delta | None:
    """delta with its differences as the sums of spans of span bytes (Grouping.SPANS), along
    the same records, where the differences make _SPANS_SHARE of its estimate or more and it is
    estimated below _SPANS_SCREEN times delta by word (delta.by_word), or _SPANS_SURE where its
    differences are too long to code for a check (_SPANS_CODED_MAX); else None."""
    if sum(e.size for e in delta.estimates[1:3]) < _SPANS_SHARE * delta.size:
        return None
    (ctrl, wmap, _words, extra), stats, sums = _core.delta_along(old, new, delta.records, _core.GROUP_SPANS, span,
                                                                 _reloc(delta))
    by_span = _Delta((ctrl, wmap, sums, extra), stats, b"", delta.gain, delta.transform, pool, delta, Grouping.SPANS,
                     span)
    limit = _SPANS_SCREEN if len(wmap) + len(sums) < _SPANS_CODED_MAX else _SPANS_SURE
    return by_span if by_span.size < limit * delta.by_word.size else None


def _smaller(delta: _Delta, finer: Sequence[_Delta]) -> int:
    """The estimated size of delta (its sums where smaller) or of its finer groupings (by
    _BYTEWISE_BIAS), the smallest."""
    return min([delta.by_word.size, *(int(_BYTEWISE_BIAS * d.size) for d in finer)])


def _grouped(delta: _Delta, finer: Sequence[_Delta], pool: ThreadPoolExecutor | None, window: int) -> _Delta:
    """The delta to code, by the grouping of its differences: its finer grouping (_finer) where
    that is estimated below its sure ratio times delta (_BYTEWISE_SURE; spans: _SPANS_SURE times
    delta by word), or where its differences, coded for real, price below those by word; else by
    word, as sums (delta.by_sums) where they were estimated smaller."""
    by_word = delta.by_word
    if not finer:
        return by_word
    (fine,) = finer
    if (fine.size < _SPANS_SURE * by_word.size if fine.grouping == Grouping.SPANS
            else fine.size < _BYTEWISE_SURE * delta.size):
        return fine
    return fine if fine.differences_price(pool, window) < by_word.differences_price(pool, window) else by_word


def _full(header: Header, image: Buffer, delta: _Delta, window: int) -> bytes | None:
    """The full-image patch (Kind.FULL) of image when the estimates leave it a chance against
    the delta, else None. It is coded for real when neither a floor of its size (small images,
    where the floor is cheaper than an estimate) nor the estimates rule it out: first with one
    shape (a third of the cost of all), which rules out most images."""
    whole = bytes(image)
    floor = size_floor(whole) if len(whole) < _SMALL else 0
    if floor > delta.size + _FULL_IMAGE_SLACK:
        return None
    guess = estimate(whole, _FULL_SCREEN_SHAPES)
    if guess.size <= delta.size * _FULL_SCREEN_SLACK:
        guess = estimate(whole)
    may_win = (guess.size <= _FULL_CODE_SHARE * delta.size or guess.size >= len(whole)
               or delta.stats["copied"] < _FULL_COPIED_SHARE * len(whole))
    if guess.size > delta.size or not may_win:
        return None
    coded_image = compress(whole, guess, lean=True, window=window)
    return Patch(Kind.FULL, *header, _streams((whole,), [coded_image])).encode()


def _referenced(old: Buffer, new: Buffer, delta: _Delta, extreme: bool = False) -> Stream | None:
    """The referenced stream (Kind.REFERENCED) of new against old of lowest price(), zstd- or
    LZMA-coded, when the delta is one it may beat and zstd's fast level comes within
    _REFERENCED_SCREEN times its estimated size, else None. extreme: LZMA is tried on images up
    to REFERENCED_MAX_IMAGE, without the screen (the coding stops at its limit all the same)."""
    if not old or delta.size >= _REFERENCED_MAX_SHARE * len(new):
        return None
    by_zstd = (len(new) <= _REFERENCED_MAX and len(old) <= _REFERENCED_MAX
               and len(delta.raw[0]) * _REFERENCED_DENSITY >= len(new))
    lzma_max = REFERENCED_MAX_IMAGE + 1 if extreme else _REFERENCED_LZMA_MAX
    by_lzma = (len(new) < lzma_max and len(old) < lzma_max
               and delta.size >= _REFERENCED_LZMA_MIN_SHARE * len(new))
    if not (by_zstd or by_lzma):
        return None
    screen = compress_referenced(old, new, _REFERENCED_SCREEN_LEVEL) if by_zstd or not extreme else None
    passed = screen is not None and len(screen) <= _REFERENCED_SCREEN * delta.size
    if not (passed or extreme):
        return None
    streams = []
    if by_zstd and screen is not None and passed:
        coded = min(screen, compress_referenced(old, new, _REFERENCED_LEVEL), key=len)
        streams.append(Stream(Codec.ZSTD, len(new), coded))
    if by_lzma:
        limit = (_EXTREME_REFERENCED_LIMIT if extreme else _REFERENCED_LZMA_LIMIT) * delta.size
        packed = compress_referenced_lzma(old, new, sampled_shape(new), int(limit))
        if packed is not None:
            streams.append(Stream(Codec.LZMA, len(new), packed))
    return min(streams, key=_stream_price) if streams else None


def _stream_price(s: Stream) -> float:
    """price() of a stream: its bytes and its decoding."""
    return price(len(s.data), decode_ns(s.codec, len(s.data), s.raw_len))


def _patch_price(patch: bytes) -> float:
    """price() of a patch: its bytes and the decoding of its streams."""
    return len(patch) + sum(_stream_price(s) - len(s.data) for s in Patch.parse(patch).streams)


def _cheaper(patch: bytes, other: bytes | None, rank: Callable[[bytes], float] = _patch_price) -> bytes:
    """other when it is a patch of lower rank (_patch_price(), or len for the smaller) than patch,
    else patch."""
    return other if other is not None and rank(other) < rank(patch) else patch


def _gain(size: int) -> int:
    """The threshold a new image of size bytes is scanned with."""
    if size >= _SMALL:
        return FIRST_GAIN
    return SMALL_GAIN if size >= _TINY else TINY_GAIN


def _code_plans(old: Buffer, new: Buffer) -> list[tuple[code_transform.Ranges, code_transform.Ranges]]:
    """Pairs of code maps to try: the images' own when both name one architecture (ELF, PE),
    else one pair per architecture (raw images)."""
    olds, news = code_transform.code_ranges(old), code_transform.code_ranges(new)
    pairs = (code_transform.reachable(o, n) for o in olds for n in news if o and n and o[0].arch == n[0].arch)
    return [p for p in pairs if p is not None]


def _best_plan(old: Buffer, new: Buffer, plans: list[tuple[code_transform.Ranges, code_transform.Ranges]],
               ctrl: bytes, pool: ThreadPoolExecutor | None, min_share: float = 0.0) -> CodeTransform | None:
    """The plan with the largest estimated gain (the first of equals), None when none gains, or
    none gains at least min_share of the references it pairs up."""
    return _best(_learn(old, new, plans, ctrl, pool), min_share)


def _learn(old: Buffer, new: Buffer, plans: list[tuple[code_transform.Ranges, code_transform.Ranges]],
           ctrl: bytes, pool: ThreadPoolExecutor | None) -> list[tuple[CodeTransform, int, int]]:
    """Each plan's transform, estimated gain and paired references (code_transform.plan); the
    plans of a raw image (one per architecture) are learnt in parallel with a pool."""
    def learn(ranges: tuple[code_transform.Ranges, code_transform.Ranges]) -> tuple[CodeTransform, int, int]:
        return code_transform.plan(old, new, *ranges, ctrl)
    return list(pool.map(learn, plans) if pool is not None else map(learn, plans))


def _best(learnt: list[tuple[CodeTransform, int, int]], min_share: float = 0.0) -> CodeTransform | None:
    """The learnt transform with the largest estimated gain (the first of equals), None when
    none gains, or none gains at least min_share of the references it pairs up."""
    best, best_gain = None, 0
    for transform, gain, paired in learnt:
        if gain > best_gain and gain >= min_share * paired:
            best, best_gain = transform, gain
    return best


def _scaled(progress: Progress | None, trial: int, trials: int) -> Progress | None:
    """Report one trial's progress as its share of the whole diff."""
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        progress(trial * total + done, trials * total)
    return report


# A delta patch whose coded (not stored) streams are shorter than this in all, for an old image
# shorter than _ONE_CALL_IMAGE, is applied in one call to the core (_core.apply_delta), with the
# same checks: on small images the steps between the C parts (the parsed patch's objects, the
# choice of threads) had taken a third of the apply time. Their decoding is never long enough
# for threads: their LZMA streams take under 10 ms (_PARALLEL_NS), stored ones nothing, and their
# code transforms a millisecond or two.
_ONE_CALL_CODED = 1 << 17
_ONE_CALL_IMAGE = 1 << 20


def apply(old: Buffer, patch: bytes) -> bytes:
    """Return the new image; PatchError if the patch is bad or was made from another image."""
    patch = bytes(patch)  # a caller's bytearray may not change under the views
    if len(old) < _ONE_CALL_IMAGE:
        new = _core.apply_delta(old, patch, decompress, source_fingerprint, target_digest, _ONE_CALL_CODED)
        if new is not None:
            return new
    return _apply_steps(old, patch)


def _apply_steps(old: Buffer, patch: bytes) -> bytes:
    """apply, a step at a time: any patch (full images, HEX and UF2 layers, decoding on threads)."""
    p = _parse_for(old, patch)
    if p.kind == Kind.FULL:
        new = bytes(decompress(p.streams[0].codec, p.streams[0].data, p.new_size))
    elif p.kind == Kind.REFERENCED:
        new = decompress_referenced(p.streams[0].codec, old, p.streams[0].data, p.new_size)
    else:
        new = _apply_records(p, old)
    _verify(p, target_digest(new, len(p.new_digest)))
    return new


def _apply_records(p: Patch, old: Buffer) -> bytes:
    """The new image of a delta patch, in memory; through the HEX or UF2 layer when it has one."""
    source = old
    if p.layer is not None:
        file = _CONTAINERS[p.layer.container]
        split = file.split(old)
        if split is None or len(split[0]) != p.inner_sizes[0]:
            raise PatchError(f"the source image is not the {file.title} this patch was made from")
        source = split[0]
    plan = _code_plan(p)
    # A zstd extra stream (mostly new data, as in UEFI images of compressed volumes) is decoded
    # straight into the new image's tail, where fd_apply reads it: on a 2 MB image with 1.4 MB
    # of it, its own buffer's page faults and the copy out of it had taken a third of the
    # apply time. LZMA's decoder has no such output.
    tail = p.streams[3] if p.kind == Kind.DELTA and p.streams[3].codec == Codec.ZSTD else None
    ctrl, wmap, words, extra, forward = _prepare(p, source, plan, tail is None)
    payload = _core.apply_memory(source if forward is None else forward, ctrl, wmap, words, extra,
                                 p.inner_sizes[1], plan, old_transformed=forward is not None,
                                 extra_len=0 if tail is None else tail.raw_len,
                                 extra_fill=None if tail is None else partial(decompress_into, tail.data),
                                 undo_threads=_undo_threads(plan), grouping=p.grouping, span=p.span,
                                 reloc=_reloc_plan(p))
    if p.layer is None:
        return payload
    layout = p.layer.layout
    return _CONTAINERS[p.layer.container].join(payload, decompress(layout.codec, layout.data, layout.raw_len),
                                               p.new_size)


def diff_file(old_path: str | Path, new_path: str | Path, patch_path: str | Path, *,
              progress: Progress | None = None, threads: int | None = None, extreme: bool = False) -> PatchInfo:
    """Diff two image files into a patch file; returns its description."""
    with _mapped(old_path) as old, _mapped(new_path) as new:
        patch = diff(old, new, progress=progress, threads=threads, extreme=extreme)
    write_atomic(patch_path, patch)
    return info(patch)


def apply_file(old_path: str | Path, patch_path: str | Path, out_path: str | Path) -> None:
    """Apply a patch file, streaming the new image to out_path.

    The new image is never held in memory whole (except Intel HEX text or a UF2 image, rebuilt
    from its payload, and a referenced image, below 512 KiB unless made with extreme, and at
    most codec.REFERENCED_MAX_IMAGE); out_path appears only once the target hash has been
    verified."""
    patch = Path(patch_path).read_bytes()
    with _mapped(old_path) as old:
        p = _parse_for(old, patch)

        def produce(f: BinaryIO) -> None:
            digest = target_hasher(len(p.new_digest))

            def write(chunk: bytes) -> None:
                digest.update(chunk)
                f.write(chunk)

            if p.kind == Kind.FULL:
                s = p.streams[0]
                read = open_stream(s.codec, s.data, s.raw_len)
                while chunk := read(1 << 16):
                    write(chunk)
            elif p.kind == Kind.REFERENCED:
                write(decompress_referenced(p.streams[0].codec, old, p.streams[0].data, p.new_size))
            elif p.layer is not None:
                # HEX text and UF2 blocks are made from the whole new payload: the payload (and
                # the file, a few MB at most for the flash images they hold) is built in memory.
                write(_apply_records(p, old))
            elif p.kind == Kind.SOLID:
                # A solid patch is small by construction: decode its records in memory.
                ctrl, wmap, words, extra = (open_stream(Codec.STORED, b, len(b)) for b in _record_streams(p))
                _core.apply_stream(old, ctrl, wmap, words, extra, write, p.new_size, code=_code_plan(p),
                                   ctrl_len=p.record_lengths[0], grouping=p.grouping, span=p.span,
                                   reloc=_reloc_plan(p))
            else:
                ctrl, wmap, words, extra = (open_stream(s.codec, s.data, s.raw_len) for s in p.streams)
                _core.apply_stream(old, ctrl, wmap, words, extra, write, p.new_size, code=_code_plan(p),
                                   ctrl_len=p.record_lengths[0], grouping=p.grouping, span=p.span,
                                   reloc=_reloc_plan(p))
            _verify(p, digest.digest())

        with atomic_writer(out_path) as f:
            produce(f)


@dataclass(frozen=True)
class StreamInfo:
    """Size of one stream before and after compression."""

    name: str
    codec: str
    raw_bytes: int
    stored_bytes: int


@dataclass(frozen=True)
class PatchInfo:
    """What `fotadelta info` reports about a patch."""

    format_version: int
    kind: str  # "delta", "full" or "referenced"
    solid: bool  # the delta's record streams are compressed as one
    patch_bytes: int
    old_size: int
    new_size: int
    old_fingerprint: str
    new_digest: str
    streams: list[StreamInfo] = field(default_factory=list)
    records: int = 0
    copied_bytes: int = 0
    changed_words: int = 0  # changed bytes (or spans) when the differences are grouped by byte (or span)
    changed_bytes: int = 0  # non-zero differences (digits of sums)
    differences: str = "words"  # their grouping: "words", "bytes", "sums" or "spans" (format.Grouping)
    span_bytes: int = 0  # bytes per span of "spans"
    inserted_bytes: int = 0
    code: str = ""  # architecture of a code-transformed delta or relocated copies ("thumb2", ...), "" for none
    code_ranges: int = 0  # code ranges of the new image (a code transform)
    code_moves: int = 0  # target moves applied to the old image (or to the relocated copies)
    code_bytes: int = 0  # stored bytes of the code transform or of the relocation plan
    relocation: bool = False  # code names the architecture of relocated copies, not of a transform
    relocated_records: int = 0  # records whose copies are relocated
    layer: str = ""  # "ihex" or "uf2" when the delta is between the payloads of Intel HEX or UF2 images
    layout_bytes: int = 0  # stored bytes of the HEX or UF2 layout

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def info(patch: bytes) -> PatchInfo:
    """Describe a patch: sizes, hashes, per-stream compression and record counts."""
    p = Patch.parse(patch)
    streams = [StreamInfo(name, Codec(s.codec).name.lower(), s.raw_len, len(s.data))
               for name, s in zip(STREAM_NAMES[p.kind], p.streams)]
    counts: dict[str, Any] = {"records": 0, "copied_bytes": 0, "changed_words": 0, "changed_bytes": 0,
                              "inserted_bytes": 0}
    if p.kind in (Kind.DELTA, Kind.SOLID):
        ctrl, wmap, words, _extra = _record_streams(p)
        fields = _varints(ctrl)
        copies = fields[1::3]
        if p.relocation is not None:  # each copy's length carries its relocation flag
            counts["relocated_records"] = sum(n & 1 for n in copies)
            copies = [n >> 1 for n in copies]
        counts["records"] = len(fields) // 3
        counts["copied_bytes"] = sum(copies)
        counts["inserted_bytes"] = sum(fields[2::3])
        counts["changed_words"] = _varint_count(wmap)
        counts["changed_bytes"] = len(words) - bytes(words).count(0)
        counts["differences"] = p.grouping.name.lower()
        counts["span_bytes"] = p.span
    elif p.kind == Kind.FULL:
        counts["inserted_bytes"] = p.new_size
    transform = _code_transform(p)
    code: dict[str, Any] = {}
    if transform is not None and p.code is not None:
        archs = sorted({CODE_ARCHS[r.arch] for r in (*transform.old_ranges, *transform.new_ranges)})
        code = {"code": "+".join(archs), "code_ranges": len(transform.new_ranges),
                "code_moves": len(transform.moves), "code_bytes": len(p.code.data)}
    relocation = _reloc_plan(p)
    if relocation is not None and p.relocation is not None:
        code = {"code": CODE_ARCHS[relocation.arch], "relocation": True, "code_moves": len(relocation.moves),
                "code_bytes": len(p.relocation.data)}
    if p.layer is not None:
        code.update(layer=_CONTAINERS[p.layer.container].name, layout_bytes=len(p.layer.layout.data))
    return PatchInfo(p.version, _KIND_NAMES[p.kind], p.kind == Kind.SOLID,
                     len(patch), p.old_size, p.new_size,
                     p.old_fingerprint.hex(), p.new_digest.hex(), streams, **counts, **code)


_KIND_NAMES = {Kind.DELTA: "delta", Kind.SOLID: "delta", Kind.FULL: "full", Kind.REFERENCED: "referenced"}


def _parse_for(old: Buffer, patch: bytes) -> Patch:
    """Parse the patch and check that old is the image it was made from."""
    p = Patch.parse(patch)
    if p.kind != Kind.FULL and (len(old) != p.old_size
                                or source_fingerprint(old, len(p.old_fingerprint)) != p.old_fingerprint):
        raise PatchError("the source image is not the one this patch was made from")
    return p


def _code_plan(p: Patch) -> _core.CodePlan | None:
    """The patch's code transform, decoded and parsed; None without one."""
    if p.code is None:
        return None
    return _core.CodePlan(decompress(p.code.codec, p.code.data, p.code.raw_len), *p.inner_sizes)


def _reloc_plan(p: Patch) -> _core.RelocPlan | None:
    """The patch's relocation plan, decoded and parsed; None without one."""
    if p.relocation is None:
        return None
    return _core.RelocPlan(decompress(p.relocation.codec, p.relocation.data, p.relocation.raw_len))


def _code_transform(p: Patch) -> CodeTransform | None:
    plan = _code_plan(p)
    return None if plan is None else CodeTransform.of(plan)


def _verify(p: Patch, digest: bytes) -> None:
    if digest != p.new_digest:
        raise PatchError("patched image does not match the target hash")


# Apply's jobs before the records are run (decoding each stream, transforming the old image's
# code) go to threads when two or more are expected to take this long. On a loaded 2-core
# machine threads made 1 MB images with 1-5 ms jobs apply 1.5-2x slower, and a 30 MB one with
# 10-60 ms jobs 1.2x faster. Expected times: LZMA decodes about 60 ns per stored byte (zstd a
# few per decoded byte: codec.decode_ns), the old image's forward code transform about 2 ns per
# byte of a large image (csrc/fd_code.c).
_PARALLEL_NS = 10_000_000
_CODE_NS_PER_BYTE = 2


def _undo_threads(plan: _core.CodePlan | None) -> int:
    """Threads that undo the new image's code transform once its records are applied, a span
    each: two (or one per core, if fewer) when that is expected to take _PARALLEL_NS, else one,
    which undoes it block by block as the records write (while the bytes are in the cache). On
    a 10.8 MB x86-64 library with 8.3 MB of code the undo takes about 5 ms of the 11.7 ms apply."""
    if plan is None or _CODE_NS_PER_BYTE * sum(r[2] for r in plan.new_ranges) < _PARALLEL_NS:
        return 1
    return min(2, os.cpu_count() or 1)


def _record_streams(p: Patch) -> list[bytes | memoryview]:
    """ctrl, wmap, words and extra of a delta, decoded (stored ones as views into the patch)."""
    return _split_solid(p, [decompress(s.codec, s.data, s.raw_len) for s in p.streams])


def _split_solid(p: Patch, decoded: list[bytes | memoryview]) -> list[bytes | memoryview]:
    """The four record streams: decoded itself, or cut from a solid patch's one stream."""
    if p.kind != Kind.SOLID:
        return decoded
    records = memoryview(decoded[0])
    ctrl, wmap, words, _extra = p.parts
    wmap += ctrl
    words += wmap
    return [records[:ctrl], records[ctrl:wmap], records[wmap:words], records[words:]]


def _prepare(p: Patch, source: Buffer, plan: _core.CodePlan | None, with_extra: bool
             ) -> tuple[bytes | memoryview, bytes | memoryview, bytes | memoryview, bytes | memoryview, bytes | None]:
    """The decoded record streams (extra empty unless with_extra) and, for a transformed delta
    whose jobs are long enough for threads, the source image transformed forward (else None:
    apply_memory transforms it)."""
    streams = p.streams if with_extra else p.streams[:3]
    costs = [decode_ns(s.codec, len(s.data), s.raw_len) for s in streams]
    if plan is not None:
        costs.append(_CODE_NS_PER_BYTE * sum(r[2] for r in plan.old_ranges))
    if sum(c >= _PARALLEL_NS for c in costs) < 2:
        ctrl, wmap, words, extra = _split_solid(p, [decompress(s.codec, s.data, s.raw_len) for s in streams]
                                                + ([] if with_extra else [b""]))
        return ctrl, wmap, words, extra, None
    jobs: list[Callable[[], Any]] = [partial(decompress, s.codec, s.data, s.raw_len) for s in streams]
    if plan is not None:
        jobs.append(partial(plan.forward, source))
    longest_first = sorted(range(len(jobs)), key=lambda i: -costs[i])
    with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 2)) as pool:
        futures = {i: pool.submit(jobs[i]) for i in longest_first}
        done = [futures[i].result() for i in range(len(jobs))]
    forward = done.pop() if plan is not None else None
    ctrl, wmap, words, extra = _split_solid(p, done + ([] if with_extra else [b""]))
    return ctrl, wmap, words, extra, forward


def _streams(raw: Sequence[Buffer], coded: list[tuple[Codec, bytes]]) -> tuple[Stream, ...]:
    return tuple(Stream(codec, len(r), data) for r, (codec, data) in zip(raw, coded))


def _varint_count(data: bytes | memoryview) -> int:
    """How many varints data holds: one per byte without the continuation bit."""
    return len(data) - len(bytes(data).translate(None, _VARINT_ENDS))


def _varints(data: bytes | memoryview) -> list[int]:
    values, value, shift = [], 0, 0
    for b in data:
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            values.append(value)
            value, shift = 0, 0
    return values


@contextmanager
def _mapped(path: str | Path) -> Iterator[Buffer]:
    """The file's bytes, memory-mapped (an empty file cannot be mapped)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            yield m
