"""Throughput of fotadelta.diff / fotadelta.apply next to hdiffpatch on one mid-size pair.

Run with ``pytest benchmarks/ --benchmark-only``; within each group (diff, apply)
pytest-benchmark prints every column relative to the fastest tool.
"""

from __future__ import annotations

from typing import Any

import pytest


def _record(benchmark: Any, name: str, pair: Any, patch: bytes) -> None:
    benchmark.extra_info.update(
        tool=name, pair=pair.name, new_bytes=len(pair.new), patch_bytes=len(patch)
    )
    if benchmark.stats is not None:
        benchmark.extra_info["new_MB_per_s"] = round(
            len(pair.new) / benchmark.stats.stats.min / 1e6, 2
        )


@pytest.mark.benchmark(group="diff")
def test_diff(benchmark: Any, tool: tuple[str, Any, Any], pair: Any) -> None:
    name, diff, apply = tool
    patch = benchmark(diff, pair)
    assert apply(pair, patch) == pair.new
    _record(benchmark, name, pair, patch)


@pytest.mark.benchmark(group="apply")
def test_apply(benchmark: Any, tool: tuple[str, Any, Any], pair: Any) -> None:
    name, diff, apply = tool
    patch = diff(pair)
    assert benchmark(apply, pair, patch) == pair.new
    _record(benchmark, name, pair, patch)
