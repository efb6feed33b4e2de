"""The DM server on PostgreSQL: a throwaway cluster (Debian's postgresql, `make install`), a whole
FUMO update, a chain step, and a server restart that finds everything again."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from dm_fixtures import Release, start_server

from fotadelta.emulator import Fleet
from fotadelta.server import DmServer, ServerConfig


def _pg_bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}")) or [shutil.which(tool) or ""]
    if not found[-1]:
        pytest.fail(f"PostgreSQL's {tool} is missing: install the Debian package postgresql (make install does)")
    return found[-1]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL cluster of our own on a Unix socket; its SQLAlchemy URL."""
    # Not under pytest's tmp_path: as root that is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="fotadelta-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    # initdb and the server refuse to run as root; as root they run as the postgres user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    subprocess.run([*as_user, _pg_bin("initdb"), "-D", str(data), "-U", "fotadelta", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                    f"-k {sock} -c listen_addresses='' -p 54329", "start"], check=True, capture_output=True)
    try:
        subprocess.run([*as_user, _pg_bin("createdb"), "-h", str(sock), "-p", "54329", "-U", "fotadelta", "fleet"],
                       check=True, capture_output=True)
        yield f"postgresql+psycopg://fotadelta@/fleet?host={sock}&port=54329"
    finally:
        subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_fumo_chain_and_restart_on_postgres(postgres: str, tmp_path: Path, release: Release, fleet: Fleet) -> None:
    lab = start_server(tmp_path, release, fleet, db_url=postgres)
    try:
        assert lab.server.store.engine.dialect.name == "postgresql"
        lab.publish_chain()
        device = lab.device("1.0")
        device.run()
        job = lab.update(device, "1.2")  # 1.0 -> 1.1 -> 1.2: two FUMO updates, the second planned on success
        assert device.device.version == "1.2" and device.device.image() == release.images["1.2"]
        assert [j.state for j in lab.jobs(device.config.dev_id)] == ["succeeded", "succeeded"]
        assert job.result_code == 200
    finally:
        lab.running.stop()
    again = DmServer(ServerConfig(tmp_path / "srv2", "http://127.0.0.1:0", db_url=postgres))
    snap = again.store.snapshot()
    assert any(d.dev_id == device.config.dev_id and d.version == "1.2" for d in snap.devices)
    assert sum(j.dev_id == device.config.dev_id and j.state == "succeeded" for j in snap.jobs) == 2
    assert again.recovered == 0
