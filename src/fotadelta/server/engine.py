"""The DM server's session engine: authentication, the server's side of each DM package, FUMO jobs.

Each HTTP request carries one client message. A session starts at a DM path with a message
that authenticates (MD5 digest, basic or HMAC, with a fresh nonce every session); nothing is
stored before it does, so strangers create no devices, sessions or jobs, and a failure is
challenged with a nonce that needs no storage (`keyring`). The server's first answer names the
session's RespURI, the DM path the device used followed by an unguessable token: the rest of the
session is heard there only, so knowing a device's DevId and SessionID is not enough to speak in
its session (HMAC devices also authenticate every message). Authentication is per direction (a
device account says how each side proves itself, see `accounts`), and bounded: a few failures in a
row either way end the session. The engine records what the client reports (DevInfo, Results,
Generic Alerts of any type, FUMO results, software requests and portal selections), and answers
with the next message of its own package. What the server does in a session is written as a
generator per session (its "script"): it yields the commands of one package and receives the
client's statuses and results for them; the engine splits packages over messages, chunks large
objects and matches replies. Where a device keeps FUMO and what it can take come from its kind's
capabilities (`capabilities`), discovered on first contact.

Jobs live in the store: a job installs one package and remembers the version its chain must
reach; when the device reports success the next step of the chain is planned in the same
transaction, and a start-up re-plans any chain a crash left without its next job."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy import select, update
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
from fotadelta.server import accounts, capabilities
from fotadelta.server.capabilities import DeviceCapability
from fotadelta.server.keyring import Keyring
from fotadelta.server.limits import Failures, Limits, Refusals, Throttle
from fotadelta.server.push import PushPolicy
from fotadelta.server.store import DeviceRow, EventRow, JobRow, PackageRow, SessionRow, Store

SESSION_IDLE = 300.0  # seconds before a silent session is forgotten
FINISHED_IDLE = 30.0  # a finished session is kept this long, in case the client has more to say
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
MAX_SESSION_ID = 8  # characters: what the store's column holds (a 16-bit id in hex needs 4)
_ZERO_NONCE = base64.b64encode(bytes(4)).decode()  # a new device's nonces, until its first session


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
    """The client's answers to one package of ours, keyed by our command objects."""

    statuses: dict[int, Status] = field(default_factory=dict)
    results: dict[int, list[Item]] = field(default_factory=dict)

    def code(self, cmd: Command) -> int | None:
        s = self.statuses.get(id(cmd))
        return None if s is None else s.code

    def items(self, cmd: Command) -> list[Item]:
        return self.results.get(id(cmd), [])


Script = Generator[list[Command], Replies, None]


