"""The device-side in-place patcher in plain C under ASan + UBSan: tests/c/ip_test.c.

The driver builds patches itself (docs/inplace.md) and applies them to a strict in-memory NOR
flash with power cuts at every operation, hostile leftovers in the spare blocks, damaged and
resealed patches, too little work memory and wrong source images. Here it is compiled with the
sanitizers and run; patches it makes are also read and applied by the package, and patches the
package makes are put through the same C checks, so both builders agree on the format."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from support import C_SOURCES as SOURCES
from support import CC, CSRC, REPO, SANITIZE, STRICT, THREADS, compile_, firmware_like, mutate
from support import run_driver as _run_driver

from fotadelta import inplace

DRIVER = REPO / "tests" / "c" / "ip_test.c"
FLAGS = [*STRICT, "-O1", *SANITIZE]

pytestmark = pytest.mark.skipif(shutil.which(CC) is None, reason=f"no C compiler ({CC})")


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ipdriver") / "ip_test"
    compile_([*FLAGS, *THREADS, "-I", str(CSRC), str(DRIVER), *map(str, SOURCES), "-o", str(out)], out.parent)
    return out


def run_driver(driver: Path, *args: str) -> str:
    return _run_driver(driver, *args, timeout=900)


@pytest.fixture(scope="module")
def emitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ip_emit")


@pytest.fixture(scope="module")
def generated_run(driver: Path, emitted: Path) -> str:
    return run_driver(driver, "--part", "generated", "--emit", str(emitted))


def test_generated_pairs(generated_run: str) -> None:
    """Block sizes 256/1024/4096 x park 0/2/8 x stored/LZ x write size 4/16, and code of each
    of the nine architectures moved by a grown function, its copies relocated: clean updates,
    a power cut at every operation with a second cut during recovery, hostile leftovers,
    refusals without writes, resealed damage."""
    assert "ip_test: 72 patches" in generated_run
    assert " 0 power cuts" not in generated_run and " 0 refusals" not in generated_run


def test_sizes_beyond_the_slot_refused(driver: Path) -> None:
    """A header (with a valid digest) whose image size rounds up past 2^32 must not slip through
    the slot-size check: FD_IP_EGEOMETRY before any erase or write."""
    run_driver(driver, "--part", "oversized")


@pytest.mark.parametrize("codec", ["stored", "lz"])
def test_c_made_patches_apply_in_the_package(generated_run: str, emitted: Path, codec: str) -> None:
    old, new, patch = ((emitted / f"{codec}.{ext}").read_bytes() for ext in ("old", "new", "patch"))
    info = inplace.info(patch)
    assert (info.codec, info.block_size, info.park_slots) == (codec, 1024, 2)
    assert (info.old_size, info.new_size) == (len(old), len(new))
    for write_size in (4, 16):
        assert inplace.apply(old, patch, write_size=write_size) == new


def test_package_made_patches_in_c(driver: Path, tmp_path: Path) -> None:
    rng = random.Random(20261122)
    args: list[str] = []
    for i, (block_size, codec, park, size) in enumerate(
            [(256, "lz", 2, 12_000), (1024, "stored", 0, 30_000), (1024, "lz", 8, 40_000), (4096, "lz", 4, 70_000)]):
        old = firmware_like(rng, size)
        new = mutate(rng, old, 24)
        patch = inplace.diff(old, new, block_size=block_size, codec=codec, park=park)
        for ext, data in (("old", old), ("new", new), ("patch", patch)):
            (tmp_path / f"{i}.{ext}").write_bytes(data)
        args += ["--patch", *(str(tmp_path / f"{i}.{ext}") for ext in ("old", "new", "patch"))]
    summary = run_driver(driver, *args)
    assert "ip_test: 4 patches" in summary and " 0 power cuts" not in summary
