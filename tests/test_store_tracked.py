"""store.Tracked: the DM path's rows read as plain rows and written back, one UPDATE of the columns that
changed per row (new rows one INSERT each); store.Direct: statements on the DBAPI cursor, on a real SQLite store
(tests/test_dm_postgres.py runs the DM path on PostgreSQL; the writes of a message are one statement there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pg_fixtures import new_database, postgres  # noqa: F401  (fixture)
from sqlalchemy import bindparam, event, insert, select
from sqlalchemy.exc import IntegrityError

from fotadelta.server.store import (DeviceRow, Direct, EventRow, PortalRedemptionRow, SessionRow, Store, Tracked,
                                    prefixed, table_of, unprefixed)
from fotadelta.server.tables import AuditRow


def _store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'fleet.db'}")
    with store.tx() as s:
        s.add(DeviceRow(dev_id="IMEI:1", user="u", password="p", server_password="sp"))
        s.add(DeviceRow(dev_id="IMEI:2", user="u2", password="p2", server_password="sp2"))
        s.add(SessionRow(dev_id="IMEI:1", session_id="1", initiator="client", token="tok"))
    return store


def _updates(store: Store) -> list[str]:
    seen: list[str] = []
    event.listen(store.engine, "before_cursor_execute",
                 lambda _c, _cur, stmt, *_: seen.append(stmt) if stmt.startswith("UPDATE") else None)
    return seen


def test_only_changed_columns_of_changed_rows_are_written(tmp_path: Path) -> None:
    store = _store(tmp_path)
    updates = _updates(store)
    devices = table_of(DeviceRow)
    with store.message() as s:
        conn = s.connection()
        rows = Tracked()
        one = rows.load(DeviceRow, conn.execute(select(devices).where(devices.c.dev_id == "IMEI:1")).one()._mapping)
        two = rows.load(DeviceRow, conn.execute(select(devices).where(devices.c.dev_id == "IMEI:2")).one()._mapping)
        one.version, one.last_seen = "1.1", 42.0
        two.version = two.version  # (the same value: not a change)
        rows.write(conn)
        rows.write(conn)  # (nothing changed since the last write)
    assert len(updates) == 1
    assert "version" in updates[0] and "last_seen" in updates[0] and "password" not in updates[0]
    with store.tx() as s:
        assert (s.get(DeviceRow, "IMEI:1").version, s.get(DeviceRow, "IMEI:1").last_seen) == ("1.1", 42.0)
        assert s.get(DeviceRow, "IMEI:2").version == ""


def test_a_row_loaded_twice_is_one_object(tmp_path: Path) -> None:
    store = _store(tmp_path)
    devices = table_of(DeviceRow)
    with store.message() as s:
        conn = s.connection()
        rows = Tracked()
        query = select(devices).where(devices.c.dev_id == "IMEI:1")
        first = rows.load(DeviceRow, conn.execute(query).one()._mapping)
        first.version = "2.0"
        again = rows.load(DeviceRow, conn.execute(query).one()._mapping)
        assert again is first and again.version == "2.0"  # (as the transaction has it, not as the database does)
        rows.write(conn)
    with store.tx() as s:
        assert s.get(DeviceRow, "IMEI:1").version == "2.0"


def test_rows_of_a_join_are_told_apart_by_prefix(tmp_path: Path) -> None:
    store = _store(tmp_path)
    sessions, devices = table_of(SessionRow), table_of(DeviceRow)
    query = (select(*prefixed(sessions, "s_"), *prefixed(devices, "d_"))
             .select_from(sessions.join(devices, devices.c.dev_id == sessions.c.dev_id)))
    with store.message() as s:
        conn = s.connection()
        found = conn.execute(query).one()._mapping
        rows = Tracked()
        session = rows.load(SessionRow, unprefixed(found, sessions, "s_"))
        device = rows.load(DeviceRow, unprefixed(found, devices, "d_"))
        assert (session.token, session.dev_id, device.dev_id, device.user) == ("tok", "IMEI:1", "IMEI:1", "u")
        session.state, device.client_nonce = "open", "bm9uY2U="
        rows.write(conn)
    with store.tx() as s:
        assert s.scalars(select(SessionRow.state)).one() == "open"
        assert s.get(DeviceRow, "IMEI:1").client_nonce == "bm9uY2U="


def test_an_added_row_is_inserted_once_then_updated(tmp_path: Path) -> None:
    store = _store(tmp_path)
    seen: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda _c, _cur, stmt, *_: seen.append(stmt.split()[0]))
    with store.message() as s:
        conn = s.connection()
        rows = Tracked()
        new = rows.add(SessionRow(dev_id="IMEI:2", session_id="7", initiator="client", state="open", messages=0,
                                  note="", started=1.0, ended=None, token="tok2", live=None, touched=2.0))
        rows.write(conn)
        assert isinstance(new.id, int)  # (the database's key, set on the object)
        new.messages = 3
        rows.write(conn)
        rows.write(conn)  # (nothing changed since)
    assert [w for w in seen if w != "BEGIN"] == ["INSERT", "UPDATE"]
    with store.tx() as s:
        row = s.scalars(select(SessionRow).where(SessionRow.token == "tok2")).one()
        assert (row.id, row.dev_id, row.messages, row.touched) == (new.id, "IMEI:2", 3, 2.0)


def test_a_row_changed_unread_is_written_by_key(tmp_path: Path) -> None:
    store = _store(tmp_path)
    updates = _updates(store)
    devices = table_of(DeviceRow)
    with store.message() as s:
        conn = s.connection()
        rows = Tracked()
        rows.update(DeviceRow, "IMEI:2", {"version": "3.0"})
        rows.update(DeviceRow, "IMEI:2", {"last_seen": 7.0})  # (one UPDATE of both)
        rows.update(DeviceRow, "IMEI:9", {"version": "9.9"})  # (no such row: nothing written)
        rows.write(conn)
        assert len(updates) == 2 and "password" not in updates[0]
        rows.update(DeviceRow, "IMEI:1", {"version": "1.5"})
        # Read after it was changed: the object has the change, and the next write makes it.
        one = rows.load(DeviceRow, conn.execute(select(devices).where(devices.c.dev_id == "IMEI:1")).one()._mapping)
        assert one.version == "1.5"
        rows.update(DeviceRow, "IMEI:1", {"lang": "fi"})  # (a loaded row: set on the object)
        assert one.lang == "fi"
        rows.write(conn)
    assert len(updates) == 3 and "version" in updates[2] and "lang" in updates[2]
    with store.tx() as s:
        two, one = s.get(DeviceRow, "IMEI:2"), s.get(DeviceRow, "IMEI:1")
        assert (two.version, two.last_seen, one.version, one.lang) == ("3.0", 7.0, "1.5", "fi")
        assert s.get(DeviceRow, "IMEI:9") is None


def test_direct_statements_are_seen_by_listeners_and_fail_as_sqlalchemy_errors(tmp_path: Path) -> None:
    store = _store(tmp_path)
    seen: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda _c, _cur, stmt, *_: seen.append(stmt))
    devices = table_of(DeviceRow)
    by_id = Direct(select(devices.c.dev_id, devices.c.user).where(devices.c.dev_id == bindparam("dev_id")))
    redemptions = table_of(PortalRedemptionRow)
    redeem = Direct(insert(redemptions).values(digest=bindparam("digest"), expires=bindparam("expires")))
    with store.message() as s:
        conn = s.connection()
        assert by_id.first(conn, {"dev_id": "IMEI:2"}) == {"dev_id": "IMEI:2", "user": "u2"}
        assert by_id.first(conn, {"dev_id": "IMEI:9"}) is None
    assert sum("FROM devices" in stmt for stmt in seen) == 2
    with store.message() as s:
        redeem.run(s.connection(), {"digest": "d1", "expires": 1.0})
    with pytest.raises(IntegrityError), store.message() as s:  # (a duplicate key, as SQLAlchemy's own path raises it)
        redeem.run(s.connection(), {"digest": "d2", "expires": 2.0})
        redeem.run(s.connection(), {"digest": "d1", "expires": 3.0})
    with store.tx() as s:  # (the failed transaction kept nothing)
        assert [(r.digest, r.expires) for r in s.scalars(select(PortalRedemptionRow))] == [("d1", 1.0)]


def test_a_direct_insert_gives_left_out_columns_their_defaults(tmp_path: Path) -> None:
    store, sessions = _store(tmp_path), table_of(SessionRow)
    add = Direct(insert(sessions).values({c: bindparam(c) for c in (
        "dev_id", "session_id", "initiator", "state", "messages", "note", "started", "touched")}))
    with store.tx() as s:
        add.run(s.connection(), {"dev_id": "IMEI:2", "session_id": "7", "initiator": "server"})
        add.run(s.connection(), {"dev_id": "IMEI:2", "session_id": "8", "initiator": "web", "state": "open",
                                 "started": 5.0})
    with store.tx() as s:
        rows = s.execute(select(sessions).where(sessions.c.dev_id == "IMEI:2").order_by(sessions.c.id)).all()
    assert [(r.state, r.messages, r.note, r.touched) for r in rows] == [("notified", 0, "", 0.0), ("open", 0, "", 0.0)]
    assert rows[0].started > 1e9 and rows[1].started == 5.0


def test_a_messages_events_are_one_statement_in_the_order_they_came(tmp_path: Path) -> None:
    store = _store(tmp_path)
    inserts: list[tuple[str, bool]] = []
    event.listen(store.engine, "before_cursor_execute", lambda _c, _cur, stmt, _p, _x, many:
                 inserts.append((stmt, many)) if stmt.startswith("INSERT INTO events") else None)
    with store.message() as s:
        rows = Tracked()
        for i in range(3):
            rows.event("IMEI:1", "test", f"event {i} " + "x" * 2000)  # (cut to what the column holds)
        rows.write(s.connection())
        rows.event("IMEI:2", "test", "alone")
        rows.write(s.connection())
        rows.write(s.connection())  # (nothing new: no statement)
    assert [many for _, many in inserts] == [True, False]
    with store.tx() as s:
        found = list(s.scalars(select(EventRow).order_by(EventRow.id)))
    assert [(e.dev_id, e.text[:8], len(e.text)) for e in found] == [
        ("IMEI:1", "event 0 ", 1024), ("IMEI:1", "event 1 ", 1024), ("IMEI:1", "event 2 ", 1024), ("IMEI:2", "alone", 5)]
    assert all(e.at > 0 for e in found) and [e.at for e in found] == sorted(e.at for e in found)


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_a_messages_writes_are_one_statement_on_postgresql(db: str, tmp_path: Path,
                                                           request: pytest.FixtureRequest) -> None:
    """On PostgreSQL the INSERTs of new rows, the UPDATEs of every changed row and the INSERTs of the appended rows
    (events, an audit entry: one per table) are one statement (each a WITH query of its own), which gives the new
    rows' keys; on SQLite one statement each. Either way every value is written."""
    if db == "sqlite":
        store = _store(tmp_path)
    else:
        store = Store(new_database(request.getfixturevalue("postgres")))
        with store.tx() as s:
            s.add(DeviceRow(dev_id="IMEI:1", user="u", password="p", server_password="sp"))
            s.add(SessionRow(dev_id="IMEI:1", session_id="1", initiator="client", token="tok"))
    seen: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda _c, _cur, stmt, *_: seen.append(stmt))
    devices, sessions = table_of(DeviceRow), table_of(SessionRow)
    for round_ in range(2):  # (the second time, the statement compiled the first time is used again)
        seen.clear()
        with store.message() as s:
            conn = s.connection()
            rows = Tracked()
            dev = rows.load(DeviceRow, conn.execute(select(devices).where(devices.c.dev_id == "IMEI:1")).one()._mapping)
            query = select(sessions).where(sessions.c.token == "tok")
            session = rows.load(SessionRow, conn.execute(query).one()._mapping)
            seen.clear()
            dev.version, dev.last_seen = f"1.{round_}", 42.0 + round_
            session.state, session.live = "open", bytes([round_]) * 3
            new = [rows.add(SessionRow(dev_id="IMEI:1", session_id=f"{round_}{i}", initiator="client", state="open",
                                       messages=i, note="", started=1.0, ended=None, token=f"t{round_}{i}", live=None,
                                       touched=2.0)) for i in range(2)]
            for i in range(3):
                rows.event("IMEI:1", "test", f"round {round_} event {i}")
            rows.append(table_of(AuditRow), {"at": 3.0 + round_, "actor": "ada", "action": "test", "target": "IMEI:1",
                                             "outcome": "ok", "detail": json.dumps({"round": round_})})
            rows.write(conn)
            assert len(seen) == (1 if db == "postgresql" else 6), seen
            new[1].note = "changed"  # (tracked from its INSERT on, by the key the database gave it)
            rows.write(conn)
        with store.tx() as s:
            dev_row, session_row = s.get(DeviceRow, "IMEI:1"), s.get(SessionRow, session.id)
            added = [s.get(SessionRow, row.id) for row in new]
            texts = [e.text for e in s.scalars(select(EventRow).order_by(EventRow.id))]
            audited = [(a.at, a.actor, a.detail) for a in s.scalars(select(AuditRow).order_by(AuditRow.id))]
        assert audited[-1] == (3.0 + round_, "ada", {"round": round_})
        assert (dev_row.version, dev_row.last_seen) == (f"1.{round_}", 42.0 + round_)
        assert (session_row.state, session_row.live) == ("open", bytes([round_]) * 3)
        assert [(r.session_id, r.messages, r.note) for r in added] == [(f"{round_}0", 0, ""),
                                                                       (f"{round_}1", 1, "changed")]
        assert texts[-3:] == [f"round {round_} event {i}" for i in range(3)]


def test_a_statement_is_prepared_at_its_first_run_on_postgresql(request: pytest.FixtureRequest) -> None:
    """On PostgreSQL (psycopg) a DM message's statement is a prepared statement of its connection from its first
    run on: the next runs there are neither parsed nor planned again."""
    store = Store(new_database(request.getfixturevalue("postgres")))
    devices = table_of(DeviceRow)
    statement = Direct(select(devices.c.version).where(devices.c.dev_id == bindparam("dev_id")))
    with store.unit() as tx:
        assert statement.run(tx.conn, {"dev_id": "IMEI:1"}) == []
        prepared = tx.conn.exec_driver_sql("SELECT statement FROM pg_prepared_statements").scalars().all()
    assert any("FROM devices" in text and "dev_id" in text for text in prepared), prepared
