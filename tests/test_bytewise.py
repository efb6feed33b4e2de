"""Differences grouped by single bytes (format.Patch.bytewise, FD_PATCH_FLAG_BYTES): chosen where
changes are one byte here and there, as in debug sections whose offsets moved; checked like any
delta."""

from __future__ import annotations

import random
from pathlib import Path

import bsdiff4
import pytest

import fotadelta
from fotadelta import PatchError, delta
from fotadelta.delta.format import Kind, Patch


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
    assert parsed.bytewise and parsed.version == 3 and parsed.layer is None and fotadelta.info(patch).bytewise
    assert fotadelta.apply(old, patch) == new
    with monkeypatch.context() as m:
        m.setattr(delta, "_by_byte", lambda old, new, d, pool: None)
        by_word = fotadelta.diff(old, new)
    assert not Patch.parse(by_word).bytewise and len(patch) < 0.8 * len(by_word)
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
    assert (parsed.kind, parsed.bytewise) == (Kind.SOLID, True)
    assert fotadelta.apply(old, patch) == new
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "p").write_bytes(patch)
    fotadelta.apply_file(tmp_path / "old", tmp_path / "p", tmp_path / "new")
    assert (tmp_path / "new").read_bytes() == new


def test_relocated_words_keep_word_differences() -> None:
    """Aligned 4-byte values that moved (addresses in code): words stay the grouping."""
    r = random.Random(4)
    old = bytearray(r.randbytes(200_000))
    new = bytearray(old)
    for at in range(0, len(new) - 4, 64):
        new[at:at + 4] = ((int.from_bytes(old[at:at + 4], "little") + 0x1234) & 0xFFFFFFFF).to_bytes(4, "little")
    patch = fotadelta.diff(bytes(old), bytes(new))
    assert not Patch.parse(patch).bytewise
    assert fotadelta.apply(bytes(old), patch) == bytes(new)


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


def test_the_byte_flag_reads_as_version_3_alone(pair: tuple[bytes, bytes]) -> None:
    old, new = pair
    parsed = Patch.parse(fotadelta.diff(old, new))
    assert Patch.parse(parsed.encode()) == parsed
    as_words = Patch(parsed.kind, parsed.old_size, parsed.new_size, parsed.old_fingerprint, parsed.new_digest,
                     parsed.streams, parsed.parts, parsed.code, parsed.layer)
    assert as_words.version == 1
    with pytest.raises(PatchError):  # the same streams read as word differences do not fit
        fotadelta.apply(old, as_words.encode())


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
    assert info.code == "x86_64" and info.bytewise and info.format_version == 3
    assert fotadelta.apply(old, patch) == new
    assert len(patch) < 0.9 * len(fotadelta.diff(old, new, code=False))
