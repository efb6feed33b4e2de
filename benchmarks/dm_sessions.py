#!/usr/bin/env python3
"""Complete FUMO sessions per second against one OMA DM server, with N concurrent emulated devices.

One DmServer listens on loopback (uvicorn, SQLite in a temporary directory unless --db is given);
a small firmware pair is published as a chain of in-place packages 1.0 -> 1.1 -> ... For each N,
N fresh emulated devices (distinct IMEIs, one shared push listener) first open their bootstrap
session concurrently (timed: bootstrap-only sessions per second), then each is taken through
--updates-per-device complete FUMO updates, all N devices at once: assign + notify, the
server-initiated session, download, in-place install on emulated flash, reboot, the report
session with Generic Alert 1226. Every job is checked to be 'succeeded' in the store and every
device to run the expected image; anything else fails the run (exit status 1).
Writes results_dm.json and dm_sessions.png. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from bench_support import synthetic_pair  # beside this script
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine

from fotadelta import package
from fotadelta.dm.client import DmClient
from fotadelta.dm.codec import Encoding
from fotadelta.dm.transport import DeviceHttp
from fotadelta.emulator import Fleet, make_client
from fotadelta.package import signing
from fotadelta.server import DmServer, ServerConfig, create_app, serve_in_thread
from fotadelta.server.push import HttpPush

REPO_ROOT = Path(__file__).resolve().parent.parent
PREFERRED_PAIR = "detools-programmer-0.8.0-0.9.0"  # 23.5 KB Cortex-M application image
SYNTHETIC_SIZE = 32 * 1024
BLOCK = 4096
MAKE, MODEL = "Acme", "FD-Bench"
TAC = "35299000"  # type allocation code of the emulated devices' IMEIs
TIMEOUT_S = 120.0  # one update (or bootstrap) taking longer than this fails the run


class BenchFailure(RuntimeError):
    """A session, update or check went wrong: the numbers of that run are not reported."""


# ---------------------------------------------------------------- firmware


@dataclass(frozen=True)
class Firmware:
    name: str
    old: bytes
    new: bytes

    def image(self, step: int) -> bytes:
        """Version 1.<step> of the chain alternates between old (even) and new (odd)."""
        return self.old if step % 2 == 0 else self.new


def version(step: int) -> str:
    return f"1.{step}"


def load_firmware(pair: Path | None) -> Firmware:
    """--pair, else the small detools 'programmer' pair of the corpus, else a synthetic ~32 KB pair."""
    if pair is not None:
        if not ((pair / "old").is_file() and (pair / "new").is_file()):
            raise SystemExit(f"error: {pair} has no old and new")
        return Firmware(pair.name, (pair / "old").read_bytes(), (pair / "new").read_bytes())
    for corpus in (REPO_ROOT.parent / "shared" / "corpus", REPO_ROOT / "firmware_samples" / "pairs"):
        d = corpus / PREFERRED_PAIR
        if (d / "old").is_file() and (d / "new").is_file():
            return Firmware(PREFERRED_PAIR, (d / "old").read_bytes(), (d / "new").read_bytes())
    # The benchmarks' synthetic pair at ~32 KB, with fewer distinct strings and a smaller update.
    return Firmware("synthetic-32k", *synthetic_pair(size=SYNTHETIC_SIZE, words=200, inserted=256, edits=50))


def build_packages(fw: Firmware, steps: int, key: signing.PrivateKey) -> list[bytes]:
    """Signed in-place packages 1.i -> 1.(i+1) for i < steps (two distinct deltas, diffed once each)."""
    out = []
    for i in range(steps):
        out.append(package.pack(fw.image(i), fw.image(i + 1), key, make=MAKE, model=MODEL,
                                from_version=version(i), to_version=version(i + 1), in_place=True,
                                block_size=BLOCK))
    return out


# ---------------------------------------------------------------- the server side


def _rows(items: list[Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in vars(r).items() if not k.startswith("_") and k not in ("password", "server_password")}
            for r in items]


class Backend(ABC):
    """The DM server as the benchmark drives it: publish, assign + notify, read the fleet."""

    url: str
    description: str

    @abstractmethod
    def publish(self, data: bytes) -> None: ...

    @abstractmethod
    def update(self, dev_id: str, goal: str) -> None:
        """Assign the device a job to goal and notify it."""

    @abstractmethod
    def fleet(self) -> dict[str, list[dict[str, Any]]]:
        """Devices, jobs and sessions, as rows of the store."""

    @abstractmethod
    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the server's process (in-process: server and devices)."""

    @abstractmethod
    def stop(self) -> None: ...

    def diagnostics(self) -> dict[str, Any]:
        return {}

    def sql_counts(self) -> Counter[str] | None:
        """SQL statements and commits so far, where they can be observed (in-process only)."""
        return None

    def database_cpu_seconds(self) -> float | None:
        """CPU seconds used so far by the database's server, where it can be observed (see _postgres_cpu)."""
        return None


