"""The C core on its own: strict C99 compiles, and tests/c/fd_test.c under ASan + UBSan."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support import C_SOURCES as SOURCES
from support import CC, CSRC, REPO, SANITIZE, STRICT, THREADS, compile_, find_pairs
from support import run_driver as _run_driver

HEADERS = sorted(CSRC.glob("*.h"))
DRIVER = REPO / "tests" / "c" / "fd_test.c"

pytestmark = pytest.mark.skipif(shutil.which(CC) is None, reason=f"no C compiler ({CC})")


@pytest.mark.parametrize("threads", [False, True], ids=["plain", "pthreads"])
@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_strict_c99(source: Path, threads: bool, tmp_path: Path) -> None:
    compile_([*STRICT, *(THREADS if threads else []), "-I", str(CSRC), "-c", str(source),
              "-o", str(tmp_path / "out.o")], tmp_path)
    assert (tmp_path / "out.o").stat().st_size > 0


@pytest.mark.skipif(shutil.which("clang") is None, reason="no clang")
@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_strict_c99_clang(source: Path, tmp_path: Path) -> None:
    compile_([*STRICT, *THREADS, "-I", str(CSRC), "-c", str(source), "-o", str(tmp_path / "out.o")],
             tmp_path, cc="clang")
    assert (tmp_path / "out.o").stat().st_size > 0


@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_strict_c99_optimized(source: Path, tmp_path: Path) -> None:
    """Warnings that only appear with optimisation (flow analysis), as in the -O3 build."""
    compile_([*STRICT, "-O2", *THREADS, "-I", str(CSRC), "-c", str(source), "-o", str(tmp_path / "out.o")],
             tmp_path)
    assert (tmp_path / "out.o").stat().st_size > 0


@pytest.mark.parametrize("header", HEADERS, ids=[p.name for p in HEADERS])
def test_header_self_contained(header: Path, tmp_path: Path) -> None:
    unit = tmp_path / "unit.c"
    unit.write_text(f'#include "{header.name}"\n#include "{header.name}"\nint fd_unit_check;\n')
    compile_([*STRICT, "-I", str(CSRC), "-c", str(unit), "-o", str(tmp_path / "unit.o")], tmp_path)
    assert (tmp_path / "unit.o").exists()


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cdriver") / "fd_test"
    compile_([*STRICT, *SANITIZE, "-O1", *THREADS, "-I", str(CSRC), str(DRIVER),
              *map(str, SOURCES), "-o", str(out)], out.parent)
    return out


def run_driver(driver: Path, *args: str) -> str:
    return _run_driver(driver, *args, timeout=1800)


def test_driver_generated(driver: Path) -> None:
    summary = run_driver(driver)
    assert " 0 checks" not in summary


def unique_pairs() -> list[tuple[str, Path, Path]]:
    """Pairs by name: firmware_samples repeats some of the shared corpus."""
    seen: dict[str, tuple[str, Path, Path]] = {}
    for p in find_pairs():
        seen.setdefault(p.name.split("/", 1)[1], (p.name, p.old, p.new))
    return sorted(seen.values())


PAIRS = unique_pairs()


@pytest.mark.parametrize("pair", PAIRS, ids=[p[0] for p in PAIRS])
def test_driver_on_pair(driver: Path, pair: tuple[str, Path, Path]) -> None:
    _name, old, new = pair
    summary = run_driver(driver, "--files-only", str(old), str(new))
    assert "damaged inputs" in summary


# What a bootloader links for in-place updates, built the way a firmware engineer would.
DEVICE_SOURCES = ["fd_inplace.c", "fd_ip_lz.c", "fd_lz.c", "fd_sha256.c"]
ARM = ["-mcpu=cortex-m4", "-mthumb", "-Os", *STRICT]


@pytest.mark.parametrize("source", DEVICE_SOURCES)
def test_device_side_builds_for_cortex_m4(source: str, tmp_path: Path) -> None:
    # benchmarks/mcu_size.py measures the sizes; here it must build cleanly for the target.
    compile_([*ARM, "-I", str(CSRC), "-c", str(CSRC / source), "-o", str(tmp_path / "out.o")], tmp_path,
             cc="arm-none-eabi-gcc")
    assert (tmp_path / "out.o").stat().st_size > 0


def test_code_driver(tmp_path: Path) -> None:
    """tests/c/code_test.c: the code transforms and fd_apply with code maps, under ASan + UBSan."""
    out = tmp_path / "code_test"
    compile_([*STRICT, *SANITIZE, "-O1", "-I", str(CSRC), str(REPO / "tests" / "c" / "code_test.c"),
              str(CSRC / "fd_code.c"), str(CSRC / "fd_reloc.c"), str(CSRC / "fd_apply.c"), "-o", str(out)], tmp_path)
    summary = _run_driver(out, timeout=600)
    assert " 0 failures" in summary and " 0 checks" not in summary
