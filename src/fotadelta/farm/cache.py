"""A content-addressed store of deltas on disk, treated as hostile input.

An entry is named by its key (DeltaOptions.key: hashes of both images, the options and the
engine) and holds a header with that key, the payload's SHA-256 and length, then the payload.
Reading checks all of it before returning a byte, and never reads more than the caller's limit;
the caller still verifies the payload against the images (build.py applies it). Entries are
written atomically, so builds sharing a cache never see each other's half-written files."""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from pathlib import Path

from fotadelta.files import write_atomic

MAGIC = b"FDDC"
VERSION = 1
_HEADER = struct.Struct("<4sB3x32s32sQ")  # magic, version, key, SHA-256 of the payload, payload length
KEY_LEN = 32


class CorruptEntry(Exception):
    """A cache entry exists but cannot be trusted; the message says why."""


def default_dir() -> Path:
    """The per-user cache: $XDG_CACHE_HOME/fotadelta/deltas, else ~/.cache/fotadelta/deltas."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fotadelta" / "deltas"


class DeltaCache:
    """Deltas by key under a directory (two-level fan-out by the key's first byte)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: bytes) -> Path:
        name = key.hex()
        return self.root / name[:2] / name

    def get(self, key: bytes, limit: int) -> bytes | None:
        """The payload stored under key, None if there is none; CorruptEntry if the entry is
        damaged, foreign or larger than limit bytes of payload."""
        if len(key) != KEY_LEN:
            raise ValueError(f"a cache key is {KEY_LEN} bytes")
        try:
            # Non-blocking, so that a FIFO planted in the cache cannot stall the build.
            fd = os.open(self.path(key), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            return None
        except OSError as exc:  # no permission, a link loop
            raise CorruptEntry(f"unreadable: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a directory, a FIFO, a device
            os.close(fd)
            raise CorruptEntry("not a regular file")
        with os.fdopen(fd, "rb") as f:
            try:
                raw = f.read(_HEADER.size + limit + 1)
            except OSError as exc:
                raise CorruptEntry(f"unreadable: {exc.strerror}") from None
        if len(raw) < _HEADER.size:
            raise CorruptEntry("truncated header")
        magic, version, stored_key, digest, length = _HEADER.unpack_from(raw)
        if magic != MAGIC or version != VERSION:
            raise CorruptEntry("not a fotadelta cache entry of this version")
        if stored_key != key:
            raise CorruptEntry("entry holds another key")
        if length > limit:
            raise CorruptEntry(f"payload of {length} bytes exceeds the {limit}-byte limit")
        payload = raw[_HEADER.size:]
        if len(payload) != length:
            raise CorruptEntry("payload length differs from the header")
        if hashlib.sha256(payload).digest() != digest:
            raise CorruptEntry("payload hash mismatch")
        return payload

    def put(self, key: bytes, payload: bytes) -> None:
        """Store payload under key, replacing whatever was there."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = _HEADER.pack(MAGIC, VERSION, key, hashlib.sha256(payload).digest(), len(payload))
        write_atomic(path, header + payload)
