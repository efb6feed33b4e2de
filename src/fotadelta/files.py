"""Writing files so that a reader never sees half of one: the one way fotadelta writes its outputs.

The content goes to a temporary file beside the target (same directory, so same file system),
is flushed to the disk, and only then renamed over the target. If anything fails on the way (a
full disk, a bad patch found while streaming, Ctrl-C) the temporary file is removed and an
existing target is left exactly as it was."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_writer", "write_atomic"]


@contextmanager
def atomic_writer(path: str | Path, *, mode: int = 0o666) -> Iterator[BinaryIO]:
    """A binary file to write path's new content into; path changes only if the block completes.

    mode is filtered by the umask like any new file's (0o600 for private keys)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    try:
        # O_EXCL: never write through a file (or link) that someone else put there.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        # Name the file the user asked for, not the temporary one.
        raise OSError(exc.errno, exc.strerror, str(target)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename == str(tmp) or exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(target)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: bytes | bytearray | memoryview, *, mode: int = 0o666) -> None:
    """Replace path's content with data, all or nothing."""
    with atomic_writer(path, mode=mode) as f:
        f.write(data)
