"""Shared parts of the OMA DM session tests: a small release chain, a DM server on loopback with
its SQLite store in tmp_path, emulated devices, and a recorder of the messages a device exchanges.

Everything is real: HTTP over loopback (uvicorn in a thread), SQLite, signed packages, the
in-place patcher on emulated flash. Images are small (about 24 KB, 4 KiB blocks) so a whole
update takes a few tens of milliseconds."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from fotadelta import package, sim
from fotadelta.dm import auth
from fotadelta.dm.client import DmClient
from fotadelta.dm.codec import Encoding, decode, encode, encoding_of
from fotadelta.dm.model import Alert, Command, Cred, Item, Message, Meta, Replace, Status, SyncHdr
from fotadelta.dm.provisioning import DEMO_SECRET, derive
from fotadelta.dm.session import walk
from fotadelta.emulator import Fleet, make_client
from fotadelta.package.signing import PrivateKey, TrustStore, generate
from fotadelta.server import DmServer, ServerConfig, create_app, serve_in_thread
from fotadelta.server.app import Running
from fotadelta.server.push import HttpPush
from fotadelta.server.store import DeviceRow, JobRow, SessionRow

MAKE, MODEL = "Acme", "S1"
BLOCK = 4096


@dataclass(frozen=True)
class Release:
    """Firmware 1.0, 1.1 and 1.2 and the signed in-place packages between them."""

    key: PrivateKey
    trust: TrustStore
    images: dict[str, bytes]
    p10_11: bytes
    p11_12: bytes
    p10_12: bytes  # the direct step: made expensive on purpose, so a chain goes through 1.1


def _edit(rng: random.Random, image: bytes, inserts: int, size: int) -> bytes:
    out = bytearray(image)
    for _ in range(inserts):
        pos = rng.randrange(len(out))
        out[pos:pos] = rng.randbytes(size)  # new code: random bytes the delta must carry
        out[rng.randrange(len(out) - 16):][:16] = rng.randbytes(16)
    return bytes(out)


def make_release(seed: int = 7) -> Release:
    rng = random.Random(seed)
    v10 = rng.randbytes(24_000)
    v11 = _edit(rng, v10, 3, 2_000)  # the 1.0 -> 1.1 package is ~6 KB: several chunks at MaxMsgSize 2048
    v12 = _edit(rng, v11, 2, 500)
    key = generate()

    def pack(a: bytes, b: bytes, va: str, vb: str, **kw: object) -> bytes:
        return package.pack(a, b, key, make=MAKE, model=MODEL, from_version=va, to_version=vb, in_place=True,
                            block_size=BLOCK, **kw)  # type: ignore[arg-type]

    # A direct 1.0 -> 1.2 package to an unrelated image: a full-size delta, far dearer than the chain
    # (and a device that took it would not end up with v12, which the tests would see).
    return Release(key, TrustStore.of([key.public_key()]), {"1.0": v10, "1.1": v11, "1.2": v12},
                   pack(v10, v11, "1.0", "1.1"), pack(v11, v12, "1.1", "1.2"),
                   pack(v10, rng.randbytes(len(v12)), "1.0", "1.2"))


_imeis = itertools.count(490154203237500)


def new_dev_id() -> str:
    return f"IMEI:{next(_imeis)}"


@dataclass
class Exchange:
    """One HTTP round trip of a DM session, decoded."""

    request: Message
    response: Message | None
    status: int
    body_bytes: bytes = b""
    response_bytes: bytes = b""
    request_type: str = ""
    response_type: str = ""


@dataclass
class Wire:
    """Records every DM message a device posts and the server's answer (httpx event hooks)."""

    exchanges: list[Exchange] = field(default_factory=list)
    raw_requests: list[httpx.Request] = field(default_factory=list)

    def client(self) -> httpx.Client:
        return httpx.Client(timeout=30.0, event_hooks={"response": [self._on_response]})

    def _on_response(self, response: httpx.Response) -> None:
        request = response.request
        self.raw_requests.append(request)
        if request.method != "POST" or not (request.url.path == "/dm" or request.url.path.startswith("/dm/")):
            return
        response.read()
        sent = decode(request.content, encoding_of(request.headers.get("content-type")), max_size=1 << 24)
        got = None
        if response.status_code == 200:
            got = decode(response.content, encoding_of(response.headers.get("content-type")), max_size=1 << 24)
        self.exchanges.append(Exchange(sent, got, response.status_code, request.content, response.content,
                                       request.headers.get("content-type", ""),
                                       response.headers.get("content-type", "")))

    def sent(self) -> list[Command]:
        return [c for x in self.exchanges for c in walk(x.request.commands)]

    def received(self) -> list[Command]:
        return [c for x in self.exchanges if x.response is not None for c in walk(x.response.commands)]

    def client_alerts(self, code: int) -> list[Alert]:
        return [c for c in self.sent() if isinstance(c, Alert) and c.data == code]

    def client_statuses(self) -> list[Status]:
        return [c for c in self.sent() if isinstance(c, Status)]

    def server_statuses(self) -> list[Status]:
        return [c for c in self.received() if isinstance(c, Status)]

    def server_alerts(self, code: int) -> list[Alert]:
        return [c for c in self.received() if isinstance(c, Alert) and c.data == code]


