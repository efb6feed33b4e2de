"""The login throttle of operators' password logins (the web console's form and the API's token
endpoint alike): failed logins counted per user name and per client address over a sliding window;
past the allowance a login is refused before its password is even hashed. Memory is bounded (the
least recently failed keys go first), and so is the argon2 work in flight (VERIFYING at once: each
verification takes tens of MiB)."""

from __future__ import annotations

import threading
import time

from fotadelta.server.limits import SlidingCounts

WINDOW = 15 * 60.0
PER_NAME = 5  # failures per user name within WINDOW (unknown names count the same: nothing tells them apart)
PER_ADDRESS = 20  # failures per client address within WINDOW
MAX_KEYS = 10_000
VERIFYING = 2


class LoginThrottle:
    def __init__(self, *, window: float = WINDOW, per_name: int = PER_NAME, per_address: int = PER_ADDRESS) -> None:
        self.per_name, self.per_address = per_name, per_address
        self._failures = SlidingCounts(window, MAX_KEYS)
        self.verifying = threading.BoundedSemaphore(VERIFYING)

    def wait(self, name: str, address: str, now: float | None = None) -> float:
        """Seconds until this name may try again from this address; 0: now."""
        now = time.monotonic() if now is None else now
        return max(self._failures.wait(f"name:{name.lower()}", self.per_name, now),
                   self._failures.wait(f"addr:{address}", self.per_address, now))

    def failed(self, name: str, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._failures.add(f"name:{name.lower()}", self.per_name, now)
        self._failures.add(f"addr:{address}", self.per_address, now)

    def succeeded(self, name: str) -> None:
        """A right password clears the name's failures (not the address's: one good account does not
        buy an address more guesses at the others)."""
        self._failures.forget(f"name:{name.lower()}")
