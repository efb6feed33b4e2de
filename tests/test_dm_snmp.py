"""SNMP software-request traps over loopback UDP: v2c and v3 (SHA + AES) through pysnmp, and what is refused.

The listener is real (pysnmp's engine on its own thread, a UDP socket on 127.0.0.1); so is the
sender. Traps that do not authenticate never reach the callback; traps that authenticate but
name another device, or ask for nothing valid, are counted as refused."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from fotadelta.dm import snmp

V3_CREDS = snmp.V3("dev2", "authkey-22", "privkey-22", "8000000001020304")


class Inbox:
    def __init__(self) -> None:
        self.requests: list[snmp.Request] = []
        self.arrived = threading.Event()

    def __call__(self, request: snmp.Request) -> None:
        self.requests.append(request)
        self.arrived.set()


@pytest.fixture
def listener() -> Iterator[tuple[snmp.TrapListener, Inbox]]:
    inbox = Inbox()
    listener = snmp.TrapListener(inbox)
    listener.add_device("IMEI:1", snmp.V2c("community-of-1"))
    listener.add_device("IMEI:2", V3_CREDS)
    try:
        yield listener, inbox
    finally:
        listener.stop()


def settle(listener: snmp.TrapListener, inbox: Inbox, requests: int, refused: int) -> None:
    """Wait (bounded) until the listener has seen what the test sent."""
    deadline = time.monotonic() + 5
    while (len(inbox.requests), listener.refused) < (requests, refused) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_v2c_list_request_arrives(listener: tuple[snmp.TrapListener, Inbox]) -> None:
    trap, inbox = listener
    snmp.send_request("127.0.0.1", trap.port, snmp.V2c("community-of-1"), "IMEI:1", snmp.Action.LIST)
    settle(trap, inbox, 1, 0)
    [request] = inbox.requests
    assert (request.dev_id, request.action, request.software, request.version) == ("IMEI:1", snmp.Action.LIST,
                                                                                  "", "v2c")
    assert request.sender.startswith("127.0.0.1:")


def test_a_v3_fetch_request_arrives_authenticated_and_encrypted(listener: tuple[snmp.TrapListener, Inbox]) -> None:
    trap, inbox = listener
    snmp.send_request("127.0.0.1", trap.port, V3_CREDS, "IMEI:2", snmp.Action.FETCH, "1.2")
    settle(trap, inbox, 1, 0)
    assert [(r.dev_id, r.action, r.software, r.version) for r in inbox.requests] == [
        ("IMEI:2", snmp.Action.FETCH, "1.2", "v3")]


@pytest.mark.parametrize("creds", [snmp.V2c("guessed"), snmp.V3("dev2", "authkey-2X", "privkey-22", "8000000001020304"),
                                   snmp.V3("dev2", "authkey-22", "privkey-2X", "8000000001020304"),
                                   snmp.V3("dev2", "authkey-22", "privkey-22", "8000000001020305"),
                                   snmp.V3("nobody", "authkey-22", "privkey-22", "8000000001020304")])
def test_traps_that_do_not_authenticate_are_dropped(listener: tuple[snmp.TrapListener, Inbox],
                                                    creds: snmp.Credentials) -> None:
    trap, inbox = listener
    snmp.send_request("127.0.0.1", trap.port, creds, "IMEI:2" if isinstance(creds, snmp.V3) else "IMEI:1",
                      snmp.Action.LIST)
    # Then a good one: once it is in, the bad one (sent first, same socket order) has been processed.
    snmp.send_request("127.0.0.1", trap.port, snmp.V2c("community-of-1"), "IMEI:1", snmp.Action.LIST)
    settle(trap, inbox, 1, 0)
    assert [r.version for r in inbox.requests] == ["v2c"] and trap.refused == 0 and trap.dropped == 1


def test_credentials_of_one_device_cannot_ask_for_another(listener: tuple[snmp.TrapListener, Inbox]) -> None:
    trap, inbox = listener
    snmp.send_request("127.0.0.1", trap.port, snmp.V2c("community-of-1"), "IMEI:2", snmp.Action.FETCH, "1.2")
    snmp.send_request("127.0.0.1", trap.port, V3_CREDS, "IMEI:1", snmp.Action.LIST)
    settle(trap, inbox, 0, 2)
    assert inbox.requests == [] and trap.refused == 2


def test_parse_request_checks_every_field() -> None:
    good = [((1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0), snmp.SOFTWARE_REQUEST), (snmp.DEV_ID, "IMEI:1"),
            (snmp.ACTION, 2), (snmp.SOFTWARE, "1.1")]
    assert snmp.parse_request("IMEI:1", good, "v2c", "h:1").software == "1.1"
    bad_cases = [
        (good[:1] + good[2:], "needs fdDevId"),
        ([((1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0), (1, 3, 6, 1, 6, 3, 1, 1, 5, 1))] + good[1:], "not a fotadelta"),
        (good[:2] + [(snmp.ACTION, 3)] + good[3:], "out of range"),
        (good[:3] + [(snmp.SOFTWARE, "x" * 65)], "out of range"),
        (good[:2] + [(snmp.ACTION, 2)], "names the software"),
        (good[:2] + [(snmp.ACTION, None)] + good[3:], "needs fdDevId"),
    ]
    for varbinds, message in bad_cases:
        with pytest.raises(snmp.SnmpError, match=message):
            snmp.parse_request("IMEI:1", varbinds, "v2c", "h:1")
    with pytest.raises(snmp.SnmpError, match="credentials of no device"):
        snmp.parse_request("", good, "v2c", "h:1")
    with pytest.raises(snmp.SnmpError, match="an fdDevId of 7 characters"):
        snmp.parse_request("IMEI:12", [*good[:1], (snmp.DEV_ID, "IMEI:12"), *good[2:]], "v2c", "h:1", max_dev_id=6)


class Allowance:
    """A gate like the server's throttle: `per_minute` datagrams a caller, then nothing is read."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.counts: dict[str, int] = {}

    def allowed(self, caller: str) -> bool:
        return self.counts.get(caller, 0) < self.per_minute

    def failed(self, caller: str) -> None:
        self.counts[caller] = self.counts.get(caller, 0) + 1


