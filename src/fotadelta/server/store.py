"""The DM server's fleet state: devices, packages, update jobs, sessions and events, in SQL.

SQLite by default (one file beside the package store), any SQLAlchemy URL otherwise
(`postgresql+psycopg://…` when one machine is outgrown). Each method is one short transaction,
so a server restart loses nothing that was acknowledged; `recover()` runs at start-up and cleanly
fails the sessions that were in flight."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import ForeignKey, String, create_engine, event, inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


class DeviceRow(Base):
    __tablename__ = "devices"
    dev_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    user: Mapped[str] = mapped_column(String(128))
    password: Mapped[str] = mapped_column(String(128))
    server_password: Mapped[str] = mapped_column(String(128))
    auth: Mapped[str] = mapped_column(String(8), default="md5")  # the scheme the client authenticates with
    server_auth: Mapped[str] = mapped_column(String(32), default="md5")  # the server's schemes, preferred first
    client_nonce: Mapped[str] = mapped_column(String(512), default="AAAAAA==")  # b64, expected in the client's Cred
    server_nonce: Mapped[str] = mapped_column(String(512), default="AAAAAA==")  # b64, given by the client (may be "")
    snmp: Mapped[str] = mapped_column(String(512), default="")  # the device's SNMP trap credentials (JSON), if any
    make: Mapped[str] = mapped_column(String(64), default="")
    model: Mapped[str] = mapped_column(String(64), default="")
    version: Mapped[str] = mapped_column(String(64), default="")
    lang: Mapped[str] = mapped_column(String(16), default="")
    msisdn: Mapped[str] = mapped_column(String(32), default="")
    push_url: Mapped[str] = mapped_column(String(256), default="")
    large_objects: Mapped[bool] = mapped_column(default=False)
    last_seen: Mapped[float] = mapped_column(default=0.0)
    # The firmware package kinds the device installs (./DevDetail/Ext/FwUpdateKinds, e.g. "in-place full");
    # empty: not reported, every kind is offered.
    update_kinds: Mapped[str] = mapped_column(String(64), default="", server_default="")


class PackageRow(Base):
    __tablename__ = "packages"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    make: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(64))
    from_version: Mapped[str] = mapped_column(String(64))
    to_version: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(16))
    size: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(String(512))
    kind: Mapped[str] = mapped_column(String(16), default="", server_default="")  # plain | in-place | full


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    dev_id: Mapped[str] = mapped_column(ForeignKey("devices.dev_id"), index=True)
    package_id: Mapped[int] = mapped_column(ForeignKey("packages.id"))
    goal_version: Mapped[str] = mapped_column(String(64))  # a chain continues until the device runs it
    correlator: Mapped[str] = mapped_column(String(64), unique=True)
    delivery: Mapped[str] = mapped_column(String(16), default="download")  # download | inline
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    result_code: Mapped[int | None] = mapped_column(default=None)
    message: Mapped[str] = mapped_column(String(512), default="")
    created: Mapped[float] = mapped_column(default=time.time)
    updated: Mapped[float] = mapped_column(default=time.time)


class SessionRow(Base):
    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    dev_id: Mapped[str] = mapped_column(String(128), index=True)
    session_id: Mapped[str] = mapped_column(String(8))
    initiator: Mapped[str] = mapped_column(String(8))  # client | server | web
    state: Mapped[str] = mapped_column(String(16), default="notified")  # notified | open | completed | aborted | failed
    messages: Mapped[int] = mapped_column(default=0)
    note: Mapped[str] = mapped_column(String(512), default="")
    started: Mapped[float] = mapped_column(default=time.time)
    ended: Mapped[float | None] = mapped_column(default=None)


class EventRow(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    dev_id: Mapped[str] = mapped_column(String(128), index=True)
    at: Mapped[float] = mapped_column(default=time.time)
    kind: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(String(1024))


JOB_OPEN = ("pending", "sent", "accepted")


@dataclass(frozen=True)
class Snapshot:
    """A read-only copy of rows, for callers outside a transaction."""

    devices: list[DeviceRow]
    jobs: list[JobRow]
    sessions: list[SessionRow]
    events: list[EventRow]


class Store:
    """Transactions over the fleet database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False}
                                            if url.startswith("sqlite") else {})
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        _add_new_columns(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def tx(self) -> Iterator[Session]:
        with self._session.begin() as s:
            yield s

    def recover(self) -> int:
        """After a restart: sessions left open are failed, jobs sent in them go back to pending."""
        now = time.time()
        with self.tx() as s:
            open_sessions = s.scalars(select(SessionRow).where(SessionRow.state.in_(("open", "notified")))).all()
            for row in open_sessions:
                row.state, row.ended, row.note = "failed", now, "the server stopped during the session"
            for job in s.scalars(select(JobRow).where(JobRow.state == "sent")).all():
                job.state, job.updated = "pending", now
            return len(open_sessions)

    def log(self, dev_id: str, kind: str, text: str) -> None:
        with self.tx() as s:
            s.add(EventRow(dev_id=dev_id, kind=kind, text=text[:1024]))

    def snapshot(self) -> Snapshot:
        with self.tx() as s:
            return Snapshot(list(s.scalars(select(DeviceRow))), list(s.scalars(select(JobRow))),
                            list(s.scalars(select(SessionRow))), list(s.scalars(select(EventRow).order_by(EventRow.id))))


def _add_new_columns(engine: Engine) -> None:
    """Columns added since a database was made: added to it, with their server default, so an
    existing fleet database keeps working after an upgrade."""
    tables = inspect(engine)
    with engine.begin() as conn:
        for table in Base.metadata.sorted_tables:
            have = {c["name"] for c in tables.get_columns(table.name)}
            for column in table.columns:
                if column.name in have or column.server_default is None:
                    continue
                default = column.server_default.arg  # type: ignore[attr-defined]
                kind = column.type.compile(dialect=engine.dialect)
                conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind} NOT NULL "
                                  f"DEFAULT '{default}'"))


def _sqlite_pragmas(conn: object, _record: object) -> None:
    # WAL lets the download endpoint read while a session writes; a busy timeout instead of errors.
    cursor = conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    # With WAL this survives a crash of the server process; only an OS crash can lose the last commit.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