class InProcessServer(Backend):
    """DmServer + Starlette app under uvicorn in a thread of this process (serve_in_thread)."""

    def __init__(self, data_dir: Path, db_url: str | None) -> None:
        self.server = DmServer(ServerConfig(data_dir, "http://127.0.0.1:0", db_url=db_url), push=HttpPush())
        self.running = serve_in_thread(create_app(self.server))
        self.url = self.server.config.public_url = f"http://127.0.0.1:{self.running.port}"
        self.description = "in-process (uvicorn thread; devices share the process)"
        self._sql: Counter[str] = Counter()
        self._sql_lock = threading.Lock()
        engine = self.server.store.engine
        event.listen(engine, "before_cursor_execute", lambda *a: self._count("statements"))
        event.listen(engine, "commit", lambda *a: self._count("commits"))

    def _count(self, what: str) -> None:
        with self._sql_lock:
            self._sql[what] += 1

    def sql_counts(self) -> Counter[str] | None:
        with self._sql_lock:
            return Counter(self._sql)

    def publish(self, data: bytes) -> None:
        self.server.publish(data)

    def update(self, dev_id: str, goal: str) -> None:
        self.server.assign(dev_id, goal, notify=True)  # (one transaction, as the operator API's update)

    def fleet(self) -> dict[str, list[dict[str, Any]]]:
        snap = self.server.store.snapshot()
        return {"devices": _rows(snap.devices), "jobs": _rows(snap.jobs), "sessions": _rows(snap.sessions)}

    def cpu_seconds(self) -> float:
        return _own_cpu()

    def stop(self) -> None:
        self.running.stop()


