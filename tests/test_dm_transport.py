"""The emulated devices' lean HTTP client (fotadelta.dm.transport.DeviceHttp): whole FUMO updates
through the real DM server with it, and its HTTP/1.1 behaviour against small raw-socket servers
(keep-alive, a server closing idle connections, chunked bodies, bounds, timeouts, broken answers)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
from dm_fixtures import Lab

from fotadelta.dm.client import FumoState
from fotadelta.dm.codec import Encoding
from fotadelta.dm.transport import DeviceHttp

# -- whole updates through the DM server -----------------------------------------------------------


@pytest.mark.parametrize(("encoding", "auth"), [(Encoding.XML, "md5"), (Encoding.WBXML, "hmac")], ids=["xml-md5",
                                                                                                        "wbxml-hmac"])
def test_a_fumo_update_over_device_http(lab: Lab, encoding: Encoding, auth: str) -> None:
    http = DeviceHttp(timeout=10.0)
    seen: list[tuple[str, str]] = []
    http.on_request = lambda method, url: seen.append((method, url))
    client = lab.device(encoding=encoding, auth=auth, register=auth != "md5", http=http)
    client.run()
    job = lab.update(client, "1.1")
    assert (job.state, job.result_code) == ("succeeded", 200)
    assert client.device.image() == lab.release.images["1.1"]
    assert client.fumo_state == FumoState.UPDATE_SUCCESSFUL_NO_DATA
    assert [s.state for s in lab.sessions(client.config.dev_id)] == ["completed"] * 3
    assert [m for m, _ in seen].count("GET") == 1 and all(m in ("GET", "POST") for m, _ in seen)
    assert len(http._connections) == 1  # one keep-alive connection to the one server, kept between requests


def test_an_interrupted_download_over_device_http_resumes_where_it_stopped(lab: Lab) -> None:
    http = DeviceHttp(timeout=10.0)
    ranges: list[str] = []
    client = lab.device(http=http)
    client.run()
    client.download_cut_after = 2500
    http.on_request = lambda method, url: ranges.append(method) if "/packages/" in url else None
    job = lab.update(client, "1.1")
    assert (job.state, job.result_code) == ("succeeded", 200)
    assert client.downloaded_bytes == len(lab.release.p10_11)  # nothing fetched twice
    assert ranges == ["GET", "GET"]
    assert client.device.image() == lab.release.images["1.1"]


# -- HTTP/1.1 against raw servers --------------------------------------------------------------------


class RawServer:
    """A loopback TCP server; each accepted connection is handed to answer(connection, its index)."""

    def __init__(self, answer: Callable[[socket.socket, int], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self.requests: list[bytes] = []
        self._answer = answer
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            index, self.accepted = self.accepted, self.accepted + 1
            threading.Thread(target=self._answer, args=(conn, index), daemon=True).start()

    def close(self) -> None:
        self.sock.close()


def read_request(conn: socket.socket, server: RawServer) -> bytes | None:
    """One request's Content-Length body (None: the client closed the connection); its whole text is
    kept in server.requests."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(4096)
        if not piece:
            return None
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
    while len(body) < length:
        body += conn.recv(4096)
    server.requests.append(head + b"\r\n\r\n" + body)
    return body


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[socket.socket, int, RawServer], None]], RawServer]]:
    servers: list[RawServer] = []

    def start(answer: Callable[[socket.socket, int, RawServer], None]) -> RawServer:
        server: RawServer = RawServer(lambda conn, i: answer(conn, i, server))
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.close()


def test_requests_share_one_connection_and_bodies_arrive_whole(serve: Callable[..., RawServer]) -> None:
    def answer(conn: socket.socket, index: int, server: RawServer) -> None:
        with conn:
            while (body := read_request(conn, server)) is not None:
                reply = body.upper() if body else b"hello"
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Twice: a\r\nX-Twice: b\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(reply), reply))

    server = serve(answer)
    with DeviceHttp(timeout=5.0) as http:
        first = http.post(f"{server.url}/dm", content=b"abc", headers={"content-type": "text/plain"})
        second = http.get(f"{server.url}/x?y=1")
    assert (first.status_code, first.content, second.content) == (200, b"ABC", b"hello")
    assert first.headers["content-type"] == "text/plain" and first.headers["x-twice"] == "a, b"
    assert server.accepted == 1
    assert server.requests[0].startswith(b"POST /dm HTTP/1.1\r\n") and server.requests[1].startswith(b"GET /x?y=1 ")


