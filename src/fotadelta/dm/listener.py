"""The emulated devices' push listener: one lean HTTP/1.1 endpoint, `POST /push/{dev_id}`, for a fleet.

A push carries a package #0 (about a hundred bytes) or a bootstrap message (a few KB), so the listener
needs neither routing nor an ASGI stack: an asyncio protocol reads each request with httptools (the
C parser uvicorn uses), bounds its head and body, hands (dev_id, content type, body) to the fleet's
handler on the loop and writes the status the handler gives. Connections are kept alive as the server's
push client reuses them. Anything else gets a plain status (404, 405, 413, 400) and, when the request
cannot be read to its end, the connection is closed. Under uvicorn and Starlette this was a third of
the emulated devices' CPU per update."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from urllib.parse import unquote

import httptools

MAX_HEAD = 8 * 1024
MAX_BODY = 64 * 1024  # a bootstrap message is a few KB, a package #0 about a hundred bytes
PREFIX = b"/push/"
REASONS = {202: "Accepted", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           413: "Content Too Large", 415: "Unsupported Media Type", 500: "Internal Server Error"}

# What the fleet does with a push: (dev_id, content type, body) -> (status, text of the answer). It runs on
# the listener's loop, so it must only take the push in and return (the device works on its own thread).
Handler = Callable[[str, str, bytes], tuple[int, str]]


class _Refused(Exception):
    """A request the listener answers with status and then closes the connection on."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


class _PushProtocol(asyncio.Protocol):
    """One connection: requests parsed as they arrive, each answered once complete."""

    def __init__(self, handler: Handler, open_transports: set[asyncio.Transport]) -> None:
        self.handler, self.open_transports = handler, open_transports
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.content_type = ""
        self.head = 0
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.open_transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.open_transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except _Refused as exc:
            self._answer(exc.status, exc.text, close=True)
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refused):
                self._answer(cause.status, cause.text, close=True)
            else:
                self._answer(400, "malformed request", close=True)

    # -- the parser's callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        name = name.lower()
        if name == b"content-type":
            self.content_type = value.decode("latin-1")
        elif name == b"content-length" and (len(value) > 9 or value.isdigit() and int(value) > MAX_BODY):
            # (A declared length over the bound is refused before any of its body is read.)
            raise _Refused(413, "too large for a push")

    def on_headers_complete(self) -> None:
        if self.parser.get_method() != b"POST":
            raise _Refused(405, "only POST")

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) > MAX_BODY:
            raise _Refused(413, "too large for a push")
        self.body += body

    def on_message_complete(self) -> None:
        keep = self.parser.should_keep_alive()
        path = self.url.partition(b"?")[0]
        dev_id = unquote(path[len(PREFIX):].decode("latin-1")) if path.startswith(PREFIX) else ""
        if not dev_id or "/" in dev_id:
            self._answer(404, "no such path", close=not keep)
            return
        try:
            status, text = self.handler(dev_id, self.content_type, bytes(self.body))
        except Exception:  # (a fleet's bug answers 500; the listener keeps serving the others)
            status, text = 500, "the device failed to take the push"
        self._answer(status, text, close=not keep)

    def _count(self, n: int) -> None:
        self.head += n
        if self.head > MAX_HEAD:
            raise _Refused(400, "request head too large")

    def _answer(self, status: int, text: str, *, close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        body = f"{text}\n".encode()
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\ncontent-type: text/plain; charset=utf-8\r\n"
                f"content-length: {len(body)}\r\n{'connection: close' + chr(13) + chr(10) if close else ''}\r\n")
        self.transport.write(head.encode("latin-1") + body)
        if close:
            self.transport.close()


async def serve(handler: Handler, sock: socket.socket,
                open_transports: set[asyncio.Transport] | None = None) -> asyncio.Server:
    """Listen on sock (bound, listening) on the running loop; the server is the caller's to close, and
    the connections it has open at the time (kept in open_transports, if given)."""
    loop = asyncio.get_running_loop()
    kept = set() if open_transports is None else open_transports
    return await loop.create_server(lambda: _PushProtocol(handler, kept), sock=sock)


class PushListener:
    """The listener on a loop of its own, in a daemon thread (for fleets whose devices run on threads)."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        self._sock = socket.create_server((host, port))
        self.port: int = self._sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._server: asyncio.Server | None = None
        connections: set[asyncio.Transport] = set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(serve(handler, self._sock, connections))
            started.set()
            self._loop.run_forever()
            self._server.close()
            for transport in list(connections):
                transport.close()
            self._loop.run_until_complete(asyncio.sleep(0))  # (the closes take effect on the loop)
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name=f"push:{self.port}")
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError(f"the push listener on {host}:{port} did not start")

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