@dataclass
class Task:
    """Commands queued for a device's next session (memory only), and what the device answered.

    `statuses` holds the Status of each command in `walk` order (parents first), None where none
    came; `results` the Results items per Get, in the order of `commands`' Gets."""

    commands: list[Command]
    statuses: list[Status | None] = field(default_factory=list)
    results: list[list[Item]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def answer(self, replies: Replies) -> None:
        cmds = list(walk(self.commands))
        self.statuses = [replies.statuses.get(id(c)) for c in cmds]
        self.results = [replies.results.get(id(c), []) for c in cmds if isinstance(c, Get)]
        self.done.set()


@dataclass
class Live:
    """A session in progress (memory only: a restart fails it cleanly, see Store.recover), heard
    only at its RespURI (the DM path it started at + "/" + token). Every one has authenticated."""

    dev_id: str
    ep: Endpoint
    row_id: int
    token: str
    path: str  # the DM path the session started at
    dev: DeviceRow  # the device's row, kept current by _set_device
    server_scheme: str  # how we authenticate to the client: the account's first, or what it asks for
    server_accepted: bool = False  # the client answered 212 to our credentials
    failures: int = 0  # our refusals of the client's credentials, in a row (HMAC checks every message)
    server_failures: int = 0  # the client's refusals of our credentials, in a row
    closed: bool = False  # cut off after repeated authentication failures: further messages get HTTP 403
    script: Script | None = None
    replies: Replies = field(default_factory=Replies)
    last_sent: list[Command] = field(default_factory=list)
    last_sent_msg: int = 0
    ui: list[Command] = field(default_factory=list)  # prompts to show at the next opportunity
    touched: float = field(default_factory=time.time)
    finished: bool = False  # the server's last message ended the session (the client may still go on)
    messages: int = 0  # client messages received
    lock: threading.Lock = field(default_factory=threading.Lock)


class DmServer:
    """The DM server: sessions, package publishing, jobs and notifications."""

    def __init__(self, config: ServerConfig, *, push: Callable[[DeviceRow, bytes], None] | None = None) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        (config.data_dir / "packages").mkdir(exist_ok=True)
        self.store = Store(config.database)
        self.recovered = self.store.recover()
        self.replanned = self._replan()
        self.push = push
        self.keyring = Keyring(config.data_dir)
        self.throttle = Throttle(config.limits.unauthenticated_per_minute)
        self.refusals = Refusals()
        # Sessions that never authenticated keep no state but this: their failures in a row, to cut them off.
        self.failures = Failures(config.max_auth_failures)
        self._live: OrderedDict[str, Live] = OrderedDict()  # by RespURI token, least recently used first
        self._by_device: dict[str, set[str]] = {}  # tokens of each device's live sessions
        self._lock = threading.Lock()
        self._descriptors: dict[int, descriptor.Descriptor] = {}
        self._tasks: dict[str, list[Task]] = {}
        self._requests: dict[str, tuple[snmp.Request, float]] = {}  # SNMP requests awaiting the device's session
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
        if self.traps is not None and account.snmp is not None:
            self.traps.add_device(account.dev_id, account.snmp)
        self.store.log(account.dev_id, "account", "account created" if new else "account replaced")
        return new

    def account(self, dev_id: str) -> dict[str, object] | None:
        with self.store.tx() as s:
            row = s.get(DeviceRow, dev_id)
            return None if row is None else accounts.describe(row)

    def account_list(self) -> list[dict[str, object]]:
        with self.store.tx() as s:
            return [accounts.describe(r) for r in s.scalars(select(DeviceRow).order_by(DeviceRow.dev_id))]

    def remove_account(self, dev_id: str) -> bool:
        with self.store.tx() as s:
            gone = accounts.remove(s, dev_id)
        if gone:
            self.store.log(dev_id, "account", "account removed")
        return gone

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
        """Store a signed update package and make it available for jobs and downloads."""
        manifest = package.parse(data).manifest
        digest = hashlib.sha256(data).hexdigest()
        path = self.config.data_dir / "packages" / f"{digest}.fdpkg"
        with self.store.tx() as s:
            found = s.scalars(select(PackageRow).where(PackageRow.sha256 == digest)).first()
            if found is not None:
                return found
            write_atomic(path, data)
            name = f"{manifest.make}-{manifest.model}-{manifest.from_version}-to-{manifest.to_version}"
            row = PackageRow(name=name, make=manifest.make, model=manifest.model,
                             from_version=manifest.from_version, to_version=manifest.to_version,
                             content_type=manifest.content_type.name.lower(), size=len(data), sha256=digest,
                             path=str(path), kind=_KINDS[manifest.patch_kind])
            s.add(row)
            s.flush()
            return row

    def assign(self, dev_id: str, goal_version: str, *, delivery: str = "download") -> JobRow:
        """Bring a device to goal_version: a job for the first package of the cheapest chain."""
        with self.store.tx() as s:
            dev = s.get(DeviceRow, dev_id)
            if dev is None:
                raise LookupError(f"unknown device {dev_id}")
            return self._assign_in(s, dev, goal_version, delivery)

    def _assign_in(self, s: Session, dev: DeviceRow, goal_version: str, delivery: str = "download") -> JobRow:
        """assign, inside the caller's transaction."""
        if len(goal_version) > MAX_TEXT:
            raise ValueError(f"a version is at most {MAX_TEXT} characters")
        step = self._plan(s, dev, goal_version)
        for old in s.scalars(select(JobRow).where(JobRow.dev_id == dev.dev_id, JobRow.state == "pending")):
            old.state, old.message = "cancelled", f"superseded by a job to {goal_version}"
        job = JobRow(dev_id=dev.dev_id, package_id=step.id, goal_version=goal_version,
                     correlator=secrets.token_hex(8), delivery=delivery)
        s.add(job)
        s.add(EventRow(dev_id=dev.dev_id, kind="job", text=f"update to {goal_version} planned, first step {step.name}"))
        s.flush()
        return job

    def _replan(self) -> int:
        """At start-up: a device whose last job succeeded short of its chain's goal, with no job open, gets
        the next step planned (a crash between the result and the plan, before both were one transaction)."""
        planned = 0
        with self.store.tx() as s:
            for dev in s.scalars(select(DeviceRow)):
                last = s.scalars(select(JobRow).where(JobRow.dev_id == dev.dev_id).order_by(JobRow.id.desc())).first()
                if last is None or last.state != "succeeded" or last.goal_version == dev.version:
                    continue
                try:
                    self._assign_in(s, dev, last.goal_version, last.delivery)
                    planned += 1
                except ValueError as exc:
                    s.add(EventRow(dev_id=dev.dev_id, kind="job", text=f"chain to {last.goal_version} stopped: {exc}"))
        return planned

    @staticmethod
    def _index(s: Session, dev: DeviceRow, *, installable: bool = True) -> chain.Index:
        """The packages for the device's make and model, as a chain index (entry file: the package id).

        installable keeps only what the device can install: firmware of the kinds it reported (a
        single-slot device takes in-place patches and full images, not plain patches)."""
        rows = s.scalars(select(PackageRow).where(PackageRow.make == dev.make, PackageRow.model == dev.model))
        kinds = dev.update_kinds.split()
        return chain.Index(tuple(chain.Entry(str(r.id), r.make, r.model, r.from_version, r.to_version, r.size)
                                 for r in rows if not (installable and kinds and r.content_type == "firmware"
                                                       and r.kind and r.kind not in kinds)), {})

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
        row = s.get(PackageRow, int(first.file))
        assert row is not None
        return row

    def offers(self, dev_id: str) -> list[tuple[str, int]]:
        """The versions a device can be brought to, with the bytes the cheapest way there costs."""
        with self.store.tx() as s:
            dev = s.get(DeviceRow, dev_id)
            if dev is None or not dev.version:
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

    def job_list(self, dev_id: str | None = None) -> list[dict[str, object]]:
        """Jobs (oldest first; one device's or all), with their packages and results in words."""
        with self.store.tx() as s:
            query = select(JobRow, PackageRow).join(PackageRow, JobRow.package_id == PackageRow.id).order_by(JobRow.id)
            if dev_id is not None:
                query = query.where(JobRow.dev_id == dev_id)
            return [{"id": job.id, "device": job.dev_id, "package": pkg.name, "from": pkg.from_version,
                     "to": pkg.to_version, "goal": job.goal_version, "delivery": job.delivery, "state": job.state,
                     "result_code": job.result_code,
                     "result": fumo.describe(job.result_code) if job.result_code is not None else None,
                     "message": job.message, "created": job.created, "updated": job.updated}
                    for job, pkg in s.execute(query)]

    def device_list(self) -> list[dict[str, object]]:
        """Devices with identity, version, last contact and their latest job (never credentials)."""
        with self.store.tx() as s:
            latest = {j.dev_id: j for j in s.scalars(select(JobRow).order_by(JobRow.id))}
            return [{"device": d.dev_id, "make": d.make, "model": d.model, "version": d.version, "lang": d.lang,
                     "update_kinds": d.update_kinds.split(), "last_seen": d.last_seen or None,
                     "job": latest[d.dev_id].id if d.dev_id in latest else None,
                     "job_state": latest[d.dev_id].state if d.dev_id in latest else None,
                     "result_code": latest[d.dev_id].result_code if d.dev_id in latest else None}
                    for d in s.scalars(select(DeviceRow).order_by(DeviceRow.dev_id))]

    def notification(self, dev_id: str) -> bytes:
        """A package #0 for the device, with a new session id recorded as expected (operators only)."""
        return self._notification(dev_id)[1]

    def _notification(self, dev_id: str) -> tuple[DeviceRow, bytes]:
        with self.store.tx() as s:
            dev = s.get(DeviceRow, dev_id)
            if dev is None:
                raise LookupError(f"unknown device {dev_id}")
            sid = secrets.randbelow(0xFFFF) + 1
            s.add(SessionRow(dev_id=dev_id, session_id=notification.session_id_text(sid), initiator="server"))
            trigger = notification.Notification(sid, self.config.server_id, notification.UiMode.BACKGROUND)
            return dev, notification.build(trigger, dev.server_password, base64.b64decode(dev.server_nonce))

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
        dev, pkg0 = self._notification(dev_id)
        self.push(dev, pkg0)

    def enqueue(self, dev_id: str, commands: list[Command]) -> Task:
        """Send commands (Get, Replace, Atomic, ...) as one package in the device's next session, before
        any update job; the Task gets the device's answers. For operators and tests; not persisted."""
        task = Task(commands)
        with self._lock:
            self._tasks.setdefault(dev_id, []).append(task)
        return task

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

    def _answer_request(self, dev: DeviceRow, request: snmp.Request,
                        fumo_uri: str) -> Generator[list[Command], Replies, None]:
        """In the device's authenticated session: the list goes to its FUMO Ext/Offers node (shown to the user
        if it has none); a fetch becomes a job, delivered through FUMO in this session."""
        if request.action is snmp.Action.FETCH:
            try:
                self.assign(dev.dev_id, request.software)
            except (LookupError, ValueError) as exc:
                self.store.log(dev.dev_id, "request", f"fetch of {request.software!r} refused: {exc}")
                yield [Alert(UI_DISPLAY, [Item(data="MINDT=5"), Item(data=f"{request.software} is not available")])]
            return
        offers = "\n".join(f"{v}\t{size}" for v, size in self.offers(dev.dev_id))
        replace_ = Replace([Item(target=f"{fumo_uri}/Ext/Offers", data=offers, meta=Meta(format="chr"))])
        replies = yield [replace_]
        if replies.code(replace_) != 200:
            listed = ", ".join(line.replace("\t", " (") + " bytes)" for line in offers.splitlines()) or "none"
            yield [Alert(UI_DISPLAY, [Item(data="MINDT=10"), Item(data=f"Available software: {listed}")])]
        self.store.log(dev.dev_id, "request", f"software list delivered: {len(offers.splitlines())} offers")

    def package_path(self, package_id: int) -> Path | None:
        if not 0 < package_id < 1 << 63:  # (what SQL integers hold)
            return None
        with self.store.tx() as s:
            row = s.get(PackageRow, package_id)
            return None if row is None else Path(row.path)

    # -- one HTTP request ------------------------------------------------------------------------

    def throttled(self, peer: str, token: str | None = None) -> HttpReply | None:
        """The 429 for a caller that used up this minute's requests that do not authenticate, else None.
        A live session's token vouches for its requests (another caller at the same address is no reason
        to cut an authenticated session short)."""
        if self.throttle.allowed(peer) or (token is not None and token in self._live):
            return None
        self.refusals.note("throttled", peer, f"over {self.config.limits.unauthenticated_per_minute} requests "
                           "a minute that did not authenticate")
        return HttpReply(429, "text/plain", b"too many requests that did not authenticate; try again later\n",
                         {"retry-after": str(self.throttle.retry_after())})

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
        self._forget_idle()
        path = request.path or self.config.dm_paths[0]
        if request.token is None:
            return self._start(msg, encoding, request, path)
        live = self._bound(request.token, path, msg)
        if live is None:
            # A session this server does not know (it restarted, or the token is made up): end it
            # cleanly, the client starts a new one.
            return self._stranger(peer, self._stateless(msg, encoding, path, 506, abort=True))
        with live.lock:
            if live.closed:
                # Cut off after repeated authentication failures: nothing more is read in this session.
                return HttpReply(403, "text/plain", b"this session was ended after repeated authentication "
                                 b"failures\n")
            live.touched, live.finished = time.time(), False
            live.ep.note_header(msg.header)
            return self._step(live, msg, request)

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

    def _bound(self, token: str, path: str, msg: Message) -> Live | None:
        """The live session at this RespURI (path and token), if the message is from its device and session."""
        with self._lock:
            live = self._live.get(token)
            if live is None or (live.path, live.dev_id, live.ep.session_id) != (path, msg.header.source,
                                                                                 msg.header.session_id):
                return None
            self._live.move_to_end(token)
            return live

    def _start(self, msg: Message, encoding: Encoding, request: Inbound, path: str) -> HttpReply:
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
        dev, stored = self._account(hdr.source, _scheme(msg, request.hmac))
        if dev is None:
            self.refusals.note("unknown device", peer, hdr.source[:64])
            return self._stranger(peer, self._stateless(msg, encoding, path, 401, abort=True))
        code = self._credentials(dev, msg, request)
        if code is not None:
            failures = self.failures.failed(attempt)
            if failures >= self.config.max_auth_failures:
                self.refusals.note("cut off", peer, f"{hdr.source[:64]}: session {hdr.session_id} ended after its "
                                   f"credentials were refused {failures} times in a row ({code})")
                return self._stranger(peer, self._stateless(msg, encoding, path, code, abort=True))
            self.refusals.note("credentials", peer, f"{hdr.source[:64]}: {code}")
            chal = auth.challenge(dev.auth, self.keyring.challenge_nonce(dev.dev_id, dev.client_nonce))
            return self._stranger(peer, self._stateless(msg, encoding, path, code, chal=chal))
        self.failures.clear(attempt)
        self._make_room(dev.dev_id)
        live = self._open(dev, stored, hdr.session_id, encoding, path, msg)
        with live.lock:
            live.ep.note_header(hdr)
            return self._run(live, msg, self._accepted(live, msg.header.msg_id))

    def _account(self, dev_id: str, scheme: str) -> tuple[DeviceRow | None, bool]:
        """The device's row (and True), or for an unknown device the row factory enrolment would give it,
        not stored (and False); (None, False) when the device is unknown and enrolment is off. A device
        is enrolled for the authentication scheme its first message uses (md5, basic or hmac), which
        then stays its scheme, both ways."""
        with self.store.tx() as s:
            dev = s.get(DeviceRow, dev_id)
        if dev is not None:
            return dev, True
        if not self.config.factory_secret:
            return None, False
        creds = derive(self.config.factory_secret, dev_id, self.config.server_id)
        # (The nonces start as the column defaults, four zero bytes.)
        return DeviceRow(dev_id=dev_id, user=creds.user, password=creds.password,
                         server_password=creds.server_password, auth=scheme, server_auth=scheme,
                         client_nonce=_ZERO_NONCE, server_nonce=_ZERO_NONCE), False

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

    def _accepted(self, live: Live, msg_id: int) -> Status:
        """The SyncHdr status for a message that authenticated, with a fresh stored nonce: 212 (no more
        credentials this session, the nonce is for the next one), or 200 and the next message's nonce (HMAC)."""
        chal = auth.challenge(live.dev.auth, auth.new_nonce())
        self._set_device(live.dev, client_nonce=chal.meta.next_nonce)
        return Status(msg_id, 0, "SyncHdr", 200 if live.dev.auth == "hmac" else 212, chal=chal)

    def _make_room(self, dev_id: str) -> None:
        """A device opens a session: the sessions it left open are over (a DM client runs one session with
        a server at a time; the jobs sent in them go back), and finished ones it holds beyond the limit are
        let go, oldest first."""
        limit = self.config.limits.max_sessions_per_device
        with self._lock:
            tokens = self._by_device.get(dev_id, set())
            mine = [live for token, live in self._live.items() if token in tokens]  # oldest first
            superseded = [live for live in mine if not live.finished]
            for live in superseded:
                self._drop(live.token)
            for live in [live for live in mine if live.finished][:max(0, len(mine) - len(superseded) - limit + 1)]:
                self._drop(live.token)
        for live in superseded:
            with live.lock:
                live.finished = True
                self._end(live, "failed", "the device opened a new session")

    def _drop(self, token: str) -> Live | None:
        """Forget a live session (the caller holds self._lock)."""
        live = self._live.pop(token, None)
        if live is not None:
            tokens = self._by_device.get(live.dev_id)
            if tokens is not None:
                tokens.discard(token)
                if not tokens:
                    del self._by_device[live.dev_id]
        return live

    def _open(self, dev: DeviceRow, stored: bool, sid: str, encoding: Encoding, path: str, msg: Message) -> Live:
        """An authenticated session: enrol the device if it is new, open (or claim the notified) session
        row, and register the session under a new RespURI token below the DM path it started at. The session
        speaks the DM version of the device's first message."""
        token = secrets.token_urlsafe(18)
        url = f"{self.config.public_url}{path}"
        ep = Endpoint(session_id=sid, local=url, remote=dev.dev_id, encoding=encoding,
                      max_msg_size=self.config.max_msg_size, max_obj_size=self.config.max_obj_size,
                      local_name=self.config.server_id, protocol=msg.header.protocol)
        ep.resp_uri = f"{url}/{token}"
        with self.store.tx() as s:
            if not stored:
                found = s.get(DeviceRow, dev.dev_id)  # (enrolled meanwhile by another request of the device)
                if found is None:
                    s.add(dev)
                    s.add(EventRow(dev_id=dev.dev_id, kind="enrol", text="enrolled with factory credentials"))
                else:
                    dev = found
            row = s.scalars(select(SessionRow).where(SessionRow.dev_id == dev.dev_id, SessionRow.session_id == sid,
                                                     SessionRow.state == "notified")).first()
            if row is None:
                row = SessionRow(dev_id=dev.dev_id, session_id=sid, initiator="client")
                s.add(row)
            row.state = "open"
            s.flush()
            live = Live(dev.dev_id, ep, row.id, token, path, dev, _schemes(dev)[0])
        with self._lock:
            self._live[token] = live
            self._by_device.setdefault(dev.dev_id, set()).add(token)
        return live

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

    def _step(self, live: Live, msg: Message, request: Inbound) -> HttpReply:
        """A message at the session's RespURI. HMAC devices authenticate every message; the others did at
        the start, and the RespURI token binds the rest of the session to them."""
        dev, msg_id = live.dev, msg.header.msg_id
        if dev.auth != "hmac":
            return self._run(live, msg, Status(msg_id, 0, "SyncHdr", 200))
        code = self._credentials(dev, msg, request)
        if code is None:
            live.failures = 0  # the cut-off below counts failures in a row
            return self._run(live, msg, self._accepted(live, msg_id))
        live.failures += 1
        live.messages += 1
        chal = auth.challenge(dev.auth, self.keyring.challenge_nonce(dev.dev_id, dev.client_nonce))
        statuses = [Status(msg_id, 0, "SyncHdr", code, chal=chal)]
        statuses += [status_for(c, msg_id, code) for c in msg.commands if not isinstance(c, Status)]
        if live.failures >= self.config.max_auth_failures:
            return self._cut_off(live, statuses, "authentication failed: the device's credentials were refused "
                                 f"{live.failures} times in a row ({code})")
        return self._reply(live, statuses)

    def _run(self, live: Live, msg: Message, hdr_status: Status) -> HttpReply:
        """An authenticated message: take what it says, answer with our package's next message."""
        ep, dev, msg_id = live.ep, live.dev, msg.header.msg_id
        live.messages += 1  # stored when the session ends
        statuses = [hdr_status]
        for cmd in msg.commands:
            if isinstance(cmd, Status):
                self._client_status(live, dev, cmd)
                continue
            if isinstance(cmd, Alert) and cmd.data == ALERT_SESSION_ABORT:
                self._end(live, "aborted", "the client aborted the session")
                live.finished = True
                return HttpReply(200, ep.encoding.content_type, ep.compose([hdr_status])[1])
            whole, chunk_statuses = ep.take(cmd, msg_id)
            statuses += chunk_statuses
            if whole is not None and (answer := self._client_command(live, dev, whole, msg_id)) is not None:
                statuses.append(answer)
        if live.server_failures >= self.config.max_auth_failures:
            # The device authenticated itself but will not accept us: a session of its, recorded as failed.
            return self._cut_off(live, statuses, "authentication failed: the device refused the server's "
                                 f"credentials {live.server_failures} times in a row")
        # Our package continues (Alert 1222 came, or the client just answered): send its next message.
        if not ep.queue and msg.final:
            self._advance(live, dev)
        if not msg.final and not ep.queue:
            ep.push(Alert(ALERT_NEXT_MESSAGE))
        return self._reply(live, statuses)

    def _cut_off(self, live: Live, statuses: list[Status], reason: str) -> HttpReply:
        """End an authenticated session after repeated authentication failures: the statuses and Alert 1223
        now, HTTP 403 for anything more; recorded as failed with the reason (the jobs sent in it go back)."""
        live.ep.queue.clear()
        live.script = None
        live.ep.push(Alert(ALERT_SESSION_ABORT))
        reply = self._reply(live, statuses)
        self._end(live, "failed", reason)
        live.closed = live.finished = True
        self.store.log(live.dev_id, "auth", f"session {live.ep.session_id} cut off: {reason}")
        return reply

    def _reply(self, live: Live, statuses: list[Status]) -> HttpReply:
        ep, dev, scheme = live.ep, live.dev, live.server_scheme
        cred = None
        if not live.server_accepted and scheme != "hmac":
            cred = auth.credential(scheme, self.config.server_id, dev.server_password,
                                   base64.b64decode(dev.server_nonce))
        msg, body = ep.compose(statuses, cred=cred)
        live.last_sent = [c for c in msg.commands if not isinstance(c, Status)]
        live.last_sent_msg = msg.header.msg_id
        if msg.final and not live.last_sent and live.failures == 0:
            self._end(live, "completed", "")
            live.finished = True
            live.ep.sent.clear()  # nothing of ours awaits an answer; inline packages need not stay in memory
        headers = {}
        if scheme == "hmac":
            headers["x-syncml-hmac"] = auth.hmac_header(self.config.server_id, dev.server_password,
                                                        base64.b64decode(dev.server_nonce), body)
        return HttpReply(200, ep.encoding.content_type, body, headers)

    def _client_status(self, live: Live, dev: DeviceRow, status: Status) -> None:
        if status.cmd_ref == 0 and status.cmd == "SyncHdr":
            nonce = status.chal.meta.next_nonce if status.chal is not None else None
            if nonce is not None and _valid_nonce(nonce):
                self._set_device(dev, server_nonce=nonce)
            if status.code in (200, 212):
                live.server_accepted, live.server_failures = True, 0
            elif status.code in (401, 407) and status.msg_ref == live.last_sent_msg:
                live.server_failures += 1
                # The client may ask for another scheme in its Chal: follow it if the account allows it.
                asked = status.chal.meta.type if status.chal is not None else None
                scheme = next((k for k, v in auth.CRED_TYPES.items() if v == asked), None)
                if scheme is not None and scheme in _schemes(dev):
                    live.server_scheme = scheme
                # The client did not accept our credentials and executed nothing: send it all again.
                live.ep.queue.extendleft(reversed(live.last_sent))
            return
        ours = live.ep.sent.get((status.msg_ref, status.cmd_ref))
        if ours is not None:
            live.replies.statuses[id(ours)] = status
            live.ep.refused(ours, status.code)

    def _client_command(self, live: Live, dev: DeviceRow, cmd: Command, msg_id: int) -> Status | None:
        if isinstance(cmd, Alert):
            if cmd.data in (ALERT_CLIENT_INITIATED, ALERT_SERVER_INITIATED, ALERT_NEXT_MESSAGE):
                return status_for(cmd, msg_id, 200)
            if cmd.data == ALERT_GENERIC:
                return self._generic_alert(live, dev, cmd, msg_id)
            return status_for(cmd, msg_id, 406)
        if isinstance(cmd, Replace):
            return status_for(cmd, msg_id, self._devinfo(dev, cmd.items))
        if isinstance(cmd, Results):
            ours = live.ep.sent.get((cmd.msg_ref or 0, cmd.cmd_ref))
            if ours is None:
                return status_for(cmd, msg_id, 400)  # Results for nothing we asked
            live.replies.results.setdefault(id(ours), []).extend(cmd.items)
            return None  # a Results that is fine gets no Status
        return status_for(cmd, msg_id, 405)  # a client may not send this command

    def _devinfo(self, dev: DeviceRow, items: list[Item]) -> int:
        """Take the DevInfo the device reports; the status for its Replace (413: a value is longer than
        the store keeps, and nothing is taken). A push address outside the push policy is not taken."""
        values: dict[str, object] = {"last_seen": time.time()}
        for item in items:
            attr = _DEVINFO.get(item.source or "")
            if attr is None or item.data is None:
                continue
            text = item.text
            if len(text) > getattr(DeviceRow, attr).type.length:
                return 413
            if attr == "push_url" and (why := self.config.push_policy.refusal(text, resolve=False)) is not None:
                self.refusals.note("push address", dev.dev_id, why)
                continue
            values[attr] = text
        self._set_device(dev, **values)
        return 200

    def _set_device(self, dev: DeviceRow, **values: object) -> None:
        """Change the device's row, and the session's copy of it, in one UPDATE (its own transaction)."""
        for attr, value in values.items():
            setattr(dev, attr, value)
        with self.store.tx() as s:
            s.execute(update(DeviceRow).where(DeviceRow.dev_id == dev.dev_id).values(**values))

    def _generic_alert(self, live: Live, dev: DeviceRow, alert: Alert, msg_id: int) -> Status:
        item = alert.items[0] if alert.items else Item()
        kind = item.meta.type if item.meta and item.meta.type else ""
        data = item.text
        if kind == SOFTWARE_LIST:
            offers = [Item(source=f"to:{v}", data=f"{dev.make} {dev.model} {v} ({size} bytes)")
                      for v, size in self.offers(dev.dev_id)]
            self.store.log(dev.dev_id, "request", f"asked for software: {len(offers)} offers")
            return status_for(alert, msg_id, 200, items=offers)
        if kind == SOFTWARE_SELECT:
            if not data.startswith("to:"):
                return status_for(alert, msg_id, 400)
            return status_for(alert, msg_id, self._select(dev, data[3:]))
        if kind == PORTAL_SELECTION:
            version = self.keyring.redeem(dev.dev_id, data)
            if version is None:
                self.store.log(dev.dev_id, "request", "a portal selection that is not this device's, "
                               "expired or used already")
                return status_for(alert, msg_id, 403)
            self._set_initiator(live, "web")
            return status_for(alert, msg_id, self._select(dev, version))
        fmt = item.meta.format if item.meta else None
        # (Each field cut short, so that all of them fit the event, whatever the device sent.)
        self.store.log(dev.dev_id, "alert", f"Generic Alert type={kind[:128]!r} format={fmt and fmt[:32]!r} "
                                            f"source={item.source and item.source[:256]!r} "
                                            f"correlator={alert.correlator and alert.correlator[:64]!r} "
                                            f"data={data[:256]!r}")
        if kind.startswith(FUMO_TYPE):
            # ASCII digits, a few: str.isdigit takes "²" (which int() refuses) and strings of any length.
            if not _RESULT_CODE.fullmatch(data):
                return status_for(alert, msg_id, 415)
            self._fumo_result(live, dev, alert.correlator, int(data))
        # Any other type is taken and recorded: the specification expects the server to accept it.
        return status_for(alert, msg_id, 200)

    def _select(self, dev: DeviceRow, version: str) -> int:
        """The device chose a version (software list or portal): plan the job; the status for its alert."""
        try:
            self.assign(dev.dev_id, version)
        except ValueError as exc:
            self.store.log(dev.dev_id, "request", f"selection refused: {exc}")
            return 404
        return 200

    def _set_initiator(self, live: Live, initiator: str) -> None:
        with self.store.tx() as s:
            s.execute(update(SessionRow).where(SessionRow.id == live.row_id).values(initiator=initiator))

    def _fumo_result(self, live: Live, dev: DeviceRow, correlator: str | None, code: int, *,
                     job_id: int | None = None) -> None:
        """Record a FUMO result for the job with this correlator (or id: DM 1.1.2 has no correlators) and, on
        success short of the chain's goal, plan the next step: one transaction, so a crash cannot leave the
        result without the plan (or the plan without the result)."""
        with self.store.tx() as s:
            # The job must be this device's: a correlator alone would let one device report for another.
            which = JobRow.id == job_id if job_id is not None else JobRow.correlator == (correlator or "")
            job = s.scalars(select(JobRow).where(which, JobRow.dev_id == dev.dev_id)).first()
            if job is None or job.state in ("succeeded", "failed"):
                # Unknown, or reported again (a client repeats its first package after a challenge).
                s.add(EventRow(dev_id=dev.dev_id, kind="result",
                               text=f"FUMO result {code} for correlator {(correlator or '')[:64]}: no open job"))
                return
            pkg = s.get(PackageRow, job.package_id)
            row = s.get(DeviceRow, dev.dev_id)
            assert pkg is not None and row is not None
            job.result_code, job.updated = code, time.time()
            job.state = "succeeded" if 200 <= code < 300 else "failed"
            job.message = f"FUMO {code}: {fumo.describe(code)}"
            s.add(EventRow(dev_id=dev.dev_id, kind="result", text=f"{pkg.name}: FUMO result {code}"))
            if job.state != "succeeded":
                return
            row.version = pkg.to_version
            if job.goal_version != pkg.to_version:
                try:
                    self._assign_in(s, row, job.goal_version)  # the next step, delivered in this session
                except ValueError as exc:
                    s.add(EventRow(dev_id=dev.dev_id, kind="job", text=f"chain to {job.goal_version} stopped: {exc}"))
        dev.version = pkg.to_version
        live.ui.append(Alert(UI_DISPLAY, [Item(data="MINDT=5"), Item(data=self._prompt(dev, pkg, "post-update"))]))

    # -- what the server does in a session -------------------------------------------------------

    def _advance(self, live: Live, dev: DeviceRow) -> None:
        """The client's package is complete: run the script to its next package."""
        replies, live.replies = live.replies, Replies()
        try:
            if live.script is None:
                live.script = self._script(live, dev)
                commands = next(live.script)
            else:
                commands = live.script.send(replies)
        except StopIteration:
            live.script = None
            commands = []
        live.ep.push(*commands)

    def _script(self, live: Live, dev: DeviceRow) -> Script:
        if live.ui:
            yield live.ui[:]
            live.ui.clear()
        if not dev.version:
            yield from self._read_devdetail(dev)
        cap = yield from self._capability(live, dev)
        fumo_uri = cap.node_uri("fumo") or capabilities.DEFAULT_FUMO
        if live.ep.protocol is DM_1_1:
            yield from self._read_fumo_state(live, dev, fumo_uri)
        request = self._take_request(dev.dev_id)
        if request is not None:
            yield from self._answer_request(dev, request, fumo_uri)
        while (task := self._next_task(dev.dev_id)) is not None:
            task.answer((yield task.commands))
        while (claimed := self._claim_job(dev.dev_id)) is not None:
            if (yield from self._deliver(live, dev, cap, fumo_uri, *claimed)):
                return  # the device downloads, installs, reboots and reports in a new session

    def _capability(self, live: Live, dev: DeviceRow) -> Generator[list[Command], Replies, DeviceCapability]:
        """The capability in force for the device, after recording what this session shows of its kind and,
        on first contact with it, searching its tree for FUMO."""
        ep = live.ep
        # (Sizes a device declares outside what a capability may hold are not kept: they describe nothing usable.)
        seen = DeviceCapability(encodings=(ep.encoding.name.lower(),), auth_schemes=(dev.auth,),
                                protocol=ep.protocol.dtd, max_msg_size=_size(ep.peer_declared_max_msg),
                                max_obj_size=_size(ep.peer_max_obj))
        with self.store.tx() as s:
            cap = capabilities.lookup(s, dev.make, dev.model, dev.version)
            known = capabilities.stored(s, dev.make, dev.model, "", "discovered")
            now = replace(seen, encodings=capabilities.union(known.encodings, seen.encodings or ()),
                          auth_schemes=capabilities.union(known.auth_schemes, seen.auth_schemes or ()))
            if now.over(known) != known:  # (written only when the kind of device showed something new)
                capabilities.record(s, dev.make, dev.model, "", "discovered", now)
        if cap.fumo_uri is None:
            found = yield from capabilities.find_fumo(bool(cap.structured_get))
            learned = DeviceCapability(fumo_uri=found.fumo_uri or "", structured_get=found.structured_get)
            with self.store.tx() as s:
                capabilities.record(s, dev.make, dev.model, "", "discovered", learned)
                cap = capabilities.lookup(s, dev.make, dev.model, dev.version)
            where = found.fumo_uri or "no node found"
            self.store.log(dev.dev_id, "discovery", f"{dev.make} {dev.model}: FUMO at {where}, "
                                                    f"structured Get {'yes' if found.structured_get else 'no'}")
        return cap

    def _learn(self, dev: DeviceRow, cap: DeviceCapability, why: str) -> None:
        """Record what a device showed it cannot do (its answers to our commands)."""
        with self.store.tx() as s:
            capabilities.record(s, dev.make, dev.model, "", "discovered", cap)
        self.store.log(dev.dev_id, "discovery", f"{dev.make} {dev.model}: {why}")

    def _read_fumo_state(self, live: Live, dev: DeviceRow,
                         fumo_uri: str) -> Generator[list[Command], Replies, None]:
        """DM 1.1.2 has no Generic Alert: an accepted job's result is read back from the FUMO State node."""
        with self.store.tx() as s:
            job = s.scalars(select(JobRow).where(JobRow.dev_id == dev.dev_id, JobRow.state == "accepted")
                            .order_by(JobRow.id)).first()
        if job is None:
            return
        get = Get([Item(target=f"{fumo_uri}/State")])
        replies = yield [get]
        state = next((i.text.strip() for i in replies.items(get)), "")
        code = _STATE_RESULT.get(state)
        self.store.log(dev.dev_id, "result", f"FUMO State {state[:16] or '(none)'} read back (DM 1.1.2)")
        if code is not None:
            self._fumo_result(live, dev, None, code, job_id=job.id)

    def _read_devdetail(self, dev: DeviceRow) -> Generator[list[Command], Replies, None]:
        get = Get([Item(target="./DevDetail?list=StructData")])
        replies = yield [get]
        code = replies.code(get)
        if code == 200:
            leaves = replies.results.get(id(get), [])
        elif code == 406:
            leaves = yield from self._walk("./DevDetail")  # the client cannot list: ask node by node
        else:
            return
        values = {i.source: i.text for i in leaves if i.source}
        version = values.get("./DevDetail/FwV", dev.version)
        self._set_device(dev, version=version if len(version) <= MAX_TEXT else dev.version,
                         large_objects=values.get("./DevDetail/LrgObj", "false").lower() == "true",
                         update_kinds=" ".join(k for k in values.get(UPDATE_KINDS_NODE, "").split()
                                               if k in _KIND_WORDS)[:64])

    def _walk(self, root: str) -> Generator[list[Command], Replies, list[Item]]:
        uris, leaves = [root], []
        while uris:
            gets: list[Command] = [Get([Item(target=uri)]) for uri in uris]
            replies = yield gets
            children = []
            for uri, get in zip(uris, gets):
                for item in replies.results.get(id(get), []):
                    if item.meta is not None and item.meta.format == "node":
                        children += [f"{uri}/{name}" for name in item.text.split("/") if name]
                    else:
                        leaves.append(item)
            uris = children
        return leaves

    def _next_task(self, dev_id: str) -> Task | None:
        with self._lock:
            queued = self._tasks.get(dev_id)
            return queued.pop(0) if queued else None

    def _claim_job(self, dev_id: str) -> tuple[JobRow, PackageRow] | None:
        """The device's oldest pending job, now marked sent, and its package."""
        with self.store.tx() as s:
            job = s.scalars(select(JobRow).where(JobRow.dev_id == dev_id, JobRow.state == "pending")
                            .order_by(JobRow.id)).first()
            if job is None:
                return None
            pkg = s.get(PackageRow, job.package_id)
            assert pkg is not None
            job.state, job.updated = "sent", time.time()
            return job, pkg

    def _deliver(self, live: Live, dev: DeviceRow, cap: DeviceCapability, fumo_uri: str, job: JobRow,
                 pkg: PackageRow, *, search: bool = True) -> Generator[list[Command], Replies, bool]:
        """One FUMO update at the device's FUMO node: confirm with the user, set the package, Exec; True if the
        device took it. In a Sequence where the device takes one, else the confirmation first on its own. A
        device without FUMO where its kind keeps it (404) has its own tree searched, once."""
        names = [Item(target=f"{fumo_uri}/PkgName", data=pkg.name),
                 Item(target=f"{fumo_uri}/PkgVersion", data=pkg.to_version)]
        before: list[Command] = []
        # Inline only to a device that takes large objects of this size (its MaxObjSize holds for the
        # session); any other gets the package by download.
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
        asks = self.config.confirm_updates and UI_CONFIRM in (cap.ui_alerts or ())
        code: int | None = None
        answer: int | None = None  # the user's answer to the confirmation
        if cap.sequence:
            sequence = Sequence([confirm, Replace(names), execute] if asks else [Replace(names), execute])
            replies = yield [*before, sequence]
            code, answer = replies.code(execute), replies.code(confirm)
            if replies.code(sequence) in _NOT_SUPPORTED:
                self._learn(dev, DeviceCapability(sequence=False), f"refuses Sequence ({replies.code(sequence)})")
                cap = replace(cap, sequence=False)
                before = [c for c in before if replies.code(c) != 200]  # (an inline package already in place)
        if not cap.sequence:
            # No Sequence: the prompt goes alone, and the update only after the user's yes.
            if asks:
                answer = (yield [confirm]).code(confirm)
                if answer in _NOT_SUPPORTED:
                    shown = tuple(a for a in cap.ui_alerts or () if a != UI_CONFIRM)
                    self._learn(dev, DeviceCapability(ui_alerts=shown), f"cannot show confirmation alerts ({answer})")
            if answer in (None, 200) or answer in _NOT_SUPPORTED:
                code = (yield [*before, Replace(names), execute]).code(execute)
        if code == 404 and search:
            found = yield from capabilities.find_fumo(bool(cap.structured_get))
            if found.fumo_uri and found.fumo_uri != fumo_uri:
                # This firmware version keeps it elsewhere: remember that for the version, deliver there.
                with self.store.tx() as s:
                    capabilities.record(s, dev.make, dev.model, dev.version, "discovered",
                                        DeviceCapability(fumo_uri=found.fumo_uri))
                self.store.log(dev.dev_id, "discovery", f"{dev.make} {dev.model} {dev.version}: no FUMO at "
                                                        f"{fumo_uri}; found at {found.fumo_uri}")
                return (yield from self._deliver(live, dev, cap, found.fumo_uri, job, pkg, search=False))
        with self.store.tx() as s:
            row = s.get(JobRow, job.id)
            assert row is not None
            row.updated = time.time()
            if code in (200, 202):
                row.state = "accepted"
                text = f"{pkg.name}: the device accepted the update ({code})"
            elif answer in (304, 214):
                row.state, row.result_code = "declined", 401
                row.message = text = f"{pkg.name}: the user declined the update"
            else:
                # (A DM status, not a FUMO result: the device never started the update.)
                row.state, row.message = "failed", f"the device refused the update command (DM status {code})"
                text = f"{pkg.name}: {row.message}"
        self.store.log(job.dev_id, "delivery", text)
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

    def _end(self, live: Live, state: str, note: str, *, release_jobs: bool = True) -> None:
        with self.store.tx() as s:
            row = s.get(SessionRow, live.row_id)
            if row is not None:
                row.state, row.ended, row.note, row.messages = state, time.time(), note, live.messages
            if state != "completed" and release_jobs:
                for job in s.scalars(select(JobRow).where(JobRow.dev_id == live.dev_id, JobRow.state == "sent")):
                    job.state = "pending"

    def _abandoned(self, live: Live) -> None:
        """End a session the device walked away from, if it is still open (an ended one keeps its outcome)."""
        with self.store.tx() as s:
            row = s.get(SessionRow, live.row_id)
            still_open = row is not None and row.state == "open"
        if still_open:
            # A job sent in it must be sent again.
            self._end(live, "failed", "the device went silent")

    def _forget_idle(self) -> None:
        """Drop sessions gone quiet; the oldest come first, so this stops at the first one still wanted."""
        now = time.time()
        idle = []
        with self._lock:
            while self._live:
                key, live = next(iter(self._live.items()))
                quiet = now - live.touched
                if quiet <= SESSION_IDLE and not (live.finished and quiet > FINISHED_IDLE):
                    break
                self._drop(key)
                idle.append(live)
        for live in idle:
            if not live.finished:
                self._abandoned(live)


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


__all__ = ["DmServer", "HttpReply", "Inbound", "ServerConfig", "Task"]
