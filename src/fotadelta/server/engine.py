"""The DM server's session engine: authentication, the server's side of each DM package, FUMO jobs.

Each HTTP request carries one client message. The engine authenticates it (MD5 digest, basic or
HMAC, with a fresh nonce every session), records what the client reports (DevInfo, Results,
Generic Alerts with FUMO results, software requests), and answers with the next message of its
own package. What the server does in a session is written as a generator per session (its
"script"): it yields the commands of one package and receives the client's statuses and results
for them; the engine splits packages over messages, chunks large objects and matches replies.

Jobs live in the store: a job installs one package and remembers the version its chain must
reach; when the device reports success the next step of the chain is planned at once."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fotadelta import chain, package
from fotadelta.dm import auth, fumo, notification
from fotadelta.dm.client import (ALERT_CLIENT_INITIATED, ALERT_GENERIC, ALERT_SERVER_INITIATED, FUMO, FUMO_TYPE,
                                 SOFTWARE_LIST, SOFTWARE_SELECT, UI_CONFIRM, UI_DISPLAY, UPDATE_KINDS_NODE)
from fotadelta.dm.codec import Encoding, decode, encoding_of
from fotadelta.dm.element import CodecError
from fotadelta.dm.model import Alert, Command, Exec, Get, Item, Message, Meta, Replace, Results, Sequence, Status
from fotadelta.dm.provisioning import DEMO_SECRET, SERVER_ID, derive
from fotadelta.dm.session import ALERT_NEXT_MESSAGE, ALERT_SESSION_ABORT, Endpoint, status_for, walk
from fotadelta.errors import PackageError
from fotadelta.files import write_atomic
from fotadelta.package import descriptor
from fotadelta.server.store import DeviceRow, JobRow, PackageRow, SessionRow, Store

SESSION_IDLE = 300.0  # seconds before a silent session is forgotten
FINISHED_IDLE = 30.0  # a finished session is kept this long, in case the client has more to say
_RESULT_CODE = re.compile(r"[0-9]{1,9}")
# Package kinds by the names devices use for what they install (UPDATE_KINDS_NODE, docs/omadm.md).
_KINDS = {package.PatchKind.PLAIN: "plain", package.PatchKind.IN_PLACE: "in-place", package.PatchKind.FULL: "full"}
_KIND_WORDS = {"plain": "plain patches", "in-place": "in-place patches", "full": "full images"}
# What the device reports in package 1, and the device row's column for each.
_DEVINFO = {"./DevInfo/Man": "make", "./DevInfo/Mod": "model", "./DevInfo/Lang": "lang",
            "./DevInfo/Ext/PushAddr": "push_url", "./DevInfo/Ext/MSISDN": "msisdn"}


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

    @property
    def database(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'fotadelta.db'}"


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
    """A session in progress (memory only: a restart fails it cleanly, see Store.recover)."""

    dev_id: str
    ep: Endpoint
    row_id: int
    authenticated: bool = False
    server_accepted: bool = False  # the client answered 212 to our credentials
    failures: int = 0
    script: Script | None = None
    replies: Replies = field(default_factory=Replies)
    last_sent: list[Command] = field(default_factory=list)
    last_sent_msg: int = 0
    ui: list[Command] = field(default_factory=list)  # prompts to show at the next opportunity
    touched: float = field(default_factory=time.time)
    finished: bool = False  # the server's last message ended the session (the client may still go on)
    messages: int = 0  # client messages received
    dev: DeviceRow | None = None  # the device's row (None: unknown, refused), kept current by _set_device
    lock: threading.Lock = field(default_factory=threading.Lock)


class DmServer:
    """The DM server: sessions, package publishing, jobs and notifications."""

    def __init__(self, config: ServerConfig, *, push: Callable[[DeviceRow, bytes], None] | None = None) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        (config.data_dir / "packages").mkdir(exist_ok=True)
        self.store = Store(config.database)
        self.recovered = self.store.recover()
        self.push = push
        self._live: OrderedDict[tuple[str, str], Live] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self._descriptors: dict[int, descriptor.Descriptor] = {}
        self._tasks: dict[str, list[Task]] = {}

    # -- fleet operations ------------------------------------------------------------------------

    def register(self, dev_id: str, *, password: str, server_password: str, user: str | None = None,
                 auth_type: str = "md5") -> None:
        """Provision a device's credentials (replacing earlier ones)."""
        with self.store.tx() as s:
            row = s.get(DeviceRow, dev_id) or DeviceRow(dev_id=dev_id)  # (a new row starts with the zero nonces)
            row.user, row.password, row.server_password, row.auth = user or dev_id, password, server_password, auth_type
            s.add(row)

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
            for old in s.scalars(select(JobRow).where(JobRow.dev_id == dev_id, JobRow.state == "pending")):
                old.state, old.message = "cancelled", f"superseded by a job to {goal_version}"
            step = self._plan(s, dev, goal_version)
            job = JobRow(dev_id=dev_id, package_id=step.id, goal_version=goal_version,
                         correlator=secrets.token_hex(8), delivery=delivery)
            s.add(job)
            s.flush()
        self.store.log(dev_id, "job", f"update to {goal_version} planned, first step {step.name}")
        return job

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

    def notification(self, dev_id: str, *, initiator: str = "server") -> bytes:
        """A package #0 for the device, with a new session id recorded as expected."""
        return self._notification(dev_id, initiator)[1]

    def _notification(self, dev_id: str, initiator: str) -> tuple[DeviceRow, bytes]:
        with self.store.tx() as s:
            dev = s.get(DeviceRow, dev_id)
            if dev is None:
                raise LookupError(f"unknown device {dev_id}")
            sid = secrets.randbelow(0xFFFF) + 1
            s.add(SessionRow(dev_id=dev_id, session_id=notification.session_id_text(sid), initiator=initiator))
            ui = notification.UiMode.USER_INTERACTION if initiator == "web" else notification.UiMode.BACKGROUND
            trigger = notification.Notification(sid, self.config.server_id, ui, initiator_server=initiator == "server")
            return dev, notification.build(trigger, dev.server_password, base64.b64decode(dev.server_nonce))

    def notify(self, dev_id: str) -> None:
        """Ask a device to open a session, through the push transport."""
        if self.push is None:
            raise RuntimeError("no notification transport is configured")
        dev, pkg0 = self._notification(dev_id, "server")
        self.push(dev, pkg0)

    def enqueue(self, dev_id: str, commands: list[Command]) -> Task:
        """Send commands (Get, Replace, Atomic, ...) as one package in the device's next session, before
        any update job; the Task gets the device's answers. For operators and tests; not persisted."""
        task = Task(commands)
        with self._lock:
            self._tasks.setdefault(dev_id, []).append(task)
        return task

    def package_path(self, package_id: int) -> Path | None:
        with self.store.tx() as s:
            row = s.get(PackageRow, package_id)
            return None if row is None else Path(row.path)

    # -- one HTTP request ------------------------------------------------------------------------

    def handle(self, body: bytes, content_type: str | None, hmac_header: str | None = None) -> HttpReply:
        """Process one client message and produce the HTTP response."""
        try:
            encoding = encoding_of(content_type)
        except CodecError as exc:
            return HttpReply(415, "text/plain", f"{exc}\n".encode())
        try:
            msg = decode(body, encoding, max_size=self.config.max_msg_size)
        except CodecError as exc:
            return HttpReply(400, "text/plain", f"malformed SyncML DM message: {exc}\n".encode())
        self._forget_idle()
        hdr = msg.header
        key = (hdr.source, hdr.session_id)
        with self._lock:
            live = self._live.get(key)
            if live is not None:
                self._live.move_to_end(key)
        starts = any(isinstance(c, Alert) and c.data in (ALERT_CLIENT_INITIATED, ALERT_SERVER_INITIATED)
                     for c in msg.commands)
        if live is not None and starts and hdr.msg_id == 1:
            # A new session under an id used before (ids are 16 bits, and a finished session is kept a
            # while): it must authenticate afresh, not inherit the old session's state.
            self._supersede(live)
            live = None
        if live is None:
            live = self._open(hdr.source, hdr.session_id, encoding,
                              self._device(hdr.source, _scheme(msg, hmac_header)))
            if not starts or live.dev is None:
                # Unknown device, or the middle of a session this server no longer knows (it restarted):
                # end it cleanly; the client starts a new one.
                return self._refuse(live, msg, 401 if live.dev is None else 506)
        dev = live.dev
        assert dev is not None  # (only sessions of known devices are kept)
        with live.lock:
            live.touched, live.finished = time.time(), False
            live.ep.note_header(hdr)
            return self._step(live, dev, msg, body, hmac_header)

    def _device(self, dev_id: str, scheme: str) -> DeviceRow | None:
        """The device's row; an unknown device with factory credentials is enrolled for the
        authentication scheme its first message uses (md5, basic or hmac), which stays its scheme."""
        with self.store.tx() as s:
            dev = s.get(DeviceRow, dev_id)
            if dev is None and self.config.factory_secret:
                creds = derive(self.config.factory_secret, dev_id, self.config.server_id)
                # (The nonces start as the column defaults, four zero bytes.)
                dev = DeviceRow(dev_id=dev_id, user=creds.user, password=creds.password,
                                server_password=creds.server_password, auth=scheme)
                s.add(dev)
            return dev

    def _open(self, dev_id: str, sid: str, encoding: Encoding, dev: DeviceRow | None) -> Live:
        ep = Endpoint(session_id=sid, local=f"{self.config.public_url}/dm", remote=dev_id, encoding=encoding,
                      max_msg_size=self.config.max_msg_size, max_obj_size=self.config.max_obj_size,
                      local_name=self.config.server_id)
        with self.store.tx() as s:
            row = s.scalars(select(SessionRow).where(SessionRow.dev_id == dev_id, SessionRow.session_id == sid,
                                                     SessionRow.state == "notified")).first()
            if row is None:
                row = SessionRow(dev_id=dev_id, session_id=sid, initiator="client")
                s.add(row)
            row.state = "open"
            s.flush()
            live = Live(dev_id, ep, row.id, dev=dev)
        if dev is not None:
            with self._lock:
                self._live[(dev_id, sid)] = live
        return live

    def _refuse(self, live: Live, msg: Message, code: int) -> HttpReply:
        statuses = [Status(msg.header.msg_id, 0, "SyncHdr", code)]
        statuses += [status_for(c, msg.header.msg_id, 215) for c in msg.commands if not isinstance(c, Status)]
        live.ep.push(Alert(ALERT_SESSION_ABORT))
        _, body = live.ep.compose(statuses)
        self._end(live, "failed", f"refused with {code}")
        with self._lock:
            self._live.pop((live.dev_id, live.ep.session_id), None)
        return HttpReply(200, live.ep.encoding.content_type, body)

    def _step(self, live: Live, dev: DeviceRow, msg: Message, body: bytes, hmac_header: str | None) -> HttpReply:
        ep, msg_id = live.ep, msg.header.msg_id
        live.messages += 1  # stored when the session ends
        hdr_status, ok = self._authenticate(live, dev, msg, body, hmac_header)
        if not ok:
            live.failures += 1
            statuses = [hdr_status] + [status_for(c, msg_id, hdr_status.code) for c in msg.commands
                                       if not isinstance(c, Status)]
            # Recorded now: a client that gives up never says so. A later success reopens the session.
            # Jobs go back only from a session that had authenticated (HMAC checks every message): one that
            # never did sent none, and another session of the device may be delivering one.
            self.store.log(dev.dev_id, "auth", f"session {ep.session_id}: credentials refused ({hdr_status.code})")
            self._end(live, "failed", f"authentication failed ({hdr_status.code})", release_jobs=live.authenticated)
            if live.failures > 3:
                ep.push(Alert(ALERT_SESSION_ABORT))
            return self._reply(live, dev, statuses)
        if live.failures:
            live.failures = 0  # the abort above counts failures in a row
            self._reopen(live)
        statuses = [hdr_status]
        for cmd in msg.commands:
            if isinstance(cmd, Status):
                self._client_status(live, dev, cmd)
                continue
            if isinstance(cmd, Alert) and cmd.data == ALERT_SESSION_ABORT:
                self._end(live, "aborted", "the client aborted the session")
                return HttpReply(200, ep.encoding.content_type, ep.compose([hdr_status])[1])
            whole, chunk_statuses = ep.take(cmd, msg_id)
            statuses += chunk_statuses
            if whole is not None and (answer := self._client_command(live, dev, whole, msg_id)) is not None:
                statuses.append(answer)
        # Our package continues (Alert 1222 came, or the client just answered): send its next message.
        if not ep.queue and msg.final:
            self._advance(live, dev)
        if not msg.final and not ep.queue:
            ep.push(Alert(ALERT_NEXT_MESSAGE))
        return self._reply(live, dev, statuses)

    def _reply(self, live: Live, dev: DeviceRow, statuses: list[Status]) -> HttpReply:
        ep = live.ep
        cred = None
        if not live.server_accepted and dev.auth != "hmac":
            cred = auth.credential(dev.auth, self.config.server_id, dev.server_password,
                                   base64.b64decode(dev.server_nonce))
        msg, body = ep.compose(statuses, cred=cred)
        live.last_sent = [c for c in msg.commands if not isinstance(c, Status)]
        live.last_sent_msg = msg.header.msg_id
        if msg.final and not live.last_sent and live.authenticated:
            # (An unauthenticated client's session has been recorded as failed: it did not complete.)
            self._end(live, "completed", "")
            live.finished = True
            live.ep.sent.clear()  # nothing of ours awaits an answer; inline packages need not stay in memory
        headers = {}
        if dev.auth == "hmac":
            headers["x-syncml-hmac"] = auth.hmac_header(self.config.server_id, dev.server_password,
                                                        base64.b64decode(dev.server_nonce), body)
        return HttpReply(200, ep.encoding.content_type, body, headers)

    def _authenticate(self, live: Live, dev: DeviceRow, msg: Message, body: bytes,
                      hmac_header: str | None) -> tuple[Status, bool]:
        msg_id = msg.header.msg_id
        fresh = auth.new_nonce()

        def answer(code: int, ok: bool) -> tuple[Status, bool]:
            chal = auth.challenge(dev.auth, fresh)
            self._set_device(dev, client_nonce=chal.meta.next_nonce)
            return Status(msg_id, 0, "SyncHdr", code, chal=chal), ok

        nonce = base64.b64decode(dev.client_nonce)
        if dev.auth == "hmac":
            # HMAC authenticates every message, each with the nonce the previous answer gave.
            if hmac_header is None:
                return answer(407, False)
            try:
                h = auth.parse_hmac_header(hmac_header)
            except auth.AuthError:
                return answer(401, False)
            ok = h.username == dev.user and auth.check_hmac(h, dev.password, nonce, body)
            live.authenticated = live.authenticated or ok
            return answer(200 if ok else 401, ok)
        if live.authenticated:
            return Status(msg_id, 0, "SyncHdr", 200), True
        cred = msg.header.cred
        if cred is None:
            return answer(407, False)
        if cred.type == "syncml:auth-basic" and dev.auth == "basic":
            ok = auth.check_basic(cred.data, dev.user, dev.password)
        elif cred.type == "syncml:auth-md5" and dev.auth == "md5":
            ok = (msg.header.source_name in (None, dev.user)) and auth.check_md5(cred.data, dev.user, dev.password,
                                                                                 nonce)
        else:
            ok = False
        if not ok:
            return answer(401, False)
        live.authenticated = True
        # 212: no more credentials this session; the NextNonce is for the next session.
        return answer(212, True)

    def _client_status(self, live: Live, dev: DeviceRow, status: Status) -> None:
        if status.cmd_ref == 0 and status.cmd == "SyncHdr":
            nonce = status.chal.meta.next_nonce if status.chal is not None else None
            if nonce is not None and _valid_nonce(nonce):
                self._set_device(dev, server_nonce=nonce)
            if status.code in (200, 212):
                live.server_accepted = True
            elif status.code in (401, 407) and status.msg_ref == live.last_sent_msg:
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
            self._devinfo(dev, cmd.items)
            return status_for(cmd, msg_id, 200)
        if isinstance(cmd, Results):
            ours = live.ep.sent.get((cmd.msg_ref or 0, cmd.cmd_ref))
            if ours is None:
                return status_for(cmd, msg_id, 400)  # Results for nothing we asked
            live.replies.results.setdefault(id(ours), []).extend(cmd.items)
            return None  # a Results that is fine gets no Status
        return status_for(cmd, msg_id, 405)  # a client may not send this command

    def _devinfo(self, dev: DeviceRow, items: list[Item]) -> None:
        values: dict[str, object] = {"last_seen": time.time()}
        for item in items:
            attr = _DEVINFO.get(item.source or "")
            if attr is not None and item.data is not None:
                values[attr] = item.text
        self._set_device(dev, **values)

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
            try:
                self.assign(dev.dev_id, data[3:])
            except ValueError as exc:
                self.store.log(dev.dev_id, "request", f"selection refused: {exc}")
                return status_for(alert, msg_id, 404)
            return status_for(alert, msg_id, 200)
        if kind.startswith(FUMO_TYPE):
            # ASCII digits, a few: str.isdigit takes "²" (which int() refuses) and strings of any length.
            if not _RESULT_CODE.fullmatch(data):
                return status_for(alert, msg_id, 415)
            self._fumo_result(live, dev, alert.correlator, int(data))
            return status_for(alert, msg_id, 200)
        return status_for(alert, msg_id, 406)

    def _fumo_result(self, live: Live, dev: DeviceRow, correlator: str | None, code: int) -> None:
        with self.store.tx() as s:
            # The job must be this device's: a correlator alone would let one device report for another.
            job = s.scalars(select(JobRow).where(JobRow.correlator == (correlator or ""),
                                                 JobRow.dev_id == dev.dev_id)).first()
            if job is None or job.state in ("succeeded", "failed"):
                # Unknown, or reported again (a client repeats its first package after a challenge).
                text = f"FUMO result {code} for correlator {correlator}: no open job"
                goal = None
            else:
                pkg = s.get(PackageRow, job.package_id)
                assert pkg is not None
                job.result_code, job.updated = code, time.time()
                job.state = "succeeded" if 200 <= code < 300 else "failed"
                job.message = f"FUMO {code}: {fumo.describe(code)}"
                text = f"{pkg.name}: FUMO result {code}"
                goal = job.goal_version if job.state == "succeeded" else None
                if job.state == "succeeded":
                    row = s.get(DeviceRow, dev.dev_id)
                    assert row is not None
                    row.version = dev.version = pkg.to_version
                    live.ui.append(Alert(UI_DISPLAY, [Item(data="MINDT=5"),
                                                      Item(data=self._prompt(dev, pkg, "post-update"))]))
        self.store.log(dev.dev_id, "result", text)
        if goal is not None and goal != dev.version:
            self.assign(dev.dev_id, goal)  # the next step of the chain, delivered in this session

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
        while (task := self._next_task(dev.dev_id)) is not None:
            task.answer((yield task.commands))
        while (claimed := self._claim_job(dev.dev_id)) is not None:
            if (yield from self._deliver(live, dev, *claimed)):
                return  # the device downloads, installs, reboots and reports in a new session

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
        self._set_device(dev, version=values.get("./DevDetail/FwV", dev.version),
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

    def _deliver(self, live: Live, dev: DeviceRow, job: JobRow,
                 pkg: PackageRow) -> Generator[list[Command], Replies, bool]:
        """One FUMO update: confirm with the user, set the package, Exec; True if the device took it."""
        names = [Item(target=f"{FUMO}/PkgName", data=pkg.name), Item(target=f"{FUMO}/PkgVersion", data=pkg.to_version)]
        before: list[Command] = []
        # Inline only to a device that takes large objects of this size (its MaxObjSize holds for the
        # session); any other gets the package by download.
        fits = live.ep.peer_max_obj is None or pkg.size <= live.ep.peer_max_obj
        if job.delivery == "inline" and dev.large_objects and fits:
            before.append(Replace([Item(target=f"{FUMO}/Update/PkgData", data=Path(pkg.path).read_bytes(),
                                        meta=Meta(format="bin", type=descriptor.PACKAGE_MIME_TYPE))]))
            node = f"{FUMO}/Update"
        else:
            names.append(Item(target=f"{FUMO}/DownloadAndUpdate/PkgURL",
                              data=f"{self.config.public_url}/packages/{pkg.id}"))
            node = f"{FUMO}/DownloadAndUpdate"
        execute = Exec(Item(target=node), correlator=job.correlator)
        steps: list[Command] = [Replace(names), execute]
        confirm = Alert(UI_CONFIRM, [Item(data="MINDT=30"), Item(data=self._prompt(dev, pkg, "pre-update"))])
        if self.config.confirm_updates:
            steps.insert(0, confirm)
        replies = yield [*before, Sequence(steps)]
        code = replies.code(execute)
        with self.store.tx() as s:
            row = s.get(JobRow, job.id)
            assert row is not None
            row.updated = time.time()
            if code in (200, 202):
                row.state = "accepted"
                text = f"{pkg.name}: the device accepted the update ({code})"
            elif replies.code(confirm) in (304, 214):
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

    def _supersede(self, live: Live, why: str = "a new session took over its session id") -> None:
        """End a session that is still open (an ended one keeps its outcome)."""
        with self.store.tx() as s:
            row = s.get(SessionRow, live.row_id)
            still_open = row is not None and row.state == "open"
        if still_open:
            self._end(live, "failed", why)

    def _reopen(self, live: Live) -> None:
        """The client authenticated after failing: the session is open again."""
        with self.store.tx() as s:
            row = s.get(SessionRow, live.row_id)
            if row is not None and row.state == "failed":
                row.state, row.ended, row.note = "open", None, ""

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
                del self._live[key]
                idle.append(live)
        for live in idle:
            if not live.finished:
                # A session the device walked away from has failed: a job sent in it must be sent again.
                self._supersede(live, "the device went silent")


def _scheme(msg: Message, hmac_header: str | None) -> str:
    """The authentication scheme a client's message uses: hmac, basic or (by default) md5."""
    if hmac_header is not None:
        return "hmac"
    cred = msg.header.cred
    return "basic" if cred is not None and cred.type == "syncml:auth-basic" else "md5"


def _valid_nonce(text: str) -> bool:
    """Base64 of 1 to 48 bytes: what the store keeps (64 characters) and can decode again."""
    if not text or len(text) > 64:
        return False
    try:
        return len(base64.b64decode(text, validate=True)) > 0
    except ValueError:
        return False


__all__ = ["DmServer", "HttpReply", "ServerConfig", "Task"]
