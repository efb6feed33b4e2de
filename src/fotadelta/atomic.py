"""Files that appear whole or not at all: written beside their place, then renamed over it."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_bytes(path: Path, data: bytes) -> None:
    """Write data to path atomically: a reader sees the old file or the new one, never a part,
    and a crash leaves at most a hidden temporary file. Concurrent writers do not collide."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
