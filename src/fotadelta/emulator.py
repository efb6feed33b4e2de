"""Emulated devices for DM sessions: a single-slot device, its SIM, its DM client, its push listener.

A Fleet runs one HTTP listener for all its devices (`POST /push/{dev_id}` takes a package #0, or
a plain-profile bootstrap message for a device given its user's PIN); each is handled on the
device's own thread, one at a time per device, as a device's DM client would."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

from fotadelta import agent, sim
from fotadelta.dm import notification
from fotadelta.dm.client import ClientConfig, DmClient, Http, UserInterface
from fotadelta.dm.codec import Encoding
from fotadelta.dm.listener import PushListener
from fotadelta.dm.model import DM_1_2, Protocol
from fotadelta.dm.provisioning import DEMO_SECRET, SERVER_ID, derive
from fotadelta.package.signing import TrustStore

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
    inbox: queue.SimpleQueue[tuple[str, bytes] | None] = field(default_factory=queue.SimpleQueue)  # None: stop
    worker: threading.Thread | None = None  # the device's own thread, started at its first push
    errors: list[str] = field(default_factory=list)


class Fleet:
    """Devices that listen for HTTP push notifications on one shared port (a lean listener, dm.listener)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._slots: dict[str, _Slot] = {}
        self._pending = 0  # pushes taken in and not handled to their end yet
        self._idle = threading.Condition()
        self.running = PushListener(self._push, host, port)
        self.base_url = f"http://{host}:{self.running.port}"

    def push_url(self, dev_id: str) -> str:
        return f"{self.base_url}/push/{dev_id}"

    def add(self, client: DmClient, *, pin: str | None = None) -> DmClient:
        """Listen for client's notifications (and with pin, for bootstrap messages secured by that PIN)."""
        self._slots[client.config.dev_id] = _Slot(client, pin)
        return client

    def errors(self, dev_id: str) -> list[str]:
        return self._slots[dev_id].errors

    def _push(self, dev_id: str, content_type: str, body: bytes) -> tuple[int, str]:
        """A push (on the listener's loop): queued for the device's own thread, which handles its pushes
        one after the other, as a device's DM client would."""
        slot = self._slots.get(dev_id)
        if slot is None:
            return 404, "no such device"
        media = content_type.split(";")[0].strip()
        if media not in (notification.CONTENT_TYPE, BOOTSTRAP_TYPE) or (media == BOOTSTRAP_TYPE and slot.pin is None):
            return 415, "not a DM notification"
        with self._idle:
            self._pending += 1
        slot.inbox.put((content_type, body))
        if slot.worker is None:
            slot.worker = threading.Thread(target=self._work, args=(slot,), daemon=True,
                                           name=f"device:{dev_id}")
            slot.worker.start()
        return 202, "accepted"

    def _work(self, slot: _Slot) -> None:
        while (push := slot.inbox.get()) is not None:
            content_type, body = push
            try:
                if content_type.split(";")[0].strip() == notification.CONTENT_TYPE:
                    slot.client.handle_notification(body)
                else:
                    self._bootstrap(slot, body, content_type)
            except Exception as exc:  # a device's failure is recorded, never lost in a thread
                slot.errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _bootstrap(self, slot: _Slot, body: bytes, content_type: str) -> None:
        """A bootstrap message: the device takes the DM account (if its user's PIN authenticates it), then
        opens its first session with the server it names."""
        assert slot.pin is not None
        slot.client.bootstrap(body, content_type, slot.pin)
        slot.client.run()

    def wait(self, timeout: float = 120.0) -> None:
        """Wait until every notification received so far has been handled (at most timeout seconds)."""
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0, timeout)

    def stop(self) -> None:
        """Let the devices finish what they were pushed, stop listening, end their threads."""
        self.wait()
        self.running.stop()
        for slot in self._slots.values():
            if slot.worker is not None:
                slot.inbox.put(None)
                slot.worker.join(timeout=10)
