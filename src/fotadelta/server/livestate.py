"""A DM session's state between two of its messages, kept in its session row (`SessionRow.live`) so
that any server process sharing the database can take the session's next message.

The state is the engine's own objects (the session's Endpoint with what it sent and still queues,
the script's step, the replies gathered so far), pickled: they are plain dataclasses and the
pickle keeps which of them are the same object, which the engine's matching of replies relies on.
Unpickling runs code chosen by whoever wrote the bytes, so the bytes are sealed with an HMAC under
the server's key (`Keyring.state_key`) and nothing is unpickled before its seal checks: write access
to the database alone is not enough to run code in the server.

A device keeps its HTTP connection, so a session's next message mostly comes back to the process that
sealed its state: `Recent` keeps the last states a process sealed, and gives the object back when the row
still holds exactly the bytes sealed from it (no unpickling, and no seal to check: they are this
process's own bytes)."""

from __future__ import annotations

import hashlib
import hmac
import pickle
import threading
from collections import OrderedDict
from typing import TypeVar

from fotadelta.server.keyring import Mac

T = TypeVar("T")
_MAC = hashlib.sha256().digest_size


class StateError(Exception):
    """The stored state is not one this server sealed (or not of the expected kind)."""


def seal(obj: object, key: Mac) -> bytes:
    """obj as bytes: its pickle behind an HMAC-SHA256 of it."""
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return key(body) + body


def unseal(blob: bytes, key: Mac, kind: type[T]) -> T:
    """The object sealed in blob; StateError if its seal does not check or it is not a kind."""
    mac, body = blob[:_MAC], blob[_MAC:]
    if len(mac) != _MAC or not hmac.compare_digest(mac, key(body)):
        raise StateError("the session state's seal does not check")
    obj = pickle.loads(body)  # noqa: S301  (sealed by this server's key: see the module docstring)
    if not isinstance(obj, kind):
        raise StateError(f"the session state is a {type(obj).__name__}, not a {kind.__name__}")
    return obj


class Recent:
    """The states this process sealed last, by session (its RespURI token), at most `size` of them.

    An object is given back once: whoever takes it changes it, and the row's bytes then no longer say what
    it holds until it is sealed again (a message whose transaction does not commit leaves the row's older
    bytes, which do not match any more and are unsealed). The sealer must not change the object after
    sealing it: the bytes stand for it as it was then. A session whose message went to another process
    has other bytes in its row by then (each message counts itself in the state), so it is unsealed too."""

    def __init__(self, key: bytes, size: int) -> None:
        self.key, self.size = Mac(key), size
        self._states: OrderedDict[str, tuple[bytes, object]] = OrderedDict()
        self._lock = threading.Lock()  # (request threads: the oldest is dropped while others add)

    def seal(self, token: str, obj: object) -> bytes:
        """seal(obj), kept as the state of the session heard at token."""
        blob = seal(obj, self.key)
        with self._lock:
            self._states[token] = (blob, obj)
            self._states.move_to_end(token)
            if len(self._states) > self.size:
                self._states.popitem(last=False)
        return blob

    def unseal(self, token: str, blob: bytes, kind: type[T]) -> T:
        """unseal(blob), or the object this process sealed in exactly these bytes."""
        with self._lock:
            kept = self._states.pop(token, None)
        if kept is not None and kept[0] == blob and isinstance(kept[1], kind):
            return kept[1]
        return unseal(blob, self.key, kind)


__all__ = ["Recent", "StateError", "seal", "unseal"]
