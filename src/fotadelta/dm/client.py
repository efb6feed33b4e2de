"""The DM client: the device emulator's side of OMA DM 1.2 sessions, FUMO downloads and updates.

A DmClient owns the device's management tree (DevInfo, DevDetail, DMAcc, a FUMO object and the
fotadelta extension nodes), runs sessions with the server over HTTP, executes the server's
commands on the tree, answers UI alerts through a scriptable user interface, downloads update
packages (HEAD, then Range requests that resume an interrupted download), hands them to the
update agent, survives a power cut during the install, and reports the FUMO result code in a
Generic Alert, in a new session after the reboot. Unreachable servers and broken sessions are
retried with exponential backoff."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import httpx

from fotadelta import agent
from fotadelta.dm import auth, notification
from fotadelta.dm.codec import Encoding, decode, encoding_of
from fotadelta.dm.element import CodecError
from fotadelta.dm.model import (DM_1_1, DM_1_2, Add, Alert, Atomic, Command, Copy, Delete, Exec, Get, Item, Message,
                                Meta, Replace, Results, Sequence, Status)
from fotadelta.dm.model import Protocol as DmProtocol
from fotadelta.dm.session import ALERT_NEXT_MESSAGE, ALERT_SESSION_ABORT, Endpoint, status_for
from fotadelta.dm.tree import DmTree, TreeError
from fotadelta.flash import PowerLoss

log = logging.getLogger("fotadelta.dm.client")
T = TypeVar("T")

ALERT_SERVER_INITIATED = 1200
ALERT_CLIENT_INITIATED = 1201
ALERT_GENERIC = 1226
UI_DISPLAY, UI_CONFIRM, UI_INPUT, UI_CHOICE = 1100, 1101, 1102, 1103

FUMO = "./FUMO/Firmware"
FUMO_TYPE = "org.openmobilealliance.dm.firmwareupdate"
# Device-initiated software requests: the list, then the choice (vendor alert types, see docs/omadm.md).
SOFTWARE_LIST = "com.fotadelta.software.list"
SOFTWARE_SELECT = "com.fotadelta.software.select"
UPDATE_KINDS_NODE = "./DevDetail/Ext/FwUpdateKinds"
# A web-initiated session: the one-time token the portal put in package #0, redeemed by the device's session.
PORTAL_SELECTION = "com.fotadelta.portal.selection"


class FumoState:
    IDLE = 10
    DOWNLOAD_FAILED = 20
    DOWNLOAD_PROGRESSING = 30
    DOWNLOAD_COMPLETE = 40
    READY_TO_UPDATE = 50
    UPDATE_PROGRESSING = 60
    UPDATE_FAILED_HAVE_DATA = 70
    UPDATE_FAILED_NO_DATA = 80
    UPDATE_SUCCESSFUL_HAVE_DATA = 90
    UPDATE_SUCCESSFUL_NO_DATA = 100


class BootstrapError(ValueError):
    """A bootstrap message the device refuses (not for it, not authenticated by the user's PIN, malformed)."""


class SessionError(Exception):
    """A session could not be completed (transport, authentication or protocol failure)."""


class UserInterface(Protocol):
    """What the device shows and asks its user (UI alerts 1100-1103)."""

    def display(self, text: str) -> None: ...
    def confirm(self, text: str) -> bool | None: ...  # None: the user cancelled
    def text_input(self, text: str) -> str | None: ...
    def choose(self, text: str, options: list[str]) -> int | None: ...  # index into options


@dataclass
class ScriptedUi:
    """A user who answers as scripted and remembers what the device showed."""

    accept: bool | None = True
    text: str = ""
    choice: int = 0
    shown: list[str] = field(default_factory=list)

    def display(self, text: str) -> None:
        self.shown.append(text)

    def confirm(self, text: str) -> bool | None:
        self.shown.append(text)
        return self.accept

    def text_input(self, text: str) -> str | None:
        self.shown.append(text)
        return self.text

    def choose(self, text: str, options: list[str]) -> int | None:
        self.shown.append(text)
        return self.choice if options else None


class ReplyHead(Protocol):
    """What the client reads of an HTTP response before its body: httpx's Response, or transport.Reply."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...  # looked up by lower-case name


class Reply(ReplyHead, Protocol):
    @property
    def content(self) -> bytes: ...


class Page(Reply, Protocol):
    def raise_for_status(self) -> object: ...  # an HTTP error status raises httpx.HTTPError


class StreamedReply(ReplyHead, Protocol):
    def iter_bytes(self, chunk_size: int) -> Iterator[bytes]: ...


class Http(Protocol):
    """The HTTP a device's DM client uses: httpx.Client (the default), or the emulated devices' lean
    transport.DeviceHttp. Transport failures raise httpx.TransportError (and are retried)."""

    def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> Reply: ...
    def get(self, url: str) -> Page: ...
    def stream(self, method: str, url: str, *, headers: dict[str, str]) -> AbstractContextManager[StreamedReply]: ...
    def close(self) -> None: ...


@dataclass
class ClientConfig:
    """How the device reaches and authenticates to its DM server (its DMAcc entry)."""

    server_url: str
    dev_id: str  # e.g. IMEI:493005100592800
    user: str
    password: str
    server_id: str
    server_password: str
    auth: str = "md5"  # md5 | basic | hmac
    encoding: Encoding = Encoding.XML
    lang: str = "en"
    msisdn: str | None = None
    push_url: str | None = None
    max_msg_size: int = 16 * 1024
    max_obj_size: int = 4 * 1024 * 1024
    # Retries outlast a server restart: 8 waits of 0.5, 1, 2, 4, 8, 10, 10, 10 s (capped), each scaled by a
    # random factor in [0.5, 1] so that a fleet cut off together does not come back together: 23-46 s in all.
    retries: int = 8
    backoff: float = 0.5  # first retry delay in seconds; doubles each time
    backoff_cap: float = 10.0  # no single wait is longer
    timeout: float = 30.0
    structured_get: bool = True  # False: Get with ?list= answers 406, as older clients do
    protocol: DmProtocol = DM_1_2  # DM_1_1: OMA DM 1.1.2, no Generic Alert (the server reads the FUMO State)


@dataclass
class Download:
    """A package being downloaded; survives power cuts (it lives in the device's storage)."""

    url: str
    correlator: str | None
    node: str
    data: bytearray = field(default_factory=bytearray)
    size: int | None = None


@dataclass
class Report:
    """A FUMO result waiting to be delivered to the server in a Generic Alert."""

    node: str
    alert_type: str
    code: int
    correlator: str | None
    message: str = ""  # what happened, for the device's own log (not sent)


@dataclass(frozen=True)
class Post:
    """A DM message to send: where, what, with which headers."""

    url: str
    body: bytes
    headers: dict[str, str]


# Session logs a client keeps (DmClient.sessions).
SESSION_LOGS = 256


@dataclass
class SessionLog:
    session_id: str
    messages: int = 0
    aborted: bool = False


class DmClient:
    """A device's DM client, its tree and its FUMO update flow."""

    def __init__(self, config: ClientConfig, device: agent.Device, *, ui: UserInterface | None = None,
                 http: Http | None = None, hw_version: str = "1.0") -> None:
        self.config, self.device = config, device
        self.ui: UserInterface = ui or ScriptedUi()
        self.http: Http = http or httpx.Client(timeout=config.timeout)
        self.tree = DmTree()
        self.client_nonce = b"\0\0\0\0"  # the server's latest NextNonce for our credentials
        self.server_nonce = b"\0\0\0\0"  # the nonce we gave the server for its credentials and package #0
        self.download: Download | None = None  # being downloaded
        self.staged: Download | None = None  # downloaded by Exec Download, waiting for Exec Update
        self.install: Download | None = None  # to be installed now
        self.last_outcome: agent.Outcome | None = None
        self.reports: list[Report] = []
        self.offers: list[tuple[str, str]] = []  # (entry id, description) from a software-list request or FUMO Ext
        # The latest sessions' logs: a device that listens for months keeps only these.
        self.sessions: deque[SessionLog] = deque(maxlen=SESSION_LOGS)
        self.download_cut_after: int | None = None  # fault injection: drop the connection after n bytes
        self.downloaded_bytes = 0
        self._chooser: Callable[[list[tuple[str, str]]], int | None] = lambda offers: None
        self._reply_hmac: str | None = None
        self._jitter = random.Random()  # the backoff's jitter (seeded once: each new one reads the OS's entropy)
        self._detail_read = False  # the server read ./DevDetail (it did not know our version yet)
        # Called with each FUMO result as the device records it (successes and failures alike).
        self.on_result: Callable[[Report], None] | None = None
        self._build_tree(hw_version)

    # -- the management tree ---------------------------------------------------------------------

    def _build_tree(self, hw_version: str) -> None:
        c, d, t = self.config, self.device, self.tree
        get_only = "Get=*"
        t.put("./DevInfo", interior=True, acl=get_only, type="urn:oma:mo:oma-dm-devinfo:1.0")
        dm_version = "1.1.2" if c.protocol is DM_1_1 else "1.2"
        for name, value in (("DevId", c.dev_id), ("Man", d.make), ("Mod", d.model), ("DmV", dm_version),
                            ("Lang", c.lang)):
            t.put(f"./DevInfo/{name}", value)
        if c.push_url:
            t.put("./DevInfo/Ext/PushAddr", c.push_url)
        if c.msisdn:
            t.put("./DevInfo/Ext/MSISDN", c.msisdn)
        t.put("./DevDetail", interior=True, acl=get_only, type="urn:oma:mo:oma-dm-devdetail:1.0")
        for name, value in (("URI/MaxDepth", str(16)), ("URI/MaxTotLen", "256"), ("URI/MaxSegLen", "64"),
                            ("DevTyp", "embedded"), ("OEM", d.make), ("FwV", d.version), ("SwV", d.version),
                            ("HwV", hw_version)):
            t.put(f"./DevDetail/{name}", value)
        t.put("./DevDetail/LrgObj", "true", format="bool")
        # What this single-slot device installs: in-place patches and full images, not plain patches.
        t.put("./DevDetail/Ext", interior=True)
        t.put(UPDATE_KINDS_NODE, "in-place full")
        srv = f"Get={c.server_id}&Replace={c.server_id}"
        acc = "./DMAcc/fotadelta"
        t.put("./DMAcc", interior=True, acl=srv, type="urn:oma:mo:oma-dm-dmacc:1.0")
        for name, value in (("AppID", "w7"), ("ServerID", c.server_id), ("Name", "fotadelta"),
                            ("AppAddr/srv/Addr", c.server_url), ("AppAddr/srv/AddrType", "URI"),
                            ("AAuthPref", _AUTH_TYPES[c.auth]),
                            ("AppAuth/cl/AAuthLevel", "CLCRED"), ("AppAuth/cl/AAuthType", _AUTH_TYPES[c.auth]),
                            ("AppAuth/cl/AAuthName", c.user),
                            ("AppAuth/srv/AAuthLevel", "SRVCRED"), ("AppAuth/srv/AAuthType", _AUTH_TYPES[c.auth]),
                            ("AppAuth/srv/AAuthName", c.server_id)):
            t.put(f"{acc}/{name}", value)
        # Secrets can be replaced by the server but never read back.
        t.put(f"{acc}/AppAuth/cl/AAuthSecret", c.password, acl=f"Replace={c.server_id}")
        t.put(f"{acc}/AppAuth/srv/AAuthSecret", c.server_password, acl=f"Replace={c.server_id}")
        fumo = f"Get={c.server_id}&Replace={c.server_id}&Exec={c.server_id}"
        t.put("./FUMO", interior=True, acl=fumo)
        t.put(FUMO, interior=True, type="urn:oma:mo:oma-fumo:1.0")
        for name in ("PkgName", "PkgVersion", "Download/PkgURL", "DownloadAndUpdate/PkgURL"):
            t.put(f"{FUMO}/{name}", "")
        t.put(f"{FUMO}/Update/PkgData", b"", format="bin", type="application/octet-stream")
        t.put(f"{FUMO}/State", str(FumoState.IDLE), format="int", acl=f"Get={c.server_id}")
        t.put(f"{FUMO}/Ext", interior=True)
        # fotadelta's extension: the software the server offers, one "version<TAB>bytes" line each.
        t.put(f"{FUMO}/Ext/Offers", "")
        t.on_replace(f"{FUMO}/Ext/Offers", self._offers_replaced)
        t.on_exec(f"{FUMO}/DownloadAndUpdate", self._exec_download)
        t.on_exec(f"{FUMO}/Download", self._exec_download)
        t.on_exec(f"{FUMO}/Update", self._exec_update)

    def _offers_replaced(self, uri: str, value: str | bytes | None) -> None:
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value or ""
        self.offers = [(f"to:{v}", f"{v} ({size} bytes)") for v, _, size in
                       (line.partition("\t") for line in text.splitlines() if line)]
        self.ui.display("Available software: " + (", ".join(d for _, d in self.offers) or "none"))

    def _set_state(self, state: int) -> None:
        self.tree.put(f"{FUMO}/State", str(state), format="int")

    @property
    def fumo_state(self) -> int:
        return int(str(self.tree.value(f"{FUMO}/State")))

    def _exec_download(self, uri: str, data: str | bytes | None, correlator: str | None) -> int:
        """Exec of Download or DownloadAndUpdate: fetch from the node's PkgURL after the session."""
        url = str(self.tree.value(f"{uri}/PkgURL") or "")
        if not url:
            raise TreeError(404, f"{uri}/PkgURL is empty")
        self.download = Download(url, correlator, uri)
        return 202

    def _exec_update(self, uri: str, data: str | bytes | None, correlator: str | None) -> int:
        pkg = self.tree.value(f"{FUMO}/Update/PkgData")
        if isinstance(pkg, bytes) and pkg:
            self.install = Download("", correlator, uri, bytearray(pkg), len(pkg))
        elif self.staged is not None:
            self.install, self.staged = Download("", correlator, uri, self.staged.data, self.staged.size), None
        else:
            raise TreeError(404, "there is no downloaded package and Update/PkgData is empty")
        self._set_state(FumoState.READY_TO_UPDATE)
        return 202

    # -- sessions --------------------------------------------------------------------------------

    def handle_notification(self, pkg0: bytes, *, browsed: bool = False) -> SessionLog:
        """A package #0 arrived: verify it, then open the session it asks for and finish its work.

        browsed: it came from a page the device's user opened (the web portal), so the selection token
        in its vendor data is the user's choice and is redeemed in the session. Vendor data of a package
        #0 pushed from anywhere else is ignored: whoever can fetch the portal could push one."""
        trigger = notification.verify(pkg0, self.config.server_password, self.server_nonce)
        if trigger.server_id != self.config.server_id:
            raise notification.NotificationError(f"package #0 is from {trigger.server_id!r}, not our server")
        alerts = []
        if browsed and trigger.vendor:
            alerts.append(_generic(FUMO, PORTAL_SELECTION, trigger.vendor.decode("ascii", "replace"), None))
        return self.run(session_id=notification.session_id_text(trigger.session_id), alert=ALERT_SERVER_INITIATED,
                        alerts=alerts)

    def bootstrap(self, body: bytes, content_type: str, pin: str) -> None:
        """Take the DM account a plain-profile bootstrap message carries (OMA DM bootstrap, SEC=USERPIN):
        the MAC in the content type must be the HMAC-SHA1 of the message keyed by the user's PIN, and
        the message a WBXML Add of a DMAcc for this device. The account replaces the device's own:
        server address and id, the credentials both ways, with fresh nonces. Nothing changes if any
        check fails (BootstrapError)."""
        media, *params = (p.strip() for p in content_type.split(";"))
        named = {k.strip().upper(): v.strip() for k, _, v in (p.partition("=") for p in params)}
        if media.lower() != Encoding.WBXML.content_type or named.get("SEC") != _SEC_USERPIN:
            raise BootstrapError(f"not a USERPIN-secured bootstrap message: {content_type[:100]!r}")
        if len(body) > self.config.max_msg_size:
            raise BootstrapError(f"a bootstrap message over {self.config.max_msg_size} bytes")
        mac = hmac.new(pin.encode(), body, hashlib.sha1).hexdigest().upper()
        if not hmac.compare_digest(mac.encode(), named.get("MAC", "").upper().encode()):
            raise BootstrapError("the bootstrap message's MAC does not match the PIN")
        try:
            msg = decode(body, Encoding.WBXML, max_size=self.config.max_msg_size)
        except CodecError as exc:
            raise BootstrapError(f"a malformed bootstrap message: {exc}") from None
        if msg.header.target != self.config.dev_id or not all(isinstance(c, Add) for c in msg.commands):
            raise BootstrapError("the bootstrap message is not a DMAcc for this device")
        values = {i.target: i.text for c in msg.commands if isinstance(c, Add) for i in c.items
                  if i.target and i.data is not None}
        accounts = [t.removesuffix("/ServerID") for t in values if t.startswith("./DMAcc/") and t.endswith("/ServerID")]
        if len(accounts) != 1:
            raise BootstrapError("a bootstrap message carries one DMAcc")
        acc = accounts[0]
        try:
            scheme = {v: k for k, v in _AUTH_TYPES.items()}[values[f"{acc}/AAuthPref"]]
            new = {"server_url": values[f"{acc}/AppAddr/srv/Addr"], "server_id": values[f"{acc}/ServerID"],
                   "user": values[f"{acc}/AppAuth/cl/AAuthName"], "password": values[f"{acc}/AppAuth/cl/AAuthSecret"],
                   "server_password": values[f"{acc}/AppAuth/srv/AAuthSecret"], "auth": scheme}
        except KeyError as exc:
            raise BootstrapError(f"the bootstrap message lacks {exc.args[0]}") from None
        if not new["server_url"].startswith(("http://", "https://")):
            raise BootstrapError("the bootstrap message's server address is not an HTTP URL")
        self.config = dataclasses.replace(self.config, server_url=new["server_url"], server_id=new["server_id"],
                                          user=new["user"], password=new["password"],
                                          server_password=new["server_password"], auth=new["auth"])
        self.client_nonce = self.server_nonce = b"\0\0\0\0"
        mine = "./DMAcc/fotadelta"
        for name in ("ServerID", "AppAddr/srv/Addr", "AAuthPref", "AppAuth/cl/AAuthType", "AppAuth/cl/AAuthName",
                     "AppAuth/cl/AAuthSecret", "AppAuth/srv/AAuthType", "AppAuth/srv/AAuthName",
                     "AppAuth/srv/AAuthSecret"):
            if f"{acc}/{name}" in values:
                self.tree.put(f"{mine}/{name}", values[f"{acc}/{name}"])
        log.info("%s: bootstrapped for %s at %s", self.config.dev_id, new["server_id"], new["server_url"])

    def request_software(self, choose: Callable[[list[tuple[str, str]]], int | None]) -> SessionLog:
        """Device-initiated: ask the server what software it has for us, pick one, get it through FUMO."""
        self._chooser, self.offers, self._detail_read = choose, [], False
        first = self.run(alerts=[_generic(FUMO, SOFTWARE_LIST, "", None)])
        if self.offers or not self._detail_read:
            return first
        # First contact: the server answered before it had read our version in that session. It has now.
        return self.run(alerts=[_generic(FUMO, SOFTWARE_LIST, "", None)])

    def browse(self, url: str) -> SessionLog | None:
        """Follow a web link; a DM trigger response opens the DM session it names (web-initiated path)."""
        response = self.http.get(url)
        response.raise_for_status()
        if response.headers.get("content-type", "").split(";")[0].strip() != notification.CONTENT_TYPE:
            return None
        return self.handle_notification(response.content, browsed=True)

    def run(self, *, session_id: str | None = None, alert: int = ALERT_CLIENT_INITIATED,
            alerts: list[Alert] | None = None) -> SessionLog:
        """One session, retried with backoff, then whatever FUMO work it left, reported in new sessions."""
        first = self._with_retry(lambda: self.session(session_id=session_id, alert=alert, alerts=alerts or []))
        self.finish_updates()
        return first

    def finish_updates(self) -> None:
        """Download and install what the server asked for, then report until the server has every result."""
        while self.download is not None or self.install is not None or self.reports:
            if self.download is not None:
                self._with_retry(self._download)
            if self.install is not None:
                self.install_pending()
            if self.reports:
                pending = list(self.reports)
                self._with_retry(lambda: self.session(alert=ALERT_CLIENT_INITIATED, alerts=[]))
                if self.reports == pending and self.download is None and self.install is None:
                    # The server took none of them: they wait for the next session rather than go round
                    # again at once, for ever.
                    return

    def _with_retry(self, work: Callable[[], T]) -> T:
        for attempt, delay in enumerate([*retry_delays(self.config, self._jitter), None]):
            try:
                return work()
            except (httpx.TransportError, SessionError) as exc:
                if delay is None:
                    raise SessionError(f"gave up after {attempt + 1} attempts: {exc}") from exc
                log.info("%s: %s; retrying in %.2f s", self.config.dev_id, exc, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def session(self, *, session_id: str | None = None, alert: int = ALERT_CLIENT_INITIATED,
                alerts: list[Alert]) -> SessionLog:
        """Run one DM session to its end."""
        steps = self.session_steps(session_id=session_id, alert=alert, alerts=alerts)
        try:
            post = next(steps)
            while True:
                post = steps.send(self.http.post(post.url, content=post.body, headers=post.headers))
        except StopIteration as done:
            logbook: SessionLog = done.value
            return logbook

    def session_steps(self, *, session_id: str | None = None, alert: int = ALERT_CLIENT_INITIATED,
                      alerts: list[Alert]) -> Generator[Post, Reply, SessionLog]:
        """One DM session without its transport: yields each message to POST and takes the server's
        HTTP response to it (from a blocking or an asyncio client alike); returns the session's log."""
        c = self.config
        # A session of its own choosing takes its id from the clock, but never one of its last sessions'.
        recent = itertools.islice(reversed(self.sessions), notification.RECENT_SESSIONS)
        sid = session_id or notification.session_id_text(notification.fresh_session_id(
            int(time.time() * 1000), (log.session_id for log in recent)))
        ep = Endpoint(session_id=sid, local=c.dev_id, remote=c.server_url, encoding=c.encoding,
                      max_msg_size=c.max_msg_size, max_obj_size=c.max_obj_size, local_name=c.user, protocol=c.protocol)
        logbook = SessionLog(sid)
        self.sessions.append(logbook)
        reports = list(self.reports)
        # DM 1.1.2 has no Generic Alert: the server reads the result from the FUMO State in this session.
        alerted = [] if c.protocol is DM_1_1 else reports

        def package1() -> list[Command]:
            devinfo = [Item(source=n.uri, meta=Meta(format=n.format), data=n.data)
                       for n in self.tree.get("./DevInfo?list=StructData", c.server_id) if n.format != "node"]
            return [Alert(alert), Replace(devinfo), *[_generic(r.node, r.alert_type, str(r.code), r.correlator)
                                                      for r in alerted], *alerts]

        ep.push(*package1())
        statuses: list[Status] = []
        cred_tries = 0
        authenticated = False  # the server said 212: no credentials needed for the rest of the session
        server_checked = False
        fresh_nonce = auth.new_nonce()
        given: bytes | None = None  # a server nonce in the statuses about to be sent
        while True:
            cred = None if authenticated or c.auth == "hmac" else \
                auth.credential(c.auth, c.user, c.password, self.client_nonce)
            _, body = ep.compose(statuses, cred=cred)
            reply, reply_body = self._reply(ep, (yield self._request(ep, body)))
            if given is not None:
                # The server has our new nonce only once the message carrying it was delivered: a status
                # that is never sent (the session ended first) must not move ours.
                self.server_nonce, given = given, None
            logbook.messages += 1
            statuses = []
            hdr_status = next((s for s in reply.commands if isinstance(s, Status) and s.cmd_ref == 0
                               and s.cmd == "SyncHdr"), None)
            if hdr_status is not None and hdr_status.chal is not None and hdr_status.chal.meta.next_nonce:
                try:
                    self.client_nonce = base64.b64decode(hdr_status.chal.meta.next_nonce, validate=True)
                except ValueError:  # (from a server not checked yet, perhaps not ours: a protocol failure)
                    raise SessionError("the server's NextNonce is not base64") from None
            if hdr_status is not None and hdr_status.code in (401, 407):
                cred_tries += 1
                if cred_tries > 2:
                    raise SessionError(f"the server refused our credentials ({hdr_status.code})")
                # Start package 1 again, with credentials for the fresh nonce, in the same session.
                ep.queue.clear()
                ep.push(*package1())
                continue
            if hdr_status is not None and hdr_status.code >= 300:
                raise SessionError(f"the server answered our message with {hdr_status.code}")
            if not server_checked or c.auth == "hmac":
                # HMAC authenticates every message (each with the nonce we gave last); the other schemes
                # the server's first answer, after which its 212 from us stands for the session.
                if not self._server_authentic(reply, reply_body):
                    # Challenge once with a fresh nonce; execute nothing this message.
                    cred_tries += 1
                    if cred_tries > 2:
                        raise SessionError("the server's credentials are wrong")
                    given, fresh_nonce = fresh_nonce, auth.new_nonce()
                    statuses = [Status(reply.header.msg_id, 0, "SyncHdr", 401, chal=auth.challenge(c.auth, given))]
                    statuses += [status_for(x, reply.header.msg_id, 401) for x in reply.commands
                                 if not isinstance(x, Status)]
                    if not server_checked:
                        # Its answers to our package cannot be trusted either: ask again.
                        ep.queue.clear()
                        ep.push(*package1())
                    continue
                server_checked = True
                # Only a reply from the server we authenticated can tell us we are authenticated.
                authenticated = authenticated or (hdr_status is not None and hdr_status.code == 212)
                # A new nonce for the server's next message (HMAC) or next session (and its next package #0).
                given, fresh_nonce = fresh_nonce, auth.new_nonce()
                statuses.append(Status(reply.header.msg_id, 0, "SyncHdr", 200 if c.auth == "hmac" else 212,
                                       chal=auth.challenge(c.auth, given)))
            else:
                statuses.append(Status(reply.header.msg_id, 0, "SyncHdr", 200))
            # Only now, from a server we authenticated: its RespURI says where our credentials go next.
            ep.note_header(reply.header)
            aborted = self._handle(ep, reply, statuses, reports)
            if aborted:
                logbook.aborted = True
                return logbook
            if not reply.final and not ep.queue:
                ep.push(Alert(ALERT_NEXT_MESSAGE))
            if reply.final and not ep.queue and len(statuses) == 1:
                if c.protocol is DM_1_1:  # the server has had its chance to read the State: nothing is owed
                    self.reports = [r for r in self.reports if r not in reports]
                return logbook  # only the SyncHdr status would be left: the session is over

    def _handle(self, ep: Endpoint, reply: Message, statuses: list[Status], reports: list[Report]) -> bool:
        msg_id = reply.header.msg_id
        for raw in reply.commands:
            if isinstance(raw, Status):
                ours = ep.answered(raw.msg_ref, raw.cmd_ref)
                ep.refused(ours, raw.code)
                self._on_status(ep, ours, raw, reports)
                continue
            if isinstance(raw, Alert) and raw.data == ALERT_SESSION_ABORT:
                return True
            cmd, chunk_statuses = ep.take(raw, msg_id)
            statuses += chunk_statuses
            if cmd is not None:
                statuses += self._execute(ep, cmd, msg_id)
        return False

    def _on_status(self, ep: Endpoint, ours: Command | None, status: Status, reports: list[Report]) -> None:
        if not isinstance(ours, Alert) or ours.data != ALERT_GENERIC or not ours.items:
            return
        meta = ours.items[0].meta
        if meta is not None and meta.type == SOFTWARE_LIST and status.code == 200:
            # The server's answer lists the offers in the Status items; the choice goes back in a second alert.
            self.offers = [(i.source or "", i.text) for i in status.items]
            pick = self._chooser(self.offers) if self.offers else None
            if pick is not None:
                ep.push(_generic(FUMO, SOFTWARE_SELECT, self.offers[pick][0], None))
            return
        for r in reports:
            if r.correlator == ours.correlator and r.node == ours.items[0].source and status.code in (200, 202) \
                    and r in self.reports:
                self.reports.remove(r)

    # -- executing the server's commands ---------------------------------------------------------

    def _execute(self, ep: Endpoint, cmd: Command, msg_id: int) -> list[Status]:
        if isinstance(cmd, Sequence):
            return self._sequence(ep, cmd, msg_id)
        if isinstance(cmd, Atomic):
            return self._atomic(ep, cmd, msg_id)
        if isinstance(cmd, Alert):
            return [self._ui(cmd, msg_id)]
        if isinstance(cmd, Exec):
            item = cmd.item
            try:
                code = self.tree.exec(item.target or "", item.data, cmd.correlator, self.config.server_id)
            except TreeError as exc:
                code = exc.code
            return [status_for(cmd, msg_id, code)]
        if isinstance(cmd, Get):
            return self._get(ep, cmd, msg_id)
        if isinstance(cmd, Add):
            return [status_for(cmd, msg_id, self._change(cmd, item)) for item in cmd.items]
        return [status_for(cmd, msg_id, 406)]

    def _change(self, cmd: Add, item: Item) -> int:
        sid, meta = self.config.server_id, item.meta
        fmt, typ = (meta.format, meta.type) if meta else (None, None)
        try:
            if isinstance(cmd, Copy):
                self.tree.copy(item.target or "", item.source or "", sid)
            elif isinstance(cmd, Delete):
                self.tree.delete(item.target or "", sid)
            elif isinstance(cmd, Replace):
                self.tree.replace(item.target or "", item.data, fmt, typ, sid)
            else:
                self.tree.add(item.target or "", item.data, fmt or "chr", typ, sid)
        except TreeError as exc:
            return exc.code
        return 200

    def _get(self, ep: Endpoint, cmd: Get, msg_id: int) -> list[Status]:
        statuses, found = [], []
        for item in cmd.items:
            self._detail_read |= (item.target or "").startswith("./DevDetail")
            try:
                if not self.config.structured_get and "?list=" in (item.target or ""):
                    raise TreeError(406, "this client does not list subtrees")
                nodes = self.tree.get(item.target or "", self.config.server_id)
            except TreeError as exc:
                statuses.append(status_for(Get([item], cmd_id=cmd.cmd_id), msg_id, exc.code))
                continue
            statuses.append(status_for(Get([item], cmd_id=cmd.cmd_id), msg_id, 200))
            found += [Item(source=n.uri, meta=Meta(format=n.format, type=n.type), data=n.data) for n in nodes]
        if found:
            ep.push(Results(cmd.cmd_id, found, msg_ref=msg_id))
        return statuses

    def _atomic(self, ep: Endpoint, cmd: Atomic, msg_id: int) -> list[Status]:
        snap = self.tree.snapshot()
        queued = len(ep.queue)
        inner = [s for c in cmd.commands for s in self._execute(ep, c, msg_id)]
        if all(s.code < 300 for s in inner):
            return [status_for(cmd, msg_id, 200), *inner]
        self.tree.restore(snap)
        while len(ep.queue) > queued:  # no Results from a rolled-back Atomic
            ep.queue.pop()
        for s in inner:
            if s.code < 300:
                s.code = 216
        return [status_for(cmd, msg_id, 507), *inner]

    def _sequence(self, ep: Endpoint, cmd: Sequence, msg_id: int) -> list[Status]:
        out = [status_for(cmd, msg_id, 200)]
        stopped = False
        for c in cmd.commands:
            if stopped:
                out += [status_for(c, msg_id, 215)]
                continue
            result = self._execute(ep, c, msg_id)
            out += result
            # The user said no (or cancelled) to a confirmation: the rest is not executed.
            stopped = isinstance(c, Alert) and c.data == UI_CONFIRM and result[0].code in (304, 214)
        return out

    def _ui(self, alert: Alert, msg_id: int) -> Status:
        texts = [i.text for i in alert.items]
        prompt = texts[1] if len(texts) > 1 else ""
        if alert.data == UI_DISPLAY:
            self.ui.display(prompt)
            return status_for(alert, msg_id, 200)
        if alert.data == UI_CONFIRM:
            answer = self.ui.confirm(prompt)
            return status_for(alert, msg_id, 214 if answer is None else 200 if answer else 304)
        if alert.data == UI_INPUT:
            value = self.ui.text_input(prompt)
            return status_for(alert, msg_id, 214) if value is None else \
                status_for(alert, msg_id, 200, items=[Item(data=value)])
        if alert.data == UI_CHOICE:
            pick = self.ui.choose(prompt, texts[2:])
            return status_for(alert, msg_id, 214) if pick is None else \
                status_for(alert, msg_id, 200, items=[Item(data=str(pick + 1))])
        if alert.data == ALERT_NEXT_MESSAGE:
            return status_for(alert, msg_id, 200)
        return status_for(alert, msg_id, 406)

    # -- authentication and transport ------------------------------------------------------------

    def _server_authentic(self, reply: Message, body: bytes) -> bool:
        c = self.config
        if c.auth == "hmac":
            header = self._reply_hmac
            if header is None:
                return False
            try:
                parsed = auth.parse_hmac_header(header)
            except auth.AuthError:
                return False
            return parsed.username == c.server_id and auth.check_hmac(parsed, c.server_password, self.server_nonce, body)
        cred = reply.header.cred
        if cred is None:
            return False
        if c.auth == "basic":
            return auth.check_basic(cred.data, c.server_id, c.server_password)
        return auth.check_md5(cred.data, c.server_id, c.server_password, self.server_nonce)

    def _request(self, ep: Endpoint, body: bytes) -> Post:
        c = self.config
        headers = {"content-type": ep.encoding.content_type, "accept": ep.encoding.content_type}
        if c.auth == "hmac":
            headers["x-syncml-hmac"] = auth.hmac_header(c.user, c.password, self.client_nonce, body)
        return Post(ep.remote, body, headers)

    def _reply(self, ep: Endpoint, response: Reply) -> tuple[Message, bytes]:
        if response.status_code != 200:
            text = response.content[:200].decode("utf-8", "replace")
            raise SessionError(f"HTTP {response.status_code} from {ep.remote}: {text}")
        self._reply_hmac = response.headers.get("x-syncml-hmac")
        try:
            return decode(response.content, encoding_of(response.headers.get("content-type")),
                          max_size=self.config.max_msg_size * 2), response.content
        except CodecError as exc:
            raise SessionError(f"the server's reply is not SyncML DM: {exc}") from None

    # -- FUMO: download, install, report ---------------------------------------------------------

    def _download(self) -> None:
        dl = self.begin_download()
        while dl.size is None or len(dl.data) < dl.size:
            headers = {"range": f"bytes={len(dl.data)}-"}
            with self.http.stream("GET", dl.url, headers=headers) as response:
                if not self.download_answered(dl, response):
                    return
                for piece in response.iter_bytes(8192):
                    cut = self.download_cut_after
                    if cut is not None and self.downloaded_bytes + len(piece) > cut:
                        take = max(0, cut - self.downloaded_bytes)
                        dl.data += piece[:take]
                        self.downloaded_bytes += take
                        self.download_cut_after = None
                        raise httpx.ReadError("connection dropped (injected)")
                    dl.data += piece
                    self.downloaded_bytes += len(piece)
                    if dl.size is not None and len(dl.data) > dl.size:  # a broken server: start again
                        dl.data.clear()
                        raise SessionError(f"{dl.url} sent more than its {dl.size} bytes")
        self.download_complete(dl)

    # The steps of a download, for this client's transport and for an asyncio one (`fotadelta.load`).

    def begin_download(self) -> Download:
        """The download the server asked for, now in progress."""
        dl = self.download
        assert dl is not None
        self._set_state(FumoState.DOWNLOAD_PROGRESSING)
        return dl

    def download_answered(self, dl: Download, response: ReplyHead) -> bool:
        """The answer to a ranged GET (its headers; the body not read yet): False (the download failed)
        unless it brings content of a size the device stores. The package's size comes with the answer
        (Content-Range's total, or a whole answer's Content-Length), so no HEAD goes before the GET; a
        package over what the device stores is refused before any of it is read."""
        if response.status_code not in (200, 206):
            self._download_failed(dl, 503)
            return False
        if response.status_code == 200:
            dl.data.clear()  # the server ignored the range: start over
        size = _package_size(response)
        if size is None:
            self._download_failed(dl, 411)
            return False
        if size > self.config.max_obj_size:
            self._download_failed(dl, 501)
            return False
        dl.size = size
        return True

    def download_complete(self, dl: Download) -> None:
        """Every byte is here: report a plain download, or install now (DownloadAndUpdate)."""
        self.download = None
        self._set_state(FumoState.DOWNLOAD_COMPLETE)
        if dl.node.endswith("/Download"):
            self.staged = dl
            self._report(Report(dl.node, _alert_type(dl.node), 200, dl.correlator, "downloaded"))
        else:
            self.install = dl

    def _download_failed(self, dl: Download, code: int) -> None:
        self.download = None
        self._set_state(FumoState.DOWNLOAD_FAILED)
        self._report(Report(dl.node, _alert_type(dl.node), code, dl.correlator, f"download from {dl.url} failed"))

    def install_pending(self) -> None:
        """Install the package; a power cut reboots the device, which resumes the install at boot."""
        job = self.install
        assert job is not None
        self._set_state(FumoState.UPDATE_PROGRESSING)
        while True:
            try:
                outcome = agent.install(self.device, bytes(job.data))
                break
            except PowerLoss:
                log.info("%s: power lost during the update; rebooting", self.config.dev_id)
                self.device.flash.arm(None)
        self.install = None
        if outcome.ok:
            self._set_state(FumoState.UPDATE_SUCCESSFUL_NO_DATA)
            self.tree.put("./DevDetail/FwV", self.device.version)
            self.tree.put("./DevDetail/SwV", self.device.version)
        else:
            self._set_state(FumoState.UPDATE_FAILED_NO_DATA)
        self.last_outcome = outcome
        self._report(Report(job.node, _alert_type(job.node), int(outcome.code), job.correlator, outcome.message))

    def _report(self, report: Report) -> None:
        self.reports.append(report)
        if self.on_result is not None:
            self.on_result(report)


_AUTH_TYPES = {"md5": "DIGEST", "basic": "BASIC", "hmac": "HMAC"}
_SEC_USERPIN = "1"  # the bootstrap's security method: a MAC keyed by the user's PIN (OMA DM bootstrap)


def retry_delays(config: ClientConfig, rng: random.Random | None = None) -> list[float]:
    """The waits between attempts: capped exponential backoff, each scaled by a random factor in [0.5, 1]."""
    rng = rng or random.Random()
    return [min(config.backoff_cap, config.backoff * 2 ** i) * rng.uniform(0.5, 1.0) for i in range(config.retries)]


def _package_size(response: ReplyHead) -> int | None:
    """The whole package's size an answer to a ranged GET gives: the total of a 206's Content-Range
    (`bytes FIRST-LAST/TOTAL`), the Content-Length of a 200; None when it gives none."""
    if response.status_code == 206:
        text = response.headers.get("content-range", "").rpartition("/")[2]
    else:
        text = response.headers.get("content-length", "")
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def _alert_type(node: str) -> str:
    suffix = {"DownloadAndUpdate": "downloadandupdate", "Download": "download", "Update": "update"}
    return f"{FUMO_TYPE}.{suffix.get(node.rsplit('/', 1)[-1], 'downloadandupdate')}"


def _generic(node: str, alert_type: str, data: str, correlator: str | None) -> Alert:
    """A Generic Alert 1226: what happened at node, of alert_type, with data (a FUMO result code)."""
    failed = data.isdigit() and not 200 <= int(data) < 300
    meta = Meta(type=alert_type, format="int" if data.isdigit() else "chr", mark="critical" if failed else None)
    return Alert(ALERT_GENERIC, [Item(source=node, meta=meta, data=data)], correlator=correlator)