class SubprocessServer(Backend):
    """`fotadelta serve --workers W` as a child process (its supervisor and W worker processes), driven
    through the operator HTTP API (POST /api/v1/releases, POST /api/v1/devices/{id}/update with
    notify); the fleet's rows are read from its database. CPU is the supervisor's and the workers'."""

    def __init__(self, data_dir: Path, db_url: str | None, workers: int = 1) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.db_url = db_url or f"sqlite:///{data_dir / 'fotadelta.db'}"
        cmd = [sys.executable, "-m", "fotadelta", "serve", "--data", str(data_dir), "--db", self.db_url,
               "--port", str(port), "--workers", str(workers), "--quiet"]
        self.proc = subprocess.Popen(cmd)
        self.url = f"http://127.0.0.1:{port}"
        self.workers = workers
        # (Idle connections are let go well before uvicorn closes them, 5 s: a request on a connection the
        # server is closing at that moment fails with a reset.)
        self.http = httpx.Client(base_url=self.url, timeout=60.0,
                                 limits=httpx.Limits(max_connections=64, keepalive_expiry=1.0))
        deadline = time.monotonic() + 60
        while len(self._pids()) < 1 + (workers if workers > 1 else 0) or not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise SystemExit("error: the server process did not start")
            time.sleep(0.2)
        self.description = (f"fotadelta serve --workers {workers} (pid {self.proc.pid}); operator HTTP API for "
                            "assign + notify")
        self._reader = create_engine(self.db_url)
        self._per_thread = threading.local()

    def _answers(self) -> bool:
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def _pids(self) -> list[int]:
        """The supervisor and its worker processes."""
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return []
        return [self.proc.pid, *(int(c) for c in children)]

    def publish(self, data: bytes) -> None:
        r = self.http.post("/api/v1/releases?state=released", content=data)
        if r.status_code != 201:
            raise BenchFailure(f"publish answered {r.status_code}: {r.text}")

    def update(self, dev_id: str, goal: str) -> None:
        # From many device threads at once, each over a lean keep-alive connection of its own: this operator
        # runs in the devices' process, whose CPU the benchmark reports.
        http = getattr(self._per_thread, "http", None)
        if http is None:
            http = self._per_thread.http = DeviceHttp(timeout=60.0)
        r = http.post(f"{self.url}/api/v1/devices/{dev_id}/update",
                      content=json.dumps({"version": goal, "notify": True}).encode(),
                      headers={"content-type": "application/json"})
        if r.status_code != 201:
            raise BenchFailure(f"update of {dev_id} answered {r.status_code}: {r.content[:200]!r}")

    def fleet(self) -> dict[str, list[dict[str, Any]]]:
        with self._reader.connect() as conn:
            return {name: [dict(r._mapping) for r in conn.execute(text(f"SELECT * FROM {name}"))]
                    for name in ("devices", "jobs", "sessions")}

    def cpu_seconds(self) -> float:
        return sum(_proc_cpu(pid) for pid in self._pids())

    def database_cpu_seconds(self) -> float | None:
        return _postgres_cpu(self._reader) if self._reader.dialect.name == "postgresql" else None

    def stop(self) -> None:
        self.http.close()
        self._reader.dispose()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _proc_cpu(pid: int, *, reaped: bool = False) -> float:
    """A process's CPU seconds (with reaped: and its children's that have exited)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = sum(int(f) for f in fields[11:15 if reaped else 13])
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan


def _postgres_cpu(engine: Engine) -> float | None:
    """The CPU seconds of the PostgreSQL cluster behind engine when it runs on this host: its postmaster's,
    its live processes' (backends, WAL writer, checkpointer...) and those of its processes that have exited
    (backends of closed connections: counted in the postmaster's children's time). None elsewhere."""
    with engine.connect() as conn:
        backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    try:
        postmaster = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    except (OSError, IndexError, ValueError):
        return None  # (another host's, or not ours to see)
    return _proc_cpu(postmaster, reaped=True) + sum(_proc_cpu(int(c)) for c in children)


# ---------------------------------------------------------------- the devices


@dataclass
class Probe:
    """What one emulated device did: HTTP requests by kind, notification handling, failures."""

    requests: Counter[str] = field(default_factory=Counter)
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


def imei(serial: int) -> str:
    """IMEI:<TAC><6-digit serial><Luhn check digit>."""
    body = f"{TAC}{serial % 1_000_000:06d}"
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return f"IMEI:{body}{(10 - total % 10) % 10}"


def instrument(client: DmClient) -> Probe:
    """Count the client's HTTP requests and signal the end of each notification it handles."""
    probe = Probe()

    def on_request(method: str, url: str) -> None:
        path = urlsplit(url).path
        # (a session's later messages go to its RespURI, /dm/<token>)
        kind = "download" if "/packages/" in path else "dm" if path == "/dm" or path.startswith("/dm/") else "other"
        probe.requests[kind] += 1
        if kind == "download":
            probe.requests[f"download-{method}"] += 1

    assert isinstance(client.http, DeviceHttp)
    client.http.on_request = on_request
    handle = client.handle_notification

    def handle_and_signal(pkg0: bytes) -> Any:
        try:
            return handle(pkg0)
        except BaseException as exc:
            probe.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            probe.done.set()

    client.handle_notification = handle_and_signal  # type: ignore[method-assign]
    return probe


@dataclass
class Device:
    dev_id: str
    client: DmClient
    probe: Probe
    step: int = 0  # runs version(step)
    checked_step: int = 0  # step at the last check_updates


def run_concurrently(work: list[Callable[[], None]]) -> tuple[float, list[BaseException]]:
    """Start every piece of work in its own thread at once; wall time until the last one ended."""
    gate = threading.Barrier(len(work) + 1)
    errors: list[BaseException] = []

    def body(fn: Callable[[], None]) -> None:
        gate.wait()
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(fn,), daemon=True) for fn in work]
    for t in threads:
        t.start()
    gate.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - start, errors


