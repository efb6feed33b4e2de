"""GET /healthz over real HTTP: 200 while the process reaches its database, 503 once it cannot, and it
writes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx

from fotadelta.server import DmServer, ServerConfig, create_app, serve_in_thread


def test_healthz_follows_the_database(tmp_path: Path) -> None:
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    config = ServerConfig(tmp_path / "srv", "http://127.0.0.1:1", db_url=f"sqlite:///{db_dir / 'fleet.db'}")
    server = DmServer(config)
    running = serve_in_thread(create_app(server))
    url = f"http://127.0.0.1:{running.port}/healthz"
    try:
        before = server.store.snapshot()
        ok = httpx.get(url)
        assert (ok.status_code, ok.text, ok.headers["cache-control"]) == (200, "ok\n", "no-store")
        after = server.store.snapshot()
        assert (len(after.devices), len(after.sessions), len(after.events)) == \
            (len(before.devices), len(before.sessions), len(before.events))

        assert httpx.post(url).status_code == 405  # (a probe is a GET)

        server.store.engine.dispose()
        shutil.rmtree(db_dir)  # (SQLite cannot open a file in a directory that is gone)
        app = create_app(server)
        down = serve_in_thread(app)  # (a fresh process's view: nothing kept from the first answer)
        try:
            failed = httpx.get(f"http://127.0.0.1:{down.port}/healthz")
            assert (failed.status_code, failed.text) == (503, "database unavailable\n")
        finally:
            down.stop()
    finally:
        running.stop()
        server.close()
