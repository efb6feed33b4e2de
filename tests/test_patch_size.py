"""Patch size guarded against bsdiff4 on the same input, and diffs that do not depend on threads.

Round trips alone never saw images of 1 MiB or more lose half their matches (issue 10): every
patch was right, only too large. These tests compare sizes: on near-identical images from 64 KiB
to 16 MiB fotadelta's patch must stay within a small factor of bsdiff4's."""

from __future__ import annotations

import random
from collections.abc import Callable

import bsdiff4
import pytest
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st
from support import firmware_like, mutate

import fotadelta
from fotadelta import _core, delta

KIB, MIB = 1 << 10, 1 << 20
# fotadelta's patch may be at most this factor of bsdiff4's, plus a fixed allowance for the
# container (hashes, lengths) on patches of a few hundred bytes.
FACTOR = 1.25
ALLOWANCE = 96


def flipped_bits(image: bytes, step: int, start: int = 0) -> bytes:
    """One bit flipped every `step` bytes from start: scattered changes that keep the alignment."""
    out = bytearray(image)
    for i in range(start, len(out), step):
        out[i] ^= 1
    return bytes(out)


def check_size(old: bytes, new: bytes) -> fotadelta.PatchInfo:
    patch = fotadelta.diff(old, new)
    reference = len(bsdiff4.diff(old, new))
    info = fotadelta.info(patch)
    assert len(patch) <= FACTOR * reference + ALLOWANCE, \
        f"fotadelta {len(patch)} bsdiff4 {reference} records {info.records} inserted {info.inserted_bytes}"
    assert fotadelta.apply(old, patch) == new
    return info


