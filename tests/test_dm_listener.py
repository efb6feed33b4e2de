"""The emulated devices' push listener (dm/listener.py) over real loopback HTTP: what it takes, what it refuses."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from fotadelta.dm import listener
from fotadelta.dm.listener import PushListener

Taken = tuple[PushListener, list[tuple[str, str, bytes]]]


@pytest.fixture
def taken() -> Iterator[Taken]:
    got: list[tuple[str, str, bytes]] = []

    def handler(dev_id: str, content_type: str, body: bytes) -> tuple[int, str]:
        if dev_id == "boom":
            raise RuntimeError("a fleet's bug")
        got.append((dev_id, content_type, body))
        return 202, "accepted"

    running = PushListener(handler)
    yield running, got
    running.stop()


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_pushes_reach_the_handler_over_one_kept_alive_connection(taken: Taken) -> None:
    running, got = taken
    with httpx.Client(base_url=f"http://127.0.0.1:{running.port}") as http:
        for i in range(3):
            r = http.post(f"/push/IMEI:{i}", content=bytes([i]) * 50,
                          headers={"content-type": "application/vnd.syncml.notification"})
            assert (r.status_code, r.text) == (202, "accepted\n")
    assert got == [(f"IMEI:{i}", "application/vnd.syncml.notification", bytes([i]) * 50) for i in range(3)]


def test_a_chunked_push_is_read_whole(taken: Taken) -> None:
    running, got = taken
    reply = _raw(running.port, b"POST /push/d1 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
                               b"connection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 202 ") and got == [("d1", "", b"abcde")]


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /push/d1 HTTP/1.1\r\nhost: x\r\n\r\n", 405),
    (b"POST /other/d1 HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", 404),
    (b"POST /push/a/b HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", 404),
    (b"POST /push/d1 HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (listener.MAX_BODY + 1), 413),
    (b"POST /push/d1 HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * (listener.MAX_HEAD + 1) + b"\r\n\r\n", 400),
    (b"POST /push/d1 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
     + b"%x\r\n" % (listener.MAX_BODY + 1) + b"a" * (listener.MAX_BODY + 1), 413),
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
    (b"POST /push/boom HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", 500),
])
def test_what_it_refuses_gets_a_status_and_nothing_reaches_the_fleet(
        taken: Taken, request_bytes: bytes, status: int) -> None:
    running, got = taken
    reply = _raw(running.port, request_bytes)
    assert reply.startswith(b"HTTP/1.1 %d " % status), reply[:200]
    assert got == []
