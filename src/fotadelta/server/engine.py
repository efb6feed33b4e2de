"""The DM server's session engine: authentication, the server's side of each DM package, FUMO jobs.

Each HTTP request carries one client message. A session starts at the DM path with a message
that authenticates (MD5 digest, basic or HMAC, with a fresh nonce every session); nothing is
stored before it does, so strangers create no devices, sessions or jobs, and a failure is
challenged with a nonce that needs no storage (`keyring`). The server's first answer names the
session's RespURI, the DM path followed by an unguessable token: the rest of the session is heard
there only, so knowing a device's DevId and SessionID is not enough to speak in its session
(HMAC devices also authenticate every message). The engine records what the client reports
(DevInfo, Results, Generic Alerts with FUMO results, software requests and portal selections),
and answers with the next message of its own package; the session's Endpoint splits packages over
messages, chunks large objects and matches replies. Authentication is per direction (a device
account says how each side proves itself, see `accounts`), and bounded: a few failures in a row
either way end the session. Where a device keeps FUMO and what it can take come from its kind's
capabilities (`capabilities`), discovered on first contact.

Nothing of a session lives in one process's memory: each message is one transaction (`Store.unit`)
that loads the session's row by its RespURI token (locking its device's row, so that two messages of
one device never interleave), runs the message, and stores the session's state again (`Live`, sealed
in the row: `livestate`) with everything the message changed. So any server process sharing the
database serves any message of any session, and a restart, or a process killed mid-message, loses
nothing that was answered: the device retries, and whatever the lost answer had committed, or not,
the next message finds. The rows every message reads and changes (its device, session and job) are plain
rows (`store.Tracked`), not ORM objects: each is written once, at the message's end, with one UPDATE of the
columns that changed (a session the device opens, one INSERT; a job whose delivery was answered, unread), the
message's events with them (on PostgreSQL all of it one statement); new jobs are plain INSERTs, a FUMO result
one UPDATE ... RETURNING; these statements run on the driver's cursor (`store.Direct`), on the transaction's
Core connection. What a message only reads and seldom changes, its kind's capability records, each process
keeps in memory (`capabilities.Cache`), checked against a change count read with the device's row. The ORM
writes only what is made or changed seldom (enrolled devices, commands, capability records), in an ORM session
on the same connection that only a message that needs one makes (`store.Unit.orm`), flushed before the commit
(it does not autoflush: what a later statement of the message must see is written where it is made). What the server
does in a session is a small state machine (`Live.step`, `_next_package`) rather than a generator,
because its state must be stored between messages.

Jobs live in the store: a job installs one package and remembers the version its chain must
reach; when the device reports success the next step of the chain is planned in the same
transaction, and a start-up re-plans any chain a crash left without its next job."""

from __future__ import annotations

import base64
import hashlib
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, literal, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from fotadelta import chain, package
from fotadelta.dm import auth, fumo, notification, snmp
from fotadelta.dm.client import (ALERT_CLIENT_INITIATED, ALERT_GENERIC, ALERT_SERVER_INITIATED, FUMO_TYPE,
                                 PORTAL_SELECTION, SOFTWARE_LIST, SOFTWARE_SELECT, UI_CONFIRM, UI_DISPLAY,
                                 UPDATE_KINDS_NODE)
from fotadelta.dm.codec import Encoding, LimitError, decode, encoding_of
from fotadelta.dm.element import CodecError
from fotadelta.dm.model import (DM_1_1, Alert, Chal, Command, Exec, Get, Item, Message, Meta, Replace, Results,
                                Sequence, Status)
from fotadelta.dm.provisioning import DEMO_SECRET, SERVER_ID, derive
from fotadelta.dm.session import ALERT_NEXT_MESSAGE, ALERT_SESSION_ABORT, Endpoint, items_of, status_for, walk
from fotadelta.errors import PackageError
from fotadelta.files import write_atomic
from fotadelta.package import MAX_TEXT, descriptor
from fotadelta.server import accounts, capabilities, command_spec, planning
from fotadelta.server.capabilities import DeviceCapability, Found
from fotadelta.server.keyring import Keyring
from fotadelta.server.limits import Failures, Limits, Refusals, Throttle
from fotadelta.server.livestate import Recent, StateError
from fotadelta.server.push import PushPolicy
from fotadelta.server.store import (DeviceRow, Direct, JobRow, PackageRow, SessionRow, Store, Tracked, Unit,
                                    prefixed, table_of, unprefixed)
from fotadelta.server.tables import CommandRow

SESSION_IDLE = 300.0  # seconds before a silent session is failed (and its jobs go back)
FINISHED_IDLE = 30.0  # a finished session is heard this long, in case the client has more to say
RECENT_STATES = 1024  # sessions' states a process keeps as it sealed them (livestate.Recent)
SWEEP_EVERY = 10.0  # seconds between a process's sweeps of idle sessions (DmServer.sweep)
_RESULT_CODE = re.compile(r"[0-9]{1,9}")
# Answers that say a device does not support a command or feature at all.
_NOT_SUPPORTED = (406, 501)
# FUMO State values after an update (read back from DM 1.1.2 devices) and the result each stands for.
_STATE_RESULT = {"100": 200, "90": 200, "80": 410, "70": 410, "20": 503}
# A DM path: absolute, no trailing slash, characters a URL path takes as they are (no route parameters).
_DM_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")
# Package kinds by the names devices use for what they install (UPDATE_KINDS_NODE, docs/omadm.md).
_KINDS = {package.PatchKind.PLAIN: "plain", package.PatchKind.IN_PLACE: "in-place", package.PatchKind.FULL: "full"}
_KIND_WORDS = {"plain": "plain patches", "in-place": "in-place patches", "full": "full images"}
# What the device reports in package 1, and the device row's column for each.
_DEVINFO = {"./DevInfo/Man": "make", "./DevInfo/Mod": "model", "./DevInfo/Lang": "lang",
            "./DevInfo/Ext/PushAddr": "push_url", "./DevInfo/Ext/MSISDN": "msisdn"}
# ... and the characters each column holds (read once: through the mapped class, every session start paid for each).
_DEVINFO_LENGTH: dict[str, int] = {attr: getattr(DeviceRow, attr).type.length for attr in _DEVINFO.values()}
MAX_SESSION_ID = 8  # characters: what the store's column holds (a 16-bit id in hex needs 4)
_ZERO_NONCE = base64.b64encode(bytes(4)).decode()  # a new device's nonces, until its first session
_RETRIES = 3  # a message whose transaction lost a race (a deadlock, a row inserted meanwhile) runs again


# The statements every DM message runs, built once (their SQL is compiled and cached on first use):
# by a session's RespURI token, the session's and its device's columns, both rows locked (devices first, as every
# other transaction does), with the capability records' change count (capabilities.Cache); a device, locked;
# what _make_room reads; the device's oldest queued command and oldest pending job; a job of the device by id;
# a published package. The device, session and job rows are read as plain rows (`Tracked`).
# (Both rows locked, not only the device's: on PostgreSQL a row that is only joined comes from the statement's
# snapshot, taken before any wait for the lock, so another message of the session that committed meanwhile
# would go unseen; locked rows are read again as they are once the lock is had.)
_SESSIONS, _DEVICES = table_of(SessionRow), table_of(DeviceRow)
_BY_TOKEN = Direct(select(*prefixed(_SESSIONS, "s_"), *prefixed(_DEVICES, "d_"), capabilities.VERSION.label("caps"))
             .select_from(_DEVICES.join(_SESSIONS, _DEVICES.c.dev_id == _SESSIONS.c.dev_id))
             .where(_SESSIONS.c.token == bindparam("token")).with_for_update(of=[_DEVICES, _SESSIONS]))
_DEVICE = Direct(select(_DEVICES).where(_DEVICES.c.dev_id == bindparam("dev_id")).with_for_update())
# The ids of a device's last sessions, which a notified session's must differ from.
_RECENT_SESSION_IDS = Direct(select(_SESSIONS.c.session_id).where(_SESSIONS.c.dev_id == bindparam("dev_id"))
                             .order_by(_SESSIONS.c.id.desc()).limit(notification.RECENT_SESSIONS))
# ... and, for a message that opens a session, with the capability records' change count (capabilities.Cache).
_SESSION_DEVICE = Direct(select(_DEVICES, capabilities.VERSION.label("caps"))
                         .where(_DEVICES.c.dev_id == bindparam("dev_id")).with_for_update(of=_DEVICES))
_HEARD_OR_NOTIFIED = Direct(select(_SESSIONS).where(_SESSIONS.c.dev_id == bindparam("dev_id"), or_(
    _SESSIONS.c.token.is_not(None), and_(_SESSIONS.c.state == "notified", _SESSIONS.c.session_id == bindparam("sid")))
).order_by(_SESSIONS.c.id))
_JOBS = table_of(JobRow)
_PACKAGE = Direct(select(table_of(PackageRow)).where(PackageRow.id == bindparam("id")))
_CANCEL_PENDING = (update(_JOBS).where(_JOBS.c.dev_id == bindparam("device"), _JOBS.c.state == "pending")
                   .values(state="cancelled", message=bindparam("why")))
_CANCEL_PENDING_JOBS = Direct(_CANCEL_PENDING)
_JOB_VALUES = ("dev_id", "package_id", "goal_version", "correlator", "delivery", "state", "result_code", "message",
               "created", "updated")
_ADD_JOB_STATEMENT = insert(_JOBS).values({c: bindparam(c) for c in _JOB_VALUES}).returning(_JOBS.c.id)
_ADD_JOB = Direct(_ADD_JOB_STATEMENT)
# PostgreSQL's: a new job and its device's pending ones cancelled, one statement (the UPDATE a data-modifying WITH
# query; both see the statement's snapshot, in which the new job is not, so it is not cancelled).
_REPLACE_JOBS = Direct(_ADD_JOB_STATEMENT.add_cte(_CANCEL_PENDING.cte("cancelled")))
# A session's "commands" step asks for the device's oldest queued command and, should there be none, goes on to
# its oldest pending job: both in one statement (one row, the job's columns NULL when none is pending).
_OLDEST_QUEUED = (select(func.min(CommandRow.id)).where(CommandRow.dev_id == bindparam("dev_id"),
                                                        CommandRow.state == "queued").scalar_subquery())
_OLDEST_PENDING = (select(func.min(_JOBS.c.id)).where(_JOBS.c.dev_id == bindparam("dev_id"), _JOBS.c.state == "pending")
                   .scalar_subquery())
_ONE_ROW = select(literal(1).label("one")).subquery()
_NEXT_WORK = Direct(select(_OLDEST_QUEUED.label("command_id"), *prefixed(_JOBS, "j_"))
                    .select_from(_ONE_ROW.outerjoin(_JOBS, _JOBS.c.id == _OLDEST_PENDING)))