def test_the_gate_bounds_what_a_caller_gets_read_and_hears_of_every_refusal() -> None:
    inbox, gate = Inbox(), Allowance(3)
    refusals: list[tuple[str, str]] = []
    trap = snmp.TrapListener(inbox, gate=gate, on_refused=lambda who, why: refusals.append((who, why)))
    trap.add_device("IMEI:1", snmp.V2c("community-of-1"))
    try:
        for _ in range(2):
            snmp.send_request("127.0.0.1", trap.port, snmp.V2c("guessed"), "IMEI:1", snmp.Action.LIST)
        snmp.send_request("127.0.0.1", trap.port, snmp.V2c("community-of-1"), "IMEI:1", snmp.Action.LIST)
        settle(trap, inbox, 1, 0)
        # Over the allowance: even good credentials are not read until the caller's minute is over.
        snmp.send_request("127.0.0.1", trap.port, snmp.V2c("community-of-1"), "IMEI:1", snmp.Action.FETCH, "1.1")
        deadline = time.monotonic() + 5
        while trap.throttled < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        trap.stop()
    assert [r.action for r in inbox.requests] == [snmp.Action.LIST]
    assert (trap.dropped, trap.throttled, gate.counts["127.0.0.1"]) == (2, 1, 3)
    assert [why for _, why in refusals] == ["its credentials did not check (or it was no trap)"] * 2 + [
        "over its allowance of requests a minute: not read"]


@pytest.mark.parametrize("make", [lambda: snmp.V2c(""), lambda: snmp.V2c("a\nb"),
                                  lambda: snmp.V3("u", "short", "privkey-22", "80000000010203"),
                                  lambda: snmp.V3("u", "authkey-22", "privkey-22", "zz"),
                                  lambda: snmp.V3("u", "authkey-22", "privkey-22", "0102"),
                                  lambda: snmp.V3("", "authkey-22", "privkey-22", "8000000001020304")])
def test_unusable_credentials_are_refused(make: object) -> None:
    with pytest.raises(snmp.SnmpError):
        make()  # type: ignore[operator]


def test_a_port_in_use_is_an_error_for_the_caller(listener: tuple[snmp.TrapListener, Inbox]) -> None:
    with pytest.raises(OSError):
        snmp.TrapListener(lambda r: None, port=listener[0].port)
