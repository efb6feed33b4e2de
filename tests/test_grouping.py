"""How a delta groups its differences (format.Grouping): by single bytes (FD_PATCH_FLAG_BYTES)
where changes are one byte here and there; by words as little-endian sums (FD_PATCH_FLAG_SUMS)
where words moved by a constant across carries; as the sums of spans that start at any byte
(FD_PATCH_FLAG_SPAN) where values at any alignment did, as in debug sections whose offsets
moved; checked like any delta."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import bsdiff4
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fotadelta
from fotadelta import PatchError, _core, delta
from fotadelta.delta.format import (LONG_DIGEST_LEN, LONG_FINGERPRINT_LEN, Grouping, Kind, Patch, source_fingerprint,
                                    target_digest)


def _debug_like(rng: random.Random, entries: int) -> tuple[bytes, bytes]:
    """A table of 13-byte entries (an odd stride, so a field falls anywhere in a word) and a new
    version with one field byte of a third of the entries one higher: offsets into a section
    that grew, as in DWARF location lists."""
    old = rng.randbytes(13 * entries)
    new = bytearray(old)
    for k in range(entries):
        if rng.random() < 1 / 3:
            new[13 * k + 5] = (new[13 * k + 5] + 1) & 0xFF
    return old, bytes(new)


@pytest.fixture(scope="module")
def pair() -> tuple[bytes, bytes]:
    return _debug_like(random.Random(2), 20_000)


def test_one_byte_changes_take_byte_differences(pair: tuple[bytes, bytes], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = pair
    patch = fotadelta.diff(old, new)
    parsed = Patch.parse(patch)
    assert parsed.grouping == Grouping.BYTES and parsed.version == 5 and parsed.layer is None
    assert fotadelta.info(patch).differences == "bytes"
    assert fotadelta.apply(old, patch) == new
    with monkeypatch.context() as m:
        m.setattr(delta, "_finer", lambda *args: [])
        by_word = fotadelta.diff(old, new)
    assert Patch.parse(by_word).grouping != Grouping.BYTES and len(patch) < 0.8 * len(by_word)
    assert len(patch) < len(bsdiff4.diff(old, new))
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "p").write_bytes(patch)
    fotadelta.apply_file(tmp_path / "old", tmp_path / "p", tmp_path / "new")
    assert (tmp_path / "new").read_bytes() == new
    assert fotadelta.diff(old, new, threads=1) == fotadelta.diff(old, new, threads=4) == patch


def test_a_small_bytewise_delta_goes_solid(tmp_path: Path) -> None:
    old, new = _debug_like(random.Random(3), 300)
    patch = fotadelta.diff(old, new)
    parsed = Patch.parse(patch)
    assert (parsed.kind, parsed.grouping) == (Kind.SOLID, Grouping.BYTES)
    assert fotadelta.apply(old, patch) == new
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "p").write_bytes(patch)
    fotadelta.apply_file(tmp_path / "old", tmp_path / "p", tmp_path / "new")
    assert (tmp_path / "new").read_bytes() == new


def _moved_addresses(rng: random.Random, size: int, stride: int = 64, by: int = 0x1234) -> tuple[bytes, bytes]:
    """Random bytes with an aligned little-endian 4-byte value every stride bytes, each by higher
    in the new image: addresses into a region that moved, as in a pointer table or a literal
    pool. Most additions carry into the next byte, so their byte differences vary."""
    old = rng.randbytes(size)
    new = bytearray(old)
    for at in range(0, size - 4, stride):
        new[at:at + 4] = ((int.from_bytes(old[at:at + 4], "little") + by) & 0xFFFFFFFF).to_bytes(4, "little")
    return old, bytes(new)


def test_moved_addresses_take_sums(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = _moved_addresses(random.Random(4), 200_000)
    patch = fotadelta.diff(old, new)
    parsed = Patch.parse(patch)
    assert parsed.grouping == Grouping.SUMS and parsed.version == 5
    assert fotadelta.apply(old, patch) == new
    info = fotadelta.info(patch)
    assert info.differences == "sums" and info.changed_words == len(range(0, len(new) - 4, 64))
    with monkeypatch.context() as m:
        m.setattr(delta, "_SUMS_SURE", 0.0)
        m.setattr(delta, "_finer", lambda *args: [])
        by_bytes = fotadelta.diff(old, new)
    assert Patch.parse(by_bytes).grouping == Grouping.WORDS and len(patch) < 0.5 * len(by_bytes)
    assert f"{info.changed_words:,} (differences as 32-bit sums)" in _as_files(old, new, patch, tmp_path)


def _as_files(old: bytes, new: bytes, patch: bytes, tmp_path: Path) -> str:
    """Checks that the patch applies from files and is the same on 1 and 3 threads; returns
    what `fotadelta info` shows of it."""
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "p").write_bytes(patch)
    fotadelta.apply_file(tmp_path / "old", tmp_path / "p", tmp_path / "new")
    assert (tmp_path / "new").read_bytes() == new
    assert fotadelta.diff(old, new, threads=1) == fotadelta.diff(old, new, threads=3) == patch
    return subprocess.run([sys.executable, "-m", "fotadelta", "info", str(tmp_path / "p")], capture_output=True,
                          text=True, check=True, env={**os.environ, "COLUMNS": "200"}).stdout


def test_changes_without_carries_keep_byte_differences() -> None:
    """Words that changed by amounts that never carry: the sums are the byte differences, so
    they are not weighed at all, and the words stay as they are (or, with the finer groupings
    left out, as spans of their two changed bytes)."""
    r = random.Random(6)
    old = bytearray(r.randbytes(100_000))
    for at in range(0, len(old) - 4, 64):
        old[at] &= 0x0F
        old[at + 1] &= 0x0F
    new = bytearray(old)
    for at in range(0, len(new) - 4, 64):
        new[at] += 0x30
        new[at + 1] += 0x20
    (_ctrl, _wmap, words, _extra), stats, sums = _core.OldIndex(bytes(old), 1).diff_streams(bytes(new))
    assert sums == words and stats["carried"] == 0 and len(words) == 4 * len(range(0, len(new) - 4, 64))
    patch = fotadelta.diff(bytes(old), bytes(new))
    assert Patch.parse(patch).grouping == Grouping.SPANS
    assert fotadelta.apply(bytes(old), patch) == bytes(new)
    original = delta._finer
    delta._finer = lambda *args: []  # type: ignore[assignment]
    try:
        patch = fotadelta.diff(bytes(old), bytes(new))
    finally:
        delta._finer = original
    assert Patch.parse(patch).grouping == Grouping.WORDS
    assert fotadelta.apply(bytes(old), patch) == bytes(new)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(1, 40_000), by=st.integers(1, 2**32 - 1),
       stride=st.sampled_from([4, 8, 12, 24, 100]), cuts=st.lists(st.tuples(st.integers(0, 40_000),
                                                                            st.integers(-9, 9)), max_size=6))
def test_sums_round_trip_across_records_and_insertions(seed: int, size: int, by: int, stride: int,
                                                       cuts: list[tuple[int, int]]) -> None:
    """Sums taken wherever there are words to take them on (_SUMS_SURE raised): moved values,
    then bytes inserted or deleted at odd places, so that changed words straddle records and
    inserted bytes; memory and streaming apply both give the new image."""
    old, new = _moved_addresses(random.Random(seed), size, stride, by)
    new = _cut(new, cuts)
    original = delta._SUMS_SURE
    delta._SUMS_SURE = float("inf")
    try:
        patch = fotadelta.diff(old, new)
    finally:
        delta._SUMS_SURE = original
    assert fotadelta.apply(old, patch) == new
    p = Patch.parse(patch)
    if p.kind in (Kind.DELTA, Kind.SOLID):
        assert _applied_in_dribs(old, p) == new


def _cut(image: bytes, cuts: list[tuple[int, int]]) -> bytes:
    """image with, at each (offset, n), n bytes inserted (n > 0) or -n deleted."""
    edited = bytearray(image)
    for at, n in cuts:
        at = min(at, len(edited))
        if n > 0:
            edited[at:at] = bytes(range(n))
        else:
            del edited[at:at - n]
    return bytes(edited)


def _applied_in_dribs(old: bytes, p: Patch) -> bytes:
    """A delta's records applied by the streaming core from 7-byte reads, in 64-byte chunks."""
    pieces: list[bytes] = []

    def reader(data: bytes) -> Callable[[int], bytes]:
        view = memoryview(data)

        def read(n: int) -> bytes:
            nonlocal view
            out, view = bytes(view[:min(n, 7)]), view[min(n, 7):]
            return out
        return read
    _core.apply_stream(old, *(reader(bytes(s)) for s in delta._record_streams(p)), pieces.append, p.new_size,
                       chunk=64, grouping=p.grouping, span=p.span)
    return b"".join(pieces)