_PENDING_JOB = Direct(select(_JOBS).where(_JOBS.c.dev_id == bindparam("dev_id"), _JOBS.c.state == "pending")
                .order_by(_JOBS.c.id).limit(1))
_JOB_BY_ID = Direct(select(_JOBS).where(_JOBS.c.id == bindparam("key"), _JOBS.c.dev_id == bindparam("dev_id")))
# A FUMO result: the device's job (by id or correlator) that has none yet, finished; its package and goal.
_FINISH_JOB = (update(_JOBS).where(_JOBS.c.dev_id == bindparam("dev_id"), _JOBS.c.state != "succeeded",
                                   _JOBS.c.state != "failed")
               .values({c: bindparam(c) for c in ("state", "result_code", "message", "updated")})
               .returning(_JOBS.c.package_id, _JOBS.c.goal_version))
_FINISH_JOB_BY_ID = Direct(_FINISH_JOB.where(_JOBS.c.id == bindparam("key")))
_FINISH_JOB_BY_CORRELATOR = Direct(_FINISH_JOB.where(_JOBS.c.correlator == bindparam("key")))


@dataclass
class ServerConfig:
    data_dir: Path
    public_url: str  # where devices reach this server, e.g. http://127.0.0.1:8080
    db_url: str | None = None  # default: SQLite in data_dir
    server_id: str = SERVER_ID
    factory_secret: str | None = DEMO_SECRET  # enrol unknown devices with derived credentials; None: never
    max_msg_size: int = 64 * 1024
    max_obj_size: int = 16 * 1024 * 1024
    confirm_updates: bool = True  # ask the user (UI alert 1101) before each update
    admin_token: str | None = None  # for the operator API; None: loopback callers only
    # Where sessions start (a device's account names one); each continues at its RespURI, the path it
    # started at + "/" + a token.
    dm_paths: tuple[str, ...] = ("/dm",)
    max_auth_failures: int = 3  # failed authentications in a row, either way, before the session is cut off
    limits: Limits = field(default_factory=Limits)
    push_policy: PushPolicy = field(default_factory=PushPolicy)
    snmp_host: str = "127.0.0.1"
    snmp_port: int | None = None  # listen for SNMP software-request traps here (0: any free port)
    # Server processes sharing the limits of one address (`serve --workers N`): in-memory allowances
    # (the throttle of requests that do not authenticate) are divided among them, see docs/security.md.
    workers: int = 1

    def __post_init__(self) -> None:
        if not self.dm_paths or any(not _DM_PATH.fullmatch(p) for p in self.dm_paths):
            raise ValueError("DM paths are absolute URL paths without a trailing slash, e.g. /funambol/dm")
        if any(p.startswith(("/api/", "/packages/", "/portal/")) or p in ("/api", "/packages", "/portal")
               for p in self.dm_paths):
            raise ValueError("a DM path cannot lie under /api, /packages or /portal")
        if not 1 <= len(self.server_id.encode()) <= 255 or not self.server_id.isprintable():
            raise ValueError("the server id is 1 to 255 bytes of printable text (what package #0 carries)")
        if self.max_auth_failures < 1:
            raise ValueError("max_auth_failures must be at least 1")

    @property
    def database(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'fotadelta.db'}"


@dataclass(frozen=True)
class Inbound:
    """One HTTP request to the DM endpoint."""

    body: bytes
    content_type: str | None
    hmac: str | None = None  # the x-syncml-hmac header
    token: str | None = None  # the session's RespURI token; None: a message to the DM path, where sessions start
    peer: str = ""  # the caller's address, for the limit on requests that do not authenticate
    path: str | None = None  # the DM path posted to (or below, with a token); None: the first of dm_paths


@dataclass
class HttpReply:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Replies:
    """The client's answers to one package of ours, by our command objects (matched by identity: equal
    commands are distinct commands)."""

    statuses: list[tuple[Command, Status]] = field(default_factory=list)
    results: list[tuple[Command, list[Item]]] = field(default_factory=list)

    def status(self, cmd: Command) -> Status | None:
        return next((s for c, s in reversed(self.statuses) if c is cmd), None)

    def code(self, cmd: Command) -> int | None:
        s = self.status(cmd)
        return None if s is None else s.code

    def items(self, cmd: Command) -> list[Item]:  # (capabilities.Answers)
        return [i for c, items in self.results if c is cmd for i in items]


@dataclass
class Live:
    """A session's state between its messages, kept sealed in its row (SessionRow.live).

    `step` is where the server's side of the session stands (see _next_package); `asked` the commands
    of ours whose answers that step reads."""

    ep: Endpoint
    path: str  # the DM path the session started at
    server_scheme: str  # how we authenticate to the client: the account's first, or what it asks for
    server_accepted: bool = False  # the client answered 212 to our credentials
    failures: int = 0  # our refusals of the client's credentials, in a row (HMAC checks every message)
    server_failures: int = 0  # the client's refusals of our credentials, in a row
    closed: bool = False  # cut off after repeated authentication failures: further messages get HTTP 403
    step: str = "start"
    asked: list[Command] = field(default_factory=list)
    walk_uris: list[str] = field(default_factory=list)  # DevDetail node by node: the nodes asked for
    leaves: list[Item] = field(default_factory=list)  # ... and the leaves found so far
    command_id: int | None = None  # the DM command (dm_commands row) out in this session
    job_id: int | None = None  # the job being delivered
    delivery: Delivery | None = None  # ... and how
    cap: DeviceCapability = field(default_factory=DeviceCapability)  # the device's kind, as known this session
    fumo_uri: str = capabilities.DEFAULT_FUMO
    search: Search | None = None  # a FUMO search in progress
    replies: Replies = field(default_factory=Replies)
    last_sent: list[Command] = field(default_factory=list)
    last_sent_msg: int = 0
    ui: list[Command] = field(default_factory=list)  # prompts to show at the next opportunity
    messages: int = 0  # client messages received
    finished: bool = False  # the server's last message ended the session (the client may still go on)


@dataclass
class Search:
    """A search of the device's tree for FUMO (capabilities.find_fumo) in progress. find_fumo is a pure
    generator, so it is resumed by running it again on the answers of its earlier rounds (by position)."""

    structured: bool
    then: str  # what the search is for: "capability" (first contact) or "deliver" (FUMO was not there)
    rounds: list[list[tuple[Status | None, list[Item]]]] = field(default_factory=list)
    asked: bool = False  # a round is out


@dataclass
class Delivery:
    """A FUMO update going out: its commands (kept for the answers), and what was answered so far."""

    fumo_uri: str
    before: list[Command]  # an inline package's Replace, if any
    names: Replace
    execute: Exec
    confirm: Alert
    asks: bool  # the user is asked to confirm
    search: bool  # a 404 may search the device's tree (once)
    sequence: Sequence | None = None
    stage: str = ""  # the package out: sequence | confirm | exec
    answer: int | None = None  # the user's answer to the confirmation
    code: int | None = None  # the device's answer to the Exec
    # The job's package. None only in a session state sealed by a release that did not keep it (a session in
    # flight across a rolling upgrade of the workers): then the job's row says.
    package_id: int | None = None


@dataclass
class Turn:
    """One message's work: its transaction, the session's row and state, the device's row, and what
    to do once the transaction has committed (webhooks of finished commands)."""

    tx: Unit  # (its Core connection for the message's statements; its ORM session for what seldom changes)
    row: SessionRow
    live: Live
    dev: DeviceRow
    rows: Tracked  # the rows the message read as plain rows (device, session, jobs), written back at its end
    caps: int | None  # the capability records' change count, read with the device (capabilities.Cache)
    after: list[Callable[[], None]] = field(default_factory=list)
    # The oldest pending job the "commands" step found beside the queued commands (read when none was queued),
    # for the "jobs" step that follows it in the same message; None when that step must ask again.
    pending: JobRow | None = None
    pending_read: bool = False


