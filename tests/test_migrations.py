"""Schema migrations (Alembic, `fotadelta.server.migrations`), on SQLite and on a real PostgreSQL: a
new database comes out exactly as the code declares it; a database made by the code before the
fleet (issue 14), and one older still, upgrades when the server opens it and then serves a device's
session and an update; every step adds only what is missing, so running them again changes nothing."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import legacy_store
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from dm_fixtures import MAKE, MODEL, Release, start_server
from pg_fixtures import new_database, postgres  # noqa: F401  (fixture)
from sqlalchemy import String, create_engine, func, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import fotadelta.server.capabilities  # noqa: F401  (declares its table)
import fotadelta.server.console.sessions  # noqa: F401  (declares its table)
import fotadelta.server.tables  # noqa: F401  (declares the fleet's tables)
from fotadelta.dm.provisioning import DEMO_SECRET, derive
from fotadelta.emulator import Fleet
from fotadelta.server import migrations
from fotadelta.server.fleet import Fleet as Services
from fotadelta.server.store import Base, DeviceRow, Store

HEAD = ScriptDirectory.from_config(migrations.config()).get_current_head()
# Only on PostgreSQL and made by the migration, not declared: LIKE 'prefix%' on DevIds under any collation.
PG_ONLY_INDEXES = {"ix_devices_dev_id_pattern"}
NONCE_COLUMNS = {("devices", "client_nonce"), ("devices", "server_nonce")}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fotadelta.db'}"
    else:
        yield new_database(request.getfixturevalue("postgres"))


def _differences(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            found = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    return [d for d in found if not (isinstance(d, tuple) and d[0] == "remove_index" and d[1].name in PG_ONLY_INDEXES)
            and not (url.startswith("sqlite") and _width_only(d))]


def _width_only(diff: object) -> bool:
    """A VARCHAR's width changed, and nothing else: SQLite does not enforce widths, so step 0003 leaves
    the narrower nonce columns of an older SQLite database as they are."""
    if not (isinstance(diff, list) and len(diff) == 1 and diff[0][0] == "modify_type"):
        return False
    _, _, table, column, _, old, new = diff[0]
    return (table, column) in NONCE_COLUMNS and isinstance(old, String) and isinstance(new, String)


def test_a_new_database_is_made_at_the_newest_step_exactly_as_declared(db_url: str) -> None:
    store = Store(db_url)
    assert migrations.current(store.engine) == HEAD
    store.engine.dispose()
    assert _differences(db_url) == []
    again = Store(db_url)  # opening it again runs nothing
    assert migrations.current(again.engine) == HEAD
    again.engine.dispose()


def _legacy_database(url: str, release: Release, packages: Path, *, older: bool = False) -> tuple[str, str]:
    """A database as the code before the fleet left it: a device that enrolled itself and runs 1.0 with a
    job to 1.1 waiting, one an operator registered that never came, a package, a session, events.
    Returns the two DevIds."""
    engine = create_engine(url)
    metadata = legacy_store.without_security_columns() if older else legacy_store.Base.metadata
    metadata.create_all(engine)
    packages.mkdir(parents=True, exist_ok=True)
    path = packages / "p.fdpkg"
    path.write_bytes(release.p10_11)
    enrolled, registered = "IMEI:356938035643000", "IMEI:356938035643001"
    creds = derive(DEMO_SECRET, enrolled)
    now = time.time()
    devices, pkgs, jobs = (metadata.tables[n] for n in ("devices", "packages", "jobs"))
    sessions, events = metadata.tables["sessions"], metadata.tables["events"]
    zero = base64.b64encode(bytes(4)).decode()
    with engine.begin() as conn:
        common = {"auth": "md5", "client_nonce": zero, "server_nonce": zero, "make": MAKE, "model": MODEL,
                  "version": "1.0", "lang": "en", "msisdn": "", "push_url": "", "large_objects": False}
        conn.execute(devices.insert(), [
            {"dev_id": enrolled, "user": creds.user, "password": creds.password,
             "server_password": creds.server_password, "last_seen": now - 60, **common},
            {"dev_id": registered, "user": registered, "password": "p" * 12, "server_password": "s" * 12,
             "last_seen": 0.0, **common}])
        conn.execute(pkgs.insert(), [{"id": 1, "name": f"{MAKE}-{MODEL}-1.0-to-1.1", "make": MAKE, "model": MODEL,
                                      "from_version": "1.0", "to_version": "1.1", "content_type": "firmware",
                                      "size": len(release.p10_11), "path": str(path),
                                      "sha256": hashlib.sha256(release.p10_11).hexdigest()}])
        conn.execute(jobs.insert(), [{"dev_id": enrolled, "package_id": 1, "goal_version": "1.1",
                                      "correlator": "0123456789abcdef", "delivery": "download", "state": "pending",
                                      "message": "", "created": now - 30, "updated": now - 30}])
        conn.execute(sessions.insert(), [{"dev_id": enrolled, "session_id": "1A", "initiator": "client",
                                          "state": "completed", "messages": 3, "note": "", "started": now - 60}])
        conn.execute(events.insert(), [{"dev_id": enrolled, "at": now - 60, "kind": "enrol",
                                        "text": "enrolled with factory credentials"}])
    engine.dispose()
    return enrolled, registered


def test_a_database_of_the_code_before_the_fleet_upgrades_and_serves(db_url: str, tmp_path: Path, release: Release,
                                                                     fleet: Fleet) -> None:
    _upgrade_and_serve(db_url, tmp_path, release, fleet, older=False)


def test_a_database_older_still_upgrades_and_serves(tmp_path: Path, release: Release, fleet: Fleet) -> None:
    # (Two columns older: SQLite, where such databases were made; the step is the same on PostgreSQL.)
    _upgrade_and_serve(f"sqlite:///{tmp_path / 'fotadelta.db'}", tmp_path, release, fleet, older=True)


def _upgrade_and_serve(db_url: str, tmp_path: Path, release: Release, fleet: Fleet, *, older: bool) -> None:
    enrolled, registered = _legacy_database(db_url, release, tmp_path / "old-packages", older=older)
    lab = start_server(tmp_path, release, fleet, db_url=db_url)  # the server migrates as it opens the store
    try:
        assert migrations.current(lab.server.store.engine) == HEAD
        services = Services(lab.server)
        admin = services.auth.bootstrap_admin()
        seen = {d.dev_id: d for d in services.registry.find(admin)}
        # The lifecycle from what the old store knew: enrolled by itself, registered by an operator.
        assert (seen[enrolled].status, seen[registered].status) == ("unknown", "assigned")
        assert seen[enrolled].latest_job is not None and seen[enrolled].latest_job.state == "pending"
        # The enrolled device's next session gets the job planned before the upgrade, and installs it.
        client = lab.device("1.0", dev_id=enrolled)
        client.run()
        lab.fleet.wait()
        assert client.device.version == "1.1" and client.device.image() == release.images["1.1"]
        (job,) = services.reports.jobs(admin, dev_id=enrolled)
        assert (job.state, job.result_code, job.goal) == ("succeeded", 200, "1.1")
        with Session(lab.server.store.engine) as s:
            row = s.get(DeviceRow, enrolled)
            assert row is not None and row.version == "1.1" and row.timezone == "UTC"
    finally:
        lab.running.stop()
    assert _differences(db_url) == []


def test_the_steps_add_only_what_is_missing(tmp_path: Path) -> None:
    """A database the fleet's code made before migrations (every table there, no alembic_version) is
    taken over as it stands: nothing duplicated, nothing lost."""
    url = f"sqlite:///{tmp_path / 'fotadelta.db'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(Base.metadata.tables["users"].insert(), [{"name": "ops", "password_hash": "x", "role": "admin",
                                                               "disabled": False, "created_at": 1.0,
                                                               "created_by": ""}])
    assert migrations.current(engine) is None
    migrations.upgrade(engine)
    assert migrations.current(engine) == HEAD
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Base.metadata.tables["users"])) == 1
    assert {i["name"] for i in inspect(engine).get_indexes("devices")} >= {"ix_devices_status_dev_id",
                                                                           "ix_devices_model_dev_id"}
    engine.dispose()
    assert _differences(url) == []


def test_duplicate_capability_records_become_one(db_url: str) -> None:
    """Two processes that met a new kind of device at once each stored its record (before 0005): the first
    stays, and no second can be stored."""
    engine = create_engine(db_url)
    migrations.upgrade(engine, "0004")
    caps = Base.metadata.tables["capabilities"]
    row = {"make": MAKE, "model": MODEL, "fw_version": "", "source": "discovered", "updated": 1.0}
    with engine.begin() as conn:
        conn.execute(caps.insert(), [{**row, "values": '{"sequence": false}'}, {**row, "values": "{}"},
                                     {**row, "source": "operator", "values": "{}"}])
    migrations.upgrade(engine)
    with engine.connect() as conn:
        kept = conn.execute(select(caps.c.source, caps.c["values"]).order_by(caps.c.id)).all()
    assert [tuple(r) for r in kept] == [("discovered", '{"sequence": false}'), ("operator", "{}")]
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(caps.insert(), [{**row, "values": "{}"}])
    engine.dispose()


@pytest.mark.parametrize("collation", [None, "en-US"], ids=["default", "icu-en-US"])
def test_a_devid_prefix_search_finds_every_match_under_any_collation(postgres: str, collation: str | None,
                                                                     tmp_path: Path) -> None:
    """The console's DevId search by prefix on PostgreSQL: an ICU en-US collation ignores punctuation at
    its first level, so "IMEI:" sorts like "IMEI" and a range up to "IMEI;" would find nothing; LIKE on
    the pattern index (migration 0002) finds every match, and the index serves it."""
    from fotadelta.server import DmServer, ServerConfig
    from fotadelta.server.registry import DeviceFilter
    url = new_database(postgres, icu_locale=collation)
    server = DmServer(ServerConfig(tmp_path, "http://127.0.0.1:0", db_url=url))
    services = Services(server)
    admin = services.auth.bootstrap_admin()
    ids = ["IMEI:356938035643809", "IMEI:356938035643810", "IMEI:490154203237518", "IMEI-356938", "imei:356938",
           "MEID:A0000000002329", "IMEI:35_938", "IMEI:35%938"]
    for dev_id in ids:
        services.registry.create(admin, dev_id)
    for prefix, want in (("IMEI:", [i for i in ids if i.startswith("IMEI:")]), ("IMEI:3569", ids[:2]),
                         ("IMEI:35_", ["IMEI:35_938"]), ("IMEI:35%", ["IMEI:35%938"]), ("MEID:", ids[5:6]),
                         ("imei", ["imei:356938"]), ("X", [])):
        found = [d.dev_id for d in services.registry.find(admin, DeviceFilter(dev_id_prefix=prefix))]
        assert sorted(found) == sorted(want), (prefix, found)
    with server.store.engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")  # (a few rows: the planner would rather scan them)
        plan = " ".join(r[0] for r in conn.exec_driver_sql(
            "EXPLAIN SELECT dev_id FROM devices WHERE dev_id LIKE 'IMEI:3569%%'"))
    assert "ix_devices_dev_id_pattern" in plan, plan
    server.store.engine.dispose()
