"""Notification transports: how package #0 reaches a device.

HTTP push posts it to the device's push address (what the emulator listens on); the SMS
transport wraps it in a connectionless WAP push and splits that into binary SMS segments for an
operator's SMS gateway (any callable that sends one segment to an MSISDN)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from fotadelta.dm import notification
from fotadelta.server.store import DeviceRow


class PushError(RuntimeError):
    """The notification could not be delivered."""


class HttpPush:
    """POST package #0 to the device's push address."""

    def __init__(self, client: httpx.Client | None = None) -> None:
        self.client = client or httpx.Client(timeout=10.0)

    def __call__(self, device: DeviceRow, pkg0: bytes) -> None:
        if not device.push_url:
            raise PushError(f"{device.dev_id} has no push address")
        try:
            response = self.client.post(device.push_url, content=pkg0,
                                        headers={"content-type": notification.CONTENT_TYPE})
        except httpx.HTTPError as exc:
            raise PushError(f"push to {device.dev_id} failed: {exc}") from exc
        if response.status_code >= 300:
            raise PushError(f"push to {device.dev_id} answered HTTP {response.status_code}")


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
