#!/usr/bin/env python3
"""Wall time of `build-repo` over ten real releases (every pair: 45 in-place deltas) on one
local worker process, two processes, two threads and a Dask LocalCluster of two worker
processes; then the same build again from the cache, which must compute nothing.

The releases are the micro:bit MicroPython runtimes of ten consecutive uflash releases
(benchmarks/farm_releases.toml: pinned sdists from PyPI, images checked by sha256). Every
cold run starts with an empty cache; configurations take turns within each round so that the
shared machine's load falls on all of them alike (every other round runs them in reverse
order); the load average before each run is recorded. Every repository built must be the same
bytes. Writes build_farm.json, build_farm.md and build_farm.png to --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

from fotadelta import farm  # noqa: E402
from fotadelta.farm.task import engine_id  # noqa: E402
from fotadelta.package import signing  # noqa: E402
from fotadelta.samples.archives import normalise, read_members  # noqa: E402
from fotadelta.samples.catalogue import BASES, MAX_IMAGE, Catalogue, Image, Source  # noqa: E402
from fotadelta.samples.fetch import Fetcher  # noqa: E402
from fotadelta.samples.images import extract  # noqa: E402

CONFIGS = ("process-1", "process-2", "thread-2", "dask-2")
LABELS = {"process-1": "1 process", "process-2": "2 processes", "thread-2": "2 threads",
          "dask-2": "Dask LocalCluster, 2 worker processes", "cached": "2 processes, second run (cache)"}


def pinned_releases(manifest: Path) -> list[tuple[str, Source, Image]]:
    """The manifest's releases, oldest first: version, pinned sdist, image in it."""
    releases = []
    for entry in tomllib.loads(manifest.read_text())["releases"]:
        dist, spec = entry["dist"], entry["image"]
        source = Source(f"uflash-{dist['version']}", "pypi", dist["path"], dist["size"], dist["sha256"],
                        dist["package"], dist["version"], "pypi")
        image = Image(source.id, spec["member"], spec["extract"], spec["sha256"], 0, tuple(spec["region"]))
        releases.append((entry["version"], source, image))
    return releases


def fetch_releases(manifest: Path, cache: Path, pypi_url: str) -> list[tuple[str, bytes]]:
    """The pinned releases, oldest first, each sdist and image checked against its sha256."""
    fetcher = Fetcher(Catalogue({}, (), {}), cache, mirrors={"pypi": pypi_url})
    releases = []
    for version, source, image in pinned_releases(manifest):
        member = read_members(fetcher.archive(source), [image.member], MAX_IMAGE)[normalise(image.member)]
        data = extract(image, member)
        if hashlib.sha256(data).hexdigest() != image.sha256:
            raise SystemExit(f"uflash {version} image: sha256 mismatch, refused")
        releases.append((version, data))
    return releases


