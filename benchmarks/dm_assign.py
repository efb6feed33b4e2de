#!/usr/bin/env python3
"""Server CPU per operator update with notify: `POST /api/v1/devices/{id}/update` (`"notify": true`) against
`fotadelta serve` in its own process, the push going to a listener that only takes it (no device session
follows), so what is measured is the assign (the API request, the job planned, the notified session, the
audit entry) and the push, nothing of the DM sessions.

The devices are bootstrapped once (dm_sessions.py's harness) and their push addresses then pointed at the
sink; each request plans a job to the next version again (superseding the device's pending one). Prints,
per round, the server's and the database's CPU ms per request (PostgreSQL on this host: the whole cluster's;
SQLite: none) and the requests per second. See benchmarks/README.md."""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from pathlib import Path

from bench_support import load_script  # beside this script
from sqlalchemy import create_engine, text

from fotadelta.dm.listener import PushListener
from fotadelta.dm.transport import DeviceHttp

dm = load_script("dm_sessions.py", "fotadelta_bench_dm_sessions")
workers_bench = load_script("dm_workers.py", "fotadelta_bench_dm_workers")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg", metavar="URL", help="a PostgreSQL URL whose cluster may get a new database "
                                                "(default: SQLite in a temporary directory)")
    ap.add_argument("--devices", type=int, default=32)
    ap.add_argument("--threads", type=int, default=8, help="operator requests at once (default 8)")
    ap.add_argument("--requests", type=int, default=1600, help="per round (default 1600)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1, help="serve --workers W (default 1)")
    args = ap.parse_args(argv)
    with contextlib.ExitStack() as stack:
        db_url = None if args.pg is None else stack.enter_context(workers_bench.fresh_database(args.pg))
        return measure(args, db_url)


def measure(args: argparse.Namespace, db_url: str | None) -> int:
    """The rounds of operator updates against a `fotadelta serve` on db_url (None: SQLite)."""
    pushes = 0
    lock = threading.Lock()

    def sink(dev_id: str, content_type: str, body: bytes) -> tuple[int, str]:
        nonlocal pushes
        with lock:
            pushes += 1
        return 202, "taken"

    h = dm.Harness(dm.load_firmware(None), 2, db_url=db_url, server_process=True, workers=args.workers)
    listener = PushListener(sink)
    try:
        bootstrapped = h.new_devices(args.devices)
        h.bootstrap(bootstrapped)
        devices = [d.dev_id for d in bootstrapped]
        engine = create_engine(h.backend.db_url)
        with engine.begin() as conn:
            conn.execute(text("UPDATE devices SET push_url = :p || dev_id"),
                         {"p": f"http://127.0.0.1:{listener.port}/push/"})
        engine.dispose()
        body = json.dumps({"version": dm.version(1), "notify": True}).encode()
        url = h.backend.url

        def work(ids: list[str], n: int) -> None:
            http = DeviceHttp(timeout=60.0)
            for i in range(n):
                r = http.post(f"{url}/api/v1/devices/{ids[i % len(ids)]}/update", content=body,
                              headers={"content-type": "application/json"})
                if r.status_code != 201 or not json.loads(r.content)["notified"]:
                    raise SystemExit(f"update answered {r.status_code}: {r.content[:200]!r}")

        work(devices, 50)  # (connections, caches, first compiles)
        per_thread = args.requests // args.threads
        for round_ in range(args.rounds):
            cpu0, db0, pushes0 = h.backend.cpu_seconds(), h.backend.database_cpu_seconds(), pushes
            started = time.perf_counter()
            threads = [threading.Thread(target=work, args=(devices[i::args.threads], per_thread))
                       for i in range(args.threads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - started
            n = per_thread * args.threads
            cpu, db1 = h.backend.cpu_seconds() - cpu0, h.backend.database_cpu_seconds()
            if pushes - pushes0 != n:
                raise SystemExit(f"{n} updates made {pushes - pushes0} pushes")
            database = "" if db0 is None or db1 is None else f", database CPU {1e3 * (db1 - db0) / n:.3f} ms"
            print(f"round {round_}: {n} updates with notify, server CPU {1e3 * cpu / n:.3f} ms per update{database}, "
                  f"{n / wall:.0f}/s", flush=True)
    finally:
        listener.stop()
        h.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
