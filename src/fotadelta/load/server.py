"""The server under load: a `fotadelta serve` the load test starts itself, and its worker processes,
one of which it kills (SIGKILL) now and then.

With `serve --workers N` the workers are the serve process's children that uvicorn's process
manager spawned (their command line runs multiprocessing's `spawn_main`); the manager respawns a
killed one (it notices on its next round of health checks, within a second unless another worker is
slow to answer its own), and if it has not within RESPAWN_S, the whole server (its process group) is
killed and started again. A single-process server is its own worker: it is killed and started again,
on the same port and database."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

READY_S = 60.0
RESPAWN_S = 90.0


class ServerError(Exception):
    """The server could not be started, or its workers could not be found."""


def children(pid: int) -> list[int]:
    """The live child processes of pid (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: the fields after it are fixed.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def workers(pid: int) -> list[int]:
    """The DM worker processes of the serve process pid: its spawned children, or itself if it has none."""
    spawned = [c for c in children(pid) if "spawn_main" in _cmdline(c)]
    return spawned or [pid]


_probe = httpx.Client(timeout=2.0)  # one client for every probe: each new one loads the CA certificates


def answers(url: str, token: str | None) -> bool:
    """Whether the server's fleet API answers (and takes the token)."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        return _probe.get(f"{url}/api/v1/auth/whoami", headers=headers).status_code == 200
    except httpx.TransportError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.create_server((host, 0)) as s:
        return int(s.getsockname()[1])


@dataclass
class Kill:
    pid: int
    recovered: str  # respawned (by the process manager) | restarted (by us)
    seconds: float  # until the server answered again


class Serve:
    """`fotadelta serve` in a subprocess on a free loopback port, with its own data directory."""

    def __init__(self, data: Path, *, token: str, db: str | None = None, workers: int | None = None,
                 host: str = "127.0.0.1") -> None:
        self.data, self.token, self.db, self.workers, self.host = data, token, db, workers, host
        self.port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data / "serve.log"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "fotadelta", "serve", "--data", str(self.data), "--host", self.host,
               "--port", str(self.port), "--quiet"]
        if self.db:
            cmd += ["--db", self.db]
        if self.workers is not None:
            cmd += ["--workers", str(self.workers)]
        return cmd

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "FOTADELTA_ADMIN_TOKEN": self.token}  # not on the command line, where ps shows it
        with self.log.open("ab") as log:
            # Its own process group: killing the group takes the workers too, which would otherwise keep the
            # port open after their supervisor is gone.
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                            start_new_session=True)
        self.wait_ready()

    def wait_ready(self, timeout: float = READY_S) -> float:
        """Wait until the fleet API answers; returns how long that took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"fotadelta serve exited with status {self.process.returncode}: "
                                  f"{self._log_tail()}")
            if answers(self.url, self.token):
                return time.monotonic() - started
            time.sleep(0.1)
        raise ServerError(f"fotadelta serve did not answer within {timeout:.0f} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(lines[-3:]) or "no output"

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def kill(self) -> None:
        """SIGKILL the server's whole process group, and reap it."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


class Killer:
    """Kills a random worker of a serve process and sees it replaced."""

    def __init__(self, serve_pid: int, *, restart: Serve | None = None, url: str, token: str | None,
                 seed: int = 1) -> None:
        self.serve_pid, self.restart, self.url, self.token = serve_pid, restart, url, token
        self.rng = random.Random(seed)
        self.kills: list[Kill] = []

    def kill_one(self) -> Kill:
        pool = workers(self.serve_pid)
        victim = self.rng.choice(pool)
        started = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        if victim == self.serve_pid:
            recovered = self._restart_server()
        else:
            deadline = time.monotonic() + RESPAWN_S
            while time.monotonic() < deadline and len(set(workers(self.serve_pid)) - {victim}) < len(pool):
                time.sleep(0.05)
            if len(set(workers(self.serve_pid)) - {victim}) >= len(pool):
                recovered = "respawned"
            else:
                recovered = self._restart_server()
        self._wait_answer()
        kill = Kill(victim, recovered, time.monotonic() - started)
        self.kills.append(kill)
        return kill

    def _restart_server(self) -> str:
        if self.restart is None or self.restart.process is None:
            raise ServerError("the server's worker is gone and the load test did not start the server: it cannot "
                              "restart it")
        self.restart.kill()
        self.restart.start()
        self.serve_pid = self.restart.process.pid
        return "restarted"

    def _wait_answer(self) -> None:
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            if answers(self.url, self.token):
                return
            time.sleep(0.05)
        raise ServerError(f"the server did not answer within {READY_S:.0f} s of a worker's kill")
