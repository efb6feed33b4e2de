#!/usr/bin/env python3
"""The web console's fleet overview on a large fleet: how long each kind of page takes to serve.

Fills a SQLite store with N devices (default 1,000,000: four makes/models, a few versions, every
status, an MSISDN each), starts the DM server with its console on loopback, logs in through the
login form, then fetches each page kind REPEAT times over real HTTP and reports the median and
the worst time (the first request of a filter pays for its counts, which the console then keeps
30 s; the worst time shows that cost): the first page, a page deep in the fleet (keyset `after`), the page before it,
filters by status and by model, searches by IMEI prefix and by MSISDN. It also prints SQLite's
plan for the filtered page query, to show it walks an index rather than sorting the fleet.
Writes benchmarks/results/console_fleet.json.

    python benchmarks/console_fleet.py [--devices 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from argon2 import PasswordHasher
from sqlalchemy import insert, select, text

from fotadelta.server import DmServer, ServerConfig, create_app, serve_in_thread
from fotadelta.server.fleet import Fleet
from fotadelta.server.auth import Role
from fotadelta.server.registry import DeviceFilter
from fotadelta.server.store import DeviceRow

MODELS = [("Acme", "S1"), ("Acme", "S2"), ("Globex", "G7"), ("Initech", "T100")]
VERSIONS = ["1.0", "1.1", "1.2"]
STATUSES = ["provisioned"] * 7 + ["assigned", "unassigned", "quarantined"]


def fill(server: DmServer, n: int) -> float:
    started = time.perf_counter()
    chunk = 20_000
    with server.store.engine.begin() as conn:
        for base in range(0, n, chunk):
            rows = []
            for i in range(base, min(n, base + chunk)):
                make, model = MODELS[i % len(MODELS)]
                rows.append({"dev_id": f"IMEI:35{i:013d}", "user": "u", "password": "p" * 16,
                             "server_password": "s" * 16, "make": make, "model": model,
                             "version": VERSIONS[(i // 7) % len(VERSIONS)], "msisdn": f"+49151{i:08d}",
                             "status": STATUSES[(i * 7919) % len(STATUSES)], "last_seen": 1.7e9 + i})
            conn.execute(insert(DeviceRow), rows)
    return time.perf_counter() - started


def login(url: str, user: str, password: str) -> httpx.Client:
    form = httpx.get(f"{url}/console/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    r = httpx.post(f"{url}/console/login", data={"csrf": token, "name": user, "password": password},
                   cookies={"__Host-fd_login": token})
    session = r.cookies.get("__Host-fd_console") or re.search(
        r"__Host-fd_console=([^;]+)", r.headers.get("set-cookie", "")).group(1)  # type: ignore[union-attr]
    return httpx.Client(base_url=url, cookies={"__Host-fd_console": session}, timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = DmServer(ServerConfig(Path(tmp), "http://127.0.0.1:0"))
        fill_s = fill(server, args.devices)
        t = time.perf_counter()
        fleet = Fleet(server, password_hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
        services_s = time.perf_counter() - t  # (the indexes came with the tables, before the fill)
        fleet.auth.create_user(fleet.auth.bootstrap_admin(), "bench", "bench-password", Role.READ_ONLY)
        running = serve_in_thread(create_app(server, fleet))
        url = f"http://127.0.0.1:{running.port}"
        try:
            client = login(url, "bench", "bench-password")
            middle = f"IMEI:35{args.devices // 2:013d}"
            pages = {
                "first page": "/console/fleet",
                "deep page (after the middle)": f"/console/fleet?after={middle}",
                "previous page (before the middle)": f"/console/fleet?before={middle}",
                "status=quarantined": "/console/fleet?status=quarantined",
                "quarantined, deep": f"/console/fleet?status=quarantined&after={middle}",
                "model=G7, version=1.1": "/console/fleet?make=Globex&model=G7&version=1.1",
                "search IMEI prefix": "/console/fleet?q=3500000012345",
                "search MSISDN": f"/console/fleet?q=%2B49151{args.devices // 3:08d}",
            }
            results = {}
            for name, path in pages.items():
                times = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    r = client.get(path)
                    times.append(time.perf_counter() - t)
                    assert r.status_code == 200, (path, r.status_code, r.text[:300])
                results[name] = {"median_s": statistics.median(times), "max_s": max(times), "path": path}
                print(f"{name:36s} median {statistics.median(times) * 1000:8.1f} ms   max {max(times) * 1000:8.1f} ms")
            with fleet.server.store.tx() as s:
                where = fleet.registry.condition(s, DeviceFilter(status="quarantined"))
                q = select(DeviceRow.dev_id).where(where, DeviceRow.dev_id > middle).order_by(DeviceRow.dev_id).limit(51)
                compiled = q.compile(compile_kwargs={"literal_binds": True})
                plan = [row[-1] for row in s.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))]
            print("plan of the quarantined page:", "; ".join(plan))
        finally:
            running.stop()
            fleet.close()
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "console_fleet.json").write_text(json.dumps({"devices": args.devices, "fill_s": fill_s,
                                                        "services_s": services_s, "pages": results, "plan": plan},
                                                       indent=2) + "\n")
    print(f"{args.devices:,} devices filled in {fill_s:.1f} s, fleet services up in {services_s:.1f} s")


if __name__ == "__main__":
    main()
