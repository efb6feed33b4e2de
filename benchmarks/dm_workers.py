#!/usr/bin/env python3
"""Complete FUMO updates per second and server CPU per update of `fotadelta serve --workers W`, for
W = 1 and 2, on SQLite and on PostgreSQL, at N = 1, 16, 64, 256 concurrent emulated devices.

Each configuration is one run of dm_sessions.py --server-process (the server as `fotadelta serve
--workers W` in its own processes, the devices in this benchmark's process, each configuration on a
fresh database: a temporary SQLite file, or a new database in the PostgreSQL cluster of --pg). The
server's CPU is its supervisor's and workers' (not PostgreSQL's); the devices' CPU is reported beside
it. Writes results_dm_workers.json and dm_workers.png in --out. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench_support import load_script  # beside this script
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parent.parent
dm = load_script("dm_sessions.py", "fotadelta_bench_dm_sessions")


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new, empty database in the cluster of admin_url (its URL), dropped once the configuration has run."""
    name = f"fd_bench_{secrets.token_hex(4)}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:  # (FORCE: a server process killed mid-run may have left a session)
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def write_plot(path: Path, results: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate, cpu) = plt.subplots(1, 2, figsize=(11, 4.6))
    for r in results:
        runs = [x for x in r["runs"] if x["status"] == "ok"]
        xs = [x["devices"] for x in runs]
        label = f"{r['db']}, {r['workers']} worker{'s' if r['workers'] > 1 else ''}"
        style = ("o-" if r["db"] == "PostgreSQL" else "s--")
        rate.plot(xs, [x["fumo"]["per_s"] for x in runs], style, label=label)
        cpu.plot(xs, [x["fumo"]["cpu_per_update_ms"] for x in runs], style, label=label)
    for ax, what in ((rate, "complete FUMO updates / s"), (cpu, "server CPU ms per complete update")):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 16, 64, 256], ["1", "16", "64", "256"])
        ax.set_xlabel("concurrent emulated devices")
        ax.set_ylabel(what)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    meta = results[0]["meta"]
    fig.suptitle(f"fotadelta serve --workers W · {meta['firmware']['name']} · {meta['cpus']} CPUs shared "
                 f"(devices in one other process)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg", required=True, metavar="URL",
                    help="a PostgreSQL URL whose cluster may get new databases (one per configuration)")
    ap.add_argument("--devices", default="1,16,64,256")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--databases", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    ap.add_argument("--updates-per-device", default="1")
    ap.add_argument("--min-samples", default="512",
                    help="updates (and bootstrap sessions) at least, per N: long enough to measure the steady state, "
                         "not the first connections and statements (default 512)")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    results = []
    ok = True
    wanted = {d.strip().lower() for d in args.databases.split(",")}
    for db in [d for d in ("SQLite", "PostgreSQL") if d.lower() in wanted]:
        for workers in [int(w) for w in args.workers.split(",")]:
            out = args.out / f"dm_{db.lower()}_w{workers}"
            cmd = ["--server-process", "--workers", str(workers), "--devices", args.devices, "--bootstrap-rounds",
                   "1", "--updates-per-device", args.updates_per_device, "--min-samples", args.min_samples,
                   "--out", str(out)]
            print(f"== {db}, {workers} worker(s)", file=sys.stderr, flush=True)
            with contextlib.ExitStack() as stack:
                if db == "PostgreSQL":
                    cmd += ["--db", stack.enter_context(fresh_database(args.pg))]
                ok = dm.main(cmd) == 0 and ok
            data = json.loads((out / "results_dm.json").read_text())
            data["meta"]["database"] = db
            results.append({"db": db, "workers": workers, "meta": data["meta"], "runs": data["runs"]})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results_dm_workers.json").write_text(json.dumps(results, indent=2) + "\n")
    write_plot(args.out / "dm_workers.png", results)
    print("db          W     N   FUMO/s   server CPU ms/upd   devices CPU ms/upd   PostgreSQL CPU ms/upd   p95 ms")
    for r in results:
        for x in r["runs"]:
            f = x.get("fumo")
            if f:
                db_cpu = f.get("database_cpu_per_update_ms")
                print(f"{r['db']:<11} {r['workers']:>1} {x['devices']:>5} {f['per_s']:>8.1f} {f['cpu_per_update_ms']:>19.1f}"
                      f" {f['devices_cpu_per_update_ms']:>20.1f} {'–' if db_cpu is None else f'{db_cpu:.1f}':>23}"
                      f" {f['latency_ms']['p95']:>8.0f}")
            else:
                print(f"{r['db']:<11} {r['workers']:>1} {x['devices']:>5} FAIL {x.get('error', '')[:80]}")
    print(f"wrote {args.out / 'results_dm_workers.json'}, dm_workers.png")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
