"""Many light emulated devices on one asyncio loop, speaking the DM client's own messages.

A device at rest is a few fields: its version, its nonces and the FUMO results it has yet to
report. It becomes a full `DmClient` (management tree, a flash holding its current image) only
while it runs sessions or installs, and at most `concurrency` devices are active at once: that
bounds the flash buffers alive at any time. Messages come from `DmClient.session_steps` over an
`httpx.AsyncClient` per worker (two connections each: a pool's cost per request grows with its
size); packages are downloaded for real (HEAD, then ranged GETs that resume
after a dropped connection) and installed in place on the flash by the update agent (in a worker
thread). After an install the flash's image is checked against the release's SHA-256 and the
flash dropped; the device keeps only its new version. All devices share one copy of each image.

Server-initiated sessions come by HTTP push (package #0) to one listener for all devices
(`Devices.push` behind dm.listener, on the same loop). Transport failures and server errors are retried with the DM client's capped
exponential backoff and jitter (23-46 s in all), long enough to ride out a worker's restart."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx

from fotadelta import sim
from fotadelta.dm import notification
from fotadelta.dm.client import (ALERT_CLIENT_INITIATED, ALERT_SERVER_INITIATED, DmClient, Download, Report,
                                 SessionError, SessionLog, retry_delays)
from fotadelta.dm.provisioning import derive
from fotadelta.emulator import make_client
from fotadelta.package.signing import TrustStore

log = logging.getLogger("fotadelta.load")
T = TypeVar("T")
MAX_PKG0 = 1024  # a package #0 is about a hundred bytes
MAX_INBOX = 4  # package #0s a busy device keeps; more only repeat what it will do anyway
POLL_AFTER_S = 30.0  # a device left with unfinished work (its retries gave up) checks in again after this
MAX_POLLS = 5


@dataclass(frozen=True)
class Firmware:
    """What every device shares: the images by version, their hashes, the key that signs packages."""

    make: str
    model: str
    images: dict[str, bytes]
    trust: TrustStore
    block_size: int
    operator: bytes  # the SIM operator the packages are bound to
    hashes: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hashes", {v: hashlib.sha256(i).hexdigest() for v, i in self.images.items()})


@dataclass(slots=True)
class Device:
    """A device between its sessions: what it keeps in non-volatile memory."""

    dev_id: str
    version: str
    refuses: bool  # its SIM is another operator's: every package fails with a FUMO error, on purpose
    client_nonce: bytes = b"\0\0\0\0"
    server_nonce: bytes = b"\0\0\0\0"
    reports: list[Report] = field(default_factory=list)
    download: Download | None = None  # FUMO work a session gave up on, taken up again at the next one
    install: Download | None = None
    inbox: list[bytes] = field(default_factory=list)  # package #0s not handled yet
    poll: bool = False  # a client-initiated session is due
    queued: bool = False
    errors: list[str] = field(default_factory=list)
    polls: int = 0  # check-ins of its own after a failure

    @property
    def unfinished(self) -> bool:
        """It has FUMO work or results the server has not had yet."""
        return bool(self.reports) or self.download is not None or self.install is not None


@dataclass
class Stats:
    sessions: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    retries: int = 0
    downloads: int = 0
    installs: int = 0
    bad_notifications: int = 0
    first: float = 0.0
    last: float = 0.0

    def session(self, started: float, ended: float) -> None:
        self.sessions += 1
        self.latencies_ms.append((ended - started) * 1000)
        self.first = self.first or started
        self.last = ended

    def p95_ms(self) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]

    def per_second(self) -> float:
        return self.sessions / (self.last - self.first) if self.last > self.first else 0.0


class Devices:
    """The emulated fleet: devices by DevId, a work queue and `concurrency` workers on the running loop."""

    def __init__(self, firmware: Firmware, *, server_url: str, secret: str, server_id: str, push_base: str,
                 concurrency: int, timeout: float = 30.0, seed: int = 1) -> None:
        self.firmware, self.server_url, self.secret, self.server_id = firmware, server_url, secret, server_id
        self.push_base, self.concurrency, self.timeout = push_base, concurrency, timeout
        self._tls = httpx.create_ssl_context()  # loaded once (a tenth of a second each), shared by the workers
        self.devices: dict[str, Device] = {}
        self.stats = Stats()
        self.rng = random.Random(seed)
        self._queue: asyncio.Queue[Device] = asyncio.Queue()
        self._active = 0
        self._workers: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        # DmClient wants a blocking client for its own transport; these devices never use it.
        self._unused = httpx.Client()

    def add(self, dev_id: str, version: str, *, refuses: bool = False) -> Device:
        device = self.devices[dev_id] = Device(dev_id, version, refuses)
        return device

    def credentials(self, dev_id: str) -> tuple[str, str]:
        """The device's client and server passwords (what the operator registers for it)."""
        creds = derive(self.secret, dev_id, self.server_id)
        return creds.password, creds.server_password

    # -- scheduling ------------------------------------------------------------------------------

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._work()) for _ in range(self.concurrency)]

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._unused.close()

    def check_in(self, device: Device) -> None:
        """Let the device open a client-initiated session (as at power-on, or when it polls)."""
        device.poll = True
        self._enqueue(device)

    @property
    def idle(self) -> bool:
        """No device has work queued or in progress, and none is waiting to poll."""
        return self._queue.empty() and self._active == 0 and not self._timers

    def pending(self) -> int:
        """Devices with work queued, in progress or due."""
        return self._queue.qsize() + self._active + len(self._timers)

    async def wait_idle(self, interval: float = 0.2) -> None:
        while not self.idle:
            await asyncio.sleep(interval)

    def _enqueue(self, device: Device) -> None:
        if not device.queued:
            device.queued = True
            self._queue.put_nowait(device)

    def _poll_later(self, device: Device) -> None:
        def due() -> None:
            self._timers.discard(timer)
            self.check_in(device)
        timer = asyncio.get_running_loop().call_later(POLL_AFTER_S, due)
        self._timers.add(timer)

    def push(self, dev_id: str, content_type: str, body: bytes) -> tuple[int, str]:
        """A push to the device (the fleet's listener, dm.listener, calls this on the loop): queued for a worker."""
        device = self.devices.get(dev_id)
        if device is None:
            return 404, "no such device"
        if content_type.split(";")[0].strip() != notification.CONTENT_TYPE:
            return 415, "not a DM notification"
        if len(body) > MAX_PKG0:
            return 413, "too large for a package #0"
        if len(device.inbox) < MAX_INBOX:
            device.inbox.append(body)
        self._enqueue(device)
        return 202, "accepted"

    async def _work(self) -> None:
        limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
        async with httpx.AsyncClient(timeout=self.timeout, verify=self._tls, limits=limits) as http:
            while True:
                device = await self._queue.get()
                device.queued = False
                self._active += 1
                try:
                    await self._serve(device, http)
                except Exception as exc:  # a device's failure is recorded, never lost in a task
                    device.errors.append(f"{type(exc).__name__}: {exc}")
                    log.info("%s: %s", device.dev_id, exc, exc_info=True)
                finally:
                    self._active -= 1
                if device.unfinished and device.polls < MAX_POLLS:
                    device.polls += 1
                    self._poll_later(device)

    # -- one active device -----------------------------------------------------------------------

    def _client(self, device: Device) -> DmClient:
        fw = self.firmware
        operator = bytes(b ^ 0xFF for b in fw.operator) if device.refuses else fw.operator
        client = make_client(fw.images[device.version], dev_id=device.dev_id, make=fw.make, model=fw.model,
                             version=device.version, server_url=self.server_url, trust=fw.trust,
                             sim_card=sim.Sim.secured(operator), secret=self.secret, server_id=self.server_id,
                             push_url=f"{self.push_base}/push/{device.dev_id}", block_size=fw.block_size,
                             http=self._unused)
        client.client_nonce, client.server_nonce = device.client_nonce, device.server_nonce
        client.reports, client.download, client.install = device.reports, device.download, device.install
        return client

    async def _serve(self, device: Device, http: httpx.AsyncClient) -> None:
        """Handle the device's package #0s and polls, each to the end of its FUMO work, then let it rest."""
        client = self._client(device)
        try:
            while device.inbox or device.poll:
                if device.inbox:
                    pkg0 = device.inbox.pop(0)
                    try:
                        trigger = notification.verify(pkg0, client.config.server_password, client.server_nonce)
                        if trigger.server_id != client.config.server_id:
                            raise notification.NotificationError(f"package #0 from {trigger.server_id!r}")
                    except notification.NotificationError:
                        # Stale (its nonce moved on in a session since) or not our server's: a device
                        # ignores it, but then asks its own server whether there is work.
                        self.stats.bad_notifications += 1
                        device.poll = True
                        continue
                    sid, alert = notification.session_id_text(trigger.session_id), ALERT_SERVER_INITIATED
                else:
                    device.poll = False
                    sid, alert = None, ALERT_CLIENT_INITIATED
                await self._retry(client, lambda: self._session(http, client, session_id=sid, alert=alert))
                await self._finish(http, client, device)
        finally:
            device.client_nonce, device.server_nonce = client.client_nonce, client.server_nonce
            device.reports, device.download, device.install = client.reports, client.download, client.install

    async def _finish(self, http: httpx.AsyncClient, client: DmClient, device: Device) -> None:
        """Download and install what the server asked for, then report until it has every result."""
        while client.download is not None or client.install is not None or client.reports:
            if client.download is not None:
                await self._retry(client, lambda: self._download(http, client))
            if client.install is not None:
                await self._install(client, device)
            if client.reports:
                pending = list(client.reports)
                await self._retry(client, lambda: self._session(http, client, session_id=None,
                                                                alert=ALERT_CLIENT_INITIATED))
                if client.reports == pending and client.download is None and client.install is None:
                    return  # the server took none of them: they wait for the next session

    async def _session(self, http: httpx.AsyncClient, client: DmClient, *, session_id: str | None, alert: int) -> SessionLog:
        started = time.monotonic()
        steps = client.session_steps(session_id=session_id, alert=alert, alerts=[])
        post = next(steps)
        try:
            while True:
                response = await http.post(post.url, content=post.body, headers=post.headers)
                post = steps.send(response)
        except StopIteration as done:
            self.stats.session(started, time.monotonic())
            logbook: SessionLog = done.value
            return logbook

    async def _download(self, http: httpx.AsyncClient, client: DmClient) -> None:
        dl = client.begin_download()
        while dl.size is None or len(dl.data) < dl.size:
            async with http.stream("GET", dl.url, headers={"range": f"bytes={len(dl.data)}-"}) as response:
                if not client.download_answered(dl, response):
                    return
                assert dl.size is not None  # (the answer gave it)
                async for piece in response.aiter_bytes():
                    dl.data += piece
                    if len(dl.data) > dl.size:
                        raise SessionError(f"{dl.url} sent more than its {dl.size} bytes")
        self.stats.downloads += 1
        client.download_complete(dl)

    async def _install(self, client: DmClient, device: Device) -> None:
        """Install in place on the flash (off the loop: it is CPU work), check the image, drop the flash."""
        await asyncio.to_thread(client.install_pending)
        self.stats.installs += 1
        new = client.device.version
        if new != device.version:
            if hashlib.sha256(client.device.image()).hexdigest() != self.firmware.hashes.get(new):
                device.errors.append(f"the flash does not hold {new}'s image after the install")
                return
            device.version = new

    async def _retry(self, client: DmClient, work: Callable[[], Awaitable[T]]) -> T:
        delays = retry_delays(client.config, self.rng)
        for attempt, delay in enumerate([*delays, None]):
            try:
                return await work()
            except (httpx.TransportError, SessionError) as exc:
                if delay is None:
                    raise SessionError(f"gave up after {attempt + 1} attempts: {exc}") from exc
                self.stats.retries += 1
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")
