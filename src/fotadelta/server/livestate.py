"""A DM session's state between two of its messages, kept in its session row (`SessionRow.live`) so
that any server process sharing the database can take the session's next message.

The state is the engine's own objects (the session's Endpoint with what it sent and still queues,
the script's step, the replies gathered so far), pickled: they are plain dataclasses and the
pickle keeps which of them are the same object, which the engine's matching of replies relies on.
Unpickling runs code chosen by whoever wrote the bytes, so the bytes are sealed with an HMAC under
the server's key (`Keyring.state_key`) and nothing is unpickled before its seal checks: write access
to the database alone is not enough to run code in the server."""

from __future__ import annotations

import hashlib
import hmac
import pickle
from typing import TypeVar

T = TypeVar("T")
_MAC = hashlib.sha256().digest_size


class StateError(Exception):
    """The stored state is not one this server sealed (or not of the expected kind)."""


def seal(obj: object, key: bytes) -> bytes:
    """obj as bytes: its pickle behind an HMAC-SHA256 of it."""
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return hmac.digest(key, body, "sha256") + body  # (the one-shot HMAC: OpenSSL's, no Python HMAC object)


def unseal(blob: bytes, key: bytes, kind: type[T]) -> T:
    """The object sealed in blob; StateError if its seal does not check or it is not a kind."""
    mac, body = blob[:_MAC], blob[_MAC:]
    if len(mac) != _MAC or not hmac.compare_digest(mac, hmac.digest(key, body, "sha256")):
        raise StateError("the session state's seal does not check")
    obj = pickle.loads(body)  # noqa: S301  (sealed by this server's key: see the module docstring)
    if not isinstance(obj, kind):
        raise StateError(f"the session state is a {type(obj).__name__}, not a {kind.__name__}")
    return obj


__all__ = ["StateError", "seal", "unseal"]
