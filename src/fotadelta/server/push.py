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
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from fotadelta.dm import notification
from fotadelta.server.store import DeviceRow


class PushError(RuntimeError):
    """The notification could not be delivered."""


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


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
        if len(url) > self.max_length:
            return f"the push address is longer than {self.max_length} characters"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            return f"the push address is not a URL: {exc}"
        if parts.scheme.lower() not in self.schemes:
            return f"push scheme {parts.scheme!r} is not allowed ({', '.join(self.schemes)})"
        host = parts.hostname
        if not host or parts.username is not None or parts.password is not None:
            return "the push address needs a host and no user information"
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            if not resolve:
                return None
            try:
                infos = socket.getaddrinfo(host, port or 80, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                return f"the push host {host!r} does not resolve: {exc}"
            addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        networks = self._parsed
        for address in addresses:
            if not any(address in net for net in networks):
                return f"push address {address} is outside the allowed networks ({', '.join(self.networks)})"
        return None


class HttpPush:
    """POST package #0 to the device's push address, if the policy allows it (redirects are not followed)."""

    def __init__(self, client: httpx.Client | None = None, policy: PushPolicy | None = None) -> None:
        self.client = client or httpx.Client(timeout=10.0, follow_redirects=False)
        self.policy = policy or PushPolicy()

    def __call__(self, device: DeviceRow, pkg0: bytes) -> None:
        self.post(device.dev_id, device.push_url, pkg0, notification.CONTENT_TYPE)

    def post(self, dev_id: str, url: str, body: bytes, content_type: str) -> None:
        """POST body to a device's push address (package #0, or a bootstrap message)."""
        if not url:
            raise PushError(f"{dev_id} has no push address")
        if (why := self.policy.refusal(url)) is not None:
            raise PushError(f"push to {dev_id} refused: {why}")
        try:
            response = self.client.post(url, content=body, headers={"content-type": content_type})
        except httpx.HTTPError as exc:
            raise PushError(f"push to {dev_id} failed: {exc}") from exc
        if response.status_code >= 300:
            raise PushError(f"push to {dev_id} answered HTTP {response.status_code}")


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
