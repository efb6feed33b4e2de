"""`fotadelta loadtest`: small real runs against a real `fotadelta serve` subprocess (SQLite, PostgreSQL,
a worker killed with SIGKILL), their JSON line and the server's records; and its usage errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pg_fixtures import new_database, postgres  # noqa: F401  (fixture)

from fotadelta.cli.common import main

ROOT = Path(__file__).resolve().parents[1]


def loadtest(*args: str, timeout: float = 600) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """Run the command as a user would; its last stdout line as JSON."""
    done = subprocess.run([sys.executable, "-m", "fotadelta", "loadtest", "--json", "--image-size", "8192", "--timeout", "240",
                           "--concurrency", "8", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "FOTADELTA_SERVER": "", "FOTADELTA_ADMIN_TOKEN": ""})
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output; stderr: {done.stderr[-2000:]}"
    return json.loads(lines[-1]), done


def check(line: dict[str, Any], devices: int, refusing: int) -> None:
    assert line["devices"] == devices
    assert line["lost"] == 0 and line["open_jobs"] == 0 and line["device_errors"] == 0
    assert line["failed"] == refusing and line["updated"] == devices - refusing
    assert line["campaign_state"] == "completed"
    if refusing:  # the SIM's refusal, with its FUMO code and meaning, after every attempt
        assert list(line["failures"]) == ["FUMO 404 (package validation failed (signature or SIM)) (after 3 attempts)"]
    # Each device checks in, gets and reports one or two packages (a fifth need the chain of two).
    assert line["sessions"] >= devices + 2 * devices
    assert line["sessions_per_s"] > 0 and line["p95_ms"] > 0


def test_loadtest_on_sqlite() -> None:
    line, done = loadtest("--devices", "30", "--refusing", "10")  # every tenth device refuses: 3
    assert done.returncode == 0, done.stderr[-2000:]
    check(line, 30, 3)
    assert line["kills"] == 0
    assert "check in" in done.stderr and "update" in done.stderr  # the progress bars


def test_loadtest_on_postgres(postgres: str) -> None:  # noqa: F811  (fixture)
    line, done = loadtest("--devices", "25", "--refusing", "0", "--db", new_database(postgres))
    assert done.returncode == 0, done.stderr[-2000:]
    check(line, 25, 0)


def test_loadtest_kills_the_server_and_loses_nothing() -> None:
    """A single-process server is its own worker: killed with SIGKILL every 4 s and restarted (which takes
    seconds on a busy machine), the devices ride it out (their retries and the operator's) and every device
    still ends updated or failed."""
    line, done = loadtest("--devices", "40", "--refusing", "5", "--kill-worker-every", "4")
    assert done.returncode == 0, done.stderr[-2000:]
    check(line, 40, 2)
    assert line["kills"] >= 1 and "restarted" in done.stderr


def test_loadtest_kills_workers_on_postgres(postgres: str) -> None:  # noqa: F811  (fixture)
    """`serve --workers 2` on PostgreSQL: a worker SIGKILLed every second is respawned by uvicorn's process
    manager while the other serves; nothing is lost. (Every second, not every few: the first kill comes that
    long into the campaign; and 80 devices, since 40 were once all done before the first second was up.)"""
    line, done = loadtest("--devices", "80", "--refusing", "5", "--workers", "2", "--kill-worker-every", "1",
                          "--db", new_database(postgres))
    assert done.returncode == 0, done.stderr[-2000:]
    check(line, 80, 4)
    assert line["kills"] >= 1 and "respawned" in done.stderr


@pytest.mark.parametrize("args, says", [
    (["--devices", "0"], "--devices"),
    (["--admin-token", "t"], "--admin-token and --server-pid go with --server"),
    (["--server-pid", "1"], "--admin-token and --server-pid go with --server"),
    (["--server", "http://127.0.0.1:9", "--db", "sqlite:///x.db"], "--db and --workers"),
    (["--server", "http://127.0.0.1:9", "--workers", "2"], "--db and --workers"),
    (["--server", "http://127.0.0.1:9", "--kill-worker-every", "5"], "needs --server-pid"),
    (["--server", "ftp://x"], "--server"),
    (["--kill-worker-every", "0.1"], "--kill-worker-every"),
    (["--refusing", "101"], "--refusing"),
    (["--bogus"], "--bogus"),
])
def test_usage_errors_exit_2(args: list[str], says: str, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FOTADELTA_ADMIN_TOKEN", raising=False)
    assert main(["loadtest", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
