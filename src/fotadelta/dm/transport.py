"""A lean HTTP/1.1 client for emulated devices: one keep-alive connection, blocking sockets, httptools.

A device talks to one DM server and one package host, one request at a time, so it needs neither a
pool, nor cookies, nor redirects, nor proxies: httpx's full stack for that was a third of the emulated
devices' CPU. `DeviceHttp` keeps one connection per origin and reads responses with httptools (the
C parser of llhttp, which uvicorn uses too: status line, headers, Content-Length and chunked
bodies). It bounds what it takes (a response head, a buffered body), times out every connect and
read, and raises httpx's transport errors, so the DM client retries its failures exactly as it does
httpx's. Plain http:// only: the emulated devices talk to loopback servers (an https:// URL is
refused). A response must be delimited by its length or by chunks, as a keep-alive HTTP/1.1 server's
are; one ended only by the server closing the connection is refused as incomplete. A kept connection
that the server closes as the request goes out (its idle timeout meeting the request, as HTTP/1.1
allows) gets the request once more on a new connection, as browsers and urllib3 do; a fresh one does
not."""

from __future__ import annotations

import select
import socket
import struct
import sys
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools
import httpx

MAX_HEAD = 16 * 1024  # a response's status line and headers
MAX_BODY = 1 << 20  # a buffered response body (a DM message is at most a few tens of KB)
RECV = 64 * 1024
METHODS = ("GET", "POST")  # (no HEAD: its response has a length but no body, which the parser cannot know)


class _Refused(Exception):
    """A response this client does not take (raised inside the parser's callbacks)."""


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