@dataclass
class Lab:
    """A DM server on loopback with its fleet of emulated devices."""

    server: DmServer
    running: Running
    url: str
    release: Release
    fleet: Fleet
    tmp: Path

    @property
    def dm_url(self) -> str:
        return f"{self.url}/dm"

    def publish_chain(self, *, direct: bool = False) -> None:
        self.server.publish(self.release.p10_11)
        self.server.publish(self.release.p11_12)
        if direct:
            self.server.publish(self.release.p10_12)

    def device(self, version: str = "1.0", *, dev_id: str | None = None, listen: bool = True,
               wire: Wire | None = None, register: bool = False, **kw: object) -> DmClient:
        """An emulated device at version, listening for HTTP push unless told not to; register: provision
        its factory credentials with the client's auth type (the server enrols unknown devices as md5)."""
        dev_id = dev_id or new_dev_id()
        client = make_client(self.release.images[version], dev_id=dev_id, make=MAKE, model=MODEL, version=version,
                             server_url=kw.pop("server_url", self.dm_url), trust=self.release.trust,  # type: ignore[arg-type]
                             push_url=self.fleet.push_url(dev_id) if listen else None, block_size=BLOCK,
                             **kw)  # type: ignore[arg-type]
        client.config.retries, client.config.backoff = 2, 0.01
        if wire is not None:
            client.http = wire.client()
        if register:
            creds = derive(DEMO_SECRET, dev_id)
            self.server.register(dev_id, password=creds.password, server_password=creds.server_password,
                                 auth_type=client.config.auth)
        if listen:
            self.fleet.add(client)
        return client

    def dev_row(self, dev_id: str) -> DeviceRow:
        with self.server.store.tx() as s:
            row = s.get(DeviceRow, dev_id)
            assert row is not None
            return row

    def job(self, job_id: int) -> JobRow:
        with self.server.store.tx() as s:
            row = s.get(JobRow, job_id)
            assert row is not None
            return row

    def jobs(self, dev_id: str) -> list[JobRow]:
        with self.server.store.tx() as s:
            return list(s.scalars(select(JobRow).where(JobRow.dev_id == dev_id).order_by(JobRow.id)))

    def sessions(self, dev_id: str) -> list[SessionRow]:
        with self.server.store.tx() as s:
            return list(s.scalars(select(SessionRow).where(SessionRow.dev_id == dev_id).order_by(SessionRow.id)))

    def events(self, dev_id: str) -> list[str]:
        return [f"{e.kind}: {e.text}" for e in self.server.store.snapshot().events if e.dev_id == dev_id]

    def update(self, client: DmClient, version: str, **assign: str) -> JobRow:
        """Assign version, notify over HTTP push, wait for the device to finish; the job as it ended."""
        dev_id = client.config.dev_id
        job = self.server.assign(dev_id, version, **assign)
        self.server.notify(dev_id)
        self.fleet.wait()
        assert self.fleet.errors(dev_id) == []
        return self.job(job.id)


