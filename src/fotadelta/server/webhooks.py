"""Webhook delivery: JSON POSTs to operator-given URLs, off the caller's thread, retried a few times.

Command results and campaign alerts go out this way. One worker thread drains a bounded queue, so
a slow or dead receiver never holds up a DM session or the campaign scheduler; `flush` waits for
what is queued (tests, the scenario)."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

log = logging.getLogger("fotadelta.server.webhooks")
MAX_URL = 512
QUEUE_SIZE = 10_000


def check_url(url: str) -> str:
    """An http(s) URL of at most MAX_URL characters, else ValueError."""
    parts = urlsplit(url)
    if len(url) > MAX_URL or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"a webhook is an http or https URL of at most {MAX_URL} characters")
    return url


@dataclass
class _Delivery:
    url: str
    body: bytes
    done: Callable[[str], None] | None


class Webhooks:
    """Deliver JSON payloads in the background: up to `tries` attempts, doubling the wait each time."""

    def __init__(self, *, tries: int = 3, backoff: float = 0.5, timeout: float = 5.0) -> None:
        self.tries, self.backoff = tries, backoff
        self._client = httpx.Client(timeout=timeout)
        self._queue: queue.Queue[_Delivery | None] = queue.Queue(QUEUE_SIZE)
        self._idle = threading.Condition()
        self._pending = 0
        self._thread: threading.Thread | None = None  # started by the first delivery

    def post(self, url: str, payload: dict[str, Any], done: Callable[[str], None] | None = None) -> None:
        """Queue a delivery; done(outcome) is called with "HTTP 200", "failed: ..." or "dropped: ..."."""
        with self._idle:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="webhooks")
                self._thread.start()
        try:
            self._queue.put_nowait(_Delivery(url, json.dumps(payload).encode(), done))
        except queue.Full:
            self._finish(_Delivery(url, b"", done), "dropped: the webhook queue is full")

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued delivery is finished; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
        self._client.close()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self._finish(item, self._deliver(item))

    def _deliver(self, item: _Delivery) -> str:
        wait, outcome = self.backoff, ""
        for attempt in range(self.tries):
            try:
                r = self._client.post(item.url, content=item.body, headers={"content-type": "application/json"})
                outcome = f"HTTP {r.status_code}"
                if r.status_code < 300:
                    return outcome
            except httpx.HTTPError as exc:
                outcome = f"failed: {type(exc).__name__}"
            if attempt + 1 < self.tries:
                time.sleep(wait)
                wait *= 2
        log.warning("webhook %s: %s after %d tries", item.url, outcome, self.tries)
        return outcome if outcome.startswith("failed") else f"failed: {outcome}"

    def _finish(self, item: _Delivery, outcome: str) -> None:
        try:
            if item.done is not None:
                item.done(outcome)
        except Exception:  # a recorder's failure must not stop the worker
            log.exception("recording the webhook outcome for %s failed", item.url)
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()