def test_grouping_values_are_the_cores() -> None:
    assert (Grouping.WORDS, Grouping.BYTES, Grouping.SUMS, Grouping.SPANS) == (
        _core.GROUP_WORDS, _core.GROUP_BYTES, _core.GROUP_SUMS, _core.GROUP_SPANS)


def test_a_damaged_bytewise_patch_is_refused(pair: tuple[bytes, bytes]) -> None:
    """Any byte of the patch changed: PatchError, or (in a codec's slack) the exact image."""
    old, new = pair
    patch = fotadelta.diff(old, new)
    for at in range(0, len(patch), 5):
        damaged = bytearray(patch)
        damaged[at] ^= 0xA5
        try:
            assert fotadelta.apply(old, bytes(damaged)) == new
        except PatchError:
            pass


def test_the_byte_flag_alone_tells_the_grouping(pair: tuple[bytes, bytes]) -> None:
    """Without its flag the byte differences read as word differences and are refused; with
    a 64-bit fingerprint and a 128-bit digest the flag makes the patch version 3, without it
    version 1."""
    old, new = pair
    parsed = Patch.parse(fotadelta.diff(old, new))
    assert Patch.parse(parsed.encode()) == parsed
    fields = (parsed.kind, parsed.old_size, parsed.new_size, parsed.old_fingerprint)
    rest = (parsed.streams, parsed.parts, parsed.code, parsed.layer)
    as_words = Patch(*fields, parsed.new_digest, *rest)
    assert as_words.version == 5 and as_words.encode()[6] == 0
    with pytest.raises(PatchError):  # the same streams read as word differences do not fit
        fotadelta.apply(old, as_words.encode())
    long_fields = (*fields[:3], source_fingerprint(old, LONG_FINGERPRINT_LEN), target_digest(new, LONG_DIGEST_LEN))
    assert Patch(*long_fields, *rest, Grouping.BYTES).version == 3
    assert Patch(*long_fields, *rest).version == 1


