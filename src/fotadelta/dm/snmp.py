"""Device-initiated requests as SNMP notifications (v2c or v3 traps), beside the DM Generic Alert.

A device that speaks SNMP may ask the DM server for its software with a trap instead of opening a
DM session: list what is available, or fetch a named version. The trap carries the fotadelta
enterprise objects below; the server's `TrapListener` checks the trap's credentials (a v2c
community or a v3 USM user with authentication and privacy, each belonging to exactly one device),
checks that the DevId it names is that device's, and hands the request on. The server answers by
starting a DM session to the device (package #0); nothing is delivered over SNMP itself.

A trap is a datagram from anyone: the listener asks a gate (the server's per-address throttle)
before pysnmp reads it, and tells the gate of every trap, so a flood of traps costs no more than
the allowance of the addresses it comes from (UDP source addresses can be forged: the allowance
bounds the work, not who is blamed).

OIDs hang below IANA's documentation enterprise number (RFC 5612: 32473), as a deployment would
below its own: `ENTERPRISE` is the one constant to change for that. Objects:

    ENTERPRISE.0.1   fotadeltaSoftwareRequest  (the notification)
    ENTERPRISE.1.1   fdDevId      OCTET STRING (SIZE 1..128), the device's DM DevId
    ENTERPRISE.1.2   fdAction     INTEGER { list(1), fetch(2) }
    ENTERPRISE.1.3   fdSoftware   OCTET STRING (SIZE 0..64), the version asked for (fetch)

pysnmp does the protocol work (BER, USM, the v3 crypto through `cryptography`); its asyncio engine
runs on a thread of the listener's own."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import ntfrcv
from pysnmp.hlapi.v3arch.asyncio import (CommunityData, ContextData, Integer, NotificationType, ObjectIdentity,
                                         ObjectType, OctetString, SnmpEngine, UdpTransportTarget, UsmUserData,
                                         send_notification, usmAesCfb128Protocol, usmHMACSHAAuthProtocol)

log = logging.getLogger("fotadelta.dm.snmp")

ENTERPRISE = (1, 3, 6, 1, 4, 1, 32473, 7)
SOFTWARE_REQUEST = ENTERPRISE + (0, 1)
DEV_ID = ENTERPRISE + (1, 1)
ACTION = ENTERPRISE + (1, 2)
SOFTWARE = ENTERPRISE + (1, 3)
_SNMP_TRAP_OID = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)  # SNMPv2-MIB::snmpTrapOID.0
MAX_DEV_ID = 128
MAX_SOFTWARE = 64
MIN_KEY = 8  # RFC 3414: USM passphrases are at least 8 characters


class Gate(Protocol):
    """Who may be heard: the server's per-address allowance (limits.Throttle)."""

    def allowed(self, caller: str) -> bool: ...

    def failed(self, caller: str) -> None: ...


class Action(IntEnum):
    LIST = 1
    FETCH = 2


class SnmpError(ValueError):
    """SNMP credentials or a request are unusable, or a trap could not be sent."""


@dataclass(frozen=True)
class Request:
    """What a device asked for in a trap that authenticated."""

    dev_id: str
    action: Action
    software: str  # the version asked for; "" for a list
    version: str  # "v2c" or "v3"
    sender: str  # host:port the trap came from


@dataclass(frozen=True)
class V2c:
    """An SNMPv2c community: a shared secret in clear text on the wire (v3 is the safer choice)."""

    community: str

    def __post_init__(self) -> None:
        if not 1 <= len(self.community) <= 64 or not self.community.isprintable():
            raise SnmpError("an SNMP community is 1 to 64 printable characters")


@dataclass(frozen=True)
class V3:
    """An SNMPv3 USM user with HMAC-SHA authentication and AES-128 privacy.

    Traps are unacknowledged, so the receiver must know the sender's engine id (hex) to check them."""

    user: str
    auth_key: str
    priv_key: str
    engine_id: str

    def __post_init__(self) -> None:
        if not 1 <= len(self.user) <= 32 or not self.user.isprintable():
            raise SnmpError("an SNMPv3 user name is 1 to 32 printable characters")
        if len(self.auth_key) < MIN_KEY or len(self.priv_key) < MIN_KEY:
            raise SnmpError(f"SNMPv3 keys are at least {MIN_KEY} characters")
        try:
            raw = bytes.fromhex(self.engine_id)
        except ValueError:
            raise SnmpError("an SNMP engine id is hex") from None
        if not 5 <= len(raw) <= 32:
            raise SnmpError("an SNMP engine id is 5 to 32 bytes")


Credentials = V2c | V3