def tree_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process and every live descendant:
    local pool workers, the forkserver, the Dask scheduler, nannies and workers (Linux /proc)."""
    parent: dict[int, int] = {}
    used: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        parent[int(entry)] = int(fields[1])
        used[int(entry)] = int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    tree, frontier = set(), {os.getpid()}
    while frontier:
        tree |= frontier
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - tree
    return sum(used.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def timed_build(releases: list[tuple[str, bytes]], repo: Path, cache: farm.DeltaCache,
                make_executor: Callable[[], farm.Executor]) -> dict[str, Any]:
    """One build-repo as the CLI runs it (executor started inside the timing), with its manifest.

    CPU time is of the whole process tree, taken before the executor stops (its processes
    still alive): on a shared machine it says what the build costs, whatever the load."""
    key = signing.generate()
    load_before = os.getloadavg()[0]
    cpu_before = tree_cpu_s()
    started = time.perf_counter()
    with make_executor() as executor:
        built = farm.build_repo(releases, repo, key, make="BBC", model="micro:bit", executor=executor, cache=cache)
        cpu = tree_cpu_s() - cpu_before
    wall = time.perf_counter() - started
    manifest = built.manifest()
    workers = sorted({p["worker"] for p in manifest["packages"] if p["worker"]})
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 2), "load_before": load_before,
            "load_after": os.getloadavg()[0],
            "computed": manifest["totals"]["computed"], "from_cache": manifest["totals"]["from_cache"],
            "compute_s": manifest["totals"]["compute_seconds"], "workers_used": workers,
            "package_bytes": manifest["totals"]["package_bytes"],
            "payloads": {p["key"]: p["payload_bytes"] for p in manifest["packages"]}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "results", help="output directory (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of every configuration (default: %(default)s)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ", ".join(CONFIGS))
    ap.add_argument("--manifest", type=Path, default=HERE / "farm_releases.toml", help="pinned releases")
    ap.add_argument("--dist-cache", type=Path, default=REPO / "firmware_samples" / ".cache",
                    help="downloaded sdists, in its downloads/ (default: %(default)s)")
    ap.add_argument("--pypi-url", default=BASES["pypi"], help="PyPI files host or a mirror (default: %(default)s)")
    args = ap.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    if unknown := set(configs) - set(CONFIGS):
        ap.error(f"unknown configurations: {', '.join(sorted(unknown))}")

    releases = fetch_releases(args.manifest, args.dist_cache, args.pypi_url)
    print(f"{len(releases)} releases ({releases[0][0]} .. {releases[-1][0]}), "
          f"{len(releases) * (len(releases) - 1) // 2} deltas per build", file=sys.stderr)

    cluster = None
    cluster_start_s = None
    if "dask-2" in configs:
        from distributed import LocalCluster
        started = time.perf_counter()
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=":0")
        cluster_start_s = round(time.perf_counter() - started, 3)
    executors: dict[str, Callable[[], farm.Executor]] = {
        "process-1": lambda: farm.LocalPool(1),
        "process-2": lambda: farm.LocalPool(2),
        "thread-2": lambda: farm.LocalPool(2, processes=False),
    }
    if cluster is not None:
        address = cluster.scheduler_address
        executors["dask-2"] = lambda: farm.DaskCluster(address)
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in [*configs, "cached"]}
    failures: list[str] = []
    reference: dict[str, int] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="fotadelta-farm-bench-") as tmp:
            for round_ in range(args.repeat):
                # Every other round in reverse order, so that a load that grows or falls while
                # the benchmark runs does not always fall on the same configuration.
                for config in configs if round_ % 2 == 0 else configs[::-1]:
                    where = Path(tmp) / f"{config}-{round_}"
                    cache = farm.DeltaCache(where / "cache")
                    run = timed_build(releases, where / "repo", cache, executors[config])
                    runs[config].append(run)
                    print(f"round {round_ + 1}: {LABELS[config]}: {run['wall_s']:.1f} s, {run['computed']} computed, "
                          f"load {run['load_before']:.1f}", file=sys.stderr)
                    reference = reference or run["payloads"]
                    if run["payloads"] != reference or run["computed"] != len(reference):
                        failures.append(f"{config} round {round_ + 1}: other deltas than the first build")
                    if config == "process-2":
                        again = timed_build(releases, where / "again", cache, executors[config])
                        runs["cached"].append(again)
                        print(f"round {round_ + 1}: {LABELS['cached']}: {again['wall_s']:.1f} s, "
                              f"{again['computed']} computed", file=sys.stderr)
                        if again["computed"] or again["from_cache"] != len(reference):
                            failures.append(f"cached rerun round {round_ + 1} computed {again['computed']} deltas")
    finally:
        if cluster is not None:
            cluster.close()

    summary = {c: {"median_wall_s": statistics.median(r["wall_s"] for r in rs),
                   "load_before": [round(r["load_before"], 1) for r in rs],
                   "median_cpu_s": statistics.median(r["cpu_s"] for r in rs),
                   "walls_s": [r["wall_s"] for r in rs],
                   "median_compute_s": statistics.median(r["compute_s"] for r in rs),
                   "computed": [r["computed"] for r in rs]} for c, rs in runs.items() if rs}
    result = {"releases": [v for v, _ in releases], "deltas": len(reference or {}),
              "image_bytes": [len(image) for _, image in releases], "engine": engine_id(),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
              "dask_cluster_start_s": cluster_start_s, "summary": summary, "runs": runs, "failures": failures}
    for rs in runs.values():
        for r in rs:
            del r["payloads"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "build_farm.json").write_text(json.dumps(result, indent=2) + "\n")
    table = _table(summary, result)
    (args.out / "build_farm.md").write_text(table)
    _plot(summary, args.out / "build_farm.png", result)
    sys.stdout.write(table)
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _table(summary: dict[str, dict[str, Any]], result: dict[str, Any]) -> str:
    base = summary.get("process-1", {}).get("median_wall_s")
    lines = [f"build-repo over {len(result['releases'])} releases ({result['deltas']} in-place deltas, "
             f"images of {min(result['image_bytes']):,}-{max(result['image_bytes']):,} bytes), "
             f"{result['machine']['cpus']} CPUs, median of {len(next(iter(summary.values()))['walls_s'])} rounds",
             "", "| configuration | wall s (median) | every round | speed-up vs 1 process | CPU s (median) | "
             "deltas computed | compute s on workers (median) | load average before each round |",
             "|---|---:|---|---:|---:|---|---:|---|"]
    for config, s in summary.items():
        speedup = f"{base / s['median_wall_s']:.2f}" if base else "n/a"
        lines.append(f"| {LABELS[config]} | {s['median_wall_s']:.1f} | {', '.join(f'{w:.1f}' for w in s['walls_s'])} | "
                     f"{speedup} | {s['median_cpu_s']:.1f} | {', '.join(map(str, s['computed']))} | "
                     f"{s['median_compute_s']:.1f} | "
                     f"{', '.join(f'{x:.1f}' for x in s['load_before'])} |")
    if result["dask_cluster_start_s"] is not None:
        lines += ["", f"Dask LocalCluster start (not in the wall times): {result['dask_cluster_start_s']:.1f} s"]
    return "\n".join(lines) + "\n"


def _plot(summary: dict[str, dict[str, Any]], path: Path, result: dict[str, Any]) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing (pip install -e '.[bench]'): no plot", file=sys.stderr)
        return
    configs = list(summary)
    labels = [LABELS[c] for c in configs]
    colors = ["#888" if c == "cached" else "#3a7" for c in configs]
    fig, (wall_ax, cpu_ax) = plt.subplots(1, 2, figsize=(11, 0.6 * len(configs) + 1.8), sharey=True)
    medians = [summary[c]["median_wall_s"] for c in configs]
    wall_ax.barh(labels, medians, color=colors)
    for y, c in enumerate(configs):
        walls = summary[c]["walls_s"]
        wall_ax.plot(walls, [y] * len(walls), "k|", markersize=12)
        wall_ax.text(max(walls), y, f"   {medians[y]:.1f} s", va="center")
    wall_ax.invert_yaxis()
    wall_ax.set_xlabel("wall time, s (bar: median; ticks: every round)")
    wall_ax.set_xlim(0, 1.25 * max(max(summary[c]["walls_s"]) for c in configs))
    cpus = [summary[c]["median_cpu_s"] for c in configs]
    cpu_ax.barh(labels, cpus, color=colors)
    for y, value in enumerate(cpus):
        cpu_ax.text(value, y, f"  {value:.1f} s", va="center")
    cpu_ax.set_xlabel("CPU time of all processes, s (median)")
    cpu_ax.set_xlim(0, 1.25 * max(cpus))
    fig.suptitle(f"build-repo, {len(result['releases'])} micro:bit releases, {result['deltas']} in-place deltas "
                 f"(shared {result['machine']['cpus']}-CPU machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
