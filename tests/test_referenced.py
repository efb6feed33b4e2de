"""Referenced patches (Kind.REFERENCED): the new image coded by zstd or LZMA with the old image as
its prefix, chosen where the changes are dense, short and scattered; checked like any delta."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from support import firmware_like, mutate, recompiled, spliced
from test_cli import run

import fotadelta
from fotadelta import PatchError, delta, package
from fotadelta.delta.codec import (
    REFERENCED_MAX_IMAGE,
    Codec,
    compress_referenced,
    compress_referenced_lzma,
    sampled_shape,
)
from fotadelta.delta.format import Kind, Patch, Stream, source_fingerprint, target_digest
from fotadelta.package import signing


@pytest.fixture(scope="module")
def pair() -> tuple[bytes, bytes]:
    r = random.Random(3)
    old = firmware_like(r, 24_000)
    return old, spliced(r, old, 20_000)


def _without_referenced(monkeypatch: pytest.MonkeyPatch, old: bytes, new: bytes) -> bytes:
    with monkeypatch.context() as m:
        m.setattr(delta, "_referenced", lambda *args: None)
        return fotadelta.diff(old, new)


def test_scattered_short_matches_take_a_referenced_patch(pair: tuple[bytes, bytes], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = pair
    patch = fotadelta.diff(old, new)
    info = fotadelta.info(patch)
    assert (info.kind, info.records, [s.codec for s in info.streams]) == ("referenced", 0, ["zstd"])
    assert fotadelta.apply(old, patch) == new
    records = _without_referenced(monkeypatch, old, new)
    assert fotadelta.info(records).kind == "delta" and len(patch) < 0.97 * len(records)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "p").write_bytes(patch)
    fotadelta.apply_file(tmp_path / "old", tmp_path / "p", tmp_path / "new")
    assert (tmp_path / "new").read_bytes() == new
    assert fotadelta.diff(old, new, threads=1) == fotadelta.diff(old, new, threads=4) == patch


@pytest.mark.parametrize("size, tried", [(delta._REFERENCED_MAX, True), (delta._REFERENCED_MAX + 1, False)])
def test_images_up_to_32_kib_are_tried(size: int, tried: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dense changes in a 32 KiB image (a ROM size) are coded by zstd at its strong level as a
    referenced patch; a byte more are not (LZMA may still be)."""
    r = random.Random(5)
    old = firmware_like(r, size)
    new = (spliced(r, old, size - 4000) + old)[:size]
    calls = []

    def counted(reference: bytes, data: bytes, level: int) -> bytes:
        calls.append(level)
        return compress_referenced(reference, data, level)
    monkeypatch.setattr(delta, "compress_referenced", counted)
    assert fotadelta.apply(old, fotadelta.diff(old, new)) == new
    assert (delta._REFERENCED_LEVEL in calls) == tried


def test_sparse_changes_keep_the_delta() -> None:
    """A few scattered edits: copy records win and no referenced coding is even tried."""
    r = random.Random(4)
    old = firmware_like(r, 60_000)
    assert fotadelta.info(fotadelta.diff(old, mutate(r, old, 10))).kind == "delta"


def test_a_referenced_patch_needs_its_source(pair: tuple[bytes, bytes]) -> None:
    old, new = pair
    patch = fotadelta.diff(old, new)
    other = bytearray(old)
    other[5] ^= 1
    with pytest.raises(PatchError, match="not the one this patch was made from"):
        fotadelta.apply(bytes(other), patch)


def _crafted(old: bytes, new: bytes, frame: bytes, new_size: int | None = None) -> bytes:
    size = len(new) if new_size is None else new_size
    return Patch(Kind.REFERENCED, len(old), size, source_fingerprint(old), target_digest(new),
                 (Stream(Codec.ZSTD, size, frame),)).encode()


def test_a_frame_of_another_length_is_refused(pair: tuple[bytes, bytes]) -> None:
    old, new = pair
    for made in (new + b"x", new[:-1]):
        # A longer frame stops at the declared size (zstd: not the full frame), a shorter one ends early.
        with pytest.raises(PatchError, match="does not match its header|did not decompress full frame"):
            fotadelta.apply(old, _crafted(old, new, compress_referenced(old, made, 3)))
    frame = compress_referenced(old, new, 3)
    with pytest.raises(PatchError, match="corrupt compressed stream"):
        fotadelta.apply(old, _crafted(old, new, frame + b"\0"))
    assert fotadelta.apply(old, _crafted(old, new, frame)) == new


def test_a_referenced_image_is_bounded_before_decoding(pair: tuple[bytes, bytes]) -> None:
    """A frame of a few bytes may stand for an image the size of its window, and the old image
    is copied as its prefix: both sizes are checked against REFERENCED_MAX_IMAGE before anything
    is allocated."""
    old, new = pair
    huge = REFERENCED_MAX_IMAGE + 1
    with pytest.raises(PatchError, match=f"images of at most {REFERENCED_MAX_IMAGE} bytes"):
        fotadelta.apply(old, _crafted(old, new, compress_referenced(old, bytes(1000), 3), new_size=huge))
    big = bytes(huge)
    with pytest.raises(PatchError, match=f"images of at most {REFERENCED_MAX_IMAGE} bytes"):
        fotadelta.apply(big, _crafted(big, new, compress_referenced(old, new, 3)))


def test_a_referenced_patch_makes_a_plain_package(pair: tuple[bytes, bytes]) -> None:
    old, new = pair
    key = signing.generate()
    made = package.pack(old, new, key, make="Acme", model="M", from_version="1", to_version="2")
    checked = package.verify(made, signing.TrustStore.of([key.public_key()]))
    assert checked.manifest.patch_kind == package.PatchKind.PLAIN
    assert fotadelta.info(checked.payload).kind == "referenced"
    assert fotadelta.apply(old, checked.payload) == new