# --- the repro -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["random", "half zeros", "zeros then random"])
def test_one_mib_with_scattered_bit_flips(kind: str) -> None:
    """1 MiB, one bit flipped every 5,000 bytes: no byte need be inserted (it was the whole
    second half, 524,288 bytes, in a 524 KB patch)."""
    rng = random.Random(10)
    old = {"random": rng.randbytes(MIB),
           "half zeros": rng.randbytes(MIB // 2) + bytes(MIB // 2),
           "zeros then random": bytes(MIB // 2) + rng.randbytes(MIB // 2)}[kind]
    info = check_size(old, flipped_bits(old, 5000))
    assert info.inserted_bytes == 0
    assert info.patch_bytes < 1024


def test_a_few_changed_words_in_mebibytes_take_one_record() -> None:
    """The scan's 512 KiB ranges leave no seam: a copy that runs on across them, or an
    insertion at a range's start, stays one record (each range had started its own, 15-21 of
    a 98-byte patch), and such a patch stays under 80 bytes: header, hashes, records."""
    rng = random.Random(12)
    old = rng.randbytes(5 * MIB // 2)
    new = bytearray(old)
    for at in (1000, 700_000, 1_600_000, 2_400_000):
        new[at:at + 4] = rng.randbytes(4)
    info = check_size(old, bytes(new))
    assert info.records == 1 and info.patch_bytes < 80
    cut = 2 * MIB // 2  # where the second range starts for this size
    inserted = bytes(new[:cut]) + b"\x55" * 3 + bytes(new[cut:])
    info = check_size(old, inserted)
    assert info.records == 2 and info.inserted_bytes == 3


# --- near-identical images of every size -----------------------------------------------------

def base_image(kind: str, rng: random.Random, size: int) -> bytes:
    if kind == "random":
        return rng.randbytes(size)
    if kind == "firmware":
        # Python-made firmware is slow past a MiB: past that, 256 KiB pieces in a random order.
        if size <= MIB:
            return firmware_like(rng, size)
        pieces = [firmware_like(rng, 256 * KIB) for _ in range(4)]
        return b"".join(rng.choice(pieces) + rng.randbytes(KIB) for _ in range(size // (256 * KIB) + 1))[:size]
    if kind == "zeros and 0xff":
        return b"".join((bytes(n) if i % 2 else b"\xff" * n) + rng.randbytes(256)
                        for i, n in enumerate(rng.randrange(KIB, 64 * KIB) for _ in range(size // KIB)))[:size]
    assert kind == "repeated blocks"
    blocks = [rng.randbytes(rng.randrange(256, 8 * KIB)) for _ in range(16)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(blocks)
    return bytes(out[:size])


def _flip(rng: random.Random, img: bytearray) -> bytearray:
    return bytearray(flipped_bits(bytes(img), rng.randrange(1000, 20000), rng.randrange(1000)))


def _insert(rng: random.Random, img: bytearray) -> bytearray:
    pos = rng.randrange(len(img) + 1)
    img[pos:pos] = rng.randbytes(rng.randrange(1, 4 * KIB))
    return img


def _delete(rng: random.Random, img: bytearray) -> bytearray:
    pos = rng.randrange(len(img))
    del img[pos:pos + rng.randrange(1, 4 * KIB)]
    return img


def _move(rng: random.Random, img: bytearray) -> bytearray:
    n = rng.randrange(KIB, max(KIB + 1, len(img) // 8))
    src = rng.randrange(max(1, len(img) - n))
    block = img[src:src + n]
    del img[src:src + n]
    dst = rng.randrange(len(img) + 1)
    img[dst:dst] = block
    return img


def _fill(rng: random.Random, img: bytearray) -> bytearray:
    pos, n = rng.randrange(len(img)), rng.randrange(KIB, 64 * KIB)
    img[pos:pos + n] = rng.choice((b"\0", b"\xff")) * len(img[pos:pos + n])
    return img


def _repeat(rng: random.Random, img: bytearray) -> bytearray:
    n = rng.randrange(256, 16 * KIB)
    src, dst = rng.randrange(max(1, len(img) - n)), rng.randrange(max(1, len(img) - n))
    img[dst:dst + n] = img[src:src + n]
    return img


EDITS: dict[str, Callable[[random.Random, bytearray], bytearray]] = {
    "flip bits": _flip, "insert run": _insert, "delete run": _delete, "move block": _move,
    "fill zeros/0xff": _fill, "repeat block": _repeat,
}
BASES = ["random", "firmware", "zeros and 0xff", "repeated blocks"]


def near_identical(sizes: list[int]) -> st.SearchStrategy[tuple[bytes, bytes]]:
    @st.composite
    def pair(draw: st.DrawFn) -> tuple[bytes, bytes]:
        size = draw(st.sampled_from(sizes))
        base = draw(st.sampled_from(BASES))
        edits = draw(st.lists(st.sampled_from(sorted(EDITS)), min_size=1, max_size=6))
        rng = random.Random(draw(st.integers(0, 2**32 - 1)))
        note(f"{size} bytes, {base}, edits {edits}")
        old = base_image(base, rng, size)
        img = bytearray(old)
        for edit in edits:
            img = EDITS[edit](rng, img)
        return old, bytes(img)
    return pair()


SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large]


@settings(max_examples=12, deadline=None, suppress_health_check=SLOW)
@given(near_identical([64 * KIB, 256 * KIB, 768 * KIB]))
def test_small_images_near_bsdiff4(pair: tuple[bytes, bytes]) -> None:
    check_size(*pair)


@settings(max_examples=4, deadline=None, suppress_health_check=SLOW)
@given(near_identical([MIB, 3 * MIB + 12345]))
def test_images_of_a_few_mib_near_bsdiff4(pair: tuple[bytes, bytes]) -> None:
    check_size(*pair)


@settings(max_examples=1, deadline=None, suppress_health_check=SLOW, database=None)
@given(near_identical([16 * MIB]))
def test_sixteen_mib_near_bsdiff4(pair: tuple[bytes, bytes]) -> None:
    check_size(*pair)


# --- padding ---------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [256 * KIB, 3 * MIB])
def test_padding_that_changed_length_or_gained_data(size: int) -> None:
    """The suffix arrays leave out the inside of long runs (csrc/fd_diff.c, RUN_MIN): runs that
    grew, shrank or had data written into their middle still copy from the old image's runs,
    below and past the split of large images into two suffix arrays."""
    rng = random.Random(size)
    code = [firmware_like(rng, 16 * KIB) for _ in range(4)]
    pad = size // 8
    old = code[0] + b"\xff" * pad + code[1] + bytes(2 * pad) + code[2] + b"\xff" * pad + code[3]
    new = (code[0] + b"\xff" * (pad - 5000) + code[1] + bytes(pad // 2) + rng.randbytes(2 * KIB)
           + bytes(pad + pad // 2 - 2 * KIB) + code[2] + b"\xff" * (pad + 7000) + code[3])
    info = check_size(old, new)
    assert info.inserted_bytes <= 2 * KIB and info.records <= 8


# --- tables of records that each gained a field --------------------------------------------

def widened_records(rng: random.Random, total: int, size: int, at: int, field: int,
                    density: float) -> tuple[bytes, bytes]:
    """A table of size-byte records (a share `density` of their bytes random, the rest zero) and
    the same table where each record gained a field of `field` new bytes at offset `at` and
    lost as many at its end: every record copies its head at one alignment and the rest at
    another, `field` bytes apart."""
    records = [bytes(rng.getrandbits(8) if rng.random() < density else 0 for _ in range(size))
               for _ in range(total // size)]
    old = b"".join(records)
    new = b"".join(r[:at] + rng.randbytes(field) + r[at:size - field] for r in records)
    return old, new


@settings(max_examples=10, deadline=None, suppress_health_check=SLOW)
@given(st.sampled_from([32, 64, 100, 128, 248, 256, 512, 1024]), st.integers(0, 31), st.integers(1, 8),
       st.floats(0.3, 1.0), st.sampled_from([64 * KIB, 256 * KIB]), st.integers(0, 2**32 - 1))
@example(248, 9, 4, 1.0, 256 * KIB, 1)
def test_records_that_gained_a_field_near_bsdiff4(size: int, at: int, field: int, density: float,
                                                  total: int, seed: int) -> None:
    """An Intel Bluetooth firmware pair of the broad corpus has this shape. Where the head and
    the new field differed from the running alignment in few enough bytes per 64, the scan took
    each record whole at one alignment: that pair's patch was 1.08x bsdiff4's, and these tables
    up to 12x (2.7x on the example, now 0.78x)."""
    check_size(*widened_records(random.Random(seed), total, size, min(at, size - field - 1), field, density))


# --- determinism -------------------------------------------------------------------------------

def test_blocks_among_new_data_are_found_and_the_patch_is_the_same_whatever_the_threads() -> None:
    """Moved blocks between long runs of data old has no counterpart for (new code, compressed
    parts): a range that has missed often enough looks its positions up in a bitmap of old's
    6-byte strings before its suffix arrays (fd_diff.c, GRAMS_PAYOFF; these sizes take every
    range past it). Each block is still copied whole, and the patch does not depend on the
    threads, though each range turns the bitmap on at a point of its own."""
    rng = random.Random(14)
    old = firmware_like(rng, MIB)
    blocks = [old[at:at + 8 * KIB] for at in range(0, len(old), 40 * KIB)]
    rng.shuffle(blocks)
    fresh = 56 * KIB
    new = b"".join(rng.randbytes(fresh) + block for block in blocks)
    patches = {threads: fotadelta.diff(old, new, threads=threads) for threads in (1, 2, 3)}
    assert len(set(patches.values())) == 1
    info = fotadelta.info(patches[1])
    assert info.inserted_bytes <= len(blocks) * (fresh + 64)
    assert fotadelta.apply(old, patches[1]) == new


def copied_per_span(old: bytes, new: bytes, spans: list[tuple[int, int]]) -> list[int]:
    """Bytes of each [start, end) of new (1 MB or more) that the scan copies from old."""
    (ctrl, *_), _stats, _sums = _core.OldIndex(old, 1).diff_streams(new, min_gain=fotadelta.delta.FIRST_GAIN)
    fields = fotadelta.delta._varints(ctrl)
    copies, at = [], 0
    for add_len, insert_len in zip(fields[1::3], fields[2::3]):
        copies.append((at, at + add_len))
        at += add_len + insert_len
    return [sum(max(0, min(end, b) - max(start, a)) for a, b in copies) for start, end in spans]


def test_short_blocks_among_new_code_are_found_and_the_patch_is_the_same_whatever_the_threads() -> None:
    """Short blocks of old between runs of new code, whose 6-byte strings old mostly has and whose
    8-byte strings it mostly has not: past GRAMS_PAYOFF lookups a range skips the lookups that
    could find no match long enough to win (fd_diff.c, WIN_GRAM_MAX). Each block is still copied,
    and the patch does not depend on the threads."""
    rng = random.Random(15)
    old = firmware_like(rng, MIB)
    pieces = [old[at:at + 7] for at in (rng.randrange(len(old) - 7) for _ in range(4096))]
    new_code = b"".join(rng.choice(pieces) for _ in range(64 * KIB // 7))
    new, spans = bytearray(), []
    for _ in range(256):
        new += rng.randbytes(3) + new_code[rng.randrange(len(new_code) - 4 * KIB):][:4 * KIB]
        at = rng.randrange(len(old) - 64)
        block = old[at:at + rng.randrange(48, 65)]
        spans.append((len(new), len(new) + len(block)))
        new += block
    copied = copied_per_span(old, bytes(new), spans)
    assert all(c >= end - start - 8 for c, (start, end) in zip(copied, spans)), copied
    patches = {threads: fotadelta.diff(old, bytes(new), threads=threads) for threads in (1, 2, 3)}
    assert len(set(patches.values())) == 1
    assert fotadelta.apply(old, patches[1]) == new


def test_same_patch_whatever_the_thread_count() -> None:
    """Ranges of the new image are fixed by its size, not by the threads that scan them."""
    rng = random.Random(3)
    old = firmware_like(rng, 3 * MIB)
    img = bytearray(flipped_bits(old, 3001))
    for edit in ("insert run", "move block", "delete run", "repeat block"):
        img = EDITS[edit](rng, img)
    new = bytes(img)
    patches = {threads: fotadelta.diff(old, new, threads=threads) for threads in (1, 2, 3, 8)}
    assert len(set(patches.values())) == 1
    assert fotadelta.apply(old, patches[1]) == new


def test_tiny_images_keep_the_threshold_estimated_smaller() -> None:
    """Below 32 KiB an image is scanned with each of TINY_GAINS and the delta estimated smaller
    is kept (the first on a tie): the patch is the one that threshold alone makes. (These images
    tie; the pair that made the rule, a GRUB module, is a release file, not in the repository.)"""
    for seed in range(8):
        r = random.Random(seed)
        old = firmware_like(r, 24_000)
        new = mutate(r, old, 4 + 8 * seed)
        index = _core.OldIndex(old, 1)
        estimates = {g: delta._Delta(*index.diff_streams(new, min_gain=g), g, None, None).size
                     for g in delta.TINY_GAINS}
        pick = min(delta.TINY_GAINS, key=lambda g: estimates[g])
        patch = fotadelta.diff(old, new, threads=1)
        assert patch == delta._diff(old, new, None, gain=pick, threads=1)
        assert fotadelta.apply(old, patch) == new
