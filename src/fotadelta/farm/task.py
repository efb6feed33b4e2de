"""One delta of a build: what determines it (its cache key) and the task that computes it.

The task runs wherever the executor sends it (a local worker process, a Dask worker on another
host) and returns the payload with how long it took, where it ran and which engine made it; it
touches no files, so any worker can run any task."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import fotadelta
from fotadelta import _core, inplace
from fotadelta.inplace.format import FORMAT_VERSION as INPLACE_FORMAT
from fotadelta.inplace.format import PayloadCodec

KIND_IN_PLACE = "in-place"
MIN_BLOCK, MAX_BLOCK = 1 << 8, 1 << 17  # what the in-place header can express


@dataclass(frozen=True)
class DeltaOptions:
    """Everything besides the two images that changes an in-place delta.

    Make, model, versions and the SIM validation string are not here: they belong to the signed
    package, which is cheap to make again around a cached delta."""

    block_size: int = inplace.DEFAULT_BLOCK
    ram: int | None = None  # work RAM limit; None: one block + inplace.DEFAULT_DECODER_RAM

    def __post_init__(self) -> None:
        """Refuse options no delta can have here, before any worker is asked (ValueError)."""
        if not (MIN_BLOCK <= self.block_size <= MAX_BLOCK and self.block_size & (self.block_size - 1) == 0):
            raise ValueError(f"the block size must be a power of two from {MIN_BLOCK} to {MAX_BLOCK} bytes")
        inplace.work_plan(self.block_size, PayloadCodec.LZ, self.work_ram)

    @property
    def work_ram(self) -> int:
        """The work RAM limit in bytes, the default resolved."""
        return self.block_size + inplace.DEFAULT_DECODER_RAM if self.ram is None else self.ram

    def key(self, old_sha256: bytes, new_sha256: bytes) -> bytes:
        """The content address of the delta from old to new with these options, made by this engine."""
        # Every option is in the key (a new option joins by being a field), defaults resolved.
        fields = {**asdict(self), "ram": self.work_ram, "kind": KIND_IN_PLACE, "format": INPLACE_FORMAT,
                  "engine": engine_id(), "old": old_sha256.hex(), "new": new_sha256.hex()}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).digest()


@dataclass(frozen=True)
class Computed:
    """A delta as a worker made it."""

    payload: bytes
    seconds: float
    worker: str  # host:pid
    engine: str  # engine_id() of the worker


def compute_delta(old: bytes, new: bytes, options: DeltaOptions) -> Computed:
    """The farm's task: the in-place patch from old to new."""
    started = time.perf_counter()
    payload = inplace.diff(old, new, block_size=options.block_size, ram=options.ram)
    return Computed(payload, time.perf_counter() - started, f"{socket.gethostname()}:{os.getpid()}", engine_id())


@functools.cache
def engine_id() -> str:
    """A fingerprint of the code that makes deltas: the compiled core and the Python modules of
    plain and in-place patches. A new engine gives new cache keys, so nothing an older engine
    made is reused; and a farm refuses workers that run another engine than the client."""
    digest = hashlib.sha256(fotadelta.__version__.encode())
    files = [Path(str(_core.__file__))]
    for module in (fotadelta.delta, inplace):
        files += sorted(Path(str(module.__file__)).parent.glob("*.py"))
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]