def _varbinds(dev_id: str, action: Action, software: str) -> list[ObjectType]:
    if not 1 <= len(dev_id) <= MAX_DEV_ID or len(software) > MAX_SOFTWARE:
        raise SnmpError(f"DevId is 1 to {MAX_DEV_ID} characters and software at most {MAX_SOFTWARE}")
    return [ObjectType(ObjectIdentity(DEV_ID), OctetString(dev_id)),
            ObjectType(ObjectIdentity(ACTION), Integer(int(action))),
            ObjectType(ObjectIdentity(SOFTWARE), OctetString(software))]


def send_request(host: str, port: int, creds: Credentials, dev_id: str, action: Action, software: str = "",
                 *, timeout: float = 5.0) -> None:
    """Send a software request trap (the device's side); SnmpError if it could not be sent."""

    async def send() -> Any:
        if isinstance(creds, V3):
            eng = SnmpEngine(OctetString(hexValue=creds.engine_id))
            auth: CommunityData | UsmUserData = UsmUserData(creds.user, creds.auth_key, creds.priv_key,
                                                            authProtocol=usmHMACSHAAuthProtocol,
                                                            privProtocol=usmAesCfb128Protocol)
        else:
            eng = SnmpEngine()
            auth = CommunityData(creds.community, mpModel=1)
        try:
            target = await UdpTransportTarget.create((host, port), timeout=timeout, retries=0)
            return await send_notification(eng, auth, target, ContextData(), "trap",
                                           NotificationType(ObjectIdentity(SOFTWARE_REQUEST))
                                           .add_varbinds(*_varbinds(dev_id, action, software)))
        finally:
            eng.close_dispatcher()

    try:
        error, *_ = asyncio.run(send())
    except (OSError, ValueError) as exc:  # pysnmp's errors derive from these; a bad address is an OSError
        raise SnmpError(f"trap to {host}:{port} not sent: {exc}") from None
    if error:
        raise SnmpError(f"trap to {host}:{port} not sent: {error}")


def parse_request(owner: str, varbinds: list[tuple[tuple[int, ...], object]], version: str,
                  sender: str, *, max_dev_id: int = MAX_DEV_ID) -> Request:
    """The request a trap holds, checked against the device its credentials belong to; SnmpError otherwise."""
    values = dict(varbinds)
    if values.get(_SNMP_TRAP_OID) != SOFTWARE_REQUEST:
        raise SnmpError("not a fotadelta software request")
    dev_id, action, software = values.get(DEV_ID), values.get(ACTION), values.get(SOFTWARE, "")
    if not isinstance(dev_id, str) or not isinstance(software, str) or not isinstance(action, int):
        raise SnmpError("a software request needs fdDevId, fdAction (and fdSoftware)")
    if not 1 <= len(dev_id) <= min(max_dev_id, MAX_DEV_ID):
        raise SnmpError(f"an fdDevId of {len(dev_id)} characters")
    if dev_id != owner:
        raise SnmpError(f"credentials of {owner or 'no device'} used for {dev_id!r}")
    if action not in (Action.LIST, Action.FETCH) or len(software) > MAX_SOFTWARE:
        raise SnmpError(f"fdAction {action} or fdSoftware of {len(software)} characters out of range")
    if action == Action.FETCH and not software:
        raise SnmpError("a fetch names the software")
    return Request(dev_id, Action(action), software, version, sender)


def _plain(value: Any) -> object:
    """A varbind value as Python: OID -> tuple, integer -> int, octets -> str (or None if not UTF-8)."""
    cls = type(value).__name__
    if cls == "ObjectIdentifier":
        return tuple(value)
    if cls in ("Integer", "Integer32", "TimeTicks", "Unsigned32", "Counter32", "Gauge32"):
        return int(value)
    if cls == "OctetString":
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return None
    return None


def _log_refusal(sender: str, reason: str) -> None:
    log.warning("SNMP trap from %s refused: %s", sender, reason)


