"""The server's planner and operator listings, on a real store (SQLite): a device is only offered
packages it can install; jobs and devices read back with results in words; an older database gets
the columns added since."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from fotadelta import package
from fotadelta.package.signing import generate
from fotadelta.server import DmServer, ServerConfig
from fotadelta.server.store import DeviceRow

MAKE, MODEL = "Acme", "S1"


@pytest.fixture(scope="module")
def images() -> tuple[bytes, bytes]:
    r = random.Random(12)
    v1 = r.randbytes(20_000)
    v2 = bytearray(v1)
    v2[5000:5016] = r.randbytes(16)
    return v1, bytes(v2)


def _server(tmp_path: Path) -> DmServer:
    return DmServer(ServerConfig(tmp_path, "http://127.0.0.1:1"))


def _device(server: DmServer, dev_id: str, kinds: str) -> None:
    with server.store.tx() as s:
        s.add(DeviceRow(dev_id=dev_id, user=dev_id, password="p", server_password="s", make=MAKE, model=MODEL,
                        version="1.0", update_kinds=kinds))


def test_single_slot_device_gets_the_installable_package_even_when_a_plain_one_is_cheaper(
        tmp_path: Path, images: tuple[bytes, bytes]) -> None:
    v1, v2 = images
    key = generate()
    plain = package.pack(v1, v2, key, make=MAKE, model=MODEL, from_version="1.0", to_version="1.1")
    full = package.pack(b"", v2, key, make=MAKE, model=MODEL, from_version="*", to_version="1.1", full_image=True)
    assert len(plain) < len(full)
    server = _server(tmp_path)
    plain_row, full_row = server.publish(plain), server.publish(full)
    assert (plain_row.kind, full_row.kind) == ("plain", "full")
    _device(server, "IMEI:1", "in-place full")
    _device(server, "IMEI:2", "")  # reported nothing: every kind
    assert server.assign("IMEI:1", "1.1").package_id == full_row.id
    assert server.assign("IMEI:2", "1.1").package_id == plain_row.id
    assert server.offers("IMEI:1") == [("1.1", len(full))]
    assert server.offers("IMEI:2") == [("1.1", len(plain))]


def test_no_installable_path_is_said_and_plans_nothing(tmp_path: Path, images: tuple[bytes, bytes]) -> None:
    v1, v2 = images
    server = _server(tmp_path)
    server.publish(package.pack(v1, v2, generate(), make=MAKE, model=MODEL, from_version="1.0", to_version="1.1"))
    _device(server, "IMEI:1", "in-place full")
    with pytest.raises(ValueError, match="takes in-place patches and full images only"):
        server.assign("IMEI:1", "1.1")
    with pytest.raises(ValueError, match="no package takes Acme S1 from 1.0 to 1.2"):
        server.assign("IMEI:1", "1.2")
    assert server.job_list() == [] and server.offers("IMEI:1") == []


def test_job_and_device_lists(tmp_path: Path, images: tuple[bytes, bytes]) -> None:
    v1, v2 = images
    server = _server(tmp_path)
    server.publish(package.pack(v1, v2, generate(), make=MAKE, model=MODEL, from_version="1.0", to_version="1.1",
                                in_place=True))
    _device(server, "IMEI:1", "in-place full")
    _device(server, "IMEI:2", "in-place full")
    job = server.assign("IMEI:1", "1.1")
    (listed,) = server.job_list("IMEI:1")
    assert listed["id"] == job.id and (listed["from"], listed["to"], listed["goal"], listed["state"]) == \
        ("1.0", "1.1", "1.1", "pending")
    assert listed["result_code"] is None and listed["result"] is None
    assert server.job_list("IMEI:2") == []
    devices = {d["device"]: d for d in server.device_list()}
    assert devices["IMEI:1"]["job_state"] == "pending" and devices["IMEI:2"]["job"] is None
    assert devices["IMEI:1"]["update_kinds"] == ["in-place", "full"]
    assert not any(k in d for d in devices.values() for k in ("password", "server_password", "client_nonce"))


def test_an_older_database_gets_the_new_columns(tmp_path: Path, images: tuple[bytes, bytes]) -> None:
    v1, v2 = images
    server = _server(tmp_path)
    server.publish(package.pack(v1, v2, generate(), make=MAKE, model=MODEL, from_version="1.0", to_version="1.1",
                                in_place=True))
    server.store.engine.dispose()
    with sqlite3.connect(tmp_path / "fotadelta.db") as db:  # as a database made before these columns
        db.execute("ALTER TABLE packages DROP COLUMN kind")
        db.execute("ALTER TABLE devices DROP COLUMN update_kinds")
    again = _server(tmp_path)
    _device(again, "IMEI:1", "in-place full")
    assert again.assign("IMEI:1", "1.1").package_id == 1  # (the old row's kind is unknown: "")
