"""A lean HTTP/1.1 client for emulated devices: one keep-alive connection, blocking sockets, h11.

A device talks to one DM server and one package host, one request at a time, so it needs neither a
pool, nor cookies, nor redirects, nor proxies: httpx's full stack for that was a third of the emulated
devices' CPU. `DeviceHttp` keeps one connection per origin, speaks HTTP/1.1 through h11 (which checks
the protocol: framing, chunked bodies, header syntax), bounds what it buffers (a response head, a
whole body), times out every connect and read, and raises httpx's transport errors, so the DM client
retries its failures exactly as it does httpx's. Plain http:// only: the emulated devices talk to
loopback servers (an https:// URL is refused with a clear error)."""

from __future__ import annotations

import select
import socket
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import httpx

MAX_HEAD = 16 * 1024  # a response's status line and headers
MAX_BODY = 1 << 20  # a buffered response body (a DM message is at most a few tens of KB)
RECV = 64 * 1024


@dataclass(frozen=True)
class Reply:
    """A response: status, headers (lower-case names; repeated ones joined by commas) and its body, which
    a streamed response reads with iter_bytes instead."""

    status_code: int
    headers: dict[str, str]
    content: bytes = b""
    _body: Iterator[bytes] | None = None

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def raise_for_status(self) -> None:
        if not 200 <= self.status_code < 300:
            raise httpx.HTTPError(f"HTTP {self.status_code}")

    def iter_bytes(self, chunk_size: int = RECV) -> Iterator[bytes]:
        """The body of a streamed response, piece by piece as it arrives (at most chunk_size each)."""
        assert self._body is not None, "iter_bytes is for streamed responses"
        for data in self._body:
            for i in range(0, len(data), chunk_size):
                yield data[i:i + chunk_size]


class _Connection:
    """One socket to one origin and its h11 state."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port}: {exc}") from None
        except OSError as exc:
            raise httpx.ConnectError(f"connecting to {host}:{port}: {exc}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)

    def reusable(self) -> bool:
        """Idle and still open: a server that closed an idle connection makes its socket readable (EOF)."""
        if self.h11.our_state is not h11.IDLE or self.h11.their_state is not h11.IDLE:
            return False
        readable, _, _ = select.select([self.sock], [], [], 0)
        return not readable

    def send(self, *events: h11.Event) -> None:
        data = b"".join(self.h11.send(e) or b"" for e in events)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise httpx.WriteError(f"sending the request: {exc}") from None

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        """The next event (never NEED_DATA: it reads from the socket until there is one)."""
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(f"malformed response: {exc}") from None
            if event is not h11.NEED_DATA:
                return event
            try:
                data = self.sock.recv(RECV)
            except TimeoutError:
                raise httpx.ReadTimeout("no response in time") from None
            except OSError as exc:
                raise httpx.ReadError(f"reading the response: {exc}") from None
            try:
                self.h11.receive_data(data)  # b"": the server closed the connection
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(f"malformed response: {exc}") from None

    def close(self) -> None:
        self.sock.close()


class DeviceHttp:
    """A device's HTTP client: post, get and streamed get over one keep-alive connection per origin.

    on_request, if set, is called with (method, url) before each request (the benchmarks count them)."""

    def __init__(self, *, timeout: float = 30.0, max_body: int = MAX_BODY, user_agent: str = "fotadelta-device") -> None:
        self.timeout, self.max_body, self.user_agent = timeout, max_body, user_agent
        self.on_request: Callable[[str, str], None] | None = None
        self._connections: dict[tuple[str, int], _Connection] = {}

    def post(self, url: str, *, content: bytes, headers: dict[str, str] | None = None) -> Reply:
        with self._exchange("POST", url, content, headers) as (conn, head):
            return Reply(head.status_code, _headers(head), self._read_all(conn))

    def get(self, url: str, *, headers: dict[str, str] | None = None) -> Reply:
        with self._exchange("GET", url, b"", headers) as (conn, head):
            return Reply(head.status_code, _headers(head), self._read_all(conn))

    @contextmanager
    def stream(self, method: str, url: str, *, headers: dict[str, str] | None = None) -> Iterator[Reply]:
        """The response with its body unread: iterate it with iter_bytes inside the with block."""
        with self._exchange(method, url, b"", headers) as (conn, head):
            body = self._pieces(conn)
            try:
                yield Reply(head.status_code, _headers(head), _body=body)
            finally:
                body.close()

    def close(self) -> None:
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()

    def __enter__(self) -> DeviceHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request ---------------------------------------------------------------------------------

    @contextmanager
    def _exchange(self, method: str, url: str, body: bytes,
                  headers: dict[str, str] | None) -> Iterator[tuple[_Connection, h11.Response]]:
        """Send the request, read the response's head; the body is the caller's to read in the block.
        The connection is kept for the next request only if this exchange ended cleanly."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise httpx.UnsupportedProtocol(f"not a plain http:// URL: {url[:200]!r}")
        origin = (parts.hostname, parts.port or 80)
        if self.on_request is not None:
            self.on_request(method, url)
        conn = self._connections.pop(origin, None)
        if conn is not None and not conn.reusable():
            conn.close()
            conn = None
        if conn is None:
            conn = _Connection(*origin, self.timeout)
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            fields = [("host", parts.netloc), ("user-agent", self.user_agent), ("content-length", str(len(body))),
                      *(headers or {}).items()]
            conn.send(h11.Request(method=method, target=target, headers=fields), h11.Data(data=body),
                      h11.EndOfMessage())
            head = conn.next_event()
            while isinstance(head, h11.InformationalResponse):  # (100 Continue and the like)
                head = conn.next_event()
            if not isinstance(head, h11.Response):
                raise httpx.RemoteProtocolError("the server closed the connection without a response")
            # (h11 bounds a head still arriving; one that came whole in a single read is measured here)
            if sum(len(n) + len(v) + 4 for n, v in head.headers) > MAX_HEAD:
                raise httpx.RemoteProtocolError(f"a response head over {MAX_HEAD} bytes")
            yield conn, head
        except BaseException:
            conn.close()
            raise
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            self._connections[origin] = conn
        else:  # (the server said close, or the body was not read to its end)
            conn.close()

    def _pieces(self, conn: _Connection) -> Generator[bytes, None, None]:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise httpx.ReadError("the server closed the connection before the end of the body")

    def _read_all(self, conn: _Connection) -> bytes:
        out = bytearray()
        for piece in self._pieces(conn):
            out += piece
            if len(out) > self.max_body:
                raise httpx.ReadError(f"a response body over {self.max_body} bytes")
        return bytes(out)


def _headers(head: h11.Response) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in head.headers:
        key, text = name.decode("latin-1"), value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out