def test_the_cli_says_what_a_referenced_patch_carries(pair: tuple[bytes, bytes], tmp_path: Path) -> None:
    old, new = pair
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    made = run("diff", "old", "new", "-o", "p", cwd=tmp_path)
    assert made.returncode == 0 and "kind: referenced" in made.stdout, made.stdout + made.stderr
    shown = run("info", "p", cwd=tmp_path)
    assert shown.returncode == 0 and "coded by zstd against the old image" in shown.stdout, shown.stdout


@pytest.fixture(scope="module")
def rebuilt() -> tuple[bytes, bytes]:
    """A 150 KB image and a version of it rebuilt by another toolchain."""
    r = random.Random(1)
    old = firmware_like(r, 150_000)
    return old, recompiled(r, old, 160_000)


def test_a_rebuilt_image_takes_an_lzma_referenced_patch(rebuilt: tuple[bytes, bytes], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = rebuilt
    patch = fotadelta.diff(old, new)
    info = fotadelta.info(patch)
    assert (info.kind, info.records, [s.codec for s in info.streams]) == ("referenced", 0, ["lzma"])
    assert fotadelta.apply(old, patch) == new
    records = _without_referenced(monkeypatch, old, new)
    assert fotadelta.info(records).kind == "delta" and len(patch) < 0.85 * len(records)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "p").write_bytes(patch)
    fotadelta.apply_file(tmp_path / "old", tmp_path / "p", tmp_path / "new")
    assert (tmp_path / "new").read_bytes() == new
    assert fotadelta.diff(old, new, threads=1) == fotadelta.diff(old, new, threads=4) == patch


@pytest.mark.parametrize("size, tried", [(delta._REFERENCED_LZMA_MAX - 1, True), (delta._REFERENCED_LZMA_MAX, False)])
def test_lzma_is_tried_below_512_kib(size: int, tried: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below the bound the LZMA coding is tried (the zstd screen let through, as on real images;
    on these generated ones zstd's fast level finds too little); from it, never."""
    monkeypatch.setattr(delta, "_REFERENCED_SCREEN", 2.0)
    r = random.Random(6)
    old = firmware_like(r, size)
    new = recompiled(r, old, size)
    calls = []

    def counted(reference: bytes, data: bytes, shape: tuple[int, int, int], limit: int) -> bytes | None:
        calls.append(limit)
        return compress_referenced_lzma(reference, data, shape, limit)
    monkeypatch.setattr(delta, "compress_referenced_lzma", counted)
    assert fotadelta.apply(old, fotadelta.diff(old, new)) == new
    assert bool(calls) == tried


def test_lzma_is_not_tried_for_small_deltas(monkeypatch: pytest.MonkeyPatch) -> None:
    """A delta below 1/32 of its image (a few edits): copy records always won there."""
    r = random.Random(7)
    old = firmware_like(r, 100_000)
    monkeypatch.setattr(delta, "compress_referenced_lzma", lambda *args: pytest.fail("tried"))
    assert fotadelta.info(fotadelta.diff(old, mutate(r, old, 20))).kind == "delta"


def test_the_lzma_coding_stops_at_its_limit(rebuilt: tuple[bytes, bytes]) -> None:
    old, new = rebuilt
    shape = sampled_shape(new)
    whole = compress_referenced_lzma(old, new, shape, len(new))
    assert whole is not None
    assert compress_referenced_lzma(old, new, shape, len(whole)) == whole
    assert compress_referenced_lzma(old, new, shape, len(whole) - 1) is None


def _lzma_crafted(old: bytes, new: bytes, stream: bytes, new_size: int | None = None) -> bytes:
    size = len(new) if new_size is None else new_size
    return Patch(Kind.REFERENCED, len(old), size, source_fingerprint(old), target_digest(new),
                 (Stream(Codec.LZMA, size, stream),)).encode()


def test_a_damaged_lzma_referenced_stream_is_refused(rebuilt: tuple[bytes, bytes]) -> None:
    """Cut short, carrying a byte more, declaring another length or with any of its bytes
    changed: PatchError every time (a decoding error or the target hash), never another error."""
    old, new = rebuilt
    stream = compress_referenced_lzma(old, new, sampled_shape(new), len(new))
    assert stream is not None
    assert fotadelta.apply(old, _lzma_crafted(old, new, stream)) == new
    bad = [_lzma_crafted(old, new, stream[:-1]), _lzma_crafted(old, new, stream + b"\0"),
           _lzma_crafted(old, new, stream, len(new) - 1), _lzma_crafted(old, new, stream, len(new) + 1)]
    for at in range(0, len(stream), max(1, len(stream) // 64)):
        changed = bytearray(stream)
        changed[at] ^= 0x5A
        bad.append(_lzma_crafted(old, new, bytes(changed)))
    for patch in bad:
        with pytest.raises(PatchError, match="corrupt referenced LZMA stream|does not match the target hash"):
            fotadelta.apply(old, patch)


def test_an_lzma_referenced_image_is_bounded_before_decoding(rebuilt: tuple[bytes, bytes]) -> None:
    """A few bytes of LZMA may stand for a long image and the decoder's dictionary spans both
    images: their sizes are checked against REFERENCED_MAX_IMAGE before anything is allocated."""
    old, new = rebuilt
    stream = compress_referenced_lzma(old, bytes(1000), (0, 0, 0), 1000)
    assert stream is not None
    with pytest.raises(PatchError, match=f"images of at most {REFERENCED_MAX_IMAGE} bytes"):
        fotadelta.apply(old, _lzma_crafted(old, new, stream, new_size=REFERENCED_MAX_IMAGE + 1))