def _delta(now: Counter[str] | None, before: Counter[str] | None) -> Counter[str] | None:
    return None if now is None or before is None else now - before


def stats_ms(samples: list[float]) -> dict[str, float]:
    """Mean, median, p95 (nearest rank) and max of samples in seconds, as milliseconds."""
    s = sorted(samples)

    def rank(q: float) -> float:
        return s[max(0, math.ceil(q * len(s)) - 1)]

    return {"mean": 1e3 * sum(s) / len(s), "p50": 1e3 * rank(0.5), "p95": 1e3 * rank(0.95), "max": 1e3 * s[-1]}


class Harness:
    """One server, one push listener, the firmware chain; creates, bootstraps and updates devices."""

    def __init__(self, fw: Firmware, steps: int, *, encoding: Encoding = Encoding.XML, db_url: str | None = None,
                 server_process: bool = False, data_dir: Path | None = None, workers: int = 1) -> None:
        self.fw, self.steps, self.encoding = fw, steps, encoding
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fotadelta-dm-bench-")
            data_dir = Path(self._tmp.name)
        self.backend: Backend = (SubprocessServer(data_dir, db_url, workers) if server_process
                                 else InProcessServer(data_dir, db_url))
        self.fleet = Fleet()
        self.key = signing.generate()
        self.trust = signing.TrustStore.of([self.key.public_key()])
        self.packages = build_packages(fw, steps, self.key)
        for data in self.packages:
            self.backend.publish(data)
        # A shared database may hold devices of an earlier run: start the serials somewhere fresh.
        self._serial = 0 if db_url is None else secrets.randbelow(900_000)
        self.devices: list[Device] = []

    def close(self) -> None:
        self.fleet.stop()
        self.backend.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def new_devices(self, n: int) -> list[Device]:
        out = []
        for _ in range(n):
            dev_id = imei(self._serial)
            self._serial += 1
            client = make_client(self.fw.image(0), dev_id=dev_id, make=MAKE, model=MODEL, version=version(0),
                                 server_url=f"{self.backend.url}/dm", trust=self.trust, encoding=self.encoding,
                                 push_url=self.fleet.push_url(dev_id), block_size=BLOCK,
                                 http=DeviceHttp(timeout=TIMEOUT_S))
            out.append(Device(dev_id, client, instrument(client)))
            self.fleet.add(client)
        self.devices += out
        return out

    def warm_up(self) -> None:
        """Two devices through a bootstrap and an update, untimed: connections, caches, first compiles."""
        devices = self.new_devices(2)
        self.bootstrap(devices)
        self.update_all(devices, 1)

    # -- bootstrap ---------------------------------------------------------------------------------

    def bootstrap(self, devices: list[Device]) -> dict[str, Any]:
        """Every device's first session (enrolment, DevInfo, DevDetail read), all at once."""
        latencies: list[float] = []
        for d in devices:
            d.probe.requests.clear()

        def work(d: Device) -> Callable[[], None]:
            def run() -> None:
                t0 = time.perf_counter()
                log = d.client.run()
                latencies.append(time.perf_counter() - t0)
                if log.aborted:
                    raise BenchFailure(f"{d.dev_id}: the bootstrap session was aborted")
            return run

        cpu0, sql0 = self.backend.cpu_seconds(), self.backend.sql_counts()
        wall, errors = run_concurrently([work(d) for d in devices])
        cpu, sql = self.backend.cpu_seconds() - cpu0, _delta(self.backend.sql_counts(), sql0)
        if errors:
            raise BenchFailure(f"{len(errors)} of {len(devices)} bootstrap sessions failed, "
                               f"first: {type(errors[0]).__name__}: {errors[0]}")
        self._check_bootstrap(devices)
        n = len(devices)
        return {"sessions": n, "wall_s": wall, "per_s": n / wall, "latency_ms": stats_ms(latencies),
                "latencies_s": latencies,
                "dm_messages_per_session": sum(d.probe.requests["dm"] for d in devices) / n,
                "cpu_s": cpu, "cpu_per_session_ms": 1e3 * cpu / n, "sql": sql}

    def _check_bootstrap(self, devices: list[Device]) -> None:
        fleet = self.backend.fleet()
        rows = {r["dev_id"]: r for r in fleet["devices"]}
        bad = []
        for d in devices:
            row = rows.get(d.dev_id)
            if row is None or row["version"] != version(0) or row["push_url"] != self.fleet.push_url(d.dev_id):
                bad.append(f"{d.dev_id}: store has {None if row is None else (row['version'], row['push_url'])}")
        states = Counter(s["state"] for s in fleet["sessions"] if s["dev_id"] in {d.dev_id for d in devices})
        if states != Counter({"completed": len(devices)}):
            bad.append(f"session states {dict(states)}, expected {len(devices)} completed")
        if bad:
            raise BenchFailure("bootstrap check failed: " + "; ".join(bad[:5]))

    # -- FUMO updates ------------------------------------------------------------------------------

    def update_one(self, d: Device) -> float:
        """One complete FUMO update of d: assign + notify, then wait until the device has installed,
        rebooted and reported in its closing session. The seconds it took (not yet checked: see
        check_updates)."""
        goal = version(d.step + 1)
        d.probe.done.clear()
        t0 = time.perf_counter()
        self.backend.update(d.dev_id, goal)
        if not d.probe.done.wait(TIMEOUT_S):
            raise BenchFailure(f"{d.dev_id}: no complete update to {goal} within {TIMEOUT_S:.0f} s")
        elapsed = time.perf_counter() - t0
        if d.probe.error is not None:
            raise BenchFailure(f"{d.dev_id}: update to {goal}: {d.probe.error}")
        d.step += 1
        return elapsed

    def session_ids(self, dev_ids: set[str] | None = None) -> set[int]:
        """Ids of the sessions in the store (of dev_ids only, if given)."""
        return {s["id"] for s in self.backend.fleet()["sessions"] if dev_ids is None or s["dev_id"] in dev_ids}

    def update_all(self, devices: list[Device], updates: int) -> dict[str, Any]:
        """updates complete FUMO updates per device, the devices concurrently, one after the other each."""
        if devices[0].step + updates > self.steps:
            raise ValueError(f"only {self.steps} packages were published")
        latencies: list[float] = []
        for d in devices:
            d.probe.requests.clear()
        sessions_before = self.session_ids()

        def work(d: Device) -> Callable[[], None]:
            def run() -> None:
                for _ in range(updates):
                    latencies.append(self.update_one(d))
            return run

        # What lives now (modules, the harness, the devices' clients and trees) lives to the end of the run: the
        # collector need not walk it again on each full collection while the devices run (measured: 0.5 of the
        # devices' ~5.5 ms of CPU per update went to the collector at N=64, 0.2 with this).
        gc.freeze()
        cpu0, sql0, own0 = self.backend.cpu_seconds(), self.backend.sql_counts(), _own_cpu()
        db0 = self.backend.database_cpu_seconds()
        wall, errors = run_concurrently([work(d) for d in devices])
        cpu, sql = self.backend.cpu_seconds() - cpu0, _delta(self.backend.sql_counts(), sql0)
        own = _own_cpu() - own0
        db1 = self.backend.database_cpu_seconds()
        db = None if db0 is None or db1 is None else db1 - db0
        self.fleet.wait(TIMEOUT_S)
        if errors:
            raise BenchFailure(f"{len(errors)} of {len(devices)} devices failed, "
                               f"first: {type(errors[0]).__name__}: {errors[0]}")
        server_messages = self.check_updates(devices, sessions_before)
        total = len(devices) * updates
        req = Counter[str]()
        for d in devices:
            req.update(d.probe.requests)
        return {"updates": total, "wall_s": wall, "per_s": total / wall, "latency_ms": stats_ms(latencies),
                "latencies_ms": [round(1e3 * x, 2) for x in latencies],
                "dm_messages_per_update": req["dm"] / total,
                "dm_messages_per_update_server": server_messages / total,
                "dm_sessions_per_update": 2,
                "http_requests_per_update": (req["dm"] + req["download"] + total) / total,  # + 1 push each
                "download_requests_per_update": req["download"] / total,
                "package_bytes": len(self.packages[0]),
                "cpu_s": cpu, "cpu_per_update_ms": 1e3 * cpu / total,
                # (the devices' process; in-process runs: server and devices together, as cpu_s)
                "devices_cpu_per_update_ms": 1e3 * own / total,
                # (PostgreSQL on this host, the whole cluster: None for SQLite, in-process or another host)
                "database_cpu_per_update_ms": None if db is None else 1e3 * db / total,
                "sql_statements_per_update": None if sql is None else sql["statements"] / total,
                "sql_commits_per_update": None if sql is None else sql["commits"] / total}

    def check_updates(self, devices: list[Device], sessions_before: set[int]) -> int:
        """Every job of the devices succeeded with 200, every device runs the image of its version, every
        session since sessions_before completed (two per update); the DM messages the server counted."""
        fleet = self.backend.fleet()
        ids = {d.dev_id for d in devices}
        bad = []
        jobs = [j for j in fleet["jobs"] if j["dev_id"] in ids]
        by_dev = Counter(j["dev_id"] for j in jobs if j["state"] == "succeeded" and j["result_code"] == 200)
        other = [(j["dev_id"], j["goal_version"], j["state"], j["result_code"], j["message"]) for j in jobs
                 if not (j["state"] == "succeeded" and j["result_code"] == 200)]
        if other:
            bad.append(f"{len(other)} jobs did not succeed, e.g. {other[:3]}")
        rows = {r["dev_id"]: r for r in fleet["devices"]}
        for d in devices:
            want = version(d.step)
            if by_dev[d.dev_id] != d.step:
                bad.append(f"{d.dev_id}: {by_dev[d.dev_id]} succeeded jobs, expected {d.step}")
            if rows[d.dev_id]["version"] != want:
                bad.append(f"{d.dev_id}: the store says {rows[d.dev_id]['version']}, expected {want}")
            dev = d.client.device
            if dev.version != want or dev.image() != self.fw.image(d.step):
                bad.append(f"{d.dev_id}: the device runs {dev.version}"
                           f" ({hashlib.sha256(dev.image()).hexdigest()[:12]}), expected {want}")
            if d.client.last_outcome is None or not d.client.last_outcome.ok or d.client.reports:
                bad.append(f"{d.dev_id}: outcome {d.client.last_outcome}, unreported {d.client.reports}")
            if self.fleet.errors(d.dev_id):
                bad.append(f"{d.dev_id}: push listener errors {self.fleet.errors(d.dev_id)}")
        new_sessions = [s for s in fleet["sessions"] if s["id"] not in sessions_before and s["dev_id"] in ids]
        states = Counter(s["state"] for s in new_sessions)
        expected = 2 * (sum(d.step for d in devices) - sum(d.checked_step for d in devices))
        if states != Counter({"completed": expected}):
            bad.append(f"session states {dict(states)}, expected {expected} completed")
        if bad:
            raise BenchFailure("update check failed: " + "; ".join(bad[:6]))
        for d in devices:
            d.checked_step = d.step
        return sum(s["messages"] for s in new_sessions)


