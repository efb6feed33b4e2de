"""diff(extreme=True), `fotadelta diff --extreme`: every match threshold of EXTREME_GAINS and the
usual one scanned, the two estimated smallest and the usual one made into patches (both groupings
of their differences), the new image coded against the old one by LZMA at any size up to
REFERENCED_MAX_IMAGE, and the smallest patch kept; the patches are ordinary ones."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from support import firmware_like, mutate, recompiled
from test_cli import run

import fotadelta
from fotadelta import delta


@pytest.fixture(scope="module")
def rebuilt_large() -> tuple[bytes, bytes]:
    """A 600 KB image rebuilt by another toolchain: past the 512 KiB the default diff codes
    against the old image."""
    r = random.Random(21)
    old = firmware_like(r, 600_000)
    return old, recompiled(r, old, 620_000)


def test_a_large_rebuilt_image_is_coded_against_the_old_one(rebuilt_large: tuple[bytes, bytes],
                                                             tmp_path: Path) -> None:
    old, new = rebuilt_large
    default = fotadelta.diff(old, new)
    extreme = fotadelta.diff(old, new, extreme=True)
    assert fotadelta.info(default).kind == "delta"
    assert fotadelta.info(extreme).kind == "referenced" and len(extreme) < 0.85 * len(default)
    assert fotadelta.apply(old, extreme) == new
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "p").write_bytes(extreme)
    fotadelta.apply_file(tmp_path / "old", tmp_path / "p", tmp_path / "new")
    assert (tmp_path / "new").read_bytes() == new
    assert fotadelta.diff(old, new, threads=1, extreme=True) == fotadelta.diff(old, new, threads=4, extreme=True)


def test_every_threshold_is_scanned_and_three_are_made(monkeypatch: pytest.MonkeyPatch) -> None:
    r = random.Random(22)
    old = firmware_like(r, 200_000)
    new = mutate(r, old, 40)
    scanned: list[int] = []
    made: list[int] = []
    diff_streams = fotadelta._core.OldIndex.diff_streams

    class Index(fotadelta._core.OldIndex):
        def diff_streams(self, image: bytes, min_gain: int = 8, **kwargs: Any) -> Any:
            scanned.append(min_gain)
            return diff_streams(self, image, min_gain=min_gain, **kwargs)

    encode = delta._Delta.encode

    def counted(self: delta._Delta, *args: Any, **kwargs: Any) -> bytes:
        made.append(self.gain)
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(delta._core, "OldIndex", Index)
    monkeypatch.setattr(delta._Delta, "encode", counted)
    patch = fotadelta.diff(old, new, extreme=True)
    # The usual threshold (5 at this size) is scanned with the others, so that extreme's patch
    # is never larger than the default's.
    assert delta._gain(len(new)) not in delta.EXTREME_GAINS
    assert scanned == sorted({*delta.EXTREME_GAINS, delta._gain(len(new))})
    assert 2 <= len(set(made)) <= 3 and delta._gain(len(new)) in made and set(made) <= set(scanned)
    assert fotadelta.apply(old, patch) == new
    scanned.clear()
    default = fotadelta.diff(old, new)
    assert scanned == [delta._gain(len(new))]
    assert len(patch) <= len(default)


def test_a_fixed_threshold_is_kept() -> None:
    r = random.Random(23)
    old = firmware_like(r, 50_000)
    new = mutate(r, old, 10)
    assert fotadelta.diff(old, new, gain=5, extreme=True) == fotadelta.diff(old, new, gain=5)


def test_the_cli_option(rebuilt_large: tuple[bytes, bytes], tmp_path: Path) -> None:
    old, new = rebuilt_large
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    made = run("diff", "--extreme", "old", "new", "-o", "p", cwd=tmp_path)
    assert made.returncode == 0 and "kind: referenced" in made.stdout, made.stdout + made.stderr
    applied = run("apply", "old", "p", "-o", "out", cwd=tmp_path)
    assert applied.returncode == 0 and (tmp_path / "out").read_bytes() == new
    refused = run("diff", "--in-place", "--extreme", "old", "new", "-o", "q", cwd=tmp_path)
    assert refused.returncode == 2 and "--extreme is for plain patches" in refused.stderr
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("seed", range(4))
def test_never_larger_than_the_default(seed: int) -> None:
    """The usual threshold's delta, both groupings of its differences, and the referenced stream
    are among what extreme makes, and it keeps the smallest."""
    r = random.Random(30 + seed)
    old = firmware_like(r, 90_000)
    new = [mutate(r, old, 30), recompiled(r, old, 90_000), old[:40_000] + recompiled(r, old, 20_000) + old[40_000:],
           firmware_like(r, 20_000) + mutate(r, old, 300)][seed]
    extreme = fotadelta.diff(old, new, extreme=True)
    assert len(extreme) <= len(fotadelta.diff(old, new))
    assert fotadelta.apply(old, extreme) == new