def test_many_answers_on_one_connection_each_parsed_whole(serve: Callable[..., RawServer]) -> None:
    """One parser per connection goes from answer to answer: each keeps its own status, headers and body."""
    def answer(conn: socket.socket, index: int, server: RawServer) -> None:
        with conn:
            n = 0
            while (body := read_request(conn, server)) is not None:
                n += 1
                status = b"200 OK" if n % 2 else b"404 Not Found"
                conn.sendall(b"HTTP/1.1 %s\r\nX-N: %d\r\nContent-Length: %d\r\n\r\n%s" % (status, n, len(body), body))

    server = serve(answer)
    with DeviceHttp(timeout=5.0) as http:
        replies = [http.post(f"{server.url}/dm", content=b"m%d" % i) for i in range(1, 21)]
    assert [(r.status_code, r.headers["x-n"], r.content) for r in replies] == [
        (200 if i % 2 else 404, str(i), b"m%d" % i) for i in range(1, 21)]
    assert server.accepted == 1


def test_a_header_or_target_with_a_line_break_is_refused_before_sending(serve: Callable[..., RawServer]) -> None:
    def answer(conn: socket.socket, index: int, server: RawServer) -> None:
        with conn:
            while read_request(conn, server) is not None:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = serve(answer)
    with DeviceHttp(timeout=5.0) as http:
        for value in ("a\r\nx-evil: 1", "a\nb", "a\rb"):
            with pytest.raises(ValueError):
                http.post(f"{server.url}/dm", content=b"", headers={"x-value": value})
        with pytest.raises(ValueError):
            http.post(f"{server.url}/dm", content=b"", headers={"x-a\r\nb": "c"})
        assert http.get(f"{server.url}/dm").content == b"ok"  # (and the client still works)
        with pytest.raises(httpx.UnsupportedProtocol):  # (an origin seen before over http:// is no exception)
            http.get(server.url.replace("http://", "https://") + "/dm")
        with DeviceHttp(user_agent="a\r\nb") as broken, pytest.raises(ValueError):
            broken.get(f"{server.url}/dm")
    assert len(server.requests) == 1


def test_a_connection_the_server_closed_while_idle_is_replaced(serve: Callable[..., RawServer]) -> None:
    closed = threading.Event()

    def answer(conn: socket.socket, index: int, server: RawServer) -> None:
        with conn:
            read_request(conn, server)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        closed.set()  # (as uvicorn does after its keep-alive timeout)

    server = serve(answer)
    with DeviceHttp(timeout=5.0) as http:
        assert http.get(server.url).content == b"ok"
        assert closed.wait(5)
        assert http.get(server.url).content == b"ok"
    assert server.accepted == 2


@pytest.mark.parametrize("partial", [b"", b"HTTP/1.1 200 OK\r\n"], ids=["no-answer", "part-answered"])
def test_a_kept_connection_closed_as_the_request_goes_out_is_retried_once_unless_answered(
        serve: Callable[..., RawServer], partial: bytes) -> None:
    """The server's idle close can meet the next request after the client found the connection open: the
    request then goes once more on a new connection. A connection that began to answer is not retried."""
    def answer(conn: socket.socket, index: int, server: RawServer) -> None:
        with conn:
            read_request(conn, server)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            if index == 0:  # (the next request arrives as this connection is closed)
                read_request(conn, server)
                conn.sendall(partial)

    server = serve(answer)
    with DeviceHttp(timeout=5.0) as http:
        assert http.post(server.url, content=b"1").content == b"ok"
        if partial:
            with pytest.raises(httpx.RemoteProtocolError):
                http.post(server.url, content=b"2")
            assert (server.accepted, len(server.requests)) == (1, 2)
        else:
            assert http.post(server.url, content=b"2").content == b"ok"
            assert (server.accepted, len(server.requests)) == (2, 3)
            assert server.requests[1] == server.requests[2]