def test_sums_read_as_another_grouping_are_refused() -> None:
    """The sums' streams relabelled (a tampered or mis-built patch): refused, never a wrong image;
    both groupings' flags at once are malformed, and relocated copies named where there are
    none leave streams that do not parse."""
    old, new = _moved_addresses(random.Random(7), 50_000)
    patch = fotadelta.diff(old, new)
    parsed = Patch.parse(patch)
    assert parsed.grouping == Grouping.SUMS
    fields = (parsed.kind, parsed.old_size, parsed.new_size, parsed.old_fingerprint, parsed.new_digest,
              parsed.streams, parsed.parts, parsed.code, parsed.layer)
    for grouping in (Grouping.WORDS, Grouping.BYTES):
        with pytest.raises(PatchError):
            fotadelta.apply(old, Patch(*fields, grouping).encode())
    flags_at = len(b"FDLT") + 2
    assert patch[flags_at] == 8
    # Both groupings; spans without sums; spans with bytes.
    for flags in (8 | 4, 16, 32 | 4):
        with pytest.raises(PatchError, match="unknown patch flags"):
            fotadelta.apply(old, patch[:flags_at] + bytes((flags,)) + patch[flags_at + 1:])
    # Bit 7, relocated copies (version 5 uses every bit): its plan is read from the ctrl stream's place.
    with pytest.raises(PatchError):
        fotadelta.apply(old, patch[:flags_at] + bytes((8 | 128,)) + patch[flags_at + 1:])
    for span in range(2, 5):  # the words' sums read as spans: refused, never a wrong image
        with pytest.raises(PatchError):
            fotadelta.apply(old, Patch(*fields, Grouping.SPANS, span).encode())


def test_a_transformed_delta_takes_byte_differences_too() -> None:
    """x86-64 code whose calls moved (a kept transform) and a table of one-byte changes: the
    transformed delta's differences are grouped by byte, and it applies."""
    from test_code import elf_image, program

    from fotadelta.delta import code

    table_old, table_new = _debug_like(random.Random(5), 2_000)
    images = []
    for grow, table in ((None, table_old), (20, table_new)):
        text = program(code.X86_64, 9, grow)
        header = elf_image(2, "<", 62, [(1, 0x6, 0x401000, 0x5000, len(text))])[:0x5000]
        images.append(header + text + table)
    old, new = images
    patch = fotadelta.diff(old, new)
    info = fotadelta.info(patch)
    assert info.code == "x86_64" and info.differences == "bytes" and info.format_version == 5
    assert fotadelta.apply(old, patch) == new
    assert len(patch) < 0.9 * len(fotadelta.diff(old, new, code=False))


