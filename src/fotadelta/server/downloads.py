"""Package downloads (`GET|HEAD /packages/{id}`) from memory.

A published package never changes (its file is named by its SHA-256, and no package is ever removed), so
a server process keeps the bytes of the packages it serves, up to a budget, least recently served out
first: a download then costs no file system work and no thread. Answers carry Content-Length and
Accept-Ranges, and a single range (`bytes=FIRST-` or `bytes=FIRST-LAST`) gets a 206 with Content-Range,
so a device can resume an interrupted download and learns the package's size from the same answer.
Anything else in Range (several ranges, another unit, nonsense) is ignored and the whole package sent,
as HTTP allows; a range starting beyond the end is 416."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from pathlib import Path

from fotadelta.server.engine import HttpReply

CONTENT_TYPE = "application/vnd.fotadelta.package"
CACHE_BYTES = 64 << 20  # the packages one process keeps in memory
_RANGE = re.compile(r"bytes=(\d{1,18})-(\d{0,18})")


class PackageCache:
    """The bytes of packages by id, at most budget bytes in all (a package over the budget is not kept)."""

    def __init__(self, budget: int = CACHE_BYTES) -> None:
        self.budget = budget
        self._held: OrderedDict[int, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, package_id: int) -> bytes | None:
        with self._lock:
            data = self._held.get(package_id)
            if data is not None:
                self._held.move_to_end(package_id)
            return data

    def load(self, package_id: int, path: Path) -> bytes:
        """The package's bytes read from its file (OSError if it cannot be read), kept if they fit."""
        data = path.read_bytes()
        with self._lock:
            if len(data) <= self.budget and package_id not in self._held:
                while self._size + len(data) > self.budget:
                    self._size -= len(self._held.popitem(last=False)[1])
                self._held[package_id] = data
                self._size += len(data)
        return data


def package_response(data: bytes, method: str, range_header: str | None) -> HttpReply:
    """The answer to a GET or HEAD of a package whose bytes are data (its content-length header is the
    body's a GET would have, also for HEAD)."""
    size = len(data)
    headers = {"accept-ranges": "bytes"}
    body, status = data, 200
    match = _RANGE.fullmatch(range_header.strip()) if range_header else None
    if match is not None:
        first = int(match.group(1))
        last = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
        if first >= size:
            return HttpReply(416, CONTENT_TYPE, b"", {**headers, "content-range": f"bytes */{size}"})
        if first <= last:  # (else the range is invalid: ignored, the whole package)
            body, status = data[first:last + 1], 206
            headers["content-range"] = f"bytes {first}-{last}/{size}"
    headers["content-length"] = str(len(body))
    return HttpReply(status, CONTENT_TYPE, b"" if method == "HEAD" else body, headers)


__all__ = ["CACHE_BYTES", "CONTENT_TYPE", "PackageCache", "package_response"]
