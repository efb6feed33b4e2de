"""Fixtures for the throughput benchmarks; run them with ``pytest benchmarks/ --benchmark-only``."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # bench_support, and dm_sessions.py importing it, whatever the import mode
    sys.path.insert(0, str(HERE))

from bench_support import load_script, rebuilt_pair, synthetic_pair  # noqa: E402

MID_SIZE = 300_000  # the corpus pair whose new image is closest to this size is benchmarked

compare = load_script("compare.py", "fotadelta_bench_compare")


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


def _corpus_pair() -> tuple[str, bytes, bytes] | None:
    corpus = compare.default_corpus()
    dirs = [d for d in corpus.glob("*") if (d / "old").is_file() and (d / "new").is_file()]
    if not dirs:
        return None
    d = min(dirs, key=lambda d: abs(math.log(max((d / "new").stat().st_size, 1) / MID_SIZE)))
    return d.name, (d / "old").read_bytes(), (d / "new").read_bytes()


@pytest.fixture(scope="session", params=["mid-size", "rebuilt"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> object:
    """A mid-size pair of the corpus (a synthetic one when no corpus is there), and a 2 MiB image
    three quarters rebuilt (bench_support.rebuilt_pair)."""
    if request.param == "rebuilt":
        name, old, new = "rebuilt-2MiB", *rebuilt_pair()
    else:
        name, old, new = _corpus_pair() or ("synthetic", *synthetic_pair())
    return compare.Pair(name, old, new, tmp_path_factory.mktemp("pair"))


@pytest.fixture(scope="session", params=["fotadelta", "hdiffpatch"])
def tool(request: pytest.FixtureRequest) -> tuple[str, object, object]:
    """(name, diff, apply) of a tool from compare.py's registry; skipped when not installed."""
    entry = compare.TOOLS[request.param]
    pytest.importorskip(entry.version_of)
    return (entry.name, *entry.load())