@pytest.mark.usefixtures("descriptors_past_fd_setsize")
def test_connections_are_kept_and_replaced_on_descriptors_past_fd_setsize(serve: Callable[..., RawServer]) -> None:
    closed = threading.Event()

    def answer(conn: socket.socket, index: int, server: RawServer) -> None:
        with conn:
            for _ in range(2 if index == 0 else 1):  # the first connection is closed after two requests
                read_request(conn, server)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        closed.set()

    server = serve(answer)
    with DeviceHttp(timeout=5.0) as http:
        assert [http.get(server.url).content for _ in range(2)] == [b"ok", b"ok"]
        assert server.accepted == 1
        assert closed.wait(5)
        assert http.get(server.url).content == b"ok"
    assert server.accepted == 2


def test_a_chunked_body_streams_in_pieces_and_the_connection_is_kept(serve: Callable[..., RawServer]) -> None:
    def answer(conn: socket.socket, index: int, server: RawServer) -> None:
        with conn:
            while read_request(conn, server) is not None and len(server.requests) <= 2:
                conn.sendall(b"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\n"
                             b"Content-Range: bytes 0-9999/10000\r\n\r\n")
                for _ in range(10):
                    conn.sendall(b"3e8\r\n" + b"x" * 1000 + b"\r\n")
                conn.sendall(b"0\r\n\r\n")

    server = serve(answer)
    with DeviceHttp(timeout=5.0) as http:
        with http.stream("GET", server.url, headers={"range": "bytes=0-"}) as reply:
            assert reply.status_code == 206 and reply.headers["content-range"].endswith("/10000")
            pieces = list(reply.iter_bytes(512))
        assert b"".join(pieces) == b"x" * 10000 and max(map(len, pieces)) <= 512
        assert http.post(server.url, content=b"").status_code == 206  # same connection
    assert server.accepted == 1


def test_a_body_over_the_bound_is_refused(serve: Callable[..., RawServer]) -> None:
    def answer(conn: socket.socket, index: int, server: RawServer) -> None:
        with conn:
            read_request(conn, server)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"y" * 5000)

    server = serve(answer)
    with DeviceHttp(timeout=5.0, max_body=4096) as http, pytest.raises(httpx.ReadError, match="over 4096"):
        http.get(server.url)


def test_a_head_over_the_bound_is_a_protocol_error(serve: Callable[..., RawServer]) -> None:
    def answer(conn: socket.socket, index: int, server: RawServer) -> None:
        with conn:
            read_request(conn, server)
            conn.sendall(b"HTTP/1.1 200 OK\r\n" + b"X-Junk: " + b"z" * 40_000 + b"\r\n\r\n")

    server = serve(answer)
    with DeviceHttp(timeout=5.0) as http, pytest.raises(httpx.RemoteProtocolError):
        http.get(server.url)


@pytest.mark.parametrize("answer_bytes", [
    b"", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X" * 20_000], ids=["nothing", "short-body", "not-http", "two-responses", "continue",
                                                  "bad-chunk", "endless-head"])
def test_broken_answers_are_transport_errors(serve: Callable[..., RawServer], answer_bytes: bytes) -> None:
    def answer(conn: socket.socket, index: int, server: RawServer) -> None:
        with conn:
            read_request(conn, server)
            conn.sendall(answer_bytes)

    server = serve(answer)
    with DeviceHttp(timeout=5.0) as http, pytest.raises(httpx.TransportError):
        http.post(server.url, content=b"x")
    assert not http._connections  # nothing broken is kept


def test_a_silent_server_times_out(serve: Callable[..., RawServer]) -> None:
    release = threading.Event()

    def answer(conn: socket.socket, index: int, server: RawServer) -> None:
        with conn:
            read_request(conn, server)
            release.wait(10)

    server = serve(answer)
    try:
        with DeviceHttp(timeout=0.3) as http, pytest.raises(httpx.ReadTimeout):
            http.get(server.url)
    finally:
        release.set()


def test_unreachable_and_unsupported_urls() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # (closed again: nothing listens there)
    with DeviceHttp(timeout=2.0) as http:
        with pytest.raises(httpx.ConnectError):
            http.get(f"http://127.0.0.1:{port}/")
        with pytest.raises(httpx.UnsupportedProtocol):
            http.get("https://127.0.0.1/")
