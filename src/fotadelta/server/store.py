"""The DM server's fleet state: devices, packages, update jobs, sessions and events, in SQL.

SQLite by default (one file beside the package store), any SQLAlchemy URL otherwise
(`postgresql+psycopg://…` when one machine is outgrown). Opening a store runs the schema migrations
(`server/migrations`): the tables below and the fleet's are made by them, never by `create_all`.
Each method is one short transaction, so a server restart loses nothing that was acknowledged;
A DM message is one transaction of its own (`Store.unit`): on SQLite it begins IMMEDIATE (it
writes, and a deferred transaction that reads and then writes can fail when another process wrote
meanwhile), on PostgreSQL the engine locks the device's row in it. Sessions in progress live in their
rows too (`SessionRow.token`, `SessionRow.live`), so any server process sharing the database serves
any message of any session, and a restart loses none of them."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import (ForeignKey, LargeBinary, String, Table, bindparam, create_engine, event, insert, literal,
                        select)
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.dml import Insert, Update
from sqlalchemy.sql.schema import ColumnDefault
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, configure_mappers, mapped_column, sessionmaker
from sqlalchemy.orm.attributes import instance_dict
from sqlalchemy.orm.instrumentation import ClassManager, manager_of_class

from fotadelta.server import migrations


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
    # The registry's view (server/registry.py): lifecycle status, the device's time zone for campaign
    # windows, who created and last changed the record (empty: the device enrolled itself).
    status: Mapped[str] = mapped_column(String(16), default="unknown", index=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    created_at: Mapped[float] = mapped_column(default=time.time)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    modified_at: Mapped[float] = mapped_column(default=time.time)
    modified_by: Mapped[str] = mapped_column(String(64), default="")
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
    # (Not indexed: every step of the update changes it, and each query of jobs names the device or the job.)
    state: Mapped[str] = mapped_column(String(16), default="pending")
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
    # While the session may still be spoken in: the RespURI token it is heard at, the engine's state
    # between messages (sealed, see server/livestate.py) and the time of its last message. A session
    # that has ended loses its token and state once FINISHED_IDLE has passed (DmServer.sweep).
    token: Mapped[str | None] = mapped_column(String(32), default=None, unique=True, index=True)
    live: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    # (Not indexed: each message writes it, and an indexed column changed makes PostgreSQL add index entries
    # for the row's new version; the sweep finds the rows still heard through the token's index.)
    touched: Mapped[float] = mapped_column(default=0.0, server_default="0")


class EventRow(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    dev_id: Mapped[str] = mapped_column(String(128), index=True)
    at: Mapped[float] = mapped_column(default=time.time)
    kind: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(String(1024))


class PortalRedemptionRow(Base):
    """A portal token that has been redeemed (by its device's authenticated session): each is good once,
    whichever server process hears it. Kept until the token would have expired anyway."""

    __tablename__ = "portal_redemptions"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the token
    expires: Mapped[float] = mapped_column(index=True)


class CacheVersionRow(Base):
    """How often a kind of read-mostly data (`name`) that server processes keep in memory has changed: whatever
    changes the data adds one in the same transaction, and a process that reads a count other than the one its
    copy was read at reads the data again (see Counted)."""

    __tablename__ = "cache_versions"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(default=0)


V = TypeVar("V")


class Counted(Generic[V]):
    """One server process's copies of read-mostly data, per key (make and model), good while the data's change
    count (its CacheVersionRow) is the one they were read at: any process's change moves the count in its own
    transaction, so no process decides on data older than the count it read in its transaction. At most
    `size` keys: beyond that, all are forgotten."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._count: int | None = None
        self._rows: dict[tuple[str, str], V] = {}

    def get(self, key: tuple[str, str], count: int | None) -> V | None:
        """The copy read at count (None: the count is unknown, nothing is good)."""
        with self._lock:
            return self._rows.get(key) if count is not None and count == self._count else None

    def keep(self, key: tuple[str, str], count: int | None, value: V) -> None:
        """Keep value, read at count (None: not kept)."""
        if count is None:
            return
        with self._lock:
            if count != self._count or len(self._rows) >= self.size:
                self._count, self._rows = count, {}
            self._rows[key] = value


JOB_OPEN = ("pending", "sent", "accepted")
M = TypeVar("M", bound=Base)


def table_of(cls: type[Base]) -> Table:
    """The table a mapped class is a row of."""
    return cast(Table, cls.__table__)


_CURSOR = "fotadelta.direct_cursor"  # (Direct's key in a pooled connection's info)


class Direct:
    """A Core statement run on the DBAPI cursor of a connection, its SQL compiled once per dialect: the DM
    messages' few statements, run on every message, skip SQLAlchemy's execution path (cache keys, execution
    contexts, result objects), which costs about as much again as the driver's own work. Bound values are plain
    ones the driver takes as they are (text, numbers, bytes; no expanding IN lists), and columns come back as
    the driver gives them (SQLite gives Booleans as 0 and 1). The engine's before_cursor_execute listeners still
    see each statement (the benchmarks count statements with them); errors are SQLAlchemy's, as on its path."""

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._compiled: dict[str, tuple[str, dict[str, Any], tuple[str, ...] | None]] = {}
        # The names of the columns it returns (None: no rows), per dialect, taken from the first execution's cursor:
        # a statement's columns never change, and psycopg builds its description anew on every read of it.
        self._names: dict[str, tuple[str, ...] | None] = {}
        # An INSERT's columns left out of the parameters take their Python-side defaults, as on SQLAlchemy's path.
        table = statement.table if isinstance(statement, Insert) else None
        self._defaults = {} if table is None else {
            c.key: c.default for c in table.c
            if isinstance(c.default, ColumnDefault) and (c.default.is_scalar or c.default.is_callable)}

    def _sql(self, dialect: Dialect) -> tuple[str, dict[str, Any], tuple[str, ...] | None]:
        """The SQL for dialect, the statement's own bound values (literals, LIMITs) and, for a positional
        paramstyle, the parameters' order."""
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = cast(SQLCompiler, self.statement.compile(dialect=dialect))
            order = tuple(compiled.positiontup or ()) if dialect.positional else None
            found = self._compiled[dialect.name] = (compiled.string, dict(compiled.params), order)
        return found

    def _bound(self, defaults: dict[str, Any], order: tuple[str, ...] | None, params: Mapping[str, Any]) -> Any:
        values = {**defaults, **params}
        for key, default in self._defaults.items():
            if key in values and key not in params:
                values[key] = default.arg(None) if default.is_callable else default.arg
        return values if order is None else tuple(values[k] for k in order)

    def run(self, conn: Connection, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The statement with params in conn's transaction; its rows (RETURNING's too) by column name."""
        sql, defaults, order = self._sql(conn.dialect)
        return self._execute(conn, sql, self._bound(defaults, order, params), many=False)

    def run_many(self, conn: Connection, params: Sequence[Mapping[str, Any]]) -> None:
        """The statement once per parameter set, as one executemany (no rows: an INSERT's values, say)."""
        sql, defaults, order = self._sql(conn.dialect)
        self._execute(conn, sql, [self._bound(defaults, order, p) for p in params], many=True)

    def _execute(self, conn: Connection, sql: str, bound: Any, *, many: bool) -> list[dict[str, Any]]:
        fairy = conn.connection
        # One cursor per driver connection, kept for its life (the pool's info dictionary is the connection's):
        # psycopg builds a cursor's adapters anew for each, about as costly as a short statement's own work.
        cursor = fairy.info.get(_CURSOR)
        if cursor is None:
            cursor = fairy.info[_CURSOR] = fairy.cursor()
        try:
            for listener in conn.dispatch.before_cursor_execute:
                listener(conn, cursor, sql, bound, None, many)
            if many:
                cursor.executemany(sql, bound)
                return []
            cursor.execute(sql, bound)
            dialect = conn.dialect.name
            if dialect in self._names:
                names = self._names[dialect]
            else:
                description = cursor.description
                names = self._names[dialect] = None if description is None else tuple(d[0] for d in description)
            return [] if names is None else [dict(zip(names, row)) for row in cursor.fetchall()]
        except conn.dialect.loaded_dbapi.Error as exc:
            if conn.dialect.is_disconnect(exc, fairy.dbapi_connection, cursor):
                conn.invalidate(exc)
            raise DBAPIError.instance(sql, bound, exc, conn.dialect.loaded_dbapi.Error,
                                      dialect=conn.dialect) from exc

    def first(self, conn: Connection, params: Mapping[str, Any]) -> dict[str, Any] | None:
        rows = self.run(conn, params)
        return rows[0] if rows else None


# The (one) primary key column's key of each tracked table (looked up on every message, not derived again).
_KEY: dict[type[Base], str] = {cls: table_of(cls).primary_key.columns[0].key for cls in (DeviceRow, SessionRow, JobRow)}
_EVENTS = table_of(EventRow)


@functools.cache  # one statement per table and set of columns, compiled once
def _append(table: Table, columns: frozenset[str]) -> Direct:
    """The INSERT of one row of table that no one reads back (an event, an audit entry): run once per row.
    (Inline: no RETURNING of the new id, which nothing reads, and which an executemany of several would not give.)"""
    return Direct(insert(table).values({c: bindparam(c) for c in sorted(columns)}).inline())


def _insert_values(cls: type[Base], columns: frozenset[str], prefix: str) -> Insert:
    """The INSERT of one row of cls, its given columns bound as prefix + column key, returning its key."""
    table = table_of(cls)
    return (insert(table).values({table.c[c]: bindparam(prefix + c) for c in sorted(columns)})
            .returning(table.c[_KEY[cls]]))


def _update_by_key(cls: type[Base], columns: frozenset[str], prefix: str) -> Update:
    """The UPDATE of columns of one row of cls by its key: each bound as prefix + column key, the key as
    prefix + "key_" (the one builder of both `_writes` and `_write_one`)."""
    table = table_of(cls)
    return (table.update().where(table.c[_KEY[cls]] == bindparam(prefix + "key_"))
            .values({table.c[c]: bindparam(prefix + c) for c in sorted(columns)}))


Shape = tuple[tuple[type[Base], frozenset[str]], ...]  # the tables and columns of rows written, in order
Appends = tuple[tuple[Table, frozenset[str], int], ...]  # rows appended: table, columns, how many rows


@functools.cache  # one statement per table and set of columns, compiled once
def _write_one(cls: type[Base], columns: frozenset[str], insert_: bool) -> Direct:
    """The INSERT (insert_) or UPDATE by key of one row on its own: parameters named as the columns, and key_."""
    return Direct(_insert_values(cls, columns, "") if insert_ else _update_by_key(cls, columns, ""))


@functools.cache  # one statement per shape: the rows inserted, the rows updated, the rows appended
def _writes(inserts: Shape, updates: Shape, appends: Appends) -> Direct:
    """PostgreSQL's: the INSERTs of new rows, the UPDATEs of rows by key and the INSERTs of appended rows (one
    multi-row INSERT per table and columns), as one statement (Tracked.write), which returns the new rows' keys
    (k0, k1...: one row)."""
    parts: list[Any] = [_insert_values(cls, columns, f"i{i}_").cte(f"i{i}") for i, (cls, columns) in enumerate(inserts)]
    parts += [_update_by_key(cls, columns, f"p{i}_").cte(f"w{i}") for i, (cls, columns) in enumerate(updates)]
    parts += [insert(table).values([{c: bindparam(f"a{g}_{j}_{c}") for c in sorted(columns)} for j in range(rows)])
              .cte(f"a{g}") for g, (table, columns, rows) in enumerate(appends)]
    keys = [parts[i].c[_KEY[cls]].label(f"k{i}") for i, (cls, _) in enumerate(inserts)]  # (one row each: joined, one)
    return Direct((select(*keys) if keys else select(literal(1))).add_cte(*parts))


@functools.cache
def _manager(cls: type[Base]) -> ClassManager[Any]:
    """The class's instrumentation, which makes instances without the constructor (the mappers configured)."""
    configure_mappers()
    return manager_of_class(cls)


class Tracked:
    """Rows a transaction reads with plain statements, as mapped objects in no ORM session, and writes back with
    one UPDATE each of the columns that changed (`write`); new rows (`add`) are one INSERT each at the first
    write, and rows changed unread (`update`) one UPDATE each. On PostgreSQL a write of several is one
    statement. The DM messages' path reads and writes its device, session and job rows this way: the ORM's unit
    of work costs several times what the statements themselves do. (An object added to the ORM session instead
    is the ORM's to write.)"""

    def __init__(self) -> None:
        self._rows: list[tuple[Base, dict[str, Any]]] = []
        self._by_key: dict[tuple[type[Base], Any], Base] = {}
        self._new: list[Base] = []
        self._unread: dict[tuple[type[Base], Any], dict[str, Any]] = {}
        self._appended: list[tuple[Table, dict[str, Any]]] = []

    def append(self, table: Table, values: Mapping[str, Any]) -> None:
        """A row of table that nothing reads back (an event, an audit entry), every column but its key given:
        inserted by the next `write`, with the others appended since the last."""
        self._appended.append((table, dict(values)))

    def event(self, dev_id: str, kind: str, text: str) -> None:
        """An event, appended (see `append`)."""
        self.append(_EVENTS, {"dev_id": dev_id, "at": time.time(), "kind": kind, "text": text[:1024]})

    def add(self, obj: M) -> M:
        """obj, a new row of a tracked table with every column but its key set, inserted by `write` (its key
        then set from the database) and tracked from then on."""
        self._new.append(obj)
        return obj

    def update(self, cls: type[Base], key: Any, values: Mapping[str, Any]) -> None:
        """Set columns of the row of cls with this key, written by the next `write` without reading the row (on
        the object, if the row was loaded). Nothing is written for a key no row has."""
        known = self._by_key.get((cls, key))
        if known is not None:
            for column, value in values.items():
                setattr(known, column, value)
        else:
            self._unread.setdefault((cls, key), {}).update(values)

    def load(self, cls: type[M], values: Mapping[Any, Any]) -> M:
        """cls holding values (a row of its table, by column key), written back by `write`. A row loaded
        before is that object again, as the transaction has it (as the ORM's identity map does)."""
        key = (cls, values[_KEY[cls]])
        if (known := self._by_key.get(key)) is not None:
            return cast(M, known)
        obj = cast(M, _manager(cls).new_instance())
        instance_dict(obj).update(values)  # (as the ORM's loading does: its constructor costs twenty times this)
        self._rows.append((obj, dict(values)))
        self._by_key[key] = obj
        for column, value in self._unread.pop(key, {}).items():  # (set before it was read: still to be written)
            setattr(obj, column, value)
        return obj

    def write(self, conn: Connection) -> None:
        """The rows added since the last write, one INSERT each; the columns changed since the load (or the
        last write), one UPDATE per row that changed, and those set by `update`; then the rows appended since the
        last write (events, audit entries). On PostgreSQL, several of them are one statement (a data-modifying
        WITH query each)."""
        new, self._new = self._new, []
        # Columns are read from the objects' state dictionaries, as getattr would give them (a column never set is
        # None), without the instrumented attribute's call per column of every row of every message.
        inserts = [(type(obj), {c.key: state.get(c.key) for c in table_of(type(obj)).c if c.key != _KEY[type(obj)]})
                   for obj in new for state in (instance_dict(obj),)]
        updates: list[tuple[type[Base], dict[str, Any], Any]] = []
        for obj, before in self._rows:
            state = instance_dict(obj)
            changed = {k: v for k, old in before.items() if (v := state.get(k)) != old}
            if changed:
                updates.append((type(obj), changed, before[_KEY[type(obj)]]))
                before.update(changed)
        unread, self._unread = self._unread, {}
        updates += [(cls, values, key) for (cls, key), values in unread.items()]
        appended, self._appended = self._appended, []
        groups: dict[tuple[Table, frozenset[str]], list[dict[str, Any]]] = {}
        for table, values in appended:
            groups.setdefault((table, frozenset(values)), []).append(values)
        if conn.dialect.name == "postgresql" and len(inserts) + len(updates) + len(groups) > 1:
            params = {f"i{i}_{c}": v for i, (_, values) in enumerate(inserts) for c, v in values.items()}
            params.update({f"p{i}_{c}": v for i, (_, changed, _) in enumerate(updates) for c, v in changed.items()})
            params.update({f"p{i}_key_": key for i, (_, _, key) in enumerate(updates)})
            params.update({f"a{g}_{j}_{c}": v for g, rows in enumerate(groups.values()) for j, values in enumerate(rows)
                           for c, v in values.items()})
            statement = _writes(tuple((cls, frozenset(values)) for cls, values in inserts),
                                tuple((cls, frozenset(changed)) for cls, changed, _ in updates),
                                tuple((table, columns, len(rows)) for (table, columns), rows in groups.items()))
            found = statement.run(conn, params)
            keys = [found[0][f"k{i}"] for i in range(len(new))]
        else:
            keys = [_write_one(cls, frozenset(values), True).run(conn, values)[0][_KEY[cls]] for cls, values in inserts]
            for cls, changed, key in updates:
                _write_one(cls, frozenset(changed), False).run(conn, {**changed, "key_": key})
            for (table, columns), rows in groups.items():
                if len(rows) == 1:
                    _append(table, columns).run(conn, rows[0])
                else:
                    _append(table, columns).run_many(conn, rows)
        for obj, (cls, values), key in zip(new, inserts, keys):
            setattr(obj, _KEY[cls], key)
            self._rows.append((obj, {**values, _KEY[cls]: key}))
            self._by_key[(cls, key)] = obj


def prefixed(table: Table, prefix: str) -> list[Any]:
    """The columns of table labelled prefix + key, to select beside another table's (see `unprefixed`)."""
    return [c.label(prefix + c.key) for c in table.c]


def unprefixed(row: Mapping[Any, Any], table: Table, prefix: str) -> dict[str, Any]:
    """The values of table's columns in a row that selected `prefixed(table, prefix)`, by column key."""
    return {c.key: row[prefix + c.key] for c in table.c}


class Unit:
    """A transaction that writes: its Core connection, which the DM messages' statements run on, and an ORM
    session on that connection (`orm`) for what needs one, made only when asked for (most messages never do: an
    ORM session's begin and commit cost about what two of their statements do) and flushed before the commit."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._orm: Session | None = None

    @property
    def orm(self) -> Session:
        """The ORM session of the transaction (not autoflushing: what a statement of the transaction must see
        is flushed where it is made, or by `flush`)."""
        if self._orm is None:
            # (rollback_only: the session never commits the connection's transaction, which is the unit's.)
            self._orm = Session(self.conn, autoflush=False, expire_on_commit=False,
                                join_transaction_mode="rollback_only")
        return self._orm

    def flush(self) -> None:
        """Write what the ORM session holds, if there is one: the statements that follow see it."""
        if self._orm is not None:
            self._orm.flush()

    def close(self) -> None:
        if self._orm is not None:
            self._orm.close()


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
        self.sqlite = url.startswith("sqlite")
        # Up to 40 connections: more than requests run at once in one process (its thread pools,
        # server/app.py), so a burst of devices waits for the database, never for a pool slot (and times
        # out). 16 kept open: busy pools do not open and close connections (a new PostgreSQL backend
        # per connection) request after request.
        # psycopg prepares a statement on a connection once it has run there prepare_threshold times (5 by default):
        # spread over this many pooled connections (and as many per server process), the DM messages' few
        # statements took thousands of updates to be prepared on all of them, parsed and planned anew until then.
        # Prepared at their first run instead: the next run on that connection is only bound and executed.
        connect_args: dict[str, Any] = {"check_same_thread": False} if self.sqlite else \
            {"prepare_threshold": 0} if make_url(url).get_driver_name() == "psycopg" else {}
        self.engine: Engine = create_engine(url, connect_args=connect_args, pool_size=16, max_overflow=24)
        if self.sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        self._writer = self.engine.execution_options(immediate=True)
        migrations.upgrade(self._writer)  # (made new, or brought up to date)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def tx(self) -> Iterator[Session]:
        with self._session.begin() as s:
            yield s

    @contextmanager
    def unit(self) -> Iterator[Unit]:
        """A transaction that will write (one DM message's): IMMEDIATE on SQLite, so that it waits for
        the database's one writer at its start rather than failing at its first write."""
        with self._writer.begin() as conn:
            unit = Unit(conn)
            try:
                yield unit
                unit.flush()
            finally:
                unit.close()

    @contextmanager
    def message(self) -> Iterator[Session]:
        """`unit`'s transaction as an ORM session (autoflushing, as `tx`'s)."""
        with self.unit() as unit:
            s = unit.orm
            s.autoflush = True
            yield s

    def reachable(self) -> bool:
        """Whether the database answers a trivial query now."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except SQLAlchemyError:
            return False
        return True

    def log(self, dev_id: str, kind: str, text: str) -> None:
        with self.tx() as s:
            s.add(EventRow(dev_id=dev_id, kind=kind, text=text[:1024]))

    def snapshot(self) -> Snapshot:
        with self.tx() as s:
            return Snapshot(list(s.scalars(select(DeviceRow))), list(s.scalars(select(JobRow))),
                            list(s.scalars(select(SessionRow))), list(s.scalars(select(EventRow).order_by(EventRow.id))))


def _sqlite_begin(conn: Connection) -> None:
    # The driver begins a transaction by itself only at its first write, too late for a transaction
    # that reads what it is about to change: those begin here, IMMEDIATE. (The others keep the
    # driver's way: reads outside any transaction, which never wait for a writer.)
    if conn.get_execution_options().get("immediate"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(conn: object, _record: object) -> None:
    # WAL lets the download endpoint read while a session writes; a busy timeout instead of errors.
    cursor = conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")  # (several server processes queue for the one writer)
    # With WAL this survives a crash of the server process; only an OS crash can lose the last commit.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