class TrapListener:
    """Receives software-request traps on a UDP port, on a thread of its own.

    Only traps whose credentials the listener was given for a device are accepted (pysnmp drops the
    rest: unknown community, unknown user, bad digest, stale time window); `on_request` gets the
    checked Request. `on_request` runs on the listener's thread and must return quickly.

    gate: asked before a datagram is read (a caller it refuses is not read at all) and told of
    every datagram read, accepted or not: SNMP has no session to vouch for a caller, and a v2c
    community travels in clear. on_refused(sender, reason) hears of every trap not accepted."""

    def __init__(self, on_request: Callable[[Request], None], host: str = "127.0.0.1", port: int = 0, *,
                 gate: Gate | None = None, on_refused: Callable[[str, str], None] = _log_refusal,
                 max_dev_id: int = MAX_DEV_ID) -> None:
        self.on_request, self.gate, self.on_refused, self.max_dev_id = on_request, gate, on_refused, max_dev_id
        self.refused = 0  # traps that authenticated but asked for something invalid
        self.dropped = 0  # datagrams pysnmp dropped: credentials that did not check, or no trap at all
        self.throttled = 0  # datagrams not read: their sender was over its allowance
        self._heard = 0  # traps that reached _received (accepted or refused)
        # Bound here, so that a port in use is an error for the caller, not for the thread.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._engine: Any = None
        self._communities = 0
        self._devices: dict[str, str] = {}  # security name -> the DevId its credentials belong to
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"snmp-traps:{self.port}")
        self._thread.start()
        if not self._ready.wait(10):
            raise SnmpError("the SNMP trap listener did not start")

    def _run(self) -> None:
        # pysnmp's dispatcher and transport take the thread's event loop: make them on this thread.
        asyncio.set_event_loop(self._loop)
        self._engine = engine.SnmpEngine()
        base = udp6.Udp6AsyncioTransport if self._sock.family == socket.AF_INET6 else udp.UdpAsyncioTransport
        transport = _gated(base, self)()
        config.add_transport(self._engine, (udp6.DOMAIN_NAME if self._sock.family == socket.AF_INET6
                                            else udp.DOMAIN_NAME), transport.open_server_mode(sock=self._sock))
        ntfrcv.NotificationReceiver(self._engine, self._received)
        self._loop.call_soon(self._ready.set)
        self._loop.run_forever()
        # Stopped: let pysnmp's timer tasks finish cancelling before the loop goes.
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    def add_device(self, dev_id: str, creds: Credentials) -> None:
        """Accept traps with these credentials, on behalf of dev_id only."""
        done = threading.Event()

        def add() -> None:
            try:
                if isinstance(creds, V3):
                    config.add_v3_user(self._engine, creds.user, config.USM_AUTH_HMAC96_SHA, creds.auth_key,
                                       config.USM_PRIV_CFB128_AES, creds.priv_key,
                                       securityEngineId=OctetString(hexValue=creds.engine_id))
                    # (pysnmp finds v3 users by user name, which must then be the security name too.)
                    self._devices[creds.user] = dev_id
                else:
                    self._communities += 1
                    config.add_v1_system(self._engine, f"c{self._communities}", creds.community, securityName=dev_id)
                    self._devices[dev_id] = dev_id
            finally:
                done.set()

        self._loop.call_soon_threadsafe(add)
        done.wait(10)

    def _admit(self, host: str) -> bool:
        """Whether a datagram from host is read (on the listener's thread, before pysnmp sees it)."""
        if self.gate is None:
            return True
        if not self.gate.allowed(host):
            self.throttled += 1
            self.on_refused(host, "over its allowance of requests a minute: not read")
            return False
        self.gate.failed(host)  # (every trap counts: see the class docstring)
        return True

    def _read(self, host: str, read: Callable[[], None]) -> None:
        """pysnmp reads one datagram (it calls _received, at once, for a trap whose credentials check)."""
        heard = self._heard
        read()
        if self._heard == heard:
            self.dropped += 1
            self.on_refused(host, "its credentials did not check (or it was no trap)")

    def _received(self, snmp_engine: Any, state_reference: Any, context_engine_id: Any, context_name: Any,
                  varbinds: Any, cb_ctx: Any) -> None:
        self._heard += 1
        ctx = snmp_engine.observer.get_execution_context("rfc3412.receiveMessage:request")
        host, port = ctx["transportAddress"][:2]
        version = "v3" if int(ctx["securityModel"]) == 3 else "v2c"
        try:
            owner = self._devices.get(str(ctx["securityName"]), "")
            request = parse_request(owner, [(tuple(o), _plain(v)) for o, v in varbinds],
                                    version, f"{host}:{port}", max_dev_id=self.max_dev_id)
        except SnmpError as exc:
            self.refused += 1
            self.on_refused(host, str(exc))
            return
        try:
            self.on_request(request)
        except Exception:  # the listener must outlive any one request
            log.exception("SNMP request %s failed", request)

    def stop(self) -> None:
        def close() -> None:
            self._engine.close_dispatcher()
            self._loop.stop()

        self._loop.call_soon_threadsafe(close)
        self._thread.join(10)


def _gated(base: type, listener: TrapListener) -> type:
    """pysnmp's UDP transport, with the listener's gate before each datagram is read."""

    class Gated(base):  # type: ignore[misc]
        def datagram_received(self, datagram: bytes, address: Any) -> None:
            host = str(address[0])
            if listener._admit(host):
                # (As pysnmp's own transport does, on the next turn of the loop; then at once through.)
                callback = self._callback_function
                self.loop.call_soon(listener._read, host, lambda: callback(self, address, datagram))

    return Gated


__all__ = ["Action", "Credentials", "Gate", "Request", "SnmpError", "TrapListener", "V2c", "V3", "parse_request",
           "send_request"]
