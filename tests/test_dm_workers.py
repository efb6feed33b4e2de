"""`fotadelta serve --workers N` on PostgreSQL: N real server processes on one port, devices whose
messages land on whichever process accepts the connection, and a worker killed with SIGKILL while
updates run. Any process must serve any message of any session (server/engine.py keeps nothing of a
session in memory), and a device's retries must ride out the loss of the process it was talking to."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from dm_fixtures import BLOCK, MAKE, MODEL, Release, new_dev_id
from pg_fixtures import new_database, postgres  # noqa: F401  (fixture)
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from fotadelta.dm.client import DmClient
from fotadelta.emulator import make_client
from fotadelta.server.app import INSTANCE_HEADER
from fotadelta.server.store import JobRow, SessionRow

STARTUP_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    db: str

    def workers(self) -> list[int]:
        """The worker processes' ids (the children of the supervising `serve`)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(c) for c in children if _is_worker(int(c))]


def _is_worker(pid: int) -> bool:
    try:
        return b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _serve(tmp: Path, release: Release, db: str, workers: int) -> Iterator[Served]:
    repo = tmp / "repo"
    repo.mkdir()
    for name, data in (("a", release.p10_11), ("b", release.p11_12)):
        (repo / f"{name}.fdpkg").write_bytes(data)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "fotadelta", "serve", "--db", db, "--data", str(tmp / "srv"),
                             "--port", str(port), "--workers", str(workers), "--publish", str(repo), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    served = Served(proc, url, db)
    try:
        deadline = time.monotonic() + STARTUP_S
        while len(served.workers()) < workers or not _answers(url):
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)
        yield served
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


HOP_ROUNDS = 5  # rounds of six devices at most, until sessions have hopped between workers


class Hops:
    """Which server process answered each DM message, by the session's RespURI token."""

    def __init__(self) -> None:
        self.by_session: dict[str, set[str]] = defaultdict(set)
        self.lock = threading.Lock()

    def client(self) -> httpx.Client:
        def note(response: httpx.Response) -> None:
            path = response.request.url.path
            if path.startswith("/dm/") and INSTANCE_HEADER in response.headers:
                with self.lock:
                    self.by_session[path].add(response.headers[INSTANCE_HEADER])
        # No keep-alive: every message is a new connection, accepted by whichever worker the kernel picks.
        return httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0),
                            event_hooks={"response": [note]})


def _devices(served: Served, release: Release, n: int, hops: Hops) -> list[DmClient]:
    out = []
    for _ in range(n):
        client = make_client(release.images["1.0"], dev_id=new_dev_id(), make=MAKE, model=MODEL, version="1.0",
                             server_url=f"{served.url}/dm", trust=release.trust, block_size=BLOCK)
        client.http = hops.client()
        out.append(client)
    return out


def _update_all(served: Served, devices: list[DmClient], goal: str) -> list[BaseException]:
    """Every device checks in, gets a job to goal (through the operator API) and runs until it is done."""
    errors: list[BaseException] = []

    def one(client: DmClient) -> None:
        try:
            client.run()  # enrols, reports its version
            assert _assign(served, client.config.dev_id, goal).status_code in (200, 201, 202)
            client.run()  # 1.0 -> 1.1 -> 1.2: each result's session delivers the next step
        except BaseException as exc:  # (reported by the test, with the device)
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(d,)) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return errors


def _assign(served: Served, dev_id: str, goal: str) -> httpx.Response:
    """The operator's update request, sent again (as an operator's client would) when the worker taking it
    is killed before it answers; a request that had committed leaves a job the next one cancels."""
    def post() -> httpx.Response:
        return httpx.post(f"{served.url}/api/v1/devices/{dev_id}/update", json={"version": goal, "notify": False},
                          timeout=30)
    for _ in range(4):
        try:
            return post()
        except httpx.TransportError:
            time.sleep(0.5)
    return post()


def _check_done(served: Served, devices: list[DmClient], release: Release) -> None:
    for d in devices:
        assert d.device.version == "1.2" and d.device.image() == release.images["1.2"], d.config.dev_id
    engine = create_engine(served.db)
    try:
        with Session(engine) as s:
            ids = [d.config.dev_id for d in devices]
            jobs = s.scalars(select(JobRow).where(JobRow.dev_id.in_(ids))).all()
            done = [j for j in jobs if j.state != "cancelled"]  # (see _assign)
            assert sorted(j.state for j in done) == ["succeeded"] * 2 * len(devices)
            assert all(j.result_code == 200 for j in done)
            open_sessions = s.scalars(select(SessionRow).where(SessionRow.dev_id.in_(ids),
                                                               SessionRow.state == "open")).all()
            assert open_sessions == []
    finally:
        engine.dispose()


@pytest.fixture
def database(postgres: str) -> str:  # noqa: F811
    return new_database(postgres)


