"""Emulated NOR flash: erase blocks, aligned programming, wear counters and power cuts."""

from __future__ import annotations

import mmap
import random
from collections.abc import Iterator
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
        # Kept inverted against the erased value in anonymous memory, so erased flash is zero pages the
        # system has not handed out yet: a flash as large as a (hostile) patch header asks for costs only
        # what is written to it.
        self._mem = mmap.mmap(-1, geometry.size)
        self._flip = bytes(b ^ geometry.erased for b in range(256))
        self.erase_counts = _PerBlock(geometry.blocks)
        self.write_counts = _PerBlock(geometry.blocks)
        self.operations = 0
        self._cut_after: int | None = None
        self._rng = random.Random(0)

    @property
    def data(self) -> bytes:
        """The whole flash content."""
        return self._mem[:].translate(self._flip)

    def program(self, addr: int, image: bytes) -> None:
        """Factory-program bytes (not counted, no alignment rules)."""
        self._check_range(addr, len(image))
        self._mem[addr:addr + len(image)] = bytes(image).translate(self._flip)

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
        return self._mem[addr:addr + length].translate(self._flip)

    def erase(self, addr: int) -> None:
        g = self.geometry
        if addr % g.block_size:
            raise FlashError(f"erase address {addr:#x} is not block aligned")
        self._check_range(addr, g.block_size)
        end = addr + g.block_size
        if self._tear():
            end = addr + self._rng.randrange(g.block_size)
        self._mem[addr:end] = bytes(end - addr)
        self.erase_counts[addr // g.block_size] += 1
        if end != addr + g.block_size:
            raise PowerLoss(f"power lost while erasing block {addr // g.block_size}")

    def write(self, addr: int, chunk: bytes) -> None:
        g = self.geometry
        if addr % g.write_size or len(chunk) % g.write_size:
            raise FlashError(f"write of {len(chunk)} bytes at {addr:#x} breaks the {g.write_size}-byte granularity")
        self._check_range(addr, len(chunk))
        if self._mem[addr:addr + len(chunk)].count(0) != len(chunk):
            raise FlashError(f"write at {addr:#x} programs bytes that are not erased")
        n = len(chunk)
        torn = self._tear()
        if torn:
            n = self._rng.randrange(len(chunk) + 1)
        self._mem[addr:addr + n] = bytes(chunk[:n]).translate(self._flip)
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


class _PerBlock:
    """A counter per erase block, kept only for blocks that were counted."""

    def __init__(self, blocks: int) -> None:
        self._blocks = blocks
        self._counts: dict[int, int] = {}

    def __getitem__(self, block: int) -> int:
        return self._counts.get(block, 0)

    def __setitem__(self, block: int, value: int) -> None:
        if not 0 <= block < self._blocks:
            raise IndexError(block)
        self._counts[block] = value

    def __len__(self) -> int:
        return self._blocks

    def __iter__(self) -> Iterator[int]:
        return (self._counts.get(b, 0) for b in range(self._blocks))

    def __eq__(self, other: object) -> bool:
        return list(self) == other if isinstance(other, list) else NotImplemented

    def __repr__(self) -> str:
        return repr(list(self))
