#!/usr/bin/env python3
"""Compare fotadelta with established delta tools on a corpus of firmware pairs.

Every tool diffs and applies every pair in the same process run; each round trip
is checked against ``new``. Writes results.json, results.md and patch_sizes.png.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
LARGE_PAIR = 1_000_000  # bytes of `new` from which the diff-time target applies
GEOMEAN_TARGET = 0.90
# fotadelta's time / HDiffPatch's: diff on pairs of LARGE_PAIR and more, diff below it, apply on every pair.
DIFF_TIME_LARGE_TARGET = 1.0
DIFF_TIME_SMALL_TARGET = 2.0
APPLY_TIME_TARGET = 1.0
# In-place patch / the default plain patch (code-aware), pairs up to INPLACE_MAX: geomean and worst.
INPLACE_GEOMEAN_TARGET = 1.06
INPLACE_PAIR_TARGET = 1.10
MEMORY_TARGET = 10.0  # fotadelta's peak diff memory per old-image byte
CLI_MARK = "†"

T = TypeVar("T")
Role = Literal["subject", "peer", "inplace"]


@dataclass(frozen=True)
class Pair:
    """One firmware update: two images plus a scratch directory holding copies named old/new."""

    name: str
    old: bytes
    new: bytes
    workdir: Path


DiffFn = Callable[[Pair], bytes]
ApplyFn = Callable[[Pair, bytes], bytes]


@dataclass(frozen=True)
class Tool:
    """A registry entry; ``load`` returns its diff and apply functions or raises if unavailable."""

    name: str
    role: Role
    load: Callable[[], tuple[DiffFn, ApplyFn]]
    # Distribution name, or for a command-line tool the command that prints its version.
    version_of: str
    cli: bool = False  # timings are subprocess times, including process start and file I/O
    max_size: int | None = None  # pairs with a larger image are skipped
    settings: str = ""
    # The tool makes what a device's flash holds: of an Intel HEX new, the contents it programs
    # (fotadelta.inplace.flash_image), which the round trip is checked against.
    flash: bool = False


@dataclass
class Result:
    """Outcome of one tool on one pair."""

    tool: str
    status: Literal["ok", "fail", "skipped"]
    patch_bytes: int | None = None
    diff_s: float | None = None
    apply_s: float | None = None
    note: str = ""
    diff_peak_bytes: int | None = None  # fotadelta only: see diff_peak_memory


def _max_len(pair: Pair) -> int:
    return max(len(pair.old), len(pair.new), 1)


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
        )


def _exe(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} not found on PATH")
    return path


def _load_fotadelta(extreme: bool = False) -> Callable[[], tuple[DiffFn, ApplyFn]]:
    """One diff thread, as HDiffPatch is given (hdiffpatch_config): times compare like with like.
    extreme: fotadelta.diff(extreme=True) (--extreme)."""

    def load() -> tuple[DiffFn, ApplyFn]:
        import fotadelta

        return (lambda p: fotadelta.diff(p.old, p.new, threads=1, extreme=extreme)), (
            lambda p, patch: fotadelta.apply(p.old, patch)
        )

    return load


def _load_bsdiff4() -> tuple[DiffFn, ApplyFn]:
    import bsdiff4

    return (lambda p: bsdiff4.diff(p.old, p.new)), (lambda p, patch: bsdiff4.patch(p.old, patch))


def hdiffpatch_config(size: int) -> Any:
    """Strongest sensible LZMA2 setting: level 9, a dictionary covering the image, one thread."""
    import hdiffpatch

    return hdiffpatch.Lzma2Config(
        level=9, window=min(max(23, (size - 1).bit_length()), 30), threads=1
    )


def _load_hdiffpatch() -> tuple[DiffFn, ApplyFn]:
    import hdiffpatch

    def diff(p: Pair) -> bytes:
        return hdiffpatch.diff(p.old, p.new, hdiffpatch_config(_max_len(p)), validate=False)

    return diff, (lambda p, patch: hdiffpatch.apply(p.old, patch))


def _load_zstd() -> tuple[DiffFn, ApplyFn]:
    exe = _exe("zstd")

    def long_flag(p: Pair) -> str:
        # zstd needs a window log covering the reference; 10 is its minimum, 31 its maximum.
        return f"--long={min(max((_max_len(p) - 1).bit_length() + 1, 10), 31)}"

    def diff(p: Pair) -> bytes:
        _run(
            [exe, "-q", "-f", "-19", long_flag(p), "--patch-from=old", "new", "-o", "zstd.patch"],
            p.workdir,
        )
        return (p.workdir / "zstd.patch").read_bytes()

    def apply(p: Pair, patch: bytes) -> bytes:
        (p.workdir / "zstd.patch").write_bytes(patch)
        _run(
            [
                exe,
                "-q",
                "-f",
                "-d",
                long_flag(p),
                "--patch-from=old",
                "zstd.patch",
                "-o",
                "zstd.out",
            ],
            p.workdir,
        )
        return (p.workdir / "zstd.out").read_bytes()

    return diff, apply


def _load_xdelta3() -> tuple[DiffFn, ApplyFn]:
    exe = _exe("xdelta3")

    def diff(p: Pair) -> bytes:
        # Source window: the image rounded up to a power of two, at least 1 MiB.
        window = max(1 << (_max_len(p) - 1).bit_length(), 1 << 20)
        _run(
            [
                exe,
                "-e",
                "-9",
                "-S",
                "djw",
                "-f",
                "-B",
                str(window),
                "-s",
                "old",
                "new",
                "xdelta3.patch",
            ],
            p.workdir,
        )
        return (p.workdir / "xdelta3.patch").read_bytes()

    def apply(p: Pair, patch: bytes) -> bytes:
        (p.workdir / "xdelta3.patch").write_bytes(patch)
        _run([exe, "-d", "-f", "-s", "old", "xdelta3.patch", "xdelta3.out"], p.workdir)
        return (p.workdir / "xdelta3.out").read_bytes()

    return diff, apply


def _load_detools() -> tuple[DiffFn, ApplyFn]:
    import detools

    def diff(p: Pair) -> bytes:
        out = io.BytesIO()
        detools.create_patch(io.BytesIO(p.old), io.BytesIO(p.new), out, compression="lzma")
        return out.getvalue()

    def apply(p: Pair, patch: bytes) -> bytes:
        out = io.BytesIO()
        detools.apply_patch(io.BytesIO(p.old), io.BytesIO(patch), out)
        return out.getvalue()

    return diff, apply


DETOOLS_SEGMENT = 4096


def _load_detools_inplace() -> tuple[DiffFn, ApplyFn]:
    import detools

    def images(p: Pair) -> tuple[bytes, bytes]:
        # The flash contents, as fotadelta_inplace diffs them: the same images for both.
        return _flash_contents(p.old), _flash_contents(p.new)

    def memory_size(p: Pair) -> int:
        # Both images rounded up to whole segments, plus detools' minimum shift of two segments,
        # so the old image is never truncated before diffing.
        return -(-_max_len(p) // DETOOLS_SEGMENT) * DETOOLS_SEGMENT + 2 * DETOOLS_SEGMENT

    def diff(p: Pair) -> bytes:
        out = io.BytesIO()
        old, new = images(p)
        detools.create_patch(
            io.BytesIO(old),
            io.BytesIO(new),
            out,
            compression="lzma",
            patch_type="in-place",
            memory_size=memory_size(p),
            segment_size=DETOOLS_SEGMENT,
        )
        return out.getvalue()

    def apply(p: Pair, patch: bytes) -> bytes:
        old = images(p)[0]
        memory = io.BytesIO(old + bytes(memory_size(p) - len(old)))
        size = detools.apply_patch_in_place(memory, io.BytesIO(patch))
        return memory.getvalue()[:size]

    return diff, apply


INPLACE_BLOCK = 4096
INPLACE_MAX = 4 << 20


def _load_fotadelta_inplace(codec: str) -> Callable[[], tuple[DiffFn, ApplyFn]]:
    """fotadelta's in-place patch for 4 KiB erase blocks, applied by the C device patcher on
    emulated flash (codec "lz" is the MCU codec, "lzma" the host one). Of Intel HEX images it
    makes the flash contents they program (what a device's slot holds, docs/inplace.md): the
    round trip is checked against those (Tool.flash)."""

    def load() -> tuple[DiffFn, ApplyFn]:
        from fotadelta import inplace

        return (lambda p: inplace.diff(p.old, p.new, block_size=INPLACE_BLOCK, codec=codec)), (
            lambda p, patch: inplace.apply(p.old, patch)
        )

    return load


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in [
        Tool(
            "fotadelta",
            "subject",
            _load_fotadelta(),
            "fotadelta",
            settings="fotadelta.diff(threads=1) / fotadelta.apply",
        ),
        Tool("bsdiff4", "peer", _load_bsdiff4, "bsdiff4", settings="bsdiff4.diff (bzip2)"),
        Tool(
            "hdiffpatch",
            "peer",
            _load_hdiffpatch,
            "hdiffpatch",
            settings="LZMA2 level 9, window >= image, 1 thread",
        ),
        Tool(
            "zstd",
            "peer",
            _load_zstd,
            "zstd --version",
            cli=True,
            settings="-19 --long=N --patch-from",
        ),
        Tool(
            "xdelta3",
            "peer",
            _load_xdelta3,
            "xdelta3 -V",
            cli=True,
            settings="-e -9 -S djw -B pow2(image)",
        ),
        Tool(
            "detools",
            "peer",
            _load_detools,
            "detools",
            settings="lzma, sequential, bsdiff algorithm",
        ),
        # In-place creation is roughly quadratic in the image size: skipped above 2 MB.
        Tool(
            "detools_inplace",
            "inplace",
            _load_detools_inplace,
            "detools",
            max_size=2_000_000,
            settings="lzma, in-place, 4 KiB segments",
            flash=True,
        ),
        # In-place updates are for device flash: the targets cover images up to 4 MiB, and the
        # emulated-flash apply of larger ones would dominate a corpus run.
        Tool(
            "fotadelta_inplace",
            "inplace",
            _load_fotadelta_inplace("lz"),
            "fotadelta",
            max_size=INPLACE_MAX,
            settings="in-place, 4 KiB blocks, MCU codec, applied on emulated flash",
            flash=True,
        ),
        Tool(
            "fotadelta_inplace_lzma",
            "inplace",
            _load_fotadelta_inplace("lzma"),
            "fotadelta",
            max_size=INPLACE_MAX,
            settings="in-place, 4 KiB blocks, LZMA payload, applied on emulated flash",
            flash=True,
        ),
    ]
}


# A measurement of a few microseconds or milliseconds is taken again until FAST_WINDOW_S has been
# spent on it (at most FAST_MAX_RUNS runs), for every tool alike: the best of three had often been
# a run that found cold caches, and a time ratio of two such runs moved by 1.5x from run to run.
FAST_WINDOW_S = 0.05
FAST_MAX_RUNS = 50


def best_of(fn: Callable[[], T], repeat: int, budget_s: float) -> tuple[T, float]:
    """Run ``fn`` ``repeat`` times (at least once, fewer once ``budget_s`` is used up), and more
    while fewer than FAST_WINDOW_S seconds were spent (at most FAST_MAX_RUNS runs in all).

    Returns the first result and the fastest wall time.
    """
    result: T | None = None
    best = math.inf
    spent = 0.0
    runs = 0
    while runs < max(repeat, 1) or (spent < FAST_WINDOW_S and runs < FAST_MAX_RUNS):
        start = time.perf_counter()
        value = fn()
        elapsed = time.perf_counter() - start
        if result is None:
            result = value
        best = min(best, elapsed)
        spent += elapsed
        runs += 1
        if spent >= budget_s:
            break
    assert result is not None
    return result, best


def run_tool(
    tool: Tool,
    fns: tuple[DiffFn, ApplyFn],
    pair: Pair,
    repeat: int,
    diff_repeat: int,
    budget_s: float,
) -> Result:
    """Diff, apply and verify one pair with one tool."""
    if tool.max_size is not None and _max_len(pair) > tool.max_size:
        limit = f"{tool.max_size >> 20} MiB" if tool.max_size % (1 << 20) == 0 else f"{tool.max_size / 1e6:g} MB"
        return Result(tool.name, "skipped", note=f"image > {limit}")
    diff, apply = fns
    try:
        patch, diff_s = best_of(lambda: diff(pair), diff_repeat, budget_s)
    except Exception as exc:  # any failure of a tool is a result, not a crash
        return Result(tool.name, "fail", note=f"diff: {type(exc).__name__}: {exc}")
    try:
        out, apply_s = best_of(lambda: apply(pair, patch), repeat, budget_s)
    except Exception as exc:
        return Result(
            tool.name, "fail", len(patch), diff_s, note=f"apply: {type(exc).__name__}: {exc}"
        )
    if out != (_flash_contents(pair.new) if tool.flash else pair.new):
        return Result(
            tool.name, "fail", len(patch), diff_s, apply_s, note="round trip: output != new"
        )
    return Result(tool.name, "ok", len(patch), diff_s, apply_s)


def _flash_contents(image: bytes) -> bytes:
    from fotadelta import inplace

    return bytes(inplace.flash_image(image).data)


# Child process for diff_peak_memory: peak RSS once fotadelta is imported and has made one small
# patch, then after the diff, in KiB. The warm-up diff (64 KiB) pages in the code of the C core and
# the codecs and the allocator's first arenas (about 1.2 MB, whatever the images): a fixed cost that
# would otherwise be charged to the pair, and dominate a small image's bytes per old byte.
# Linux's VmHWM belongs to the process image; ru_maxrss would carry over the parent's peak through
# fork and exec.
_PEAK_PROBE = """
import ctypes, mmap, random, resource, sys
import fotadelta

warm = random.Random(1).randbytes(1 << 16)
fotadelta.diff(warm, warm[:30000] + bytes(64) + warm[30000:])
# Every page of the mapped files (the libraries' code) is made resident too: a diff pages in the
# code it runs first, such as zstd levels the warm-up's incompressible streams never reach, and
# with the kernel's fault-around that had come to 128-256 KB of zstandard's library (20-40 bytes
# per old byte of a 6 KB image, against 0-16 KB of memory the diff allocated).
try:
    with open("/proc/self/maps") as f:
        spans = [line.split() for line in f]
except OSError:
    spans = []
for span in spans:
    if len(span) >= 6 and span[1].startswith("r") and span[5].startswith("/"):
        lo, hi = (int(x, 16) for x in span[0].split("-"))
        for at in range(lo, hi, mmap.PAGESIZE):
            ctypes.string_at(at, 1)

def peak():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

before = peak()
with open(sys.argv[1], "rb") as f:
    old = f.read()
with open(sys.argv[2], "rb") as f:
    new = f.read()
fotadelta.diff(old, new, extreme=sys.argv[3] == "1")
print(before, peak())
"""


def diff_peak_memory(pair: Pair, extreme: bool = False) -> int:
    """Peak memory of one fotadelta.diff of the pair (with extreme), images included, in a fresh
    process: its peak RSS minus that of the interpreter with fotadelta imported and warmed up,
    the libraries' code resident (see _PEAK_PROBE)."""
    proc = subprocess.run([sys.executable, "-c", _PEAK_PROBE, "old", "new", str(int(extreme))], cwd=pair.workdir,
                          capture_output=True, text=True, check=True)
    before, after = map(int, proc.stdout.split())
    return (after - before) * 1024


def default_corpus() -> Path:
    """../shared/corpus next to the repository if present, else the fetched samples."""
    shared = REPO_ROOT.parent / "shared" / "corpus"
    return shared if shared.is_dir() else REPO_ROOT / "firmware_samples" / "pairs"


def default_corpora() -> list[tuple[str, Path]]:
    """Every corpus there is, labelled: ../shared/corpus and the broad fetched corpus
    (firmware_samples/corpus); the small fetched sets when neither is there."""
    found = [
        (label, path)
        for label, path in (
            ("shared", REPO_ROOT.parent / "shared" / "corpus"),
            ("broad", REPO_ROOT / "firmware_samples" / "corpus"),
        )
        if path.is_dir()
    ]
    return found or [("samples", REPO_ROOT / "firmware_samples" / "pairs")]


def corpus_arg(value: str) -> tuple[str, Path]:
    """``LABEL=DIR`` or ``DIR`` (labelled by its name, or its parent's for .../corpus and .../pairs)."""
    label, sep, path = value.partition("=")
    if sep and label and "/" not in label:
        return label, Path(path)
    where = Path(value)
    resolved = where.resolve()
    return (resolved.parent.name if resolved.name in ("corpus", "pairs") else resolved.name), where


@dataclass(frozen=True)
class PairDir:
    """A pair directory, the corpus it belongs to and its category (arch/format/kind)."""

    corpus: str
    path: Path
    category: str

    @property
    def family(self) -> str:
        from fotadelta.samples.catalogue import arch_family

        return arch_family(self.category.split("/")[0])


UNCATEGORISED = "uncategorised/?/?"


def categories(corpus: Path) -> dict[str, str]:
    """Pair name -> category: the corpus' MANIFEST.tsv if it has a category column, else what
    the package's catalogue knows about pairs of that name."""
    from fotadelta.samples import catalogue

    known = catalogue.load().categories()
    manifest = corpus / "MANIFEST.tsv"
    if manifest.is_file():
        lines = [line.split("\t") for line in manifest.read_text("utf-8").splitlines() if line]
        if lines and "category" in lines[0]:
            col = lines[0].index("category")
            known.update({cells[0]: cells[col] for cells in lines[1:] if len(cells) > col})
    return known


def _matches(pair: PairDir, pair_globs: list[str], category_globs: list[str]) -> bool:
    names = (pair.path.name, f"{pair.corpus}/{pair.path.name}")
    if pair_globs and not any(fnmatch.fnmatch(n, g) for n in names for g in pair_globs):
        return False
    return not category_globs or any(
        fnmatch.fnmatch(pair.category, g) or pair.family.lower() == g.lower()
        for g in category_globs
    )


def find_pairs(
    corpora: list[tuple[str, Path]],
    pair_globs: list[str] | None = None,
    category_globs: list[str] | None = None,
) -> list[PairDir]:
    """Pair directories (with old and new), given directly or inside a corpus, that match the
    globs; per corpus, smallest first."""
    found: list[PairDir] = []
    for label, corpus in corpora:
        if not corpus.is_dir():
            hint = "fetch one: python firmware_samples/fetch.py"
            raise SystemExit(f"error: corpus {corpus} does not exist ({hint})")
        if (corpus / "old").is_file() and (corpus / "new").is_file():
            dirs, cats = [corpus], categories(corpus.parent)
        else:
            dirs = [d for d in sorted(corpus.iterdir()) if (d / "old").is_file() and (d / "new").is_file()]
            cats = categories(corpus)
        dirs.sort(key=lambda d: ((d / "new").stat().st_size, d.name))
        found += [PairDir(label, d, cats.get(d.name, UNCATEGORISED)) for d in dirs]
    if not found:
        raise SystemExit(
            f"error: no <pair>/old + <pair>/new found in {', '.join(str(c) for _, c in corpora)}"
        )
    chosen = [p for p in found if _matches(p, pair_globs or [], category_globs or [])]
    if not chosen:
        raise SystemExit("error: no pair matches --pairs/--category")
    return chosen


def load_pairs(dirs: list[PairDir], scratch: Path) -> Iterator[tuple[PairDir, Pair]]:
    """Read each pair and copy it into a scratch directory for the command-line tools."""
    for i, d in enumerate(dirs):
        workdir = scratch / str(i)
        workdir.mkdir()
        for side in ("old", "new"):
            shutil.copyfile(d.path / side, workdir / side)
        yield d, Pair(d.path.name, (d.path / "old").read_bytes(), (d.path / "new").read_bytes(), workdir)


def git_commit() -> str:
    """The repository's commit the run measured (with '+' when the tree has changes), if known."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+" if dirty else "")


def tool_versions(tools: list[Tool]) -> dict[str, str]:
    """Versions of the packages and programs behind the selected tools."""
    versions: dict[str, str] = {}
    for tool in tools:
        name = tool.version_of.split()[0]
        try:
            if tool.cli:
                proc = subprocess.run(tool.version_of.split(), capture_output=True, text=True)
                versions[name] = (
                    (proc.stdout + proc.stderr).strip().splitlines()[0].split(",")[0].strip("* ")
                )
            else:
                versions[name] = metadata.version(name)
        except (OSError, IndexError, metadata.PackageNotFoundError):
            versions[name] = "unknown"
    return versions


# ---------------------------------------------------------------- summary


def geomean(values: list[float]) -> float | None:
    """Geometric mean, None for an empty list."""
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def summarize(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-pair ratios and the project's targets (see benchmarks/README.md)."""
    rows: list[dict[str, Any]] = []
    for pair in pairs:
        res: dict[str, dict[str, Any]] = pair["results"]
        ok = {t: r for t, r in res.items() if r["status"] == "ok"}
        peers = {t: r["patch_bytes"] for t, r in ok.items() if TOOLS[t].role == "peer"}
        best_peer = min(peers, key=lambda t: peers[t]) if peers else None
        fd, bs, hd = ok.get("fotadelta"), ok.get("bsdiff4"), ok.get("hdiffpatch")
        ip, dt = ok.get("fotadelta_inplace"), ok.get("detools_inplace")
        rows.append(
            {
                "pair": pair["name"],
                "new_bytes": pair["new_bytes"],
                "best_peer": best_peer,
                "best_peer_bytes": peers.get(best_peer) if best_peer else None,
                "fotadelta_vs_best_peer": fd["patch_bytes"] / peers[best_peer]
                if fd and best_peer
                else None,
                "fotadelta_le_bsdiff4": fd["patch_bytes"] <= bs["patch_bytes"]
                if fd and bs
                else None,
                "diff_time_vs_hdiffpatch": fd["diff_s"] / hd["diff_s"] if fd and hd else None,
                "apply_time_vs_hdiffpatch": fd["apply_s"] / hd["apply_s"] if fd and hd else None,
                "diff_peak_per_old_byte": fd["diff_peak_bytes"] / max(pair["old_bytes"], 1)
                if fd and fd.get("diff_peak_bytes") is not None
                else None,
                "inplace_vs_plain": ip["patch_bytes"] / fd["patch_bytes"] if ip and fd else None,
                "inplace_lt_detools_inplace": ip["patch_bytes"] < dt["patch_bytes"] if ip and dt else None,
            }
        )
    size_ratios = [
        r["fotadelta_vs_best_peer"] for r in rows if r["fotadelta_vs_best_peer"] is not None
    ]
    le_bsdiff = [r["fotadelta_le_bsdiff4"] for r in rows if r["fotadelta_le_bsdiff4"] is not None]
    diff_times = [
        r["diff_time_vs_hdiffpatch"]
        for r in rows
        if r["diff_time_vs_hdiffpatch"] is not None and r["new_bytes"] >= LARGE_PAIR
    ]
    small_diff_times = [
        r["diff_time_vs_hdiffpatch"]
        for r in rows
        if r["diff_time_vs_hdiffpatch"] is not None and r["new_bytes"] < LARGE_PAIR
    ]
    apply_times = [
        r["apply_time_vs_hdiffpatch"] for r in rows if r["apply_time_vs_hdiffpatch"] is not None
    ]
    gm = geomean(size_ratios)
    peak = max(
        (r["diff_peak_per_old_byte"] for r in rows if r["diff_peak_per_old_byte"] is not None),
        default=None,
    )
    ip_ratios = [r["inplace_vs_plain"] for r in rows if r["inplace_vs_plain"] is not None]
    ip_gm = geomean(ip_ratios)
    ip_worst = max(ip_ratios, default=None)
    lt_detools = [r["inplace_lt_detools_inplace"] for r in rows if r["inplace_lt_detools_inplace"] is not None]
    return {
        "geomean_inplace_vs_plain": ip_gm,
        "max_inplace_vs_plain": ip_worst,
        "pairs_inplace_lt_detools_inplace": sum(lt_detools),
        "pairs_compared_with_detools_inplace": len(lt_detools),
        "per_pair": rows,
        "geomean_fotadelta_vs_best_peer": gm,
        "pairs_fotadelta_le_bsdiff4": sum(le_bsdiff),
        "pairs_compared_with_bsdiff4": len(le_bsdiff),
        "max_diff_time_vs_hdiffpatch_large": max(diff_times, default=None),
        "max_diff_time_vs_hdiffpatch_small": max(small_diff_times, default=None),
        "max_apply_time_vs_hdiffpatch": max(apply_times, default=None),
        "max_diff_peak_per_old_byte": peak,
        "targets_met": {
            "geomean_le_0.90": None if gm is None else gm <= GEOMEAN_TARGET,
            "le_bsdiff4_every_pair": all(le_bsdiff) if le_bsdiff else None,
            "diff_time_le_hdiffpatch_ge_1MB": all(t <= DIFF_TIME_LARGE_TARGET for t in diff_times)
            if diff_times
            else None,
            "diff_time_le_2x_hdiffpatch_below_1MB": all(t <= DIFF_TIME_SMALL_TARGET for t in small_diff_times)
            if small_diff_times
            else None,
            "apply_time_le_hdiffpatch": all(t <= APPLY_TIME_TARGET for t in apply_times)
            if apply_times
            else None,
            "diff_memory_le_10_per_old_byte": None
            if peak is None
            else peak <= MEMORY_TARGET,
            "inplace_geomean_le_1.06x_plain": None if ip_gm is None else ip_gm <= INPLACE_GEOMEAN_TARGET,
            "inplace_le_1.10x_plain_every_pair": None if ip_worst is None else ip_worst <= INPLACE_PAIR_TARGET,
            "inplace_lt_detools_inplace_every_pair": all(lt_detools) if lt_detools else None,
        },
    }


AXES = {"family": "architecture", "format": "format", "kind": "kind"}


def _group_key(pair: dict[str, Any], axis: str) -> str:
    if axis == "family":
        return str(pair["family"])
    return str(pair["category"].split("/")[1 if axis == "format" else 2])


def group_stats(pairs: list[dict[str, Any]], rows: list[dict[str, Any]], axis: str) -> list[dict[str, Any]]:
    """Per group of ``axis`` (and 'all'): geomeans of fotadelta / best peer, fotadelta / each
    peer, diff and apply time / HDiffPatch, in-place / plain; how many pairs each peer ran on."""
    groups: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        groups.setdefault(_group_key(pair, axis), []).append(i)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    out = []
    for name, idx in [*ordered, ("all", list(range(len(pairs))))]:
        sel = [(pairs[i], rows[i]) for i in idx]
        tools = list(pairs[idx[0]]["results"]) if idx else []
        peers = [t for t in tools if TOOLS[t].role == "peer"]
        vs_peer: dict[str, float | None] = {}
        ran: dict[str, str] = {}
        for peer in peers:
            ratios = []
            for pair, _ in sel:
                fd, pr = pair["results"].get("fotadelta"), pair["results"][peer]
                if fd and fd["status"] == "ok" and pr["status"] == "ok":
                    ratios.append(fd["patch_bytes"] / pr["patch_bytes"])
            vs_peer[peer] = geomean(ratios)
            ran[peer] = f"{sum(p['results'][peer]['status'] == 'ok' for p, _ in sel)}/{len(sel)}"
        best = [r["fotadelta_vs_best_peer"] for _, r in sel if r["fotadelta_vs_best_peer"] is not None]
        out.append(
            {
                "group": name,
                "pairs": len(sel),
                "geomean_fotadelta_vs_best_peer": geomean(best),
                "worst_fotadelta_vs_best_peer": max(best, default=None),
                "geomean_fotadelta_vs_peer": vs_peer,
                "peer_ran": ran,
                "geomean_diff_time_vs_hdiffpatch": geomean(
                    [r["diff_time_vs_hdiffpatch"] for _, r in sel if r["diff_time_vs_hdiffpatch"]]
                ),
                "geomean_apply_time_vs_hdiffpatch": geomean(
                    [r["apply_time_vs_hdiffpatch"] for _, r in sel if r["apply_time_vs_hdiffpatch"]]
                ),
                "geomean_inplace_vs_plain": geomean(
                    [r["inplace_vs_plain"] for _, r in sel if r["inplace_vs_plain"]]
                ),
            }
        )
    return out


def corpus_summaries(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per corpus: the targets summary and the per-category statistics on each axis."""
    out: dict[str, Any] = {}
    for label in dict.fromkeys(p["corpus"] for p in pairs):
        subset = [p for p in pairs if p["corpus"] == label]
        summary = summarize(subset)
        out[label] = {
            "pairs": len(subset),
            "summary": summary,
            "categories": {
                axis: group_stats(subset, summary["per_pair"], axis) for axis in AXES
            },
        }
    return out


# ---------------------------------------------------------------- output


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _met(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "**no**")


def pair_rows(pair: dict[str, Any], row: dict[str, Any]) -> Iterator[list[str]]:
    """Cells per tool: tool, patch bytes, patch/new, patch/best peer, diff s, apply s, note."""
    for name, r in pair["results"].items():
        mark = CLI_MARK if TOOLS[name].cli else ""
        size = r["patch_bytes"]
        yield [
            name,
            _num(size, ","),
            _num(size / pair["new_bytes"] if size and pair["new_bytes"] else None, ".4f"),
            _num(size / row["best_peer_bytes"] if size and row["best_peer_bytes"] else None, ".3f"),
            _num(r["diff_s"], ".6f") + (mark if r["diff_s"] is not None else ""),
            _num(r["apply_s"], ".6f") + (mark if r["apply_s"] is not None else ""),
            r["status"].upper() + (f": {r['note']}" if r["note"] else "")
            if r["status"] != "ok"
            else "",
        ]


def target_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Cells of the targets table: target, measured, goal, met."""
    met = summary["targets_met"]
    return [
        [
            "geomean of fotadelta / best peer",
            _num(summary["geomean_fotadelta_vs_best_peer"], ".4f"),
            f"<= {GEOMEAN_TARGET:.2f}",
            _met(met["geomean_le_0.90"]),
        ],
        [
            "pairs with fotadelta <= bsdiff4",
            f"{summary['pairs_fotadelta_le_bsdiff4']} / {summary['pairs_compared_with_bsdiff4']}",
            "every pair",
            _met(met["le_bsdiff4_every_pair"]),
        ],
        [
            f"worst diff time / hdiffpatch (pairs >= {LARGE_PAIR / 1e6:g} MB)",
            _num(summary["max_diff_time_vs_hdiffpatch_large"], ".2f"),
            f"<= {DIFF_TIME_LARGE_TARGET}",
            _met(met["diff_time_le_hdiffpatch_ge_1MB"]),
        ],
        [
            f"worst diff time / hdiffpatch (pairs < {LARGE_PAIR / 1e6:g} MB)",
            _num(summary["max_diff_time_vs_hdiffpatch_small"], ".2f"),
            f"<= {DIFF_TIME_SMALL_TARGET}",
            _met(met["diff_time_le_2x_hdiffpatch_below_1MB"]),
        ],
        [
            "worst apply time / hdiffpatch (every pair)",
            _num(summary["max_apply_time_vs_hdiffpatch"], ".2f"),
            f"<= {APPLY_TIME_TARGET}",
            _met(met["apply_time_le_hdiffpatch"]),
        ],
        [
            "worst fotadelta diff memory / old byte (images included)",
            _num(summary["max_diff_peak_per_old_byte"], ".1f"),
            f"<= {MEMORY_TARGET:g}",
            _met(met["diff_memory_le_10_per_old_byte"]),
        ],
        [
            "geomean of fotadelta_inplace / fotadelta (MCU codec; the default plain patch, code-aware)",
            _num(summary["geomean_inplace_vs_plain"], ".4f"),
            f"<= {INPLACE_GEOMEAN_TARGET:.2f}",
            _met(met["inplace_geomean_le_1.06x_plain"]),
        ],
        [
            "worst fotadelta_inplace / fotadelta (every pair)",
            _num(summary["max_inplace_vs_plain"], ".3f"),
            f"<= {INPLACE_PAIR_TARGET:.2f}",
            _met(met["inplace_le_1.10x_plain_every_pair"]),
        ],
        [
            "pairs with fotadelta_inplace < detools_inplace",
            f"{summary['pairs_inplace_lt_detools_inplace']} / {summary['pairs_compared_with_detools_inplace']}",
            "every pair",
            _met(met["inplace_lt_detools_inplace_every_pair"]),
        ],
    ]


def _md_table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return [*lines, ""]


def category_table(stats: list[dict[str, Any]], axis: str) -> list[str]:
    """A markdown table of group_stats: one row per category, the last for all pairs."""
    peers = list(stats[-1]["geomean_fotadelta_vs_peer"]) if stats else []
    header = [
        AXES[axis],
        "pairs",
        "fotadelta / best peer",
        "worst",
        *(f"/ {p}" for p in peers),
        "diff t / hdiffpatch",
        "apply t / hdiffpatch",
        "in-place / plain",
    ]
    rows = []
    for g in stats:
        cells = [
            f"**{g['group']}**" if g["group"] == "all" else g["group"],
            str(g["pairs"]),
            _num(g["geomean_fotadelta_vs_best_peer"], ".3f"),
            _num(g["worst_fotadelta_vs_best_peer"], ".2f"),
        ]
        for peer in peers:
            ran, total = g["peer_ran"][peer].split("/")
            note = "" if ran == total else f" ({g['peer_ran'][peer]} ran)"
            cells.append(_num(g["geomean_fotadelta_vs_peer"][peer], ".3f") + note)
        cells += [
            _num(g["geomean_diff_time_vs_hdiffpatch"], ".2f"),
            _num(g["geomean_apply_time_vs_hdiffpatch"], ".2f"),
            _num(g["geomean_inplace_vs_plain"], ".3f"),
        ]
        rows.append(cells)
    return _md_table(header, rows, "lr" + "r" * (len(header) - 2))


def category_sections(data: dict[str, Any], axes: tuple[str, ...], level: str) -> list[str]:
    """Per corpus: pair count, the overall line and one category table per axis."""
    lines: list[str] = []
    for label, corpus in data["corpora"].items():
        summary = corpus["summary"]
        lines += [
            f"{level} Corpus `{label}`: {corpus['pairs']} pair{'s' if corpus['pairs'] != 1 else ''}",
            "",
            f"fotadelta / best peer, geometric mean: **{_num(summary['geomean_fotadelta_vs_best_peer'], '.3f')}**; "
            f"fotadelta <= bsdiff4 on {summary['pairs_fotadelta_le_bsdiff4']} of "
            f"{summary['pairs_compared_with_bsdiff4']} pairs; in-place / plain "
            f"{_num(summary['geomean_inplace_vs_plain'], '.3f')}. Ratios below are geometric means "
            "over the category (lower is better for fotadelta); `(k/n ran)`: the peer ran on k of "
            "the n pairs (skipped or failed on the others, see results.md).",
            "",
        ]
        for axis in axes:
            lines += category_table(corpus["categories"][axis], axis)
    return lines


def write_summary(path: Path, data: dict[str, Any]) -> None:
    """summary.md: the per-category results of every corpus, ready to paste into the README."""
    meta = data["meta"]
    lines = [
        f"Measured {meta['date']} at commit {meta.get('commit', 'unknown')} on {meta['machine']} "
        f"({meta['cpus']} CPUs) with "
        f"`{meta['command']}` in {meta['elapsed_s'] / 60:.1f} min wall, "
        f"{meta['cpu_s'] / 60:.1f} min CPU; "
        + ", ".join(f"{t} {v}" for t, v in meta["versions"].items())
        + ". Plot: `patch_sizes.png`, one point per pair and tool, pairs grouped by architecture.",
        "",
    ]
    lines += category_sections(data, ("family", "kind"), "####")
    path.write_text("\n".join(lines))


PAIR_HEADER = ["tool", "patch bytes", "patch/new", "patch/best peer", "diff s", "apply s", "note"]


def write_markdown(path: Path, data: dict[str, Any]) -> None:
    """results.md: targets, per-pair ratios, a bytes overview and one table per pair."""
    meta, summary, pairs = data["meta"], data["summary"], data["pairs"]
    tools = meta["tools"]
    lines = [
        "# fotadelta vs. peer delta tools",
        "",
        f"{meta['date']} · {meta['machine']} · Python {meta['python']} · `{meta['command']}`",
        "",
        "Versions: " + ", ".join(f"{t} {v}" for t, v in meta["versions"].items()),
        "",
        "Peers for `patch/best peer`: "
        + ", ".join(t for t in tools if TOOLS[t].role == "peer")
        + ". "
        f"Times are the best of up to {meta['repeat']} apply / {meta['diff_repeat']} diff runs "
        f"(up to {FAST_MAX_RUNS} where they took under {FAST_WINDOW_S * 1000:g} ms in all). "
        f"{CLI_MARK} = subprocess wall time, including process start and file I/O.",
        "",
        "## Targets",
        "",
    ]
    lines += _md_table(["target", "measured", "goal", "met"], target_rows(summary), "lrll")
    lines += ["## Per category", ""]
    lines += category_sections(data, tuple(AXES), "###")
    lines += ["## Per pair", ""]
    lines += _md_table(
        [
            "pair",
            "corpus",
            "category",
            "new bytes",
            "best peer",
            "fotadelta / best peer",
            "fotadelta <= bsdiff4",
            "diff time / hdiffpatch",
            "apply time / hdiffpatch",
            "diff memory / old byte",
        ],
        [
            [
                r["pair"],
                p["corpus"],
                p["category"],
                f"{r['new_bytes']:,}",
                r["best_peer"] or "–",
                _num(r["fotadelta_vs_best_peer"], ".4f"),
                _met(r["fotadelta_le_bsdiff4"]),
                _num(r["diff_time_vs_hdiffpatch"], ".2f"),
                _num(r["apply_time_vs_hdiffpatch"], ".2f"),
                _num(r["diff_peak_per_old_byte"], ".1f"),
            ]
            for p, r in zip(pairs, summary["per_pair"], strict=True)
        ],
        "lllrlrlrrr",
    )
    lines += ["## Patch bytes", ""]
    lines += _md_table(
        ["pair", "new bytes", *tools],
        [
            [p["name"], f"{p['new_bytes']:,}"]
            + [
                _num(p["results"][t]["patch_bytes"], ",")
                if p["results"][t]["status"] == "ok"
                else p["results"][t]["status"]
                for t in tools
            ]
            for p in pairs
        ],
        "lr" + "r" * len(tools),
    )
    for pair, row in zip(pairs, summary["per_pair"], strict=True):
        lines += [
            f"### {pair['name']}",
            "",
            f"old {pair['old_bytes']:,} bytes, new {pair['new_bytes']:,} bytes",
            "",
        ]
        lines += _md_table(PAIR_HEADER, list(pair_rows(pair, row)), "lrrrrrl")
    path.write_text("\n".join(lines))


# Ticks of the ratio axes, roundest first: on a wide axis the later ones are left out where
# their labels would run into a kept one's (0.8, 0.9, 1 and 1.1 had, on an axis from 0.1 to 1.6).
PLOT_TICKS = (1, 0.5, 2, 0.25, 4, 0.8, 1.25, 0.67, 1.5, 0.33, 3, 0.9, 1.1)
PLOT_MAX = 4.0  # ratios beyond are drawn at the edge, labelled with their value
PLOT_TICK_SPACING = 1 / 14  # least gap between two ticks, as a share of the axis (log scale)


def _log_axis(axis: Any, lo: float, hi: float) -> None:
    from matplotlib import ticker

    gap = PLOT_TICK_SPACING * math.log(hi / lo)
    kept: list[float] = []
    for t in PLOT_TICKS:
        if lo <= t <= hi and all(abs(math.log(t / k)) >= gap for k in kept):
            kept.append(t)
    axis.set_major_locator(ticker.FixedLocator(sorted(kept)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def write_plot(path: Path, data: dict[str, Any]) -> None:
    """patch_sizes.png: per corpus, every plain tool's patch size relative to the best peer, one
    row per pair, pairs grouped by architecture with the category's fotadelta geomean marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs, rows = data["pairs"], data["summary"]["per_pair"]
    tools = [t for t in data["meta"]["tools"] if TOOLS[t].role != "inplace"]
    corpora = list(dict.fromkeys(p["corpus"] for p in pairs))
    counts = [sum(p["corpus"] == c for p in pairs) for c in corpora]
    fig, axes = plt.subplots(
        len(corpora), 1, figsize=(11, 1.6 + 0.24 * len(pairs) + 0.9 * len(corpora)),
        gridspec_kw={"height_ratios": [c + 2 for c in counts]}, squeeze=False,
    )
    ratios_seen = [1.0]
    for ax, label in zip(axes[:, 0], corpora, strict=True):
        chosen = sorted(
            (i for i, p in enumerate(pairs) if p["corpus"] == label),
            key=lambda i: (pairs[i]["family"], pairs[i]["new_bytes"]),
        )
        for t_i, tool in enumerate(tools):
            xs, ys = [], []
            for y, i in enumerate(chosen):
                r = pairs[i]["results"][tool]
                if r["status"] == "ok" and rows[i]["best_peer_bytes"]:
                    xs.append(r["patch_bytes"] / rows[i]["best_peer_bytes"])
                    ys.append(y)
            subject = TOOLS[tool].role == "subject"
            ax.plot([min(x, PLOT_MAX) for x in xs], ys, "*" if subject else "osD^vPX"[t_i % 7],
                    markersize=11 if subject else 5, linestyle="none", label=tool,
                    zorder=3 if subject else 2, alpha=1 if subject else 0.75)
            for x, y in zip(xs, ys, strict=True):
                if x > PLOT_MAX:  # off the scale: drawn at the edge with its value
                    ax.annotate(f"{tool} {x:.0f}×", (PLOT_MAX, y), xytext=(-4, 0), textcoords="offset points",
                                ha="right", va="center", fontsize=7, color="tab:red")
            ratios_seen += xs
        for family in dict.fromkeys(pairs[i]["family"] for i in chosen):
            idx = [y for y, i in enumerate(chosen) if pairs[i]["family"] == family]
            gm = geomean([rows[chosen[y]]["fotadelta_vs_best_peer"] for y in idx
                          if rows[chosen[y]]["fotadelta_vs_best_peer"]])
            if gm is not None:
                ax.plot([gm, gm], [idx[0] - 0.4, idx[-1] + 0.4], color="tab:red", linewidth=2, zorder=4)
            ax.axhline(idx[-1] + 0.5, color="grey", linewidth=0.6)
            ax.text(1.01, (idx[0] + idx[-1]) / 2, f"{family} ({len(idx)})", transform=ax.get_yaxis_transform(),
                    va="center", fontsize=8)
        ax.set_yticks(range(len(chosen)), [pairs[i]["name"][:44] for i in chosen], fontsize=7)
        ax.set_ylim(len(chosen) - 0.5, -0.5)
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xscale("log")
        ax.grid(axis="x", which="major", alpha=0.3)
        ax.set_title(f"corpus '{label}': patch bytes / best peer's (lower is better; red bar: fotadelta's "
                     "geomean per architecture)", fontsize=9, loc="left")
    lo, hi = max(min(ratios_seen) * 0.9, 0.05), min(max(ratios_seen) * 1.1, PLOT_MAX * 1.05)
    for ax in axes[:, 0]:
        ax.set_xlim(lo, hi)
        _log_axis(ax.xaxis, lo, hi)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    height = fig.get_figheight()
    fig.legend(handles, labels, fontsize=8, ncols=len(tools), loc="upper center")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_category_plot(path: Path, data: dict[str, Any]) -> None:
    """categories.png: fotadelta / best peer (geomean) per architecture and per kind, per corpus."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = data["corpora"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 + 0.32 * max(
        sum(len(c["categories"][a]) for c in corpora.values()) for a in ("family", "kind"))), squeeze=False)
    for ax, axis in zip(axes[0], ("family", "kind"), strict=True):
        labels, values, colours = [], [], []
        for c_i, (label, corpus) in enumerate(corpora.items()):
            for g in corpus["categories"][axis]:
                if g["geomean_fotadelta_vs_best_peer"] is None:
                    continue
                labels.append(f"{label}: {g['group']} ({g['pairs']})")
                values.append(g["geomean_fotadelta_vs_best_peer"])
                colours.append(f"C{c_i}")
        ax.barh(range(len(values)), [v - 1 for v in values], left=1, color=colours)
        ax.set_yticks(range(len(values)), labels, fontsize=7)
        ax.set_ylim(len(values) - 0.5, -0.5)
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xscale("log")
        lo, hi = min([*values, 1]) * 0.9, max([*values, 1]) * 1.1
        ax.set_xlim(lo, hi)
        _log_axis(ax.xaxis, lo, hi)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(f"fotadelta / best peer, geomean per {AXES[axis]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_report(data: dict[str, Any]) -> None:
    """Results and targets as rich tables on the terminal."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for pair, row in zip(data["pairs"], data["summary"]["per_pair"], strict=True):
        rows = list(pair_rows(pair, row))
        with_notes = any(cells[-1] for cells in rows)
        table = Table(
            title=f"{pair['name']}: {pair['new_bytes']:,} bytes",
            box=box.SIMPLE_HEAD,
            title_justify="left",
        )
        for head in ["tool", "bytes", "/new", "/best peer", "diff s", "apply s", "note"][
            : 7 if with_notes else 6
        ]:
            table.add_column(
                head,
                justify="left" if head in ("tool", "note") else "right",
                no_wrap=head != "note",
            )
        for cells in rows:
            style = (
                "red"
                if cells[-1].startswith("FAIL")
                else ("bold" if cells[0] == "fotadelta" else None)
            )
            table.add_row(*cells[: 7 if with_notes else 6], style=style)
        console.print(table)
    console.print(f"{CLI_MARK} subprocess time, including process start and file I/O")
    targets = Table(title="targets (all pairs)")
    for head in ("target", "measured", "goal", "met"):
        targets.add_column(head)
    for cells in target_rows(data["summary"]):
        targets.add_row(*(c.replace("**", "") for c in cells))
    console.print(targets)
    from rich.markdown import Markdown

    console.print(Markdown("\n".join(category_sections(data, ("family", "kind"), "###"))))


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "corpus",
        nargs="*",
        type=corpus_arg,
        help="[LABEL=]DIR: corpus dirs of <pair>/old,new (or pair dirs); default: ../shared/corpus "
        "and firmware_samples/corpus, each labelled",
    )
    ap.add_argument(
        "--pairs",
        action="append",
        default=[],
        metavar="GLOB",
        help="only pairs whose name (or corpus/name) matches; repeatable",
    )
    ap.add_argument(
        "--category",
        action="append",
        default=[],
        metavar="GLOB",
        help="only pairs whose category arch/format/kind matches (e.g. 'aarch64/*', '*/bootloader') "
        "or whose architecture family is named (e.g. Xtensa); repeatable",
    )
    ap.add_argument(
        "--out", type=Path, default=REPO_ROOT / "benchmarks" / "results", help="output directory"
    )
    ap.add_argument("--only", help=f"comma-separated tools (default: all of {','.join(TOOLS)})")
    ap.add_argument(
        "--repeat", type=int, default=3, help="apply runs per measurement, best taken (default 3)"
    )
    ap.add_argument(
        "--diff-repeat", type=int, default=3, help="diff runs per measurement (default 3)"
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=5.0,
        help="stop repeating once a measurement used this many s (default 5)",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bar and no tables")
    ap.add_argument(
        "--extreme",
        action="store_true",
        help="fotadelta's diffs with extreme=True (fotadelta diff --extreme): smaller, slower",
    )
    ap.add_argument(
        "--resummarize",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: re-read the categories of that run's pairs and write its tables "
        "and plots again",
    )
    args = ap.parse_args(argv)
    args.corpus = args.corpus or default_corpora()
    names = args.only.split(",") if args.only else list(TOOLS)
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        ap.error(f"unknown tool(s) {', '.join(unknown)}; choose from {', '.join(TOOLS)}")
    args.tools = [TOOLS[n] for n in names]
    if args.extreme:
        subject = TOOLS["fotadelta"]
        extreme = replace(subject, load=_load_fotadelta(True),
                          settings=subject.settings.replace("threads=1", "threads=1, extreme=True"))
        args.tools = [extreme if t is subject else t for t in args.tools]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; exit status 1 when any round trip failed."""
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    args = parse_args(argv)
    if args.resummarize is not None:
        return write_outputs(recategorised(json.loads(args.resummarize.read_text())), args.out, args.quiet)
    pair_dirs = find_pairs(args.corpus, args.pairs, args.category)
    loaded: dict[str, tuple[DiffFn, ApplyFn]] = {}
    for tool in args.tools:
        try:
            loaded[tool.name] = tool.load()
        except (ImportError, OSError) as exc:
            print(
                f"warning: {tool.name} unavailable ({exc}); its column is skipped", file=sys.stderr
            )
    tools = [t for t in args.tools if t.name in loaded]

    started, cpu_started = time.monotonic(), sum(os.times()[:4])
    pairs: list[dict[str, Any]] = []
    progress = Progress(
        TextColumn("{task.description:<60}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=args.quiet,
    )
    # Work grows with image size: the bar advances by bytes, so its time estimate means something.
    weight = {d.path: max((d.path / "new").stat().st_size, 1 << 16) for d in pair_dirs}
    with progress, tempfile.TemporaryDirectory(prefix="fotadelta-bench-") as scratch:
        task = progress.add_task("", total=sum(weight.values()) * len(tools))
        for n, (where, pair) in enumerate(load_pairs(pair_dirs, Path(scratch)), 1):
            if not args.quiet and not progress.console.is_terminal:  # a log gets a line per pair
                print(
                    f"[{n}/{len(pair_dirs)}] {where.corpus}/{pair.name} ({len(pair.new):,} bytes) "
                    f"at {time.monotonic() - started:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
            results: dict[str, Any] = {}
            for tool in tools:
                progress.update(
                    task, description=f"{n}/{len(pair_dirs)} {pair.name[:38]} · {tool.name}"
                )
                result = run_tool(
                    tool, loaded[tool.name], pair, args.repeat, args.diff_repeat, args.budget
                )
                if tool.name == "fotadelta" and result.status == "ok":
                    result.diff_peak_bytes = diff_peak_memory(pair, args.extreme)
                results[tool.name] = asdict(result)
                progress.advance(task, weight[where.path])
            pairs.append(
                {
                    "name": pair.name,
                    "corpus": where.corpus,
                    "category": where.category,
                    "family": where.family,
                    "old_bytes": len(pair.old),
                    "new_bytes": len(pair.new),
                    "results": results,
                }
            )

    data: dict[str, Any] = {
        "meta": {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {platform.system()}",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "command": " ".join(
                ["python", "benchmarks/compare.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "corpus": {label: str(path) for label, path in args.corpus},
            "elapsed_s": time.monotonic() - started,
            # CPU time of this process and the command-line tools it ran: on a shared machine
            # the wall time says more about the neighbours than about the benchmark.
            "cpu_s": sum(os.times()[:4]) - cpu_started,
            "repeat": args.repeat,
            "diff_repeat": args.diff_repeat,
            "budget_s": args.budget,
            "tools": [t.name for t in tools],
            "roles": {t.name: t.role for t in tools},
            "settings": {t.name: t.settings for t in tools},
            "cli_timing": [t.name for t in tools if t.cli],
            "versions": tool_versions(tools),
            "commit": git_commit(),
        },
        "pairs": pairs,
    }
    return write_outputs(data, args.out, args.quiet)


def recategorised(data: dict[str, Any]) -> dict[str, Any]:
    """A run's results with each pair's category read again from its corpus and the catalogue."""
    from fotadelta.samples.catalogue import arch_family

    known = {label: categories(Path(path)) for label, path in data["meta"]["corpus"].items()}
    for pair in data["pairs"]:
        pair["category"] = known.get(pair["corpus"], {}).get(pair["name"], pair["category"])
        pair["family"] = arch_family(pair["category"].split("/")[0])
    return data


def write_outputs(data: dict[str, Any], out: Path, quiet: bool) -> int:
    """Summaries, tables, JSON and plots of a run; exit status 1 when any round trip failed."""
    pairs = data["pairs"]
    data["summary"] = summarize(pairs)
    data["corpora"] = corpus_summaries(pairs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    write_markdown(out / "results.md", data)
    write_summary(out / "summary.md", data)
    write_plot(out / "patch_sizes.png", data)
    write_category_plot(out / "categories.png", data)
    if not quiet:
        print_report(data)
        print(
            f"wrote {out / 'results.json'}, results.md, summary.md, patch_sizes.png, "
            f"categories.png ({len(pairs)} pairs in {data['meta']['elapsed_s'] / 60:.1f} min)"
        )
    failures = [
        (p["name"], t, r["note"])
        for p in pairs
        for t, r in p["results"].items()
        if r["status"] == "fail"
    ]
    for name, tool, note in failures:
        print(f"FAIL: {tool} on {name}: {note}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