@pytest.mark.parametrize("db", ["postgresql", "sqlite"])
def test_sessions_hop_between_three_workers_and_complete(tmp_path: Path, release: Release, db: str,
                                                         request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("database") if db == "postgresql" else f"sqlite:///{tmp_path / 'fleet.db'}"
    hops = Hops()

    def hopped() -> bool:
        """Sessions of several messages were answered by more than one process, and every process answered."""
        return (len({i for seen in hops.by_session.values() for i in seen}) == 3
                and sum(len(seen) > 1 for seen in hops.by_session.values()) >= 3)

    for served in _serve(tmp_path, release, url, workers=3):
        # Which process accepts a connection is the kernel's choice: a fast server on an idle machine
        # may answer a round's few sessions without a hop, so fresh devices update until some hopped.
        for _ in range(HOP_ROUNDS):
            devices = _devices(served, release, 6, hops)
            errors = _update_all(served, devices, "1.2")
            assert errors == []
            _check_done(served, devices, release)
            if hopped():
                break
    assert hopped(), dict(hops.by_session)


def test_a_worker_killed_mid_run_loses_no_update(tmp_path: Path, release: Release, database: str) -> None:
    hops = Hops()
    for served in _serve(tmp_path, release, database, workers=2):
        devices = _devices(served, release, 8, hops)
        killed: list[int] = []

        def killer() -> None:
            # Twice, while the devices are in their sessions: SIGKILL, no goodbye; the supervisor starts
            # another worker, and the devices' retries (capped exponential backoff with jitter) carry on.
            for _ in range(2):
                time.sleep(1.0)
                victim = served.workers()[0]
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        k = threading.Thread(target=killer)
        k.start()
        errors = _update_all(served, devices, "1.2")
        k.join()
        assert len(killed) == 2 and errors == []
        _check_done(served, devices, release)
        assert not set(killed) & set(served.workers())  # (replaced by new processes)


def test_a_worker_process_starts_with_its_start_up_objects_frozen(tmp_path: Path) -> None:
    """A worker made by `worker_app` (in a process of its own, as uvicorn's supervisor starts it) has the
    objects of its start-up out of the collector's walks and the raised young-generation threshold."""
    from fotadelta.server.app import GC_THRESHOLDS, WORKER_CONFIG_ENV, config_to_json
    from fotadelta.server.engine import ServerConfig

    config = ServerConfig(tmp_path / "srv", "http://127.0.0.1:1", db_url=f"sqlite:///{tmp_path / 'fleet.db'}")
    probe = ("import gc, json; from fotadelta.server.app import worker_app; worker_app(); "
             "print(json.dumps([gc.get_threshold(), gc.get_freeze_count()]))")
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, WORKER_CONFIG_ENV: config_to_json(config)},
                         capture_output=True, text=True, timeout=120, check=True).stdout
    thresholds, frozen = json.loads(out.splitlines()[-1])
    assert tuple(thresholds) == GC_THRESHOLDS
    assert frozen > 50_000  # (the app, SQLAlchemy's and Starlette's modules: well over 100k objects)


def test_a_dead_worker_reads_as_end_of_file_to_its_manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process manager of `serve --workers N` (server.app.Workers) holds no copy of a worker's end of its
    health-check pipe once it has checked it: the worker's death (SIGKILL) reads as end-of-file on the
    manager's end, so a ping outstanding then ends at once rather than at its timeout (here an hour), and the
    manager's next round replaces the worker."""
    import uvicorn

    from fotadelta.server.app import WORKER_CONFIG_ENV, Workers, config_to_json
    from fotadelta.server.engine import ServerConfig

    config = ServerConfig(tmp_path / "srv", "http://127.0.0.1:1", db_url=f"sqlite:///{tmp_path / 'fleet.db'}")
    monkeypatch.setenv(WORKER_CONFIG_ENV, config_to_json(config))
    uconfig = uvicorn.Config("fotadelta.server.app:worker_app", factory=True, workers=1, log_level="warning",
                             timeout_worker_healthcheck=3600)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                                                       signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                                                       signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH)}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        manager = Workers(uconfig, sockets=[listener])  # (it takes over the signals above: given back below)
        try:
            manager.init_processes()
            manager.keep_subprocess_alive()  # a round of checks: the worker answers its ping
            worker = manager.processes[0]
            os.kill(worker.pid or 0, signal.SIGKILL)
            worker.process.join()
            assert worker.parent_conn.poll(0)  # (no ping was sent since the last pong: this is end-of-file)
            assert not worker.ping(timeout=3600)
            manager.keep_subprocess_alive()
            assert manager.processes[0] is not worker and manager.processes[0].ping(timeout=STARTUP_S)
        finally:
            manager.terminate_all()
            manager.join_all()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
