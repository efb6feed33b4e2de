"""Emulated NOR flash: erase blocks, aligned programming, wear counters and power cuts."""

from __future__ import annotations

import random
from dataclasses import dataclass


class FlashError(RuntimeError):
    """An operation real flash would refuse: misaligned, out of range, or programming unerased bytes."""


class PowerLoss(Exception):
    """The injected power cut struck; the operation in progress was torn."""


@dataclass(frozen=True)
class Geometry:
    """Size, erase-block size and programming granularity of a flash part."""

    size: int
    block_size: int
    write_size: int = 4
    erased: int = 0xFF

    def __post_init__(self) -> None:
        if self.block_size < 256 or self.block_size & (self.block_size - 1):
            raise ValueError("block size must be a power of two of at least 256 bytes")
        if self.write_size < 1 or self.block_size % self.write_size:
            raise ValueError("write size must divide the block size")
        if self.size <= 0 or self.size % self.block_size:
            raise ValueError("flash size must be a whole number of blocks")

    @property
    def blocks(self) -> int:
        return self.size // self.block_size


class Flash:
    """A flash part in memory.

    Erase sets a block to the erased value; a write programs write_size-aligned units of
    erased bytes. Every erase and write is an operation: after arm(cut_after=k) the k+1-th
    operation is torn — an erase leaves a prefix of the block erased, a write leaves a prefix
    of its bytes — and PowerLoss is raised, as if the device lost power mid-operation."""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry
        self.data = bytearray([geometry.erased]) * geometry.size
        self.erase_counts = [0] * geometry.blocks
        self.write_counts = [0] * geometry.blocks
        self.operations = 0
        self._cut_after: int | None = None
        self._rng = random.Random(0)

    def program(self, addr: int, image: bytes) -> None:
        """Factory-program bytes (not counted, no alignment rules)."""
        self._check_range(addr, len(image))
        self.data[addr:addr + len(image)] = image

    def arm(self, cut_after: int | None, seed: int = 0) -> None:
        """Cut the power during the operation after cut_after more operations (None: never)."""
        self._cut_after = None if cut_after is None else self.operations + cut_after
        self._rng = random.Random(seed)

    @property
    def armed(self) -> bool:
        """A power cut is still pending."""
        return self._cut_after is not None

    def read(self, addr: int, length: int) -> bytes:
        self._check_range(addr, length)
        return bytes(self.data[addr:addr + length])

    def erase(self, addr: int) -> None:
        g = self.geometry
        if addr % g.block_size:
            raise FlashError(f"erase address {addr:#x} is not block aligned")
        self._check_range(addr, g.block_size)
        end = addr + g.block_size
        if self._tear():
            end = addr + self._rng.randrange(g.block_size)
        self.data[addr:end] = bytes([g.erased]) * (end - addr)
        self.erase_counts[addr // g.block_size] += 1
        if end != addr + g.block_size:
            raise PowerLoss(f"power lost while erasing block {addr // g.block_size}")

    def write(self, addr: int, chunk: bytes) -> None:
        g = self.geometry
        if addr % g.write_size or len(chunk) % g.write_size:
            raise FlashError(f"write of {len(chunk)} bytes at {addr:#x} breaks the {g.write_size}-byte granularity")
        self._check_range(addr, len(chunk))
        if self.data[addr:addr + len(chunk)].count(g.erased) != len(chunk):
            raise FlashError(f"write at {addr:#x} programs bytes that are not erased")
        n = len(chunk)
        torn = self._tear()
        if torn:
            n = self._rng.randrange(len(chunk) + 1)
        self.data[addr:addr + n] = chunk[:n]
        for block in range(addr // g.block_size, (addr + max(len(chunk), 1) - 1) // g.block_size + 1):
            self.write_counts[block] += 1
        if torn:
            raise PowerLoss(f"power lost while writing at {addr:#x}")

    def _tear(self) -> bool:
        self.operations += 1
        return self._cut_after is not None and self.operations > self._cut_after

    def _check_range(self, addr: int, length: int) -> None:
        if addr < 0 or length < 0 or addr + length > self.geometry.size:
            raise FlashError(f"access of {length} bytes at {addr:#x} is outside the flash")