class DmServer:
    """The DM server: sessions, package publishing, jobs and notifications.

    upkeep: run the start-up work that needs doing once per database, not once per server process
    (re-planning chains a crash interrupted); `serve --workers N` does it in the supervising process."""

    def __init__(self, config: ServerConfig, *, push: Callable[[DeviceRow, bytes], None] | None = None,
                 upkeep: bool = True) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        (config.data_dir / "packages").mkdir(exist_ok=True)
        self.store = Store(config.database)
        self.push = push
        self.keyring = Keyring(config.data_dir)
        self.states = Recent(self.keyring.state_key, RECENT_STATES)
        # Each process counts its own share of an address's allowance (docs/security.md).
        self.throttle = Throttle(math.ceil(config.limits.unauthenticated_per_minute / max(1, config.workers)))
        self.refusals = Refusals()
        # Sessions that never authenticated keep no state but this: their failures in a row, to cut them off
        # (in each process's memory: with N workers, at most N times the limit; docs/security.md).
        self.failures = Failures(config.max_auth_failures)
        self._descriptors: dict[int, descriptor.Descriptor] = {}
        self._packages: dict[int, PackageRow] = {}  # package rows never change once published: kept here
        self._packages_lock = threading.Lock()
        self._capabilities = capabilities.Cache()
        self._planning = planning.Planning()
        self._swept = 0.0
        # Called (after its transaction) with the id of a DM command that a session finished.
        self.on_command_finished: Callable[[int], None] | None = None
        self.replanned = self._replan() if upkeep else 0
        # SNMP requests awaiting the device's session (memory: serve refuses --snmp-port with --workers > 1).
        self._requests: dict[str, tuple[snmp.Request, float]] = {}
        self._lock = threading.Lock()
        self.traps: snmp.TrapListener | None = None
        if config.snmp_port is not None:
            self.traps = snmp.TrapListener(self._snmp_request, config.snmp_host, config.snmp_port,
                                           gate=self.throttle, on_refused=self._trap_refused,
                                           max_dev_id=config.limits.max_dev_id)
            with self.store.tx() as s:
                for row in s.scalars(select(DeviceRow).where(DeviceRow.snmp != "")):
                    creds = accounts.snmp_of(row)
                    if creds is not None:
                        self.traps.add_device(row.dev_id, creds)

    def close(self) -> None:
        """Stop what the server runs beside the HTTP application (the SNMP listener)."""
        if self.traps is not None:
            self.traps.stop()
            self.traps = None

    # -- fleet operations ------------------------------------------------------------------------

    def register(self, dev_id: str, *, password: str, server_password: str, user: str | None = None,
                 auth_type: str = "md5") -> None:
        """Provision a device's credentials, one scheme both ways (replacing earlier ones)."""
        with self.store.tx() as s:
            row = s.get(DeviceRow, dev_id) or DeviceRow(dev_id=dev_id)  # (a new row starts with the zero nonces)
            row.user, row.password, row.server_password = user or dev_id, password, server_password
            row.auth = row.server_auth = auth_type
            s.add(row)

    def put_account(self, account: accounts.Account) -> bool:
        """Create or replace a device account (the operator's `account add`); True if it is new."""
        with self.store.tx() as s:
            new = accounts.put(s, account)
        if self.traps is not None:  # (the credentials it had before stop working, whatever replaces them)
            if account.snmp is not None:
                self.traps.add_device(account.dev_id, account.snmp)
            else:
                self.traps.remove_device(account.dev_id)
        self.store.log(account.dev_id, "account", "account created" if new else "account replaced")
        return new

    def account(self, dev_id: str) -> accounts.AccountView | None:
        with self.store.tx() as s:
            row = s.get(DeviceRow, dev_id)
            return None if row is None else accounts.describe(row)

    def set_capability(self, make: str, model: str, fw_version: str, cap: DeviceCapability | None) -> None:
        """The operator's capability record for a make/model (at fw_version, or "" for all); None removes it."""
        with self.store.tx() as s:
            if cap is None:
                capabilities.forget(s, make, model, fw_version, "operator")
            else:
                capabilities.record(s, make, model, fw_version, "operator", cap)

    def capability(self, make: str, model: str, fw_version: str = "") -> DeviceCapability:
        with self.store.tx() as s:
            return capabilities.lookup(s, make, model, fw_version)

    def capabilities(self) -> list[dict[str, object]]:
        """Every stored capability record, discovered and operator's."""
        with self.store.tx() as s:
            return capabilities.listing(s)

    def publish(self, data: bytes) -> PackageRow:
        """Store a signed update package and make it available for jobs and downloads (outside the release
        lifecycle: released at once)."""
        with self.store.tx() as s:
            return self.store_package(s, data)[0]

    def store_package(self, s: Session, data: bytes) -> tuple[PackageRow, bool]:
        """Store a signed update package in s's transaction (the caller's: releases.py adds its release row in
        the same one, so no other transaction sees the package without it); its row, and whether it was
        stored before."""
        manifest = package.parse(data).manifest
        digest = hashlib.sha256(data).hexdigest()
        found = s.scalars(select(PackageRow).where(PackageRow.sha256 == digest)).first()
        if found is not None:
            return found, True
        path = self.config.data_dir / "packages" / f"{digest}.fdpkg"
        write_atomic(path, data)
        name = f"{manifest.make}-{manifest.model}-{manifest.from_version}-to-{manifest.to_version}"
        row = PackageRow(name=name, make=manifest.make, model=manifest.model,
                         from_version=manifest.from_version, to_version=manifest.to_version,
                         content_type=manifest.content_type.name.lower(), size=len(data), sha256=digest,
                         path=str(path), kind=_KINDS[manifest.patch_kind])
        s.add(row)
        s.flush()
        return row, False

    def package(self, s: Session | Connection, package_id: int) -> PackageRow | None:
        """A package's row (cached: a published package never changes), in no ORM session, read in s's
        transaction."""
        with self._packages_lock:
            found = self._packages.get(package_id)
        if found is None:
            row = _PACKAGE.first(s if isinstance(s, Connection) else s.connection(), {"id": package_id})
            if row is None:
                return None
            found = PackageRow(**row)
            with self._packages_lock:
                self._packages[package_id] = found
        return found


    def assign(self, dev_id: str, goal_version: str, *, delivery: str = "download", notify: bool = False) -> JobRow:
        """Bring a device to goal_version: a job for the first package of the cheapest chain; with notify, the
        device is asked to open a session too (the job and the notified session in one transaction, the push
        after it, as the operator API's update does)."""
        if notify and self.push is None:
            raise RuntimeError("no notification transport is configured")
        with self.device_tx(dev_id) as (s, dev, rows):
            job = self.plan_update(s, dev, goal_version, delivery, events=rows)
            pkg0 = self.notification_in(s, dev, rows) if notify else None
        if pkg0 is not None and self.push is not None:
            self.push(dev, pkg0)
        return job

    @contextmanager
    def device_tx(self, dev_id: str) -> Iterator[tuple[Session, DeviceRow, Tracked]]:
        """A transaction that changes what a device's sessions read (its jobs, its notified sessions), with the
        device's row locked as a DM message locks it, and the Tracked that writes the row and the events back
        at its end; LookupError for an unknown device."""
        with self.store.message() as s:
            found = _DEVICE.first(s.connection(), {"dev_id": dev_id})
            if found is None:
                raise LookupError(f"unknown device {dev_id}")
            rows = Tracked()
            yield s, rows.load(DeviceRow, found), rows
            rows.write(s.connection())

    def plan_update(self, s: Session, dev: DeviceRow, goal_version: str, delivery: str = "download", *,
                    events: Tracked) -> JobRow:
        """assign, inside the caller's transaction (device_tx's, or a DM message's); its event goes in events,
        written with the transaction's others."""
        if len(goal_version) > MAX_TEXT:
            raise ValueError(f"a version is at most {MAX_TEXT} characters")
        step = self._plan(s, dev, goal_version)
        conn, now = s.connection(), time.time()
        values = {"dev_id": dev.dev_id, "package_id": step.id, "goal_version": goal_version,
                  "correlator": secrets.token_hex(8), "delivery": delivery, "state": "pending", "result_code": None,
                  "message": "", "created": now, "updated": now}
        cancel = {"device": dev.dev_id, "why": f"superseded by a job to {goal_version}"}
        if conn.dialect.name == "postgresql":
            job_id = _REPLACE_JOBS.run(conn, {**values, **cancel})[0]["id"]
        else:
            _CANCEL_PENDING_JOBS.run(conn, cancel)
            job_id = _ADD_JOB.run(conn, values)[0]["id"]
        events.event(dev.dev_id, "job", f"update to {goal_version} planned, first step {step.name}")
        return JobRow(id=job_id, **values)

    def _replan(self) -> int:
        """At start-up: a device whose last job succeeded short of its chain's goal, with no job open, gets
        the next step planned (a crash between the result and the plan, before both were one transaction)."""
        planned, events = 0, Tracked()
        with self.store.tx() as s:
            for dev in s.scalars(select(DeviceRow)):
                last = s.scalars(select(JobRow).where(JobRow.dev_id == dev.dev_id).order_by(JobRow.id.desc())).first()
                if last is None or last.state != "succeeded" or last.goal_version == dev.version:
                    continue
                try:
                    self.plan_update(s, dev, last.goal_version, last.delivery, events=events)
                    planned += 1
                except ValueError as exc:
                    events.event(dev.dev_id, "job", f"chain to {last.goal_version} stopped: {exc}")
            events.write(s.connection())
        return planned

    def _index(self, s: Session, dev: DeviceRow, *, installable: bool = True) -> chain.Index:
        """The packages the device may have (the release lifecycle: `planning`) for its make and model, as
        a chain index (entry file: the package id).

        installable keeps only what the device can install: firmware of the kinds it reported (a
        single-slot device takes in-place patches and full images, not plain patches)."""
        if dev.status == "quarantined":
            return chain.Index((), {})
        found = self._planning.packages(s.connection(), dev.make, dev.model, dev.dev_id)
        kinds = dev.update_kinds.split()
        return chain.Index(tuple(p.entry for p in found if not (installable and kinds and p.content_type == "firmware"
                                                                and p.kind and p.kind not in kinds)), {})

    def _plan(self, s: Session, dev: DeviceRow, goal: str) -> PackageRow:
        if not goal or goal == dev.version:
            # (plan() would read an empty goal as "the latest" and answer [] for the running version.)
            raise ValueError(f"{dev.dev_id} runs {dev.version or 'an unknown version'}: nothing to do for {goal!r}")
        try:
            first = chain.plan(self._index(s, dev), dev.make, dev.model, dev.version, goal)[0]
        except ValueError:
            try:
                chain.plan(self._index(s, dev, installable=False), dev.make, dev.model, dev.version, goal)
            except ValueError:
                raise ValueError(f"no package takes {dev.make} {dev.model} from {dev.version} to {goal}") from None
            raise ValueError(f"{dev.dev_id} cannot install any way from {dev.version} to {goal}: it takes "
                             f"{' and '.join(_KIND_WORDS.get(k, k) for k in dev.update_kinds.split())} only, and "
                             f"the published path needs another kind (publish an in-place or full-image package)"
                             ) from None
        row = self.package(s, int(first.file))
        assert row is not None
        return row

    def offers(self, dev_id: str) -> list[tuple[str, int]]:
        """The versions a device can be brought to, with the bytes the cheapest way there costs."""
        with self.store.tx() as s:
            dev = s.get(DeviceRow, dev_id)
            return [] if dev is None else self._offers(s, dev)

    def _offers(self, s: Session, dev: DeviceRow) -> list[tuple[str, int]]:
        if not dev.version:
            return []
        index = self._index(s, dev)
        out = []
        for version in sorted({e.to_version for e in index.entries} - {dev.version}):
            try:
                out.append((version, sum(e.size for e in chain.plan(index, dev.make, dev.model, dev.version,
                                                                    version))))
            except ValueError:
                continue
        return out

    def notification(self, dev_id: str) -> bytes:
        """A package #0 for the device, with a new session id recorded as expected (operators only)."""
        with self.device_tx(dev_id) as (s, dev, rows):
            return self.notification_in(s, dev, rows)

    def notification_in(self, s: Session, dev: DeviceRow, rows: Tracked) -> bytes:
        """notification, inside the caller's transaction: the notified session is added to rows (written with
        the transaction's other rows). Its id is drawn at random, other than the device's last sessions'."""
        recent = [row["session_id"] for row in _RECENT_SESSION_IDS.run(s.connection(), {"dev_id": dev.dev_id})]
        sid = notification.fresh_session_id(secrets.randbelow(0xFFFF) + 1, recent)
        rows.add(SessionRow(dev_id=dev.dev_id, session_id=notification.session_id_text(sid), initiator="server",
                            state="notified", messages=0, note="", started=time.time(), ended=None, token=None,
                            live=None, touched=0.0))
        trigger = notification.Notification(sid, self.config.server_id, notification.UiMode.BACKGROUND)
        return notification.build(trigger, dev.server_password, base64.b64decode(dev.server_nonce))

    def portal_trigger(self, dev_id: str, version: str) -> bytes:
        """For the web portal (unauthenticated): a package #0 that asks the device's DM client to open a
        session and carries a one-time token for the selected version in its vendor data. Nothing is
        stored: the job is planned only when the device's own authenticated session redeems the token.
        LookupError for an unknown device, ValueError for a version it cannot be brought to."""
        with self.store.tx() as s:
            dev = s.get(DeviceRow, dev_id)
            if dev is None:
                raise LookupError(f"unknown device {dev_id}")
        if version not in {v for v, _ in self.offers(dev_id)}:
            raise ValueError(f"version {version!r} is not offered to {dev_id}")
        trigger = notification.Notification(secrets.randbelow(0xFFFF) + 1, self.config.server_id,
                                            notification.UiMode.USER_INTERACTION, initiator_server=False,
                                            vendor=self.keyring.portal_token(dev_id, version).encode())
        return notification.build(trigger, dev.server_password, base64.b64decode(dev.server_nonce))

    def notify(self, dev_id: str) -> None:
        """Ask a device to open a session, through the push transport."""
        if self.push is None:
            raise RuntimeError("no notification transport is configured")
        with self.device_tx(dev_id) as (s, dev, rows):
            pkg0 = self.notification_in(s, dev, rows)
        self.push(dev, pkg0)

    # -- device requests by SNMP trap -----------------------------------------------------------

    def _snmp_request(self, request: snmp.Request) -> None:
        """A trap whose credentials checked: keep the request (the latest wins) for the device's next
        authenticated DM session, and notify the device unless a notification is out already for a request
        it has not collected (repeated or replayed traps make no more notifications or sessions)."""
        now = time.time()
        with self._lock:
            pending = self._requests.get(request.dev_id)
            same = pending is not None and (pending[0].action, pending[0].software) == (request.action,
                                                                                         request.software)
            # (A notification older than a session's idle time went unanswered: another may be sent.)
            since = None if pending is None or now - pending[1] > SESSION_IDLE else pending[1]
            notify = since is None
            self._requests[request.dev_id] = (request, now if since is None else since)
        if same and not notify:
            return  # the same request again: one is enough, and one event
        what = "list" if request.action is snmp.Action.LIST else f"fetch {request.software}"
        self.store.log(request.dev_id, "request", f"SNMP {request.version} trap from {request.sender}: {what}")
        if notify:
            threading.Thread(target=self._notify_for_request, args=(request.dev_id,), daemon=True,
                             name=f"snmp-notify:{request.dev_id}").start()

    def _trap_refused(self, sender: str, reason: str) -> None:
        self.refusals.note("SNMP trap", sender, reason)

    def _notify_for_request(self, dev_id: str) -> None:
        try:
            self.notify(dev_id)
        except (LookupError, RuntimeError) as exc:  # (PushError is a RuntimeError)
            self.store.log(dev_id, "request", f"the device could not be notified: {exc}")
            with self._lock:
                self._requests.pop(dev_id, None)  # the next trap tries again

    def _take_request(self, dev_id: str) -> snmp.Request | None:
        with self._lock:
            pending = self._requests.pop(dev_id, None)
        return None if pending is None else pending[0]

    def package_path(self, package_id: int) -> Path | None:
        if not 0 < package_id < 1 << 63:  # (what SQL integers hold)
            return None
        with self._packages_lock:
            cached = self._packages.get(package_id)
        if cached is not None:
            return Path(cached.path)
        with self.store.tx() as s:
            row = self.package(s, package_id)
            return None if row is None else Path(row.path)

    # -- one HTTP request ------------------------------------------------------------------------

    def throttled(self, peer: str, token: str | None = None) -> HttpReply | None:
        """The 429 for a caller that used up this minute's requests that do not authenticate, else None.
        A live session's token vouches for its requests (another caller at the same address is no reason
        to cut an authenticated session short)."""
        if self.throttle.allowed(peer) or (token is not None and self._heard_at(token)):
            return None
        self.refusals.note("throttled", peer, f"over {self.throttle.per_minute} requests a minute (in this "
                           "server process) that did not authenticate")
        return HttpReply(429, "text/plain", b"too many requests that did not authenticate; try again later\n",
                         {"retry-after": str(self.throttle.retry_after(peer))})

    def _heard_at(self, token: str) -> bool:
        """Whether a session is heard at this RespURI token."""
        if len(token) > 32:
            return False
        with self.store.tx() as s:
            return s.scalars(select(SessionRow.id).where(SessionRow.token == token)).first() is not None

    def handle(self, request: Inbound) -> HttpReply:
        """Process one client message and produce the HTTP response."""
        peer = request.peer
        if (refused := self.throttled(peer, request.token)) is not None:
            return refused
        try:
            encoding = encoding_of(request.content_type)
        except CodecError as exc:
            return self._stranger(peer, HttpReply(415, "text/plain", f"{exc}\n".encode()))
        limits = self.config.limits
        try:
            msg = decode(request.body, encoding, max_size=self.config.max_msg_size, max_decoded=limits.max_decoded)
        except LimitError as exc:
            self.refusals.note("message size", peer, str(exc))
            return self._stranger(peer, HttpReply(413, "text/plain", f"message too large: {exc}\n".encode()))
        except CodecError as exc:
            return self._stranger(peer, HttpReply(400, "text/plain", f"malformed SyncML DM message: {exc}\n".encode()))
        if (over := self._over_limits(msg)) is not None:
            code, text = over
            self.refusals.note("message limits", peer, text)
            return self._stranger(peer, HttpReply(code, "text/plain", f"{text}\n".encode()))
        if time.monotonic() - self._swept > SWEEP_EVERY:
            self._swept = time.monotonic()
            self.sweep()
        path = request.path or self.config.dm_paths[0]
        for attempt in range(_RETRIES):
            after: list[Callable[[], None]] = []
            try:
                if request.token is None:
                    reply = self._start(msg, encoding, request, path, after)
                else:
                    reply = self._continue(msg, encoding, request, path, after)
            except (IntegrityError, OperationalError):
                # Another message's transaction got there first (the same device enrolled, a portal token
                # redeemed, a deadlock broken by PostgreSQL): nothing of this one was kept; run it again.
                if attempt == _RETRIES - 1:
                    raise
                continue
            for fn in after:
                fn()
            return reply
        raise AssertionError("unreachable")

    def _stranger(self, peer: str, reply: HttpReply) -> HttpReply:
        """A request that did not authenticate: counted against its caller's allowance."""
        self.throttle.failed(peer)
        return reply

    def _over_limits(self, msg: Message) -> tuple[int, str] | None:
        """The HTTP status and reason for a message over the configured limits, else None."""
        limits, hdr = self.config.limits, msg.header
        if not 1 <= len(hdr.source) <= limits.max_dev_id:
            return 414, f"the DevId (SyncHdr Source) must be 1 to {limits.max_dev_id} characters"
        if not 1 <= len(hdr.session_id) <= MAX_SESSION_ID:
            return 400, f"the SessionID must be 1 to {MAX_SESSION_ID} characters"
        commands = list(walk(msg.commands))
        items = [i for c in commands for i in items_of(c)]
        if len(commands) + len(items) > limits.max_items:
            return 413, f"more than {limits.max_items} commands and items in one message"
        uris = [hdr.target, *(u for i in items for u in (i.target, i.source, i.source_parent, i.target_parent) if u)]
        if any(len(u) > limits.max_uri for u in uris):
            return 414, f"a URI is longer than {limits.max_uri} characters"
        return None

    def _continue(self, msg: Message, encoding: Encoding, request: Inbound, path: str,
                  after: list[Callable[[], None]]) -> HttpReply:
        """A message at a session's RespURI: the session's row and state, its device's row locked."""
        hdr, token = msg.header, request.token or ""
        with self.store.unit() as tx:
            found = None
            if len(token) <= 32:
                found = _BY_TOKEN.first(tx.conn, {"token": token})
            live = None
            rows = Tracked()
            if found is not None:
                row = rows.load(SessionRow, unprefixed(found, _SESSIONS, "s_"))
                dev = rows.load(DeviceRow, unprefixed(found, _DEVICES, "d_"))
                live = self._load(row) if (row.dev_id, row.session_id) == (hdr.source, hdr.session_id) else None
            if live is None or live.path != path:
                # A session this server does not know (it ended long ago, or the token is made up): end it
                # cleanly, the client starts a new one.
                return self._stranger(request.peer, self._stateless(msg, encoding, path, 506, abort=True))
            if live.closed:
                # Cut off after repeated authentication failures: nothing more is read in this session.
                return HttpReply(403, "text/plain", b"this session was ended after repeated authentication "
                                 b"failures\n")
            t = Turn(tx, row, live, dev, rows, None if found is None else found["caps"], after)
            live.finished = False
            live.ep.note_header(hdr)
            reply = self._step(t, msg, request)
            self._save(t)
            return reply

    def _load(self, row: SessionRow) -> Live | None:
        """The state of a session that is still heard: open and not idle too long, or finished a moment ago."""
        now = time.time()
        if row.live is None or row.token is None:
            return None
        if row.state == "open" and now - row.touched > SESSION_IDLE:
            return None  # (the sweep fails it)
        heard = ("open", "completed", "failed")  # (failed: cut off, kept to answer 403 for FINISHED_IDLE)
        if row.state not in heard or (row.state != "open" and now - row.touched > FINISHED_IDLE):
            return None
        try:
            return self.states.unseal(row.token, row.live, Live)
        except StateError:
            return None

    def _save(self, t: Turn) -> None:
        assert t.row.token is not None  # (a session's token is set when it opens, and kept while it is heard)
        t.row.live = self.states.seal(t.row.token, t.live)
        t.row.touched = time.time()
        t.row.messages = t.live.messages
        t.rows.write(t.tx.conn)

    def _start(self, msg: Message, encoding: Encoding, request: Inbound, path: str,
               after: list[Callable[[], None]]) -> HttpReply:
        """A message to a DM path: it must open a session (package 1) and authenticate; only then is
        anything stored (the device, if enrolled now, and the session). A session whose credentials are
        refused max_auth_failures times in a row is cut off (its last answer aborts it with Alert 1223,
        further messages get HTTP 403); being unauthenticated, it is counted in memory and logged only."""
        hdr, peer = msg.header, request.peer
        if not any(isinstance(c, Alert) and c.data in (ALERT_CLIENT_INITIATED, ALERT_SERVER_INITIATED)
                   for c in msg.commands):
            # The middle of a session, sent where sessions start: sessions go on at their RespURI only.
            return self._stranger(peer, self._stateless(msg, encoding, path, 506, abort=True))
        attempt = (peer, hdr.source, hdr.session_id)
        if self.failures.cut_off(attempt):
            return self._stranger(peer, HttpReply(403, "text/plain", b"this session was ended after repeated "
                                                  b"authentication failures\n"))
        with self.store.unit() as tx:
            rows = Tracked()
            found = _SESSION_DEVICE.first(tx.conn, {"dev_id": hdr.source})
            stored = found is not None
            caps = None if found is None else found.pop("caps")
            dev = rows.load(DeviceRow, found) if found is not None else self._enrolment(
                hdr.source, _scheme(msg, request.hmac))
            if dev is None:
                self.refusals.note("unknown device", peer, hdr.source[:64])
                return self._stranger(peer, self._stateless(msg, encoding, path, 401, abort=True))
            code = self._credentials(dev, msg, request)
            if code is not None:
                failures = self.failures.failed(attempt)
                if failures >= self.config.max_auth_failures:
                    self.refusals.note("cut off", peer, f"{hdr.source[:64]}: session {hdr.session_id} ended after "
                                       f"its credentials were refused {failures} times in a row ({code})")
                    return self._stranger(peer, self._stateless(msg, encoding, path, code, abort=True))
                self.refusals.note("credentials", peer, f"{hdr.source[:64]}: {code}")
                chal = auth.challenge(dev.auth, self.keyring.challenge_nonce(dev.dev_id, dev.client_nonce))
                return self._stranger(peer, self._stateless(msg, encoding, path, code, chal=chal))
            self.failures.clear(attempt)
            if not stored:
                tx.orm.add(dev)
                rows.event(dev.dev_id, "enrol", "enrolled with factory credentials")
            notified = self._make_room(tx, rows, dev.dev_id, hdr.session_id, after)
            t = self._open(tx, rows, dev, notified, msg, encoding, path, caps, after)
            t.live.ep.note_header(hdr)
            reply = self._run(t, msg, self._accepted(t, hdr.msg_id))
            self._save(t)
            return reply

    def _enrolment(self, dev_id: str, scheme: str) -> DeviceRow | None:
        """For an unknown device, the row factory enrolment would give it, not stored; None when enrolment
        is off. A device is enrolled for the authentication scheme its first message uses (md5, basic or
        hmac), which then stays its scheme, both ways."""
        if not self.config.factory_secret:
            return None
        creds = derive(self.config.factory_secret, dev_id, self.config.server_id)
        # (The nonces start as the column defaults, four zero bytes.)
        return DeviceRow(dev_id=dev_id, user=creds.user, password=creds.password,
                         server_password=creds.server_password, auth=scheme, server_auth=scheme,
                         client_nonce=_ZERO_NONCE, server_nonce=_ZERO_NONCE)

    def _credentials(self, dev: DeviceRow, msg: Message, request: Inbound) -> int | None:
        """None when the message authenticates the device, else the status to answer (401 wrong, 407 none).

        The nonce may be the stored one or one of the keyring's challenge nonces (see keyring). An MD5
        digest is taken over the nonce's bytes, as the specification says, or over its base64 text, which
        some clients digest instead (it is as fresh)."""
        nonces = self.keyring.accepted_nonces(dev.dev_id, dev.client_nonce)
        if dev.auth == "hmac":
            if request.hmac is None:
                return 407
            try:
                h = auth.parse_hmac_header(request.hmac)
            except auth.AuthError:
                return 401
            ok = h.username == dev.user and any(auth.check_hmac(h, dev.password, n, request.body) for n in nonces)
            return None if ok else 401
        cred = msg.header.cred
        if cred is None:
            return 407
        if cred.type == "syncml:auth-basic" and dev.auth == "basic":
            ok = auth.check_basic(cred.data, dev.user, dev.password)
        elif cred.type == "syncml:auth-md5" and dev.auth == "md5":
            ok = msg.header.source_name in (None, dev.user) and any(
                auth.check_md5(cred.data, dev.user, dev.password, form)
                for n in nonces for form in (n, base64.b64encode(n)))
        else:
            ok = False
        return None if ok else 401

    def _accepted(self, t: Turn, msg_id: int) -> Status:
        """The SyncHdr status for a message that authenticated, with a fresh stored nonce: 212 (no more
        credentials this session, the nonce is for the next one), or 200 and the next message's nonce (HMAC)."""
        chal = auth.challenge(t.dev.auth, auth.new_nonce())
        t.dev.client_nonce = chal.meta.next_nonce or t.dev.client_nonce
        return Status(msg_id, 0, "SyncHdr", 200 if t.dev.auth == "hmac" else 212, chal=chal)

    def _make_room(self, tx: Unit, tracked: Tracked, dev_id: str, sid: str,
                   after: list[Callable[[], None]]) -> SessionRow | None:
        """A device opens a session: the sessions it left open are over (a DM client runs one session with
        a server at a time; the jobs sent in them go back), and finished ones it holds beyond the limit are
        no longer heard, oldest first. Returns the session row a notification made for sid, if any (one
        query for both; loaded into tracked)."""
        limit = self.config.limits.max_sessions_per_device
        rows = _HEARD_OR_NOTIFIED.run(tx.conn, {"dev_id": dev_id, "sid": sid})
        heard = [r for r in rows if r["token"] is not None]
        superseded = [r["id"] for r in heard if r["state"] == "open"]
        finished = [r for r in heard if r["state"] != "open"]
        for forgotten in finished[:max(0, len(finished) - limit + 1)]:  # (written with the message's other rows)
            session = tracked.load(SessionRow, forgotten)
            session.token, session.live = None, None
        if superseded:
            self._fail_sessions(tx, dev_id, superseded, "the device opened a new session", after)
        notified = next((r for r in rows if r["state"] == "notified" and r["token"] is None), None)
        return None if notified is None else tracked.load(SessionRow, notified)

    def _fail_sessions(self, tx: Unit, dev_id: str, ids: list[int], note: str,
                       after: list[Callable[[], None]]) -> None:
        """End a device's open sessions as failed: the jobs sent in them go back, a command sent in them fails."""
        now = time.time()
        tx.conn.execute(update(_SESSIONS).where(_SESSIONS.c.id.in_(ids), _SESSIONS.c.state == "open")
                        .values(state="failed", ended=now, note=note, token=None, live=None))
        self._release(tx, dev_id, note, after)

    def _release(self, tx: Unit, dev_id: str, note: str, after: list[Callable[[], None]]) -> None:
        """A session of the device ended before its work was done: jobs sent go back to pending, and a
        command sent fails with the session's reason."""
        tx.flush()  # (the statements below see what this message changed so far)
        conn, commands = tx.conn, table_of(CommandRow)
        conn.execute(update(_JOBS).where(_JOBS.c.dev_id == dev_id, _JOBS.c.state == "sent")
                     .values(state="pending", updated=time.time()))
        sent = list(conn.scalars(select(commands.c.id).where(commands.c.dev_id == dev_id, commands.c.state == "sent")))
        if sent:
            conn.execute(update(commands).where(commands.c.id.in_(sent)).values(
                state="failed", finished_at=time.time(),
                error=f"the session ended before the device answered: {note}"[:512]))
            after += [self._command_finished(i) for i in sent]

    def _command_finished(self, command_id: int) -> Callable[[], None]:
        def done() -> None:
            if self.on_command_finished is not None:
                self.on_command_finished(command_id)
        return done

    def _open(self, tx: Unit, rows: Tracked, dev: DeviceRow, row: SessionRow | None, msg: Message,
              encoding: Encoding, path: str, caps: int | None, after: list[Callable[[], None]]) -> Turn:
        """An authenticated session: open (or claim the notified) session row, heard at a new RespURI token
        below the DM path it started at. The session speaks the DM version of the device's first message."""
        token = secrets.token_urlsafe(18)
        url = f"{self.config.public_url}{path}"
        ep = Endpoint(session_id=msg.header.session_id, local=url, remote=dev.dev_id, encoding=encoding,
                      max_msg_size=self.config.max_msg_size, max_obj_size=self.config.max_obj_size,
                      local_name=self.config.server_id, protocol=msg.header.protocol)
        ep.resp_uri = f"{url}/{token}"
        if row is None:  # (written at the message's end, with what the message made of it)
            row = rows.add(SessionRow(dev_id=dev.dev_id, session_id=msg.header.session_id, initiator="client",
                                      messages=0, note="", started=time.time(), ended=None, live=None, touched=0.0))
        row.state, row.token = "open", token
        return Turn(tx, row, Live(ep, path, _schemes(dev)[0]), dev, rows, caps, after)

    def _stateless(self, msg: Message, encoding: Encoding, path: str, code: int, *, abort: bool = False,
                   chal: Chal | None = None) -> HttpReply:
        """An answer that keeps nothing: code for the SyncHdr (with chal, if given), code for each command
        (215, not executed, when the session is aborted with Alert 1223), in the message's DM version."""
        hdr = msg.header
        ep = Endpoint(session_id=hdr.session_id, local=f"{self.config.public_url}{path}", remote=hdr.source,
                      encoding=encoding, max_msg_size=self.config.max_msg_size, max_obj_size=self.config.max_obj_size,
                      local_name=self.config.server_id, protocol=hdr.protocol)
        statuses = [Status(hdr.msg_id, 0, "SyncHdr", code, chal=chal)]
        statuses += [status_for(c, hdr.msg_id, 215 if abort else code) for c in msg.commands
                     if not isinstance(c, Status)]
        if abort:
            ep.push(Alert(ALERT_SESSION_ABORT))
        return HttpReply(200, encoding.content_type, ep.compose(statuses)[1])

    def _step(self, t: Turn, msg: Message, request: Inbound) -> HttpReply:
        """A message at the session's RespURI. HMAC devices authenticate every message; the others did at
        the start, and the RespURI token binds the rest of the session to them."""
        dev, live, msg_id = t.dev, t.live, msg.header.msg_id
        if dev.auth != "hmac":
            return self._run(t, msg, Status(msg_id, 0, "SyncHdr", 200))
        code = self._credentials(dev, msg, request)
        if code is None:
            live.failures = 0  # the abort below counts failures in a row
            return self._run(t, msg, self._accepted(t, msg_id))
        live.failures += 1
        live.messages += 1
        chal = auth.challenge(dev.auth, self.keyring.challenge_nonce(dev.dev_id, dev.client_nonce))
        statuses = [Status(msg_id, 0, "SyncHdr", code, chal=chal)]
        statuses += [status_for(c, msg_id, code) for c in msg.commands if not isinstance(c, Status)]
        if live.failures >= self.config.max_auth_failures:
            return self._cut_off(t, statuses, "authentication failed: the device's credentials were refused "
                                 f"{live.failures} times in a row ({code})")
        return self._reply(t, statuses)

    def _run(self, t: Turn, msg: Message, hdr_status: Status) -> HttpReply:
        """An authenticated message: take what it says, answer with our package's next message."""
        live, msg_id = t.live, msg.header.msg_id
        ep = live.ep
        live.messages += 1
        statuses = [hdr_status]
        for cmd in msg.commands:
            if isinstance(cmd, Status):
                self._client_status(t, cmd)
                continue
            if isinstance(cmd, Alert) and cmd.data == ALERT_SESSION_ABORT:
                self._end(t, "aborted", "the client aborted the session")
                live.finished = True
                return HttpReply(200, ep.encoding.content_type, ep.compose([hdr_status])[1])
            whole, chunk_statuses = ep.take(cmd, msg_id)
            statuses += chunk_statuses
            if whole is not None and (answer := self._client_command(t, whole, msg_id)) is not None:
                statuses.append(answer)
        if live.server_failures >= self.config.max_auth_failures:
            # The device authenticated itself but will not accept us: a session of its, recorded as failed.
            return self._cut_off(t, statuses, "authentication failed: the device refused the server's "
                                 f"credentials {live.server_failures} times in a row")
        # Our package continues (Alert 1222 came, or the client just answered): send its next message.
        if not ep.queue and msg.final:
            replies, live.replies = live.replies, Replies()
            ep.push(*self._next_package(t, replies))
        if not msg.final and not ep.queue:
            ep.push(Alert(ALERT_NEXT_MESSAGE))
        return self._reply(t, statuses)

    def _cut_off(self, t: Turn, statuses: list[Status], reason: str) -> HttpReply:
        """End an authenticated session after repeated authentication failures: the statuses and Alert 1223
        now, HTTP 403 for anything more; recorded as failed with the reason (the jobs sent in it go back)."""
        live = t.live
        live.ep.queue.clear()
        live.step = "start"
        live.ep.push(Alert(ALERT_SESSION_ABORT))
        reply = self._reply(t, statuses)
        self._end(t, "failed", reason)
        live.closed = live.finished = True
        self._log(t, "auth", f"session {live.ep.session_id} cut off: {reason}")
        return reply

    def _reply(self, t: Turn, statuses: list[Status]) -> HttpReply:
        live, dev, scheme = t.live, t.dev, t.live.server_scheme
        ep = live.ep
        cred = None
        if not live.server_accepted and scheme != "hmac":
            cred = auth.credential(scheme, self.config.server_id, dev.server_password,
                                   base64.b64decode(dev.server_nonce))
        msg, body = ep.compose(statuses, cred=cred)
        live.last_sent = [c for c in msg.commands if not isinstance(c, Status)]
        live.last_sent_msg = msg.header.msg_id
        if msg.final and not live.last_sent and live.failures == 0:
            self._end(t, "completed", "")
            live.finished = True
            ep.sent.clear()  # nothing of ours awaits an answer; inline packages need not be stored
        headers = {}
        if scheme == "hmac":
            headers["x-syncml-hmac"] = auth.hmac_header(self.config.server_id, dev.server_password,
                                                        base64.b64decode(dev.server_nonce), body)
        return HttpReply(200, ep.encoding.content_type, body, headers)

    def _client_status(self, t: Turn, status: Status) -> None:
        live = t.live
        if status.cmd_ref == 0 and status.cmd == "SyncHdr":
            nonce = status.chal.meta.next_nonce if status.chal is not None else None
            if nonce is not None and _valid_nonce(nonce):
                t.dev.server_nonce = nonce
            if status.code in (200, 212):
                live.server_accepted, live.server_failures = True, 0
            elif status.code in (401, 407) and status.msg_ref == live.last_sent_msg:
                live.server_failures += 1
                # The client may ask for another scheme in its Chal: follow it if the account allows it.
                asked = status.chal.meta.type if status.chal is not None else None
                scheme = next((k for k, v in auth.CRED_TYPES.items() if v == asked), None)
                if scheme is not None and scheme in _schemes(t.dev):
                    live.server_scheme = scheme
                # The client did not accept our credentials and executed nothing: send it all again.
                live.ep.queue.extendleft(reversed(live.last_sent))
            return
        ours = live.ep.sent.get((status.msg_ref, status.cmd_ref))
        if ours is not None:
            live.replies.statuses.append((ours, status))
            live.ep.refused(ours, status.code)

    def _client_command(self, t: Turn, cmd: Command, msg_id: int) -> Status | None:
        if isinstance(cmd, Alert):
            if cmd.data in (ALERT_CLIENT_INITIATED, ALERT_SERVER_INITIATED, ALERT_NEXT_MESSAGE):
                return status_for(cmd, msg_id, 200)
            if cmd.data == ALERT_GENERIC:
                return self._generic_alert(t, cmd, msg_id)
            return status_for(cmd, msg_id, 406)
        if isinstance(cmd, Replace):
            return status_for(cmd, msg_id, self._devinfo(t, cmd.items))
        if isinstance(cmd, Results):
            ours = t.live.ep.sent.get((cmd.msg_ref or 0, cmd.cmd_ref))
            if ours is None:
                return status_for(cmd, msg_id, 400)  # Results for nothing we asked
            t.live.replies.results.append((ours, cmd.items))
            return None  # a Results that is fine gets no Status
        return status_for(cmd, msg_id, 405)  # a client may not send this command

    def _devinfo(self, t: Turn, items: list[Item]) -> int:
        """Take the DevInfo the device reports; the status for its Replace (413: a value is longer than
        the store keeps, and nothing is taken). A push address outside the push policy is not taken."""
        dev = t.dev
        values: dict[str, object] = {"last_seen": time.time()}
        for item in items:
            attr = _DEVINFO.get(item.source or "")
            if attr is None or item.data is None:
                continue
            text = item.text
            if len(text) > _DEVINFO_LENGTH[attr]:
                return 413
            if attr == "push_url" and (why := self.config.push_policy.refusal(text, resolve=False)) is not None:
                self.refusals.note("push address", dev.dev_id, why)
                continue
            values[attr] = text
        if dev.status == "assigned":
            values["status"] = "provisioned"  # the registry's lifecycle: its first authenticated session
        for attr, value in values.items():
            setattr(dev, attr, value)
        return 200

    def _log(self, t: Turn, kind: str, text: str) -> None:
        t.rows.event(t.dev.dev_id, kind, text)  # (written with the message's rows, its events in one statement)

    def _generic_alert(self, t: Turn, alert: Alert, msg_id: int) -> Status:
        dev = t.dev
        item = alert.items[0] if alert.items else Item()
        kind = item.meta.type if item.meta and item.meta.type else ""
        data = item.text
        if kind == SOFTWARE_LIST:
            offers = [Item(source=f"to:{v}", data=f"{dev.make} {dev.model} {v} ({size} bytes)")
                      for v, size in self._offers(t.tx.orm, dev)]
            self._log(t, "request", f"asked for software: {len(offers)} offers")
            return status_for(alert, msg_id, 200, items=offers)
        if kind == SOFTWARE_SELECT:
            if not data.startswith("to:"):
                return status_for(alert, msg_id, 400)
            return status_for(alert, msg_id, self._select(t, data[3:]))
        if kind == PORTAL_SELECTION:
            version = self.keyring.redeem(t.tx.orm, dev.dev_id, data)
            if version is None:
                self._log(t, "request", "a portal selection that is not this device's, expired or used already")
                return status_for(alert, msg_id, 403)
            t.row.initiator = "web"
            return status_for(alert, msg_id, self._select(t, version))
        fmt = item.meta.format if item.meta else None
        # (Each field cut short, so that all of them fit the event, whatever the device sent.)
        self._log(t, "alert", f"Generic Alert type={kind[:128]!r} format={fmt and fmt[:32]!r} "
                              f"source={item.source and item.source[:256]!r} "
                              f"correlator={alert.correlator and alert.correlator[:64]!r} data={data[:256]!r}")
        if kind.startswith(FUMO_TYPE):
            # ASCII digits, a few: str.isdigit takes "²" (which int() refuses) and strings of any length.
            if not _RESULT_CODE.fullmatch(data):
                return status_for(alert, msg_id, 415)
            self._fumo_result(t, alert.correlator, int(data))
        # Any other type is taken and recorded: the specification expects the server to accept it.
        return status_for(alert, msg_id, 200)

    def _select(self, t: Turn, version: str) -> int:
        """The device chose a version (software list or portal): plan the job; the status for its alert."""
        try:
            self.plan_update(t.tx.orm, t.dev, version, events=t.rows)
        except ValueError as exc:
            self._log(t, "request", f"selection refused: {exc}")
            return 404
        return 200

    def _fumo_result(self, t: Turn, correlator: str | None, code: int, *, job_id: int | None = None) -> None:
        """Record a FUMO result for the job with this correlator (or id: DM 1.1.2 has no correlators) and, on
        success short of the chain's goal, plan the next step (in the message's transaction, so a crash
        cannot leave the result without the plan, or the plan without the result)."""
        dev, state = t.dev, "succeeded" if 200 <= code < 300 else "failed"
        # The job must be this device's: a correlator alone would let one device report for another.
        job = (_FINISH_JOB_BY_ID if job_id is not None else _FINISH_JOB_BY_CORRELATOR).first(t.tx.conn, {
            "dev_id": dev.dev_id, "key": job_id if job_id is not None else correlator or "", "state": state,
            "result_code": code, "message": f"FUMO {code}: {fumo.describe(code)}", "updated": time.time()})
        if job is None:
            # Unknown, or reported again (a client repeats its first package after a challenge).
            self._log(t, "result", f"FUMO result {code} for correlator {(correlator or '')[:64]}: no open job")
            return
        pkg = self.package(t.tx.conn, job["package_id"])
        assert pkg is not None
        self._log(t, "result", f"{pkg.name}: FUMO result {code}")
        if state != "succeeded":
            return
        dev.version = pkg.to_version
        if job["goal_version"] != pkg.to_version:
            try:
                # (the next step, delivered in this session)
                self.plan_update(t.tx.orm, dev, job["goal_version"], events=t.rows)
            except ValueError as exc:
                self._log(t, "job", f"chain to {job['goal_version']} stopped: {exc}")
        t.live.ui.append(Alert(UI_DISPLAY, [Item(data="MINDT=5"), Item(data=self._prompt(dev, pkg, "post-update"))]))

    # -- what the server does in a session -------------------------------------------------------

    def _next_package(self, t: Turn, replies: Replies) -> list[Command]:
        """The client's package is complete (replies: its answers to our last one): our next package.

        The steps, in order: prompts due (after a FUMO result), DevDetail when the device's version is
        unknown (listed, or node by node), the capability of its kind (on first contact with the kind, a
        search of its tree for FUMO), a DM 1.1.2 device's FUMO State after an update, an SNMP request of
        the device's, its queued DM commands (each behind an identity probe), then its update jobs until
        one is taken; an empty package ends the session, and a new package from the client starts again
        from the top."""
        live, dev = t.live, t.dev
        while True:
            step = live.step
            if step == "start":
                live.step = "devdetail"
                if live.ui:
                    ui, live.ui = live.ui, []
                    return ui
            elif step == "devdetail":
                if dev.version:
                    live.step = "capability"
                    continue
                live.asked, live.step = [Get([Item(target="./DevDetail?list=StructData")])], "devdetail-answer"
                return live.asked
            elif step == "devdetail-answer":
                code = replies.code(live.asked[0])
                live.step = "capability"
                if code == 200:
                    self._take_devdetail(t, replies.items(live.asked[0]))
                elif code == 406:  # the client cannot list: ask node by node
                    live.walk_uris, live.leaves, live.step = ["./DevDetail"], [], "walk"
            elif step == "walk":
                if not live.walk_uris:
                    self._take_devdetail(t, live.leaves)
                    live.step = "capability"
                    continue
                live.asked, live.step = [Get([Item(target=uri)]) for uri in live.walk_uris], "walk-answer"
                return live.asked
            elif step == "walk-answer":
                children = []
                for uri, get in zip(live.walk_uris, live.asked):
                    for item in replies.items(get):
                        if item.meta is not None and item.meta.format == "node":
                            children += [f"{uri}/{name}" for name in item.text.split("/") if name]
                        else:
                            live.leaves.append(item)
                live.walk_uris, live.step = children, "walk"
            elif step == "capability":
                live.cap = self._capability(t)
                live.step = "fumo-state"
                if live.cap.fumo_uri is None:
                    live.search = Search(bool(live.cap.structured_get), "capability")
                    live.step = "search"
                    replies = Replies()
                    continue
                live.fumo_uri = live.cap.node_uri("fumo") or capabilities.DEFAULT_FUMO
            elif step == "search":
                assert live.search is not None
                asked, found = self._search(live, replies)
                if asked is not None:
                    return asked
                then, live.search = live.search.then, None
                if then == "capability":
                    self._found_fumo(t, found)
                    live.step = "fumo-state"
                elif package := self._redeliver(t, found):
                    return package
            elif step == "fumo-state":
                live.step = "request"
                if live.ep.protocol is DM_1_1:
                    job_id = t.tx.conn.scalars(select(_JOBS.c.id).where(
                        _JOBS.c.dev_id == dev.dev_id, _JOBS.c.state == "accepted").order_by(_JOBS.c.id)).first()
                    if job_id is not None:
                        live.job_id = job_id
                        live.asked, live.step = [Get([Item(target=f"{live.fumo_uri}/State")])], "fumo-state-answer"
                        return live.asked
            elif step == "fumo-state-answer":
                state = next((i.text.strip() for i in replies.items(live.asked[0])), "")
                code = _STATE_RESULT.get(state)
                self._log(t, "result", f"FUMO State {state[:16] or '(none)'} read back (DM 1.1.2)")
                if code is not None and live.job_id is not None:
                    self._fumo_result(t, None, code, job_id=live.job_id)
                live.job_id, live.step = None, "request"
            elif step == "request":
                live.step = "commands"
                request = self._take_request(dev.dev_id)
                if request is not None and (package := self._answer_request(t, request)):
                    return package
            elif step == "offers-answer":
                live.step = "commands"
                if replies.code(live.asked[0]) != 200:
                    offers = str(live.asked[0].items[0].data or "") if isinstance(live.asked[0], Replace) else ""
                    listed = ", ".join(line.replace("\t", " (") + " bytes)" for line in offers.splitlines()) or "none"
                    return [Alert(UI_DISPLAY, [Item(data="MINDT=10"), Item(data=f"Available software: {listed}")])]
            elif step == "commands":
                probe = self._probe(t)
                if probe is None:
                    live.step = "jobs"
                    continue
                live.asked, live.step = [probe], "probe-answer"
                return live.asked
            elif step == "probe-answer":
                commands = self._after_probe(t, replies.items(live.asked[0]))
                live.step = "commands"
                if commands:
                    live.asked, live.step = commands, "command-answer"
                    return commands
            elif step == "command-answer":
                self._command_answered(t, replies)
                live.step = "commands"
            elif step == "jobs":
                delivery = self._deliver(t)
                if delivery is None:
                    live.step = "start"
                    return []
                live.step = "deliver"
                return delivery
            elif step == "deliver":
                if package := self._delivering(t, replies):
                    return package
                replies = Replies()  # (the step is now a search, or deliver-done)
            elif step == "deliver-done":
                taken = self._delivered(t)
                live.step = "start" if taken else "jobs"
                if taken:
                    return []  # the device downloads, installs, reboots and reports in a new session
            else:
                raise AssertionError(f"unknown session step {step!r}")

    def _search(self, live: Live, replies: Replies) -> tuple[list[Command] | None, Found | None]:
        """The next package of the FUMO search (None when it is over) and, once over, what it found. The
        search runs again from its start on its earlier rounds' answers, then on replies (to live.asked)."""
        search = live.search
        assert search is not None
        if search.asked:
            search.rounds.append([(replies.status(c), replies.items(c)) for c in live.asked])
        gen = capabilities.find_fumo(search.structured)
        try:
            asked = next(gen)
            for answers in search.rounds:
                again = Replies([(c, st) for c, (st, _) in zip(asked, answers) if st is not None],
                                [(c, items) for c, (_, items) in zip(asked, answers)])
                asked = gen.send(again)
        except StopIteration as stop:
            return None, stop.value
        live.asked, search.asked = asked, True
        return asked, None

    def _found_fumo(self, t: Turn, found: Found | None) -> None:
        """The search on first contact with a kind of device is over: record what it found."""
        live, dev = t.live, t.dev
        fumo_uri = found.fumo_uri if found is not None else None
        structured = found.structured_get if found is not None else False
        capabilities.record(t.tx.orm, dev.make, dev.model, "", "discovered",
                            DeviceCapability(fumo_uri=fumo_uri or "", structured_get=structured))
        live.cap = capabilities.lookup(t.tx.orm, dev.make, dev.model, dev.version)
        live.fumo_uri = live.cap.node_uri("fumo") or capabilities.DEFAULT_FUMO
        self._log(t, "discovery", f"{dev.make} {dev.model}: FUMO at {fumo_uri or 'no node found'}, "
                                  f"structured Get {'yes' if structured else 'no'}")

    def _capability(self, t: Turn) -> DeviceCapability:
        """The capability in force for the device, after recording what this session shows of its kind."""
        ep, dev = t.live.ep, t.dev
        # (Sizes a device declares outside what a capability may hold are not kept: they describe nothing usable.)
        seen = DeviceCapability(encodings=(ep.encoding.name.lower(),), auth_schemes=(dev.auth,),
                                protocol=ep.protocol.dtd, max_msg_size=_size(ep.peer_declared_max_msg),
                                max_obj_size=_size(ep.peer_max_obj))
        rows = self._capabilities.records(t.tx.conn, dev.make, dev.model, t.caps)
        cap, known = capabilities.in_force(rows, dev.version), capabilities.stored_in(rows, "", "discovered")
        now = replace(seen, encodings=capabilities.union(known.encodings, seen.encodings or ()),
                      auth_schemes=capabilities.union(known.auth_schemes, seen.auth_schemes or ()))
        if now.over(known) != known:  # (written only when the kind of device showed something new)
            capabilities.record(t.tx.orm, dev.make, dev.model, "", "discovered", now)
        return cap

    def _learn(self, t: Turn, cap: DeviceCapability, why: str) -> None:
        """Record what a device showed it cannot do (its answers to our commands)."""
        capabilities.record(t.tx.orm, t.dev.make, t.dev.model, "", "discovered", cap)
        self._log(t, "discovery", f"{t.dev.make} {t.dev.model}: {why}")

    def _answer_request(self, t: Turn, request: snmp.Request) -> list[Command]:
        """In the device's authenticated session: the list goes to its FUMO Ext/Offers node (shown to the user
        if it has none); a fetch becomes a job, delivered through FUMO in this session."""
        dev = t.dev
        if request.action is snmp.Action.FETCH:
            try:
                self.plan_update(t.tx.orm, dev, request.software, events=t.rows)
            except (LookupError, ValueError) as exc:
                self._log(t, "request", f"fetch of {request.software!r} refused: {exc}")
                return [Alert(UI_DISPLAY, [Item(data="MINDT=5"), Item(data=f"{request.software} is not available")])]
            return []
        offers = "\n".join(f"{v}\t{size}" for v, size in self._offers(t.tx.orm, dev))
        replace_ = Replace([Item(target=f"{t.live.fumo_uri}/Ext/Offers", data=offers, meta=Meta(format="chr"))])
        self._log(t, "request", f"software list delivered: {len(offers.splitlines())} offers")
        t.live.asked, t.live.step = [replace_], "offers-answer"
        return [replace_]

    def _take_devdetail(self, t: Turn, leaves: list[Item]) -> None:
        dev = t.dev
        values = {i.source: i.text for i in leaves if i.source}
        version = values.get("./DevDetail/FwV", dev.version)
        dev.version = version if len(version) <= MAX_TEXT else dev.version
        dev.large_objects = values.get("./DevDetail/LrgObj", "false").lower() == "true"
        dev.update_kinds = " ".join(k for k in values.get(UPDATE_KINDS_NODE, "").split() if k in _KIND_WORDS)[:64]

    def _probe(self, t: Turn) -> Command | None:
        """The identity probe for the device's oldest queued DM command (which it now stands for), if any."""
        found = _NEXT_WORK.first(t.tx.conn, {"dev_id": t.dev.dev_id})
        assert found is not None  # (one row always)
        t.live.command_id = command_id = found["command_id"]
        if command_id is not None:
            return Get([Item(target=command_spec.DEVID_URI)])
        t.pending_read = True
        t.pending = None if found["j_id"] is None else t.rows.load(JobRow, unprefixed(found, _JOBS, "j_"))
        return None

    def _after_probe(self, t: Turn, items: list[Item]) -> list[Command]:
        """The probe's answer: the command, now sent, if the device is the one it is for and it is still
        queued (not cancelled meanwhile); else nothing (a command answered by another device is refused)."""
        dev_id = t.dev.dev_id
        row = None if t.live.command_id is None else t.tx.orm.get(CommandRow, t.live.command_id)
        if row is None or row.state != "queued":
            t.live.command_id = None
            return []
        found = [i.text for i in items if i.source == command_spec.DEVID_URI]
        if found != [dev_id]:
            who = repr(found[0][:64]) if found else "a device that did not give its DevId"
            row.state, row.finished_at = "refused", time.time()
            row.error = f"expected device {dev_id}, answered by {who}: refused"
            self._log(t, "refused", f"command {row.id}: {row.error}")
            t.after.append(self._command_finished(row.id))
            t.live.command_id = None
            return []
        row.state, row.sent_at = "sent", time.time()
        return command_spec.build(list(row.spec))

    def _command_answered(self, t: Turn, replies: Replies) -> None:
        row = None if t.live.command_id is None else t.tx.orm.get(CommandRow, t.live.command_id)
        t.live.command_id = None
        if row is None or row.state != "sent":
            return
        cmds = t.live.asked
        statuses = [replies.status(c) for c in walk(cmds)]
        results = [replies.items(c) for c in walk(cmds) if isinstance(c, Get)]
        row.state, row.statuses, row.results, row.error = command_spec.outcome(cmds, statuses, results)
        row.finished_at = time.time()
        t.after.append(self._command_finished(row.id))

    def _job(self, t: Turn, statement: Direct, key: int | str | None = None) -> JobRow | None:
        """The device's job that statement selects (by key, if given), tracked with the message's other rows."""
        params: dict[str, object] = {"dev_id": t.dev.dev_id} if key is None else {"dev_id": t.dev.dev_id, "key": key}
        found = statement.first(t.tx.conn, params)
        return None if found is None else t.rows.load(JobRow, found)

    def _deliver(self, t: Turn) -> list[Command] | None:
        """The first package of an update for the device's oldest pending job, now sent; None when no job is
        pending."""
        live = t.live
        if t.pending_read:  # (just read with the queued commands, and nothing changed since)
            job, t.pending, t.pending_read = t.pending, None, False
        else:
            job = self._job(t, _PENDING_JOB)
        if job is None:
            return None
        job.state, job.updated = "sent", time.time()
        live.job_id = job.id
        live.delivery = self._delivery(t, job, live.fumo_uri, search=True)
        return self._first(t)

    def _delivery(self, t: Turn, job: JobRow, fumo_uri: str, *, search: bool) -> Delivery:
        """One FUMO update at the device's FUMO node: confirm with the user, set the package, Exec. Inline only
        to a device that takes large objects of this size (its MaxObjSize holds for the session); any other
        gets the package by download."""
        dev, live = t.dev, t.live
        pkg = self.package(t.tx.conn, job.package_id)
        assert pkg is not None
        names = [Item(target=f"{fumo_uri}/PkgName", data=pkg.name),
                 Item(target=f"{fumo_uri}/PkgVersion", data=pkg.to_version)]
        before: list[Command] = []
        fits = live.ep.peer_max_obj is None or pkg.size <= live.ep.peer_max_obj
        if job.delivery == "inline" and dev.large_objects and fits:
            before.append(Replace([Item(target=f"{fumo_uri}/Update/PkgData", data=Path(pkg.path).read_bytes(),
                                        meta=Meta(format="bin", type=descriptor.PACKAGE_MIME_TYPE))]))
            node = f"{fumo_uri}/Update"
        else:
            names.append(Item(target=f"{fumo_uri}/DownloadAndUpdate/PkgURL",
                              data=f"{self.config.public_url}/packages/{pkg.id}"))
            node = f"{fumo_uri}/DownloadAndUpdate"
        # (DM 1.1.2 has no Correlator: its result is read back from the State node.)
        execute = Exec(Item(target=node), correlator=None if live.ep.protocol is DM_1_1 else job.correlator)
        confirm = Alert(UI_CONFIRM, [Item(data="MINDT=30"), Item(data=self._prompt(dev, pkg, "pre-update"))])
        asks = self.config.confirm_updates and UI_CONFIRM in (live.cap.ui_alerts or ())
        return Delivery(fumo_uri, before, Replace(names), execute, confirm, asks, search, package_id=pkg.id)

    def _first(self, t: Turn) -> list[Command]:
        """A delivery's first package: in a Sequence where the device takes one, else the confirmation first on
        its own (then the update only after the user's yes)."""
        d = t.live.delivery
        assert d is not None
        if t.live.cap.sequence:
            d.sequence = Sequence([d.confirm, d.names, d.execute] if d.asks else [d.names, d.execute])
            d.stage = "sequence"
            return [*d.before, d.sequence]
        return self._without_sequence(d)

    def _without_sequence(self, d: Delivery) -> list[Command]:
        if d.asks:
            d.stage = "confirm"
            return [d.confirm]
        d.stage = "exec"
        return [*d.before, d.names, d.execute]

    def _delivering(self, t: Turn, replies: Replies) -> list[Command]:
        """The device answered a package of a delivery: the next one, or nothing when the delivery is over
        (the step is then deliver-done, or a search for FUMO where the device did not have it)."""
        live = t.live
        d = live.delivery
        assert d is not None
        if d.stage == "sequence":
            assert d.sequence is not None
            d.code, d.answer = replies.code(d.execute), replies.code(d.confirm)
            refused = replies.code(d.sequence)
            if refused in _NOT_SUPPORTED:
                self._learn(t, DeviceCapability(sequence=False), f"refuses Sequence ({refused})")
                live.cap = replace(live.cap, sequence=False)
                d.before = [c for c in d.before if replies.code(c) != 200]  # (an inline package already in place)
                d.code = d.answer = None
                return self._without_sequence(d)
        elif d.stage == "confirm":
            d.answer = replies.code(d.confirm)
            if d.answer in _NOT_SUPPORTED:
                shown = tuple(a for a in live.cap.ui_alerts or () if a != UI_CONFIRM)
                self._learn(t, DeviceCapability(ui_alerts=shown), f"cannot show confirmation alerts ({d.answer})")
            if d.answer in (None, 200) or d.answer in _NOT_SUPPORTED:
                d.stage = "exec"
                return [*d.before, d.names, d.execute]
        else:
            d.code = replies.code(d.execute)
        if d.code == 404 and d.search:
            live.search, live.step = Search(bool(live.cap.structured_get), "deliver"), "search"
        else:
            live.step = "deliver-done"
        return []

    def _redeliver(self, t: Turn, found: Found | None) -> list[Command]:
        """The search after a 404 is over: deliver again where FUMO was found, remembered for this firmware
        version; or, where it was not, the delivery is over."""
        live, dev, d = t.live, t.dev, t.live.delivery
        assert d is not None
        job = None if live.job_id is None else self._job(t, _JOB_BY_ID, live.job_id)
        if job is None or found is None or not found.fumo_uri or found.fumo_uri == d.fumo_uri:
            live.step = "deliver-done"
            return []
        capabilities.record(t.tx.orm, dev.make, dev.model, dev.version, "discovered",
                            DeviceCapability(fumo_uri=found.fumo_uri))
        self._log(t, "discovery", f"{dev.make} {dev.model} {dev.version}: no FUMO at {d.fumo_uri}; "
                                  f"found at {found.fumo_uri}")
        live.delivery = self._delivery(t, job, found.fumo_uri, search=False)
        live.step = "deliver"
        return self._first(t)

    def _delivered(self, t: Turn) -> bool:
        """Record the device's answer to an update; True if it took it. (The job's row is written unread, with
        the message's other rows: the delivery knows the job's package.)"""
        d, live = t.live.delivery, t.live
        job_id, live.job_id, live.delivery = live.job_id, None, None
        if job_id is None or d is None:
            return False
        package_id = d.package_id
        if package_id is None:
            row = _JOB_BY_ID.first(t.tx.conn, {"dev_id": t.dev.dev_id, "key": job_id})
            package_id = None if row is None else row["package_id"]
        pkg = None if package_id is None else self.package(t.tx.conn, package_id)
        if pkg is None:
            return False  # (the job, or its package, is gone with the device's or the release's removal)
        code = d.code
        job: dict[str, object] = {"updated": time.time()}
        if code in (200, 202):
            job["state"] = "accepted"
            text = f"{pkg.name}: the device accepted the update ({code})"
        elif d.answer in (304, 214):
            text = f"{pkg.name}: the user declined the update"
            job.update(state="declined", result_code=401, message=text)
        else:
            # (A DM status, not a FUMO result: the device never started the update.)
            job.update(state="failed", message=f"the device refused the update command (DM status {code})")
            text = f"{pkg.name}: {job['message']}"
        t.rows.update(JobRow, job_id, job)
        self._log(t, "delivery", text)
        return code in (200, 202)

    def _prompt(self, dev: DeviceRow, pkg: PackageRow, phase: str) -> str:
        dd = self._descriptors.get(pkg.id)
        if dd is None:
            try:
                manifest = package.parse(Path(pkg.path).read_bytes()).manifest
            except (OSError, PackageError):
                return f"Update to {pkg.to_version}"
            dd = descriptor.parse(descriptor.make(manifest, pkg.size, f"{self.config.public_url}/packages/{pkg.id}"))
            self._descriptors[pkg.id] = dd
        return dd.prompt(phase, msisdn=dev.msisdn or None, devinfo_lang=dev.lang or None)

    # -- bookkeeping -----------------------------------------------------------------------------

    def _end(self, t: Turn, state: str, note: str) -> None:
        row = t.row
        row.state, row.ended, row.note = state, time.time(), note
        if state != "completed":
            t.live.command_id = t.live.job_id = None
            t.rows.write(t.tx.conn)  # (what _release changes sees what this message changed so far)
            t.live.delivery = t.live.search = None
            self._release(t.tx, t.dev.dev_id, note, t.after)

    def sweep(self) -> int:
        """Fail the sessions gone silent for SESSION_IDLE (the jobs sent in them go back), and forget the
        tokens and state of sessions ended more than FINISHED_IDLE ago; the number failed. Any server
        process may run it at any time (each does, every SWEEP_EVERY seconds, as messages come)."""
        now = time.time()
        with self.store.tx() as s:
            idle = s.execute(select(SessionRow.id, SessionRow.dev_id).where(
                SessionRow.state == "open", SessionRow.token.is_not(None), SessionRow.touched < now - SESSION_IDLE)
                .limit(100)).all()
        after: list[Callable[[], None]] = []
        for sid, dev_id in idle:
            with self.store.unit() as tx:
                tx.conn.execute(select(_DEVICES.c.dev_id).where(_DEVICES.c.dev_id == dev_id).with_for_update())
                still = tx.conn.execute(select(_SESSIONS.c.id).where(_SESSIONS.c.id == sid, _SESSIONS.c.state == "open",
                                                                     _SESSIONS.c.touched < now - SESSION_IDLE)).first()
                if still is not None:
                    self._fail_sessions(tx, dev_id, [sid], "the device went silent", after)
        with self.store.unit() as tx:
            tx.conn.execute(update(_SESSIONS).where(
                _SESSIONS.c.state != "open", _SESSIONS.c.token.is_not(None), _SESSIONS.c.touched < now - FINISHED_IDLE
            ).values(token=None, live=None))
        for fn in after:
            fn()
        return len(idle)


def _scheme(msg: Message, hmac_header: str | None) -> str:
    """The authentication scheme a client's message uses: hmac, basic or (by default) md5."""
    if hmac_header is not None:
        return "hmac"
    cred = msg.header.cred
    return "basic" if cred is not None and cred.type == "syncml:auth-basic" else "md5"


def _valid_nonce(text: str) -> bool:
    """Base64 of at most MAX_NONCE bytes, empty included (a nonce may be empty): what the store keeps."""
    if len(text) > 4 * ((accounts.MAX_NONCE + 2) // 3):
        return False
    try:
        base64.b64decode(text, validate=True)
        return True
    except ValueError:
        return False


def _size(n: int | None) -> int | None:
    return n if n is not None and capabilities.MIN_SIZE <= n <= capabilities.MAX_SIZE else None


def _schemes(dev: DeviceRow) -> list[str]:
    """The schemes the server may authenticate to this device with, preferred first."""
    return [k for k in (dev.server_auth or dev.auth).split(",") if k in accounts.SCHEMES] or ["md5"]


__all__ = ["DmServer", "HttpReply", "Inbound", "ServerConfig"]
