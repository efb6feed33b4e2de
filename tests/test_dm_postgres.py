"""The DM server on PostgreSQL: a throwaway cluster (Debian's postgresql, `make install`), a whole
FUMO update, a chain step, and a server restart that finds everything again."""

from __future__ import annotations

from pathlib import Path

from dm_fixtures import Release, start_server
from pg_fixtures import postgres  # noqa: F401  (fixture)

from fotadelta.emulator import Fleet
from fotadelta.server import DmServer, ServerConfig


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