# ---------------------------------------------------------------- output


def print_report(data: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    meta = data["meta"]
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 132))  # a log file gets the whole table
    title = (f"OMA DM sessions/s · {meta['firmware']['name']} · {meta['encoding']} · {meta['database']}"
             f" · {meta['cpus']} CPUs")
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    heads = ["N", "FUMO/s", "mean ms", "p95 ms", "DM msg/upd", "HTTP/upd", "CPU ms/upd", "dev CPU ms",
             "boot/s", "mean ms ", "p95 ms ", "DM msg/boot", "status"]
    for h in heads:
        table.add_column(h, justify="left" if h == "status" else "right")
    for run in data["runs"]:
        f, b = run.get("fumo"), run.get("bootstrap")
        cells = [str(run["devices"])]
        cells += ([f"{f['per_s']:.2f}", f"{f['latency_ms']['mean']:.0f}", f"{f['latency_ms']['p95']:.0f}",
                   f"{f['dm_messages_per_update']:.2f}", f"{f['http_requests_per_update']:.2f}",
                   f"{f['cpu_per_update_ms']:.0f}", f"{f['devices_cpu_per_update_ms']:.0f}"] if f else ["–"] * 7)
        cells += ([f"{b['per_s']:.1f}", f"{b['latency_ms']['mean']:.0f}", f"{b['latency_ms']['p95']:.0f}",
                   f"{b['dm_messages_per_session']:.2f}"] if b else ["–"] * 4)
        cells.append("ok" if run["status"] == "ok" else f"FAIL: {run['error'][:200]}")
        table.add_row(*cells, style=None if run["status"] == "ok" else "red")
    console.print(table)
    plan = ", ".join(f"N={r['devices']}: {r['updates_per_device']}/{r['bootstrap_rounds']}" for r in data["runs"])
    console.print(f"server: {meta['server']}; updates per device / bootstrap rounds: {plan}; CPU = "
                  + ("the whole process (server and devices)" if not meta["server_process"]
                     else "the server process only"))


