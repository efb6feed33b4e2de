"""benchmarks/compare.py's corpus handling: labelled corpora, categories from a manifest or
the catalogue, --pairs/--category subsets and the per-category geometric means."""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from support import REPO, load_script


@pytest.fixture(scope="module")
def compare() -> ModuleType:
    return load_script(REPO / "benchmarks" / "compare.py", "fotadelta_compare_under_test")


def make_corpus(root: Path, pairs: dict[str, tuple[int, str | None]]) -> Path:
    """Pairs of the given new-image size; a MANIFEST.tsv with a category column for those that have one."""
    root.mkdir(parents=True)
    lines = ["pair\tclass\tfile\tsource_old\tsource_new\tsize_old\tsize_new\tsha256_old\tsha256_new\tcategory"]
    for name, (size, category) in pairs.items():
        (root / name).mkdir()
        (root / name / "old").write_bytes(b"o" * size)
        (root / name / "new").write_bytes(b"n" * size)
        if category:
            lines.append("\t".join([name, "tiny", "d", "s", "s", str(size), str(size), "0", "0", category]))
    (root / "MANIFEST.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_corpora_categories_and_subsets(compare: ModuleType, tmp_path: Path) -> None:
    broad = make_corpus(tmp_path / "fs" / "corpus", {
        "big-efi": (300, "x86-64/pe-uefi/bootloader"), "stub": (100, "xtensa-lx6/bin/flasher-stub"),
        "mystery": (200, None)})
    shared = make_corpus(tmp_path / "shared" / "corpus", {"detools-shell-cortexm4": (50, None)})
    assert compare.corpus_arg(str(broad)) == ("fs", broad)
    assert compare.corpus_arg(f"mine={shared}") == ("mine", shared)
    found = compare.find_pairs([("shared", shared), ("broad", broad)])
    assert [(p.corpus, p.path.name) for p in found] == [
        ("shared", "detools-shell-cortexm4"), ("broad", "stub"), ("broad", "mystery"), ("broad", "big-efi")]
    # The shared pair has no category column: the catalogue knows it by name.
    assert found[0].category == "cortex-m4/bin/application" and found[0].family == "Cortex-M"
    assert found[2].category == compare.UNCATEGORISED
    assert [p.path.name for p in compare.find_pairs([("broad", broad)], category_globs=["xtensa"])] == ["stub"]
    assert [p.path.name for p in compare.find_pairs([("broad", broad)], category_globs=["*/bootloader"])] == [
        "big-efi"]
    assert [p.path.name for p in compare.find_pairs([("shared", shared), ("broad", broad)],
                                                     pair_globs=["broad/m*", "detools-*"])] == [
        "detools-shell-cortexm4", "mystery"]
    with pytest.raises(SystemExit, match="no pair matches"):
        compare.find_pairs([("broad", broad)], pair_globs=["nothing*"])


def result(patch: int | None, status: str = "ok", diff: float = 1.0, apply: float = 1.0) -> dict[str, Any]:
    return {"status": status, "patch_bytes": patch, "diff_s": diff, "apply_s": apply, "note": ""}


def test_category_geomeans_and_peers_that_did_not_run(compare: ModuleType) -> None:
    def pair(name: str, family: str, category: str, fd: int, bs: int, hd: int, dt: int | None) -> dict[str, Any]:
        return {"name": name, "corpus": "c", "family": family, "category": category, "new_bytes": 1000,
                "results": {"fotadelta": result(fd, diff=2.0), "bsdiff4": result(bs), "hdiffpatch": result(hd),
                            "detools": result(dt) if dt else result(None, "skipped")}}

    pairs = [pair("a", "Xtensa", "xtensa/bin/stub", 50, 100, 200, 100),
             pair("b", "Xtensa", "xtensa/elf/stub", 200, 100, 400, None),
             pair("c", "AArch64", "aarch64/bin/bootloader", 90, 100, 100, 100)]
    rows = compare.summarize(pairs)["per_pair"]
    stats = {g["group"]: g for g in compare.group_stats(pairs, rows, "family")}
    assert list(stats) == ["Xtensa", "AArch64", "all"]
    x = stats["Xtensa"]
    assert x["pairs"] == 2 and math.isclose(x["geomean_fotadelta_vs_best_peer"], math.sqrt(0.5 * 2.0))
    assert math.isclose(x["geomean_fotadelta_vs_peer"]["hdiffpatch"], math.sqrt(0.25 * 0.5))
    assert x["peer_ran"] == {"bsdiff4": "2/2", "hdiffpatch": "2/2", "detools": "1/2"}
    assert math.isclose(x["geomean_diff_time_vs_hdiffpatch"], 2.0) and x["worst_fotadelta_vs_best_peer"] == 2.0
    assert stats["all"]["pairs"] == 3
    table = "\n".join(compare.category_table(list(stats.values()), "family"))
    assert "| Xtensa | 2 | 1.000 | 2.00 |" in table and "(1/2 ran)" in table
    kinds = {g["group"] for g in compare.group_stats(pairs, rows, "kind")}
    assert kinds == {"stub", "bootloader", "all"}


def test_extreme_runs_the_subject_with_extreme(compare: ModuleType, tmp_path: Path) -> None:
    """--extreme swaps the subject's diff for diff(extreme=True) and says so in its settings; the
    peers are as they were."""
    import random

    import fotadelta

    plain = compare.parse_args(["--only", "fotadelta,bsdiff4"])
    extreme = compare.parse_args(["--extreme", "--only", "fotadelta,bsdiff4"])
    assert [t.name for t in extreme.tools] == ["fotadelta", "bsdiff4"]
    assert extreme.tools[1] is plain.tools[1]
    assert "extreme=True" in extreme.tools[0].settings and "extreme" not in plain.tools[0].settings
    r = random.Random(3)
    old = r.randbytes(40_000)
    new = old[:20_000] + r.randbytes(300) + old[20_000:]
    pair = compare.Pair("p", old, new, tmp_path)
    diff, apply = extreme.tools[0].load()
    patch = diff(pair)
    assert patch == fotadelta.diff(old, new, threads=1, extreme=True) and apply(pair, patch) == new
