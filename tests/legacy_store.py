"""The DM store's tables as the code on main made them before migrations and the fleet (commit
1b63978, `fotadelta.server.store`), frozen here so that tests can make a database the way that
code did (`Base.metadata.create_all`) and check that today's server upgrades and serves it.
`without_security_columns` drops what the security work added before it (packages.kind,
devices.update_kinds), for a database older still."""

from __future__ import annotations

import time

from sqlalchemy import ForeignKey, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    metadata = MetaData()


class DeviceRow(Base):
    __tablename__ = "devices"
    dev_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    user: Mapped[str] = mapped_column(String(128))
    password: Mapped[str] = mapped_column(String(128))
    server_password: Mapped[str] = mapped_column(String(128))
    auth: Mapped[str] = mapped_column(String(8), default="md5")
    client_nonce: Mapped[str] = mapped_column(String(64), default="AAAAAA==")
    server_nonce: Mapped[str] = mapped_column(String(64), default="AAAAAA==")
    make: Mapped[str] = mapped_column(String(64), default="")
    model: Mapped[str] = mapped_column(String(64), default="")
    version: Mapped[str] = mapped_column(String(64), default="")
    lang: Mapped[str] = mapped_column(String(16), default="")
    msisdn: Mapped[str] = mapped_column(String(32), default="")
    push_url: Mapped[str] = mapped_column(String(256), default="")
    large_objects: Mapped[bool] = mapped_column(default=False)
    last_seen: Mapped[float] = mapped_column(default=0.0)
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
    kind: Mapped[str] = mapped_column(String(16), default="", server_default="")


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    dev_id: Mapped[str] = mapped_column(ForeignKey("devices.dev_id"), index=True)
    package_id: Mapped[int] = mapped_column(ForeignKey("packages.id"))
    goal_version: Mapped[str] = mapped_column(String(64))
    correlator: Mapped[str] = mapped_column(String(64), unique=True)
    delivery: Mapped[str] = mapped_column(String(16), default="download")
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
    initiator: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(16), default="notified")
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


def without_security_columns() -> MetaData:
    """The same tables without packages.kind and devices.update_kinds."""
    old = MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(old)
    for table, column in (("packages", "kind"), ("devices", "update_kinds")):
        t = old.tables[table]
        t._columns.remove(t.c[column])  # (SQLAlchemy has no public way to drop a column from a Table)
    return old
