"""Emulated devices for DM sessions: a single-slot device, its SIM, its DM client, its push listener.

A Fleet runs one HTTP listener for all its devices (`POST /push/{dev_id}` takes a package #0, or
a plain-profile bootstrap message for a device given its user's PIN); each is handled on the
device's own worker thread, one at a time per device, as a device's DM client would."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from fotadelta import agent, sim
from fotadelta.dm import notification
from fotadelta.dm.client import ClientConfig, DmClient, Http, UserInterface
from fotadelta.dm.codec import Encoding
from fotadelta.dm.model import DM_1_2, Protocol
from fotadelta.dm.provisioning import DEMO_SECRET, SERVER_ID, derive
from fotadelta.package.signing import TrustStore
from fotadelta.server.app import Running, serve_in_thread

BOOTSTRAP_TYPE = Encoding.WBXML.content_type  # a bootstrap message's media type (SEC and MAC are its parameters)


def make_client(image: bytes, *, dev_id: str, make: str, model: str, version: str, server_url: str, trust: TrustStore,
                sim_card: sim.Sim | None = None, secret: str = DEMO_SECRET, auth: str = "md5",
                encoding: Encoding = Encoding.XML, lang: str = "en", msisdn: str | None = None,
                ui: UserInterface | None = None, block_size: int = 4096, push_url: str | None = None,
                max_msg_size: int = 16 * 1024, server_id: str = SERVER_ID, protocol: Protocol = DM_1_2,
                http: Http | None = None) -> DmClient:
    """An emulated device running image, with factory credentials derived from secret (for server_id);
    http: its HTTP client (default: an httpx.Client of its own; emulated fleets pass a transport.DeviceHttp each,
    or share one httpx.Client)."""
    device = agent.Device.with_image(image, make=make, model=model, version=version, trust=trust,
                                     nvm=sim.handoff(sim_card or sim.Sim()), block_size=block_size)
    creds = derive(secret, dev_id, server_id)
    config = ClientConfig(server_url=server_url, dev_id=dev_id, user=creds.user, password=creds.password,
                          server_id=creds.server_id, server_password=creds.server_password, auth=auth,
                          encoding=encoding, lang=lang, msisdn=msisdn, push_url=push_url, max_msg_size=max_msg_size,
                          protocol=protocol)
    return DmClient(config, device, ui=ui, http=http)


@dataclass
class _Slot:
    client: DmClient
    pin: str | None = None  # the PIN its user gives a bootstrap message; None: it takes none
    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: list[str] = field(default_factory=list)


class Fleet:
    """Devices that listen for HTTP push notifications on one shared port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._slots: dict[str, _Slot] = {}
        self._threads: list[threading.Thread] = []
        self._guard = threading.Lock()
        self.running: Running = serve_in_thread(Starlette(routes=[Route("/push/{dev_id}", self._push,
                                                                         methods=["POST"])]), host, port)
        self.base_url = f"http://{host}:{self.running.port}"

    def push_url(self, dev_id: str) -> str:
        return f"{self.base_url}/push/{dev_id}"

    def add(self, client: DmClient, *, pin: str | None = None) -> DmClient:
        """Listen for client's notifications (and with pin, for bootstrap messages secured by that PIN)."""
        self._slots[client.config.dev_id] = _Slot(client, pin)
        return client

    def errors(self, dev_id: str) -> list[str]:
        return self._slots[dev_id].errors

    async def _push(self, request: Request) -> Response:
        slot = self._slots.get(request.path_params["dev_id"])
        if slot is None:
            return PlainTextResponse("no such device\n", status_code=404)
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";")[0].strip()
        if media not in (notification.CONTENT_TYPE, BOOTSTRAP_TYPE) or (media == BOOTSTRAP_TYPE and slot.pin is None):
            return PlainTextResponse("not a DM notification\n", status_code=415)
        body = await request.body()
        with self._guard:
            # Started under the guard: an unstarted thread is not alive, so a concurrent prune or
            # wait() would otherwise drop it or fail to join it.
            if media == notification.CONTENT_TYPE:
                worker = threading.Thread(target=self._handle, args=(slot, body), daemon=True)
            else:
                worker = threading.Thread(target=self._bootstrap, args=(slot, body, content_type), daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(worker)
            worker.start()
        return PlainTextResponse("accepted\n", status_code=202)

    def _handle(self, slot: _Slot, pkg0: bytes) -> None:
        try:
            with slot.lock:
                slot.client.handle_notification(pkg0)
        except Exception as exc:  # a device's failure is recorded, never lost in a thread
            slot.errors.append(f"{type(exc).__name__}: {exc}")

    def _bootstrap(self, slot: _Slot, body: bytes, content_type: str) -> None:
        """A bootstrap message: the device takes the DM account (if its user's PIN authenticates it), then
        opens its first session with the server it names."""
        try:
            with slot.lock:
                assert slot.pin is not None
                slot.client.bootstrap(body, content_type, slot.pin)
                slot.client.run()
        except Exception as exc:  # a device's failure is recorded, never lost in a thread
            slot.errors.append(f"{type(exc).__name__}: {exc}")

    def wait(self, timeout: float = 120.0) -> None:
        """Wait until every notification received so far has been handled."""
        with self._guard:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout)

    def stop(self) -> None:
        self.wait()
        self.running.stop()
