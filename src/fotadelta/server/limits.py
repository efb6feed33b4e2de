"""What the DM server takes from the network before it trusts anyone: limits, and who went over them.

Every limit is configuration with a safe default (`Limits`); docs/security.md lists them. A
request over a limit gets the proper HTTP or DM status and one log line per kind of refusal and
caller and minute (`Refusals`), so a flood cannot flood the log too. `Throttle` counts requests
that did not authenticate, per caller address over a sliding minute (`SlidingCounts`, which the
console's login throttle shares), and refuses a caller that sends too many.
`Failures` counts a session's refused credentials before it authenticates, to cut it off."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, fields

log = logging.getLogger("fotadelta.server.limits")

WINDOW = 60.0  # seconds: the throttle's and the refusal log's period
_MAX_TRACKED = 10_000  # callers remembered; beyond that the least recently seen are forgotten


@dataclass(frozen=True)
class Limits:
    """Bounds on what one DM request may cost the server (sizes in bytes, text in characters)."""

    max_decoded: int = 256 * 1024  # text and data one message may decode to (WBXML string tables amplify)
    max_dev_id: int = 128  # the SyncHdr Source, a device's DevId (also what the store's column holds)
    max_uri: int = 512  # every other LocURI: header Target, item Target and Source
    max_items: int = 256  # commands and items in one message, nested ones included
    max_sessions_per_device: int = 4  # live sessions kept per device: one open, the rest finished (kept 30 s)
    unauthenticated_per_minute: int = 60  # requests per caller address that do not authenticate

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise ValueError(f"limit {f.name} must be at least 1")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


class Refusals:
    """Logs each kind of refusal once per caller and minute."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def note(self, kind: str, caller: str, text: str) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._seen.get((kind, caller))
            if last is not None and now - last < WINDOW:
                return
            if len(self._seen) >= _MAX_TRACKED:
                self._seen = {k: t for k, t in self._seen.items() if now - t < WINDOW}
            self._seen[(kind, caller)] = now
        # (What a stranger sent may hold line breaks and escapes: they do not reach the log as such.)
        shown = "".join(c if c.isprintable() else "?" for c in text[:200])
        log.warning("refused %s from %s: %s (logged once a minute per caller)", kind, caller or "?", shown)


class SlidingCounts:
    """Events per key over a sliding window, and how long a key must wait for one more. Memory is
    bounded: a key keeps only the times that can still refuse it (its allowance's worth), and past
    max_keys the least recently counted key is forgotten."""

    def __init__(self, window: float, max_keys: int = _MAX_TRACKED) -> None:
        self.window, self.max_keys = window, max_keys
        self._times: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._times)

    def wait(self, key: str, allowed: int, now: float) -> float:
        """Seconds until key may have one more event, with `allowed` per window; 0: now."""
        if allowed < 1:
            return self.window
        with self._lock:
            times = self._times.get(key)
            if times is None:
                return 0.0
            while times and times[0] <= now - self.window:
                times.popleft()
            if not times:
                del self._times[key]
                return 0.0
            if len(times) < allowed:
                return 0.0
            return times[len(times) - allowed] + self.window - now

    def add(self, key: str, allowed: int, now: float) -> None:
        """Count an event of key's, with `allowed` per window."""
        with self._lock:
            times = self._times.pop(key, None)
            if times is None or times.maxlen != max(1, allowed):
                times = deque(times or (), maxlen=max(1, allowed))
            times.append(now)
            self._times[key] = times
            while len(self._times) > self.max_keys:
                self._times.popitem(last=False)

    def forget(self, key: str) -> None:
        with self._lock:
            self._times.pop(key, None)


class Throttle:
    """Requests that did not authenticate, counted per caller address over a sliding minute (a
    caller cannot double its allowance by straddling the turn of a fixed window)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._counts = SlidingCounts(WINDOW)
        self._clock = clock

    def allowed(self, caller: str) -> bool:
        """Whether the caller may be heard now (it has not used up the last minute's allowance)."""
        return self._counts.wait(caller, self.per_minute, self._clock()) == 0

    def failed(self, caller: str) -> None:
        """The caller sent a request that did not authenticate."""
        self._counts.add(caller, self.per_minute, self._clock())

    def retry_after(self, caller: str) -> int:
        """Whole seconds until the caller may be heard again (for a Retry-After header)."""
        return max(1, math.ceil(self._counts.wait(caller, self.per_minute, self._clock())))


class Failures:
    """Authentication failures in a row of sessions that never authenticated, in memory only (nothing
    is stored for them): after `limit` the session is cut off. Keyed by caller address, DevId and
    SessionID, so that a stranger elsewhere cannot cut off a device's session by failing in its name.
    At most _MAX_TRACKED sessions are remembered, each for WINDOW seconds after its last failure (the
    throttle bounds how many one caller can add)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[tuple[str, str, str], tuple[int, float]] = {}  # insertion order: oldest first
        self._lock = threading.Lock()

    def _current(self, key: tuple[str, str, str], now: float) -> int:
        entry = self._counts.get(key)
        return 0 if entry is None or now - entry[1] > WINDOW else entry[0]

    def cut_off(self, key: tuple[str, str, str]) -> bool:
        """Whether this session has failed `limit` times in a row (its messages are refused)."""
        with self._lock:
            return self._current(key, time.monotonic()) >= self.limit

    def failed(self, key: tuple[str, str, str]) -> int:
        """Count a failure; the failures in a row, this one included."""
        now = time.monotonic()
        with self._lock:
            count = self._current(key, now) + 1
            self._counts.pop(key, None)
            if len(self._counts) >= _MAX_TRACKED:
                del self._counts[next(iter(self._counts))]
            self._counts[key] = (count, now)
            return count

    def clear(self, key: tuple[str, str, str]) -> None:
        """The session authenticated: its failures are forgotten."""
        with self._lock:
            self._counts.pop(key, None)


__all__ = ["Failures", "Limits", "Refusals", "SlidingCounts", "Throttle"]
