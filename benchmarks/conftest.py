"""Fixtures for the throughput benchmarks; run them with ``pytest benchmarks/ --benchmark-only``."""

from __future__ import annotations

import importlib.util
import math
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent
MID_SIZE = 300_000  # the corpus pair whose new image is closest to this size is benchmarked
FLASH_BASE = 0x0800_0000


def _load_compare() -> ModuleType:
    """benchmarks/compare.py as a module, whatever pytest's import mode."""
    spec = importlib.util.spec_from_file_location("fotadelta_bench_compare", HERE / "compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


compare = _load_compare()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep these benchmarks out of ordinary test runs."""
    if config.getoption("benchmark_only", default=False):
        return
    skip = pytest.mark.skip(
        reason="throughput benchmark: run with pytest benchmarks/ --benchmark-only"
    )
    for item in items:
        if item.path.parent == HERE:
            item.add_marker(skip)


def _image(code: list[int], strings: bytes, pointers: list[int]) -> bytes:
    return (
        b"".join(w.to_bytes(2, "little") for w in code)
        + strings
        + b"".join(p.to_bytes(4, "little") for p in pointers)
    )


def synthetic_pair(seed: int = 20240601, size: int = 256 * 1024) -> tuple[bytes, bytes]:
    """A firmware-like pair: Thumb-like code, a string pool and a pointer table.

    The update inserts a function a third of the way in, changes some instructions and
    moves every pointer behind the insertion point, as a relink does.
    """
    rng = random.Random(seed)
    vocab = [rng.getrandbits(16) for _ in range(512)]
    code = [rng.choice(vocab) for _ in range(size * 3 // 8)]
    words = [
        bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz_ ", k=rng.randint(3, 12)))
        for _ in range(400)
    ]
    strings = b"\0".join(rng.choice(words) for _ in range(size // 40))
    pointers = sorted(FLASH_BASE + 2 * rng.randrange(len(code)) for _ in range(size // 64))
    at = len(code) // 3
    new_code = code[:at] + [rng.choice(vocab) for _ in range(1024)] + code[at:]
    for _ in range(200):
        new_code[rng.randrange(len(new_code))] = rng.choice(vocab)
    shift = 2 * (len(new_code) - len(code))
    new_pointers = [p + shift if p >= FLASH_BASE + 2 * at else p for p in pointers]
    return _image(code, strings, pointers), _image(new_code, strings + b"\0v2.0.1", new_pointers)


def _corpus_pair() -> tuple[str, bytes, bytes] | None:
    corpus = compare.default_corpus()
    dirs = [d for d in corpus.glob("*") if (d / "old").is_file() and (d / "new").is_file()]
    if not dirs:
        return None
    d = min(dirs, key=lambda d: abs(math.log(max((d / "new").stat().st_size, 1) / MID_SIZE)))
    return d.name, (d / "old").read_bytes(), (d / "new").read_bytes()


@pytest.fixture(scope="session")
def pair(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A mid-size pair of the corpus, or a synthetic one when no corpus is there."""
    name, old, new = _corpus_pair() or ("synthetic", *synthetic_pair())
    return compare.Pair(name, old, new, tmp_path_factory.mktemp("pair"))


@pytest.fixture(scope="session", params=["fotadelta", "hdiffpatch"])
def tool(request: pytest.FixtureRequest) -> tuple[str, object, object]:
    """(name, diff, apply) of a tool from compare.py's registry; skipped when not installed."""
    entry = compare.TOOLS[request.param]
    pytest.importorskip(entry.version_of)
    return (entry.name, *entry.load())
