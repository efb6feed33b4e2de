"""The server's HTTP push client (server/push.py) against a scripted listener on loopback: kept-alive
connections, a listener that closed one, and what it refuses (redirects, answers over the bound, silence)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from fotadelta.dm.listener import PushListener
from fotadelta.server import push
from fotadelta.server.push import HttpPush, PushError, PushPolicy

Answer = Callable[[bytes], bytes | None]  # a request (head and body) -> what the listener writes (None: close)


@dataclass
class Listener:
    """A loopback listener answering each request as `answer` says; keeps what it heard."""

    answer: Answer
    close_after: bool = False  # close each connection after its first answer (without saying so)
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    port: int = 0


def _read_request(rfile: socketserver.StreamRequestHandler) -> bytes | None:
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = rfile.rfile.readline()
        if not line:
            return None
        head += line
    length = next(int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")) if k.lower() ==
                  b"content-length")
    return head + rfile.rfile.read(length)


@pytest.fixture
def listener() -> Iterator[Listener]:
    state = Listener(lambda _: b"HTTP/1.1 202 Accepted\r\ncontent-length: 3\r\n\r\nok\n")

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            state.connections += 1
            while (request := _read_request(self)) is not None:
                state.requests.append(request)
                reply = state.answer(request)
                if reply is None:
                    return
                self.wfile.write(reply)
                if state.close_after:
                    return

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def test_pushes_go_over_one_kept_alive_connection(listener: Listener) -> None:
    client = HttpPush()
    for i in range(5):
        client.post("dev", f"http://127.0.0.1:{listener.port}/push/dev {i}?x=1", b"pkg0-%d" % i, "application/x")
    assert listener.connections == 1 and len(listener.requests) == 5
    head, _, body = listener.requests[4].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /push/dev%204?x=1 HTTP/1.1" and body == b"pkg0-4"
    assert {b"host: 127.0.0.1:%d" % listener.port, b"content-type: application/x",
            b"content-length: 6"} <= set(lines)


def test_a_connection_the_listener_closed_is_not_reused(listener: Listener) -> None:
    listener.close_after = True
    client = HttpPush()
    for _ in range(3):
        client.post("dev", f"http://127.0.0.1:{listener.port}/push/dev", b"x", "application/x")
        time.sleep(0.05)  # (the close reaches the client's side before the next push)
    assert listener.connections == 3 and len(listener.requests) == 3  # each push sent once


def test_a_kept_connection_closed_as_it_is_taken_sends_the_push_again_on_a_new_one(listener: Listener) -> None:
    client = HttpPush()
    url = f"http://127.0.0.1:{listener.port}/push/dev"
    client.post("dev", url, b"x", "application/x")
    # The listener drops the next request unanswered, as one closing an idle connection does at that moment.
    answered = listener.answer

    def drop_once(request: bytes) -> bytes | None:
        listener.answer = answered
        return None

    listener.answer = drop_once
    client.post("dev", url, b"y", "application/x")
    assert listener.connections == 2 and [r[-1:] for r in listener.requests] == [b"x", b"y", b"y"]


@pytest.mark.parametrize("reply, why", [
    (b"HTTP/1.1 302 Found\r\nlocation: http://10.0.0.1/\r\ncontent-length: 0\r\n\r\n", "answered HTTP 302"),
    (b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n", "answered HTTP 500"),
    (b"HTTP/1.1 202 Accepted\r\ncontent-length: %d\r\n\r\n" % (push.MAX_ANSWER + 1) + b"x" * (push.MAX_ANSWER + 1),
     "over 65536 bytes"),
    (b"HTTP/1.1 202 Accepted\r\nx-filler: " + b"y" * push.MAX_ANSWER, "over 65536 bytes"),
    (b"nonsense\r\n\r\n", "malformed"),
    (None, "without answering"),
])
def test_what_a_push_does_not_take(listener: Listener, reply: bytes | None, why: str) -> None:
    listener.answer = lambda _: reply
    with pytest.raises(PushError, match=why):
        HttpPush().post("dev", f"http://127.0.0.1:{listener.port}/push/dev", b"x", "application/x")
    assert len(listener.requests) == 1  # nothing followed, nothing sent again


def test_a_silent_listener_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (the backlog), never answers
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(PushError, match="timed out"):
            HttpPush(timeout=0.3).post("dev", f"http://127.0.0.1:{port}/push/dev", b"x", "application/x")
        assert time.monotonic() - started < 5


def test_nothing_is_sent_outside_the_policy(listener: Listener) -> None:
    client = HttpPush(PushPolicy(networks=("127.0.0.2/32",)))
    with pytest.raises(PushError, match="outside the allowed networks"):
        client.post("dev", f"http://127.0.0.1:{listener.port}/push/dev", b"x", "application/x")
    with pytest.raises(PushError, match="no push address"):
        client.post("dev", "", b"x", "application/x")
    assert listener.connections == 0


def test_a_kept_connection_is_used_only_for_an_address_the_host_has_now(listener: Listener) -> None:
    client = HttpPush()
    target = client.policy.target(f"http://127.0.0.1:{listener.port}/push/dev")
    assert not isinstance(target, str)
    client.post("dev", f"http://127.0.0.1:{listener.port}/push/dev", b"x", "application/x")
    kept = client._kept(target)
    assert kept is not None and kept.usable(target.addresses) and not kept.usable(("127.0.0.9",))
    kept.close()


@pytest.mark.usefixtures("descriptors_past_fd_setsize")
def test_a_kept_connection_on_a_descriptor_past_fd_setsize_is_checked_and_reused(listener: Listener) -> None:
    client = HttpPush()
    target = client.policy.target(f"http://127.0.0.1:{listener.port}/push/dev")
    assert not isinstance(target, str)
    for _ in range(2):
        client.post("dev", f"http://127.0.0.1:{listener.port}/push/dev", b"x", "application/x")
    kept = client._kept(target)
    assert kept is not None and kept.sock.fileno() >= 1100 and kept.usable(target.addresses)
    assert listener.connections == 1 and len(listener.requests) == 2
    kept.close()


def test_the_devices_listener_takes_pushes_over_one_connection() -> None:
    taken: list[tuple[str, bytes]] = []

    def handler(dev_id: str, content_type: str, body: bytes) -> tuple[int, str]:
        taken.append((dev_id, body))
        return 202, "taken"

    devices = PushListener(handler)
    try:
        client = HttpPush()
        for i in range(3):
            client.post("d1", f"http://127.0.0.1:{devices.port}/push/d1", b"%d" % i, "application/x")
        assert taken == [("d1", b"0"), ("d1", b"1"), ("d1", b"2")] and len(client._idle) == 1
        with pytest.raises(PushError, match="answered HTTP 404"):
            client.post("d1", f"http://127.0.0.1:{devices.port}/elsewhere", b"x", "application/x")
    finally:
        devices.stop()
