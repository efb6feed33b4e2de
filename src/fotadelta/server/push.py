"""Notification transports: how package #0 reaches a device.

HTTP push posts it (or a bootstrap message) to the device's push address (what the emulator
listens on); the SMS
transport wraps it in a connectionless WAP push and splits that into binary SMS segments for an
operator's SMS gateway (any callable that sends one segment to an MSISDN).

A push address is whatever a device reported, so the server would POST wherever it is told:
`PushPolicy` says which schemes and networks it may reach (loopback only by default, what the
demo and the emulator use); an address outside it is neither stored nor posted to."""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import httptools

from fotadelta.dm import notification
from fotadelta.dm.transport import readable_now
from fotadelta.server.store import DeviceRow


class PushError(RuntimeError):
    """The notification could not be delivered."""


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
MAX_ANSWER = 64 * 1024  # a push's answer, head and body (a listener answers a line)
MAX_IDLE = 32  # kept-alive connections, all addresses together
IDLE_EXPIRY = 5.0  # seconds an idle connection is kept (listeners close theirs after a while too)
_RECV = 16 * 1024
# What stands as it is in a request target: printable ASCII but the space (the rest is percent-encoded).
_TARGET_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


@dataclass(frozen=True)
class Target:
    """A push address the policy allows: where to connect (addresses: every one its host resolved to, all
    checked; empty when the host was not resolved) and what to ask for."""

    scheme: str
    host: str
    port: int
    netloc: str
    path: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class PushPolicy:
    """Where HTTP push may go: URL schemes, and networks every address of the host must be in."""

    schemes: tuple[str, ...] = ("http", "https")
    networks: tuple[str, ...] = LOOPBACK
    max_length: int = 256  # what the store keeps

    def __post_init__(self) -> None:
        self._parsed  # a malformed network is a configuration error, found at start

    @functools.cached_property
    def _parsed(self) -> list[IpNetwork]:
        # (Parsed once: every push checks its address against them.)
        return [ipaddress.ip_network(n, strict=False) for n in self.networks]

    def refusal(self, url: str, *, resolve: bool = True) -> str | None:
        """Why url may not be pushed to, or None when it may. resolve=False checks a host name's
        form only (its addresses are checked when the push is sent)."""
        found = self.target(url, resolve=resolve)
        return found if isinstance(found, str) else None

    def target(self, url: str, *, resolve: bool = True) -> Target | str:
        """Where a push to url goes, or why it may not go there (as refusal)."""
        if len(url) > self.max_length:
            return f"the push address is longer than {self.max_length} characters"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            return f"the push address is not a URL: {exc}"
        scheme = parts.scheme.lower()
        if scheme not in self.schemes:
            return f"push scheme {parts.scheme!r} is not allowed ({', '.join(self.schemes)})"
        host = parts.hostname
        if not host or parts.username is not None or parts.password is not None:
            return "the push address needs a host and no user information"
        port = port or (443 if scheme == "https" else 80)
        path = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe=_TARGET_SAFE)
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            if not resolve:
                return Target(scheme, host, port, parts.netloc, path, ())
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                return f"the push host {host!r} does not resolve: {exc}"
            addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        networks = self._parsed
        for address in addresses:
            if not any(address in net for net in networks):
                return f"push address {address} is outside the allowed networks ({', '.join(self.networks)})"
        return Target(scheme, host, port, parts.netloc, path, tuple(dict.fromkeys(str(a) for a in addresses)))


class _Unanswered(PushError):
    """The connection ended with no answer at all (on a kept-alive one: the listener had closed it, and the
    push may go again on a new one)."""

    def __init__(self) -> None:
        super().__init__("the device closed the connection without answering")


class _Answer:
    """A push's answer as httptools parses it: its status once complete, and whether the connection stays."""

    def __init__(self) -> None:
        self.head_done = self.complete = self.keep_alive = False
        self.messages = 0
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.messages += 1
        if self.messages > 1:
            raise PushError("the device answered more than once")

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # (after this callback the parser no longer says)


def read_answer(recv: Callable[[int], bytes]) -> tuple[int, bool]:
    """Read one HTTP answer from recv (a socket's, b"" at its end), at most MAX_ANSWER bytes: its status, and
    whether the connection may be kept. PushError if it is malformed, too long or cut short; _Unanswered if
    nothing came at all."""
    answer, size = _Answer(), 0
    while not answer.complete:
        data = recv(_RECV)
        if not data:
            if size == 0:
                raise _Unanswered()
            if not answer.head_done:
                raise PushError("the device closed the connection in the middle of its answer")
            break  # (an answer whose body ends with the connection)
        size += len(data)
        if size > MAX_ANSWER:
            raise PushError(f"the device's answer is over {MAX_ANSWER} bytes")
        try:
            answer.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            raise cause if isinstance(cause, PushError) else PushError(f"a malformed answer: {exc}") from None
    status: int = answer.parser.get_status_code()
    return status, answer.complete and answer.keep_alive


