"""The server's own secret and what it derives from it, so that strangers cost no storage.

- Challenge nonces: a device that fails to authenticate is challenged with a nonce computed
  from the secret, its DevId, the nonce stored for it and the time window, instead of a random
  one that would have to be written down. The next attempt is checked against the stored nonce
  and the computed ones of this window and the last; a success stores a fresh random nonce,
  which also retires the computed ones (they depend on the stored nonce): each is good once.
- Portal tokens: the web portal hands a browser a signed, expiring token naming the device and
  the version chosen. Only that device's own authenticated DM session can redeem it, once (the
  redeemed ones are rows, `PortalRedemptionRow`, so "once" holds across server processes).
- The seal of sessions' state between messages (`livestate`).

The secret is 32 random bytes in `server.key` in the data directory (mode 0600), made at first
start and shared by every server process that shares the directory."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from sqlalchemy import delete
from sqlalchemy.orm import Session

from fotadelta.server.store import PortalRedemptionRow

KEY_FILE = "server.key"
CHALLENGE_WINDOW = 300  # seconds a computed challenge nonce is good for (this window and the last)
PORTAL_TOKEN_TTL = 600  # seconds a portal selection may wait for the device's session
NONCE_SIZE = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Mac:
    """HMAC-SHA256 under one key, keyed once: each MAC starts from a copy of the keyed state. (OpenSSL's
    one-shot HMAC, hmac.digest, looks SHA-256 up again on every call: twice the CPU of a copy, measured in
    the server's request threads for a 1.5 KB session state.)"""

    def __init__(self, key: bytes) -> None:
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def __call__(self, data: bytes) -> bytes:
        h = self._keyed.copy()
        h.update(data)
        return h.digest()


class Keyring:
    """The server secret, challenge nonces and portal tokens."""

    def __init__(self, data_dir: Path) -> None:
        self._mac_of = Mac(_load_or_make(data_dir / KEY_FILE))
        self.state_key = self._mac("session state")  # seals sessions' state between messages (livestate)

    def _mac(self, *parts: str) -> bytes:
        return self._mac_of("\0".join(parts).encode())

    # -- challenge nonces -------------------------------------------------------------------------

    def challenge_nonce(self, dev_id: str, stored_nonce: str, *, at: float | None = None) -> bytes:
        """The nonce to challenge a device with now (no storage: see the module docstring)."""
        window = int((time.time() if at is None else at) // CHALLENGE_WINDOW)
        return self._mac("challenge", dev_id, stored_nonce, str(window))[:NONCE_SIZE]

    def accepted_nonces(self, dev_id: str, stored_nonce: str) -> list[bytes]:
        """The nonces a device's credentials may use: the stored one and the recent challenge nonces."""
        now = time.time()
        return [base64.b64decode(stored_nonce), self.challenge_nonce(dev_id, stored_nonce, at=now),
                self.challenge_nonce(dev_id, stored_nonce, at=now - CHALLENGE_WINDOW)]

    # -- portal tokens ----------------------------------------------------------------------------

    def portal_token(self, dev_id: str, version: str) -> str:
        """A token naming dev_id and version, good for PORTAL_TOKEN_TTL seconds."""
        expiry = str(int(time.time()) + PORTAL_TOKEN_TTL)
        nonce = _b64(secrets.token_bytes(9))
        body = f"{expiry}.{nonce}.{_b64(version.encode())}"
        return f"{body}.{_b64(self._mac('portal', dev_id, body)[:16])}"

    def redeem(self, s: Session, dev_id: str, token: str) -> str | None:
        """The version a portal token selected, if it is this device's, unexpired and unused; it is used now
        (a row in the caller's transaction: a second redemption that commits meanwhile makes it fail)."""
        body, _, mac = token.rpartition(".")
        parts = body.split(".")
        if len(parts) != 3 or not parts[0].isdigit() or len(token) > 256:
            return None
        try:
            good = hmac.compare_digest(_unb64(mac), self._mac("portal", dev_id, body)[:16])
            version = _unb64(parts[2]).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        now = time.time()
        expiry = int(parts[0])
        if not good or expiry < now:
            return None
        digest = hashlib.sha256(token.encode()).hexdigest()
        if s.get(PortalRedemptionRow, digest) is not None:
            return None
        s.execute(delete(PortalRedemptionRow).where(PortalRedemptionRow.expires < now))
        s.add(PortalRedemptionRow(digest=digest, expires=float(expiry)))
        s.flush()  # (a redemption committed meanwhile by another process fails here, as IntegrityError)
        return version


def _load_or_make(path: Path) -> bytes:
    try:
        key = path.read_bytes()
        if len(key) == 32:
            return key
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    try:
        os.link(tmp, path)  # (fails if another process made it first: then theirs is the key)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    key = path.read_bytes()
    if len(key) != 32:
        raise RuntimeError(f"{path} is not a 32-byte server key")
    return key


__all__ = ["CHALLENGE_WINDOW", "Keyring", "PORTAL_TOKEN_TTL"]