@dataclass
class Raw:
    """A hand-driven device: posts SyncML DM messages it builds itself, for what DmClient never sends."""

    url: str
    dev_id: str
    session_id: str = "1F"
    encoding: Encoding = Encoding.XML
    msg_id: int = 0
    user: str | None = None
    password: str | None = None

    @classmethod
    def factory(cls, url: str, dev_id: str | None = None, **kw: object) -> Raw:
        dev_id = dev_id or new_dev_id()
        creds = derive(DEMO_SECRET, dev_id)
        return cls(url, dev_id, user=creds.user, password=creds.password, **kw)  # type: ignore[arg-type]

    def md5(self, nonce: bytes) -> Cred:
        assert self.user is not None and self.password is not None
        return Cred(auth.md5_digest(self.user, self.password, nonce), "syncml:auth-md5")

    def message(self, commands: list[Command], *, cred: Cred | None = None, final: bool = True) -> Message:
        self.msg_id += 1
        for i, c in enumerate(walk(commands), 1):
            c.cmd_id = i
        return Message(SyncHdr(self.session_id, self.msg_id, self.url, self.dev_id, source_name=self.user, cred=cred,
                               meta=Meta(max_msg_size=64 * 1024)), commands, final)

    def post(self, commands: list[Command], *, cred: Cred | None = None, final: bool = True) -> Message:
        """Send a message and return the answer; the next message goes to the RespURI it named, if any."""
        response = httpx.post(self.url, content=encode(self.message(commands, cred=cred, final=final), self.encoding),
                              headers={"content-type": self.encoding.content_type}, timeout=30)
        assert response.status_code == 200, response.text
        reply = decode(response.content, encoding_of(response.headers["content-type"]))
        if reply.header.resp_uri:
            self.url = reply.header.resp_uri
        return reply

    def package1(self, alert: int = 1201) -> list[Command]:
        return [Alert(alert), Replace([Item(source="./DevInfo/DevId", data=self.dev_id),
                                       Item(source="./DevInfo/Man", data=MAKE), Item(source="./DevInfo/Mod", data=MODEL),
                                       Item(source="./DevInfo/DmV", data="1.2"), Item(source="./DevInfo/Lang", data="en")])]


def hdr_status(msg: Message) -> Status:
    """The Status a message gives to the other side's SyncHdr."""
    return next(c for c in msg.commands if isinstance(c, Status) and c.cmd == "SyncHdr")


def start_server(tmp: Path, release: Release, fleet: Fleet, **config: object) -> Lab:
    server = DmServer(ServerConfig(tmp / "srv", "http://127.0.0.1:0", **config),  # type: ignore[arg-type]
                      push=HttpPush())
    running = serve_in_thread(create_app(server))
    url = f"http://127.0.0.1:{running.port}"
    server.config.public_url = url
    return Lab(server, running, url, release, fleet, tmp)


@pytest.fixture(scope="session")
def release() -> Release:
    return make_release()


@pytest.fixture(scope="session")
def fleet() -> Iterator[Fleet]:
    f = Fleet()
    yield f
    f.stop()


@pytest.fixture
def lab(tmp_path: Path, release: Release, fleet: Fleet) -> Iterator[Lab]:
    lab = start_server(tmp_path, release, fleet)
    lab.publish_chain()
    try:
        yield lab
    finally:
        fleet.wait()
        lab.running.stop()


def secured_sim(operator: bytes) -> sim.Sim:
    return sim.Sim.secured(operator.ljust(sim.VALIDATION_LEN, b"\0"))


__all__ = [
    "BLOCK",
    "MAKE",
    "MODEL",
    "Encoding",
    "Exchange",
    "Lab",
    "Raw",
    "Release",
    "Wire",
    "fleet",
    "hdr_status",
    "lab",
    "make_release",
    "new_dev_id",
    "release",
    "secured_sim",
    "start_server",
]