class _Connection:
    """A socket to one of a push target's checked addresses."""

    def __init__(self, target: Target, timeout: float, tls: ssl.SSLContext | None) -> None:
        self.key, self.since = (target.scheme, target.host, target.port), 0.0
        failure: OSError | None = None
        for address in target.addresses:
            try:
                sock = socket.create_connection((address, target.port), timeout=timeout)
            except OSError as exc:
                failure = exc
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self.sock = sock if tls is None else tls.wrap_socket(sock, server_hostname=target.host)
            except (OSError, ValueError):
                sock.close()
                raise
            self.address = address
            return
        raise failure or OSError("the push host has no address")

    def usable(self, addresses: tuple[str, ...]) -> bool:
        """Still open (a listener that closed an idle connection makes it readable: EOF), and to an address
        the target has now."""
        return self.address in addresses and not readable_now(self.sock)

    def exchange(self, request: bytes) -> tuple[int, bool]:
        """Send request and read the whole answer: its status, and whether the connection stays."""
        self.sock.sendall(request)
        return read_answer(self.sock.recv)

    def close(self) -> None:
        self.sock.close()


class HttpPush:
    """POST package #0 to the device's push address, if the policy allows it: one HTTP/1.1 request over a
    kept-alive connection (at most MAX_IDLE kept, IDLE_EXPIRY seconds each), to an address the policy
    checked, bounded (timeout per connect, send and read; MAX_ANSWER); redirects are not followed.

    (httpx's client for this cost a quarter of an operator's update with notify: a push needs none of its
    pool machinery, cookies, redirects nor models.)"""

    def __init__(self, policy: PushPolicy | None = None, *, timeout: float = 10.0) -> None:
        self.policy = policy or PushPolicy()
        self.timeout = timeout
        self._idle: list[_Connection] = []  # oldest first
        self._lock = threading.Lock()

    @functools.cached_property
    def _tls(self) -> ssl.SSLContext:
        return ssl.create_default_context()

    def __call__(self, device: DeviceRow, pkg0: bytes) -> None:
        self.post(device.dev_id, device.push_url, pkg0, notification.CONTENT_TYPE)

    def post(self, dev_id: str, url: str, body: bytes, content_type: str) -> None:
        """POST body to a device's push address (package #0, or a bootstrap message)."""
        if not url:
            raise PushError(f"{dev_id} has no push address")
        target = self.policy.target(url)
        if isinstance(target, str):
            raise PushError(f"push to {dev_id} refused: {target}")
        netloc = target.netloc if target.netloc.isascii() else \
            f"{target.host.encode('idna').decode('ascii')}:{target.port}"
        if any(c in content_type for c in "\r\n"):
            raise ValueError("a content type holds a line break")
        request = (f"POST {target.path} HTTP/1.1\r\nhost: {netloc}\r\ncontent-type: {content_type}\r\n"
                   f"content-length: {len(body)}\r\nuser-agent: fotadelta-push\r\n\r\n").encode("latin-1") + body
        try:
            status = self._send(target, request)
        except (OSError, ValueError, _Unanswered) as exc:  # (ssl's errors are OSErrors)
            raise PushError(f"push to {dev_id} failed: {exc or type(exc).__name__}") from exc
        except PushError as exc:
            raise PushError(f"push to {dev_id} failed: {exc}") from None
        if not 200 <= status < 300:
            raise PushError(f"push to {dev_id} answered HTTP {status}")

    def _send(self, target: Target, request: bytes) -> int:
        conn = self._kept(target)
        if conn is not None:
            try:
                return self._exchange(conn, request)
            except (_Unanswered, BrokenPipeError, ConnectionResetError):
                pass  # (closed by the listener as it was taken: nothing was answered, the push goes on a new one)
        return self._exchange(_Connection(target, self.timeout, self._tls if target.scheme == "https" else None),
                              request)

    def _exchange(self, conn: _Connection, request: bytes) -> int:
        try:
            status, keep = conn.exchange(request)
        except BaseException:
            conn.close()
            raise
        if keep:
            self._keep(conn)
        else:
            conn.close()
        return status

    def _kept(self, target: Target) -> _Connection | None:
        """An idle connection to target, if one is kept and usable (the expired and closed ones are let go)."""
        key, now, found = (target.scheme, target.host, target.port), time.monotonic(), None
        dropped: list[_Connection] = []
        with self._lock:
            while self._idle and now - self._idle[0].since > IDLE_EXPIRY:
                dropped.append(self._idle.pop(0))
            for i in range(len(self._idle) - 1, -1, -1):
                if self._idle[i].key == key:
                    found = self._idle.pop(i)
                    break
        for conn in dropped:
            conn.close()
        if found is not None and not found.usable(target.addresses):
            found.close()
            return None
        return found

    def _keep(self, conn: _Connection) -> None:
        conn.since = time.monotonic()
        with self._lock:
            self._idle.append(conn)
            extra = self._idle[:-MAX_IDLE] if len(self._idle) > MAX_IDLE else []
            del self._idle[:len(extra)]
        for old in extra:
            old.close()


class SmsPush:
    """Package #0 as WAP push over binary SMS, handed segment by segment to a gateway."""

    def __init__(self, send: Callable[[str, bytes], None]) -> None:
        self.send = send
        self._reference = 0

    def __call__(self, device: DeviceRow, pkg0: bytes) -> None:
        if not device.msisdn:
            raise PushError(f"{device.dev_id} has no MSISDN")
        self._reference = (self._reference + 1) & 0xFF
        for segment in notification.sms_segments(notification.wap_push(pkg0), reference=self._reference):
            try:
                self.send(device.msisdn, segment)
            except Exception as exc:  # whatever the gateway raises: callers handle PushError
                raise PushError(f"SMS to {device.dev_id} failed: {exc}") from exc