class _Response:
    """The response being parsed on a connection: its parser (one per connection, kept from one response to the
    next), its callbacks, the head and the body pieces not handed out yet."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.reset()

    def reset(self) -> None:
        """Ready for the next response."""
        self.headers: dict[str, str] = {}
        self.head_bytes = 0
        self.head_done = self.complete = self.keep_alive = False
        self.pieces: list[bytes] = []
        self._messages = 0

    def on_message_begin(self) -> None:
        self._messages += 1
        if self._messages > 1:
            raise _Refused("the server sent more than one response")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_HEAD:
            raise _Refused(f"a response head over {MAX_HEAD} bytes")
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # (after this callback the parser no longer says)


def readable_now(sock: socket.socket) -> bool:
    """Whether sock has something to read (data or EOF) without waiting. poll(), not select(): select() refuses
    descriptors from FD_SETSIZE (1024) on, which a process with many connections open soon hands out."""
    if not hasattr(select, "poll"):  # Windows: its select() takes sockets of any number
        return bool(select.select([sock], [], [], 0)[0])
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _kernel_timeouts(sock: socket.socket, timeout: float) -> None:
    """Make sock blocking, its reads and writes timed out by the kernel (SO_RCVTIMEO, SO_SNDTIMEO): a Python
    timeout polls before every recv and send, a system call (and a hand-over of the GIL) more each time."""
    sock.settimeout(None)
    micros = max(1, round(timeout * 1e6))  # (zero would mean no timeout at all)
    if sys.platform == "win32":  # (a DWORD of milliseconds there, a struct timeval elsewhere)
        value = struct.pack("<L", max(1, micros // 1000))
    else:
        value = struct.pack("@ll", *divmod(micros, 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


class _Connection:
    """One socket to one origin, and the response being read on it."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port}: {exc}") from None
        except OSError as exc:
            raise httpx.ConnectError(f"connecting to {host}:{port}: {exc}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _kernel_timeouts(self.sock, timeout)
        self.response = _Response()
        self.head_read = 0  # bytes read while the head is incomplete
        self.answered = False  # whether any byte of the current response arrived

    def reusable(self) -> bool:
        """Still open: a server that closed an idle connection makes its socket readable (EOF)."""
        return not readable_now(self.sock)

    def send(self, request: bytes) -> None:
        self.response.reset()
        self.head_read = 0
        self.answered = False
        try:
            self.sock.sendall(request)
        except OSError as exc:
            raise httpx.WriteError(f"sending the request: {exc}") from None

    def receive(self) -> None:
        """Read and parse what the server sent next."""
        try:
            data = self.sock.recv(RECV)
        except (BlockingIOError, TimeoutError):  # (SO_RCVTIMEO ran out)
            raise httpx.ReadTimeout("no response in time") from None
        except OSError as exc:
            raise httpx.ReadError(f"reading the response: {exc}") from None
        if not data:
            raise httpx.RemoteProtocolError("the server closed the connection before the end of its response")
        self.answered = True
        try:
            self.response.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__ if isinstance(exc.__context__, _Refused) else exc
            raise httpx.RemoteProtocolError(f"malformed response: {cause}") from None
        if not self.response.head_done:
            self.head_read += len(data)
            if self.head_read > MAX_HEAD:  # (a status line or header that does not end)
                raise httpx.RemoteProtocolError(f"a response head over {MAX_HEAD} bytes")

    def read_head(self) -> int:
        """The response's status code, once its head has arrived."""
        while not self.response.head_done:
            self.receive()
        status: int = self.response.parser.get_status_code()
        if status < 200:  # (this client never asks for 100 Continue nor an upgrade)
            raise httpx.RemoteProtocolError(f"an unexpected {status} response")
        return status

    def body(self) -> Generator[bytes, None, None]:
        """The body's pieces as they arrive."""
        response = self.response
        while True:
            while response.pieces:
                yield response.pieces.pop(0)
            if response.complete:
                return
            self.receive()

    def close(self) -> None:
        self.sock.close()


class DeviceHttp:
    """A device's HTTP client: post, get and streamed get over one keep-alive connection per origin.

    on_request, if set, is called with (method, url) before each request (the benchmarks count them)."""

    def __init__(self, *, timeout: float = 30.0, max_body: int = MAX_BODY, user_agent: str = "fotadelta-device") -> None:
        self.timeout, self.max_body, self.user_agent = timeout, max_body, user_agent
        self.on_request: Callable[[str, str], None] | None = None
        self._connections: dict[tuple[str, int], _Connection] = {}
        self._origins: dict[str, tuple[str, int]] = {}  # netloc -> (host, port), parsed once

    def post(self, url: str, *, content: bytes, headers: dict[str, str] | None = None) -> Reply:
        return self._whole("POST", url, content, headers)

    def get(self, url: str, *, headers: dict[str, str] | None = None) -> Reply:
        return self._whole("GET", url, b"", headers)

    @contextmanager
    def stream(self, method: str, url: str, *, headers: dict[str, str] | None = None) -> Iterator[Reply]:
        """The response with its body unread: iterate it with iter_bytes inside the with block."""
        origin, conn, status = self._start(method, url, b"", headers)
        body = conn.body()
        try:
            yield Reply(status, conn.response.headers, _body=body)
        except BaseException:
            conn.close()
            raise
        finally:
            body.close()
        self._release(origin, conn)

    def close(self) -> None:
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()

    def __enter__(self) -> DeviceHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request ---------------------------------------------------------------------------------

    def _whole(self, method: str, url: str, body: bytes, headers: dict[str, str] | None) -> Reply:
        origin, conn, status = self._start(method, url, body, headers)
        try:
            content = self._read_all(conn)
        except BaseException:
            conn.close()
            raise
        self._release(origin, conn)
        return Reply(status, conn.response.headers, content)

    def _start(self, method: str, url: str, body: bytes,
               headers: dict[str, str] | None) -> tuple[tuple[str, int], _Connection, int]:
        """Send the request and read the response's head: the origin, the connection (whose body the caller
        reads, then hands it to _release, or closes it on a failure) and the status."""
        if method not in METHODS:
            raise ValueError(f"DeviceHttp sends {', '.join(METHODS)}, not {method}")
        parts = urlsplit(url)
        origin = self._origins.get(parts.netloc)
        if origin is None or parts.scheme != "http":
            if parts.scheme != "http" or not parts.hostname:
                raise httpx.UnsupportedProtocol(f"not a plain http:// URL: {url[:200]!r}")
            origin = self._origins[parts.netloc] = (parts.hostname, parts.port or 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = (f"{method} {target} HTTP/1.1\r\nhost: {parts.netloc}\r\nuser-agent: {self.user_agent}\r\n"
                f"content-length: {len(body)}\r\n")
        if headers:
            head += "".join([f"{k}: {v}\r\n" for k, v in headers.items()])
        # (a header value must not start another header: every line break is one of those put here)
        lines = 4 + (len(headers) if headers else 0)
        if head.count("\n") != lines or head.count("\r") != lines:
            raise ValueError("a request line or header holds a line break")
        request = head.encode("latin-1") + b"\r\n" + body
        if self.on_request is not None:
            self.on_request(method, url)
        conn = self._connections.pop(origin, None)
        if conn is not None and not conn.reusable():
            conn.close()
            conn = None
        if conn is not None:
            try:
                return origin, conn, self._exchange(conn, request)
            except (httpx.WriteError, httpx.ReadError, httpx.RemoteProtocolError):
                if conn.answered:
                    raise
                # (closed as the request went out, without a byte of answer: once more, on a new connection)
        conn = _Connection(*origin, self.timeout)
        return origin, conn, self._exchange(conn, request)

    @staticmethod
    def _exchange(conn: _Connection, request: bytes) -> int:
        """Send the request on conn and read the response's head (closing conn on any failure): its status."""
        try:
            conn.send(request)
            return conn.read_head()
        except BaseException:
            conn.close()
            raise

    def _release(self, origin: tuple[str, int], conn: _Connection) -> None:
        """Keep the connection for the next request only if this exchange ended cleanly."""
        if conn.response.complete and conn.response.keep_alive:
            self._connections[origin] = conn
        else:  # (the server said close, or the body was not read to its end)
            conn.close()

    def _read_all(self, conn: _Connection) -> bytes:
        response = conn.response
        if response.complete and len(response.pieces) <= 1:  # (all of it came with the head: most do)
            content = response.pieces.pop() if response.pieces else b""
            if len(content) > self.max_body:
                raise httpx.ReadError(f"a response body over {self.max_body} bytes")
            return content
        out = bytearray()
        for piece in conn.body():
            out += piece
            if len(out) > self.max_body:
                raise httpx.ReadError(f"a response body over {self.max_body} bytes")
        return bytes(out)