def _offsets_moved(rng: random.Random, entries: int, by: int = 103) -> tuple[bytes, bytes]:
    """A table of 13-byte entries, each with a little-endian 4-byte offset at byte 5 (an odd
    stride, so the offsets fall at every alignment), and a new version whose offsets past a
    third of the section they point into are by higher: a string section that grew, as DWARF's
    .debug_str does under .debug_info. A moved offset carries into its second byte when its
    low byte overflows, so its byte differences are one byte or two."""
    old = bytearray(rng.randbytes(13 * entries))
    new = bytearray(old)
    for k in range(entries):
        at = 13 * k + 5
        offset = rng.randrange(1 << 20)
        old[at:at + 4] = new[at:at + 4] = offset.to_bytes(4, "little")
        if offset > 1 << 18:
            new[at:at + 4] = ((offset + by) & 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(old), bytes(new)


def test_offsets_at_any_alignment_take_spans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = _offsets_moved(random.Random(8), 40_000)
    patch = fotadelta.diff(old, new)
    parsed = Patch.parse(patch)
    assert (parsed.grouping, parsed.span, parsed.version) == (Grouping.SPANS, 2, 5)
    assert Patch.parse(parsed.encode()) == parsed
    info = fotadelta.info(patch)
    assert (info.differences, info.span_bytes) == ("spans", 2)
    assert fotadelta.apply(old, patch) == new
    with monkeypatch.context() as m:  # without spans: by byte, each carry one more changed byte
        m.setattr(delta, "_by_span", lambda *args: None)
        by_byte = fotadelta.diff(old, new)
    assert Patch.parse(by_byte).grouping != Grouping.SPANS and len(patch) < 0.75 * len(by_byte)
    assert len(patch) < 0.75 * len(bsdiff4.diff(old, new))
    shown = _as_files(old, new, patch, tmp_path)
    assert f"{info.changed_words:,} (differences as sums of 2-byte spans)" in shown


def test_spans_need_format_version_4_or_later_and_a_length_in_range(pair: tuple[bytes, bytes]) -> None:
    old, new = pair
    parsed = Patch.parse(fotadelta.diff(old, new))
    fields = (parsed.kind, parsed.old_size, parsed.new_size)
    rest = (parsed.streams, parsed.parts, parsed.code, parsed.layer)
    version_3 = (source_fingerprint(old, LONG_FINGERPRINT_LEN), target_digest(new, LONG_DIGEST_LEN))
    version_5 = (parsed.old_fingerprint, parsed.new_digest)
    for hashes, grouping, span in ((version_3, Grouping.SPANS, 2), (version_5, Grouping.SPANS, 1),
                                   (version_5, Grouping.SPANS, 5), (version_5, Grouping.BYTES, 2)):
        with pytest.raises(ValueError, match="span"):
            Patch(*fields, *hashes, *rest, grouping, span).encode()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), entries=st.integers(1, 3_000), by=st.integers(1, 2**32 - 1),
       span=st.integers(2, 4), cuts=st.lists(st.tuples(st.integers(0, 40_000), st.integers(-9, 9)), max_size=6))
def test_spans_round_trip_across_records_and_insertions(seed: int, entries: int, by: int, span: int,
                                                        cuts: list[tuple[int, int]]) -> None:
    """Spans of each length taken wherever there are differences (the screens opened, bytes left
    out): offsets moved by any amount, then bytes inserted or deleted at odd places, so that
    spans straddle records, inserted bytes and the image's end; memory and streaming apply
    (7-byte reads, 64-byte chunks) both give the new image."""
    old, new = _offsets_moved(random.Random(seed), entries, by)
    new = _cut(new, cuts)
    saved = delta._SPAN, delta._SPANS_SURE, delta._SPANS_SCREEN, delta._SPANS_SHARE, delta._by_byte
    delta._SPAN, delta._SPANS_SURE, delta._SPANS_SCREEN, delta._SPANS_SHARE = span, float("inf"), float("inf"), 0
    delta._by_byte = lambda *args: None  # type: ignore[assignment]
    try:
        patch = fotadelta.diff(old, new)
    finally:
        delta._SPAN, delta._SPANS_SURE, delta._SPANS_SCREEN, delta._SPANS_SHARE, delta._by_byte = saved
    assert fotadelta.apply(old, patch) == new
    p = Patch.parse(patch)
    if p.kind in (Kind.DELTA, Kind.SOLID):
        assert (p.grouping, p.span) == (Grouping.SPANS, span) or not fotadelta.info(patch).changed_words
        assert _applied_in_dribs(old, p) == new