def write_plot(path: Path, data: dict[str, Any]) -> None:
    """dm_sessions.png: sessions/s against concurrent devices, FUMO updates and bootstrap-only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in data["runs"] if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    xs = [r["devices"] for r in runs]
    ax.plot(xs, [r["fumo"]["per_s"] for r in runs], "o-", label="complete FUMO update (2 DM sessions + download)")
    ax.plot(xs, [r["bootstrap"]["per_s"] for r in runs], "s--", label="bootstrap-only session")
    for x, r in zip(xs, runs, strict=True):
        ax.annotate(f"{r['fumo']['per_s']:.1f}", (x, r["fumo"]["per_s"]), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8)
        ax.annotate(f"{r['bootstrap']['per_s']:.0f}", (x, r["bootstrap"]["per_s"]), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("concurrent emulated devices")
    ax.set_ylabel("sessions / s  (FUMO: complete updates / s)")
    top = max([r["bootstrap"]["per_s"] for r in runs] + [r["fumo"]["per_s"] for r in runs], default=1.0)
    ax.set_ylim(0, 1.15 * top)
    meta = data["meta"]
    ax.set_title(f"fotadelta DM server, {meta['database']}, {meta['encoding']}, {meta['cpus']} CPUs\n"
                 f"{meta['firmware']['name']} ({meta['firmware']['package_bytes']:,} B in-place package)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _versions() -> dict[str, str]:
    out = {}
    for name in ("fotadelta", "sqlalchemy", "uvicorn", "starlette", "httpx"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def _git_state() -> str:
    """The commit the run measured, with -dirty when the work tree had changes."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _redact(url: str) -> str:
    """A database URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url.split("@")[-1]


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default="1,4,16,32", help="comma-separated N (default 1,4,16,32)")
    ap.add_argument("--updates-per-device", type=int, default=3, metavar="K",
                    help="complete FUMO updates each device makes, one after the other (default 3)")
    ap.add_argument("--bootstrap-rounds", type=int, default=3, metavar="R",
                    help="rounds of N fresh devices bootstrapping at once (default 3; the first round's "
                         "devices are then updated)")
    ap.add_argument("--min-samples", type=int, default=24, metavar="M",
                    help="at least M updates and M bootstrap sessions per N: small N get more updates per "
                         "device and more rounds than K and R (default 24)")
    ap.add_argument("--encoding", choices=("xml", "wbxml"), default="xml", help="SyncML encoding (default xml)")
    ap.add_argument("--db", help="SQLAlchemy URL of the server's store (default: SQLite in a temporary directory)")
    ap.add_argument("--pair", type=Path, help=f"a pair directory with old and new (default: {PREFERRED_PAIR} "
                                              "from the corpus, else a synthetic 32 KB pair)")
    ap.add_argument("--server-process", action="store_true",
                    help="run the server as `fotadelta serve` in its own processes and drive it through the "
                         "operator API")
    ap.add_argument("--workers", type=int, default=1, metavar="W",
                    help="with --server-process: `serve --workers W` (default 1)")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results", help="output directory")
    args = ap.parse_args(argv)
    try:
        args.counts = [int(x) for x in args.devices.split(",") if x.strip()]
    except ValueError:
        ap.error("--devices takes comma-separated integers")
    if not args.counts or min(args.counts) < 1 or args.updates_per_device < 1 or args.bootstrap_rounds < 1 \
            or args.min_samples < 0:
        ap.error("--devices, --updates-per-device and --bootstrap-rounds must be positive")
    args.plan = {n: (max(args.updates_per_device, math.ceil(args.min_samples / n)),
                     max(args.bootstrap_rounds, math.ceil(args.min_samples / n))) for n in args.counts}
    return args


@contextmanager
def harness(args: argparse.Namespace, fw: Firmware) -> Iterator[Harness]:
    h = Harness(fw, max(k for k, _ in args.plan.values()), encoding=Encoding[args.encoding.upper()], db_url=args.db,
                server_process=args.server_process, workers=args.workers)
    try:
        yield h
    finally:
        h.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fw = load_firmware(args.pair)
    runs: list[dict[str, Any]] = []
    with harness(args, fw) as h:
        meta = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {platform.system()}",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "command": " ".join(["python", "benchmarks/dm_sessions.py",
                                 *(argv if argv is not None else sys.argv[1:])]),
            "versions": _versions(),
            "git": _git_state(),
            "firmware": {"name": fw.name, "old_bytes": len(fw.old), "new_bytes": len(fw.new),
                         "package_bytes": len(h.packages[0]), "block_size": BLOCK},
            "encoding": args.encoding,
            "database": "SQLite (temporary directory)" if args.db is None else _redact(args.db),
            "server": h.backend.description,
            "server_process": args.server_process,
            "workers": args.workers if args.server_process else None,
            "updates_per_device": args.updates_per_device,
            "bootstrap_rounds": args.bootstrap_rounds,
            "min_samples": args.min_samples,
        }
        try:
            h.warm_up()
        except BenchFailure as exc:
            print(f"FAIL in the warm-up: {exc}", file=sys.stderr)
            return 1
        for n in args.counts:
            updates, n_rounds = args.plan[n]
            run: dict[str, Any] = {"devices": n, "status": "ok", "updates_per_device": updates,
                                   "bootstrap_rounds": n_rounds}
            print(f"N={n}: {n_rounds} x {n} bootstrap sessions ...", file=sys.stderr, flush=True)
            try:
                rounds = []
                devices = h.new_devices(n)
                rounds.append(h.bootstrap(devices))
                for _ in range(n_rounds - 1):
                    rounds.append(h.bootstrap(h.new_devices(n)))
                run["bootstrap"] = _merge_rounds(rounds)
                print(f"N={n}: {updates} x {n} FUMO updates ...", file=sys.stderr, flush=True)
                run["fumo"] = h.update_all(devices, updates)
            except BenchFailure as exc:
                run.update(status="fail", error=str(exc))
                run.pop("bootstrap", None)
                print(f"FAIL at N={n}: {exc}", file=sys.stderr)
            run["server"] = h.backend.diagnostics()
            runs.append(run)
            if run["status"] != "ok":
                break  # the server's state is suspect: later numbers would not mean much
    data = {"meta": meta, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results_dm.json").write_text(json.dumps(data, indent=2) + "\n")
    write_plot(args.out / "dm_sessions.png", data)
    print_report(data)
    print(f"wrote {args.out / 'results_dm.json'}, dm_sessions.png")
    return 0 if all(r["status"] == "ok" for r in runs) and len(runs) == len(args.counts) else 1


def _merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Bootstrap rounds pooled: sessions / summed wall time; latency stats over all sessions."""
    sessions = sum(r["sessions"] for r in rounds)
    wall = sum(r["wall_s"] for r in rounds)
    cpu = sum(r["cpu_s"] for r in rounds)
    sql = None if any(r["sql"] is None for r in rounds) else sum((r["sql"] for r in rounds), Counter[str]())
    return {"sessions": sessions, "rounds": len(rounds), "wall_s": wall, "per_s": sessions / wall,
            "latency_ms": stats_ms([x for r in rounds for x in r["latencies_s"]]),
            "dm_messages_per_session": sum(r["dm_messages_per_session"] * r["sessions"] for r in rounds) / sessions,
            "cpu_s": cpu, "cpu_per_session_ms": 1e3 * cpu / sessions,
            "sql_statements_per_session": None if sql is None else sql["statements"] / sessions,
            "sql_commits_per_session": None if sql is None else sql["commits"] / sessions,
            "per_round_per_s": [r["per_s"] for r in rounds]}


if __name__ == "__main__":
    sys.exit(main())
