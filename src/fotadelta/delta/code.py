"""Code-aware deltas on the host: where an image's machine code is, and where its targets moved.

The C core (csrc/fd_code.c) rewrites relative branch, call and PC-relative load targets as
absolute ones. The old image's targets are moreover moved to where the same code or data lies
in the new image (moves, a step function learnt from the references a plain delta pairs up),
so that a call to a function that moved is the same bytes in both transformed images.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from fotadelta import _core
from fotadelta.delta.codec import Buffer
from fotadelta.delta.format import (
    CODE_ARCHS,
    CODE_MAX_RANGES,
    CodeRange,
    CodeTransform,
    Move,
)

THUMB2, AARCH64, X86_64, XTENSA, RISCV, POWER, SPARC, X86_32, A32 = 1, 2, 3, 4, 5, 6, 7, 8, 9
assert set(CODE_ARCHS) == {THUMB2, AARCH64, X86_64, XTENSA, RISCV, POWER, SPARC, X86_32, A32}

# Transform blocks of 1 KiB: a reader of the old image transforms at most this much for a short
# copy, and an instruction across a block boundary (a few per KiB at most) stays as it is.
BLOCK_LOG = 10

# ELF e_machine and PE/COFF Machine values of the architectures the core transforms.
_ELF_MACHINES = {40: THUMB2, 183: AARCH64, 62: X86_64, 94: XTENSA, 243: RISCV, 20: POWER, 21: POWER, 2: SPARC,
                 18: SPARC, 43: SPARC, 3: X86_32}
# ...whose transforms read big-endian words only (little-endian Power, ppc64le, is not transformed).
_BIG_ENDIAN = {POWER, SPARC}
# EM_ARM names both of Arm's 32-bit instruction sets (Thumb-2 in Cortex-M images and armhf builds,
# A32 in armel builds, kernels and boot loaders): its code is planned as each, the larger gain kept.
_ELF_ALSO = {THUMB2: A32}
# ELF layout, per class (1: 32-bit, 2: 64-bit): where e_shoff is, its format and where
# e_shentsize and e_shnum are, and the fields of a section header up to sh_size (name, type,
# flags, addr, offset, size).
_ELF_SHOFF = {1: (0x20, "I", 0x2E), 2: (0x28, "Q", 0x3A)}
_ELF_SECTION = {1: "IIIIII", 2: "IIQQQQ"}
_SHT_PROGBITS = 1
_SHF_EXECINSTR = 0x4
_PE_MACHINES = {0x01C2: THUMB2, 0x01C4: THUMB2, 0xAA64: AARCH64, 0x8664: X86_64, 0x5032: RISCV, 0x5064: RISCV,
                0x5128: RISCV, 0x014C: X86_32}
_PE_CODE = 0x00000020 | 0x20000000  # IMAGE_SCN_CNT_CODE | IMAGE_SCN_MEM_EXECUTE

# The patch's varints hold values below 2^63: maps with run addresses from there on (x86-64 and
# AArch64 kernels and hypervisors run at 0xffff8...) are moved down by reachable().
_ADDR_LIMIT = 1 << 63
_REBASE_STEP = 1 << 32

# Apply CPU time the transform adds per byte of code, per architecture: (the old image's, which is
# transformed forward with its targets moved; the new image's, transformed back). Measured
# (CodePlan.forward and .undo, best of 20, this 2-core VM) on the 41 pairs of three corpora whose
# patches carried a transform, images of 250 KB or more, where they leave the cache: Thumb-2
# 0.12-0.48 and 0.08-0.17 ns, AArch64 0.41-1.01 and 0.17-0.27, x86-64 0.71-1.22 and 0.44-0.77,
# Xtensa 2.0 and 1.5 (one pair), RISC-V 0.83-1.90 and 0.62-1.32 (the most moves the slowest),
# Power 0.51 and 0.21 (skiboot, 2.5 MB; 1.42 and 0.37 on a 164 KB OpenBIOS), SPARC 1.20-2.93 and
# 0.21-0.25 on 97-166 KB OpenBIOS images (a quarter of any words read as CALLs there). An
# image with less code than _CACHED_CODE, which stays in the cache, takes about half that or less
# (RISC-V 0.36 and 0.35 on 6 KB ESP32-C3 stubs, AArch64 0.10-0.17 and 0.07-0.11 below 170 KB). One
# rate for all, 0.6 ns per byte of either image, had put a 1.5 MB raw RISC-V image's transform at
# 1.8 ms of apply time where it took 3.9 (apply 2.8x HDiffPatch's for a patch 15% smaller).
# 32-bit x86 and A32, measured later in one run against the rates of the others: i386 BusyBox and
# libc (1.5 MB of code each) 1.36-1.40 and 0.71-0.74 ns, an x86-64 shim 1.79 and 0.79 (x86-64's
# rates); armel BusyBox 0.77 and 0.30, armhf libc as Thumb-2 0.75 and 0.23 (Thumb-2's, undo 1.3x).
_APPLY_NS_PER_CODE_BYTE = {THUMB2: (0.3, 0.15), AARCH64: (0.8, 0.25), X86_64: (1.0, 0.6), XTENSA: (1.8, 1.4),
                           RISCV: (1.5, 1.1), POWER: (0.8, 0.25), SPARC: (0.8, 0.25), X86_32: (1.0, 0.6),
                           A32: (0.3, 0.2)}
# Relocating a copy (csrc/fd_reloc.h): both halves of the transform in one pass. Measured (one
# record copying a whole image, relocated by 200 moves, against the copy as it is; apply_memory,
# best of 30, this 2-core VM), rounded up: x86-64 0.53 and 0.69 ns a byte (2.5 and 10.8 MB
# extension modules), AArch64 0.22 (3.5 MB libpython), Xtensa 1.72 (a 1.2 MB ESP32 image),
# Thumb-2 0.19 (a 318 KB MicroPython image), RISC-V 1.23 (0.6 MB U-Boot), Power 0.18 and SPARC
# 0.30 (OpenBIOS), 32-bit x86 0.66 and A32 0.32 (static BusyBox). The two halves in turn had
# taken 1.05-1.32, 0.49, 4.37, 0.43, 2.42, 0.42, 0.68, 1.41 and 0.60.
_RELOCATE_NS_PER_BYTE = {THUMB2: 0.2, AARCH64: 0.25, X86_64: 0.7, XTENSA: 1.8, RISCV: 1.3, POWER: 0.2, SPARC: 0.3,
                         X86_32: 0.7, A32: 0.35}
_CACHED_CODE = 256 << 10
_CACHED_SHARE = 0.5

Ranges = tuple[CodeRange, ...]


def code_ranges(image: Buffer) -> list[Ranges]:
    """Candidate code maps of an image: the executable sections of an ELF or PE image, else
    (a raw image) the whole image as each architecture in turn."""
    for parse in (_elf_ranges, _pe_ranges):
        ranges = parse(image)
        if ranges is not None:
            if not ranges:
                return []
            also = _ELF_ALSO.get(ranges[0].arch) if parse is _elf_ranges else None
            return [ranges] if also is None else [ranges, tuple(r._replace(arch=also) for r in ranges)]
    return [(CodeRange(arch, 0, len(image), 0),) for arch in CODE_ARCHS] if image else []


def _fit(ranges: list[CodeRange], size: int) -> Ranges:
    """Sorted, disjoint, inside the image, at most CODE_MAX_RANGES (the largest kept)."""
    ranges = [r for r in ranges if r.length > 0 and r.start + r.length <= size and r.addr + r.length <= 1 << 64]
    ranges.sort(key=lambda r: r.start)
    kept: list[CodeRange] = []
    for r in ranges:
        if kept and r.start < kept[-1].start + kept[-1].length:
            continue
        kept.append(r)
    if len(kept) > CODE_MAX_RANGES:
        kept = sorted(sorted(kept, key=lambda r: -r.length)[:CODE_MAX_RANGES], key=lambda r: r.start)
    return tuple(kept)


def _elf_ranges(image: Buffer) -> Ranges | None:
    """Executable PROGBITS sections of an ELF image of a known machine; None if not an ELF image.
    Only the file header and the section headers are read (a full ELF parser had taken a tenth
    of the diff time of small ELF pairs)."""
    if bytes(image[:4]) != b"\x7fELF":
        return None
    header = bytes(image[:64])
    if len(header) < 20 or header[4] not in _ELF_SHOFF or header[5] not in (1, 2):
        return ()  # a damaged ELF header: no transform rather than a guess
    order = "<" if header[5] == 1 else ">"
    arch = _ELF_MACHINES.get(struct.unpack_from(order + "H", header, 18)[0])
    if arch in _BIG_ENDIAN and order == "<":
        arch = None
    shoff_at, shoff_format, counts_at = _ELF_SHOFF[header[4]]
    if arch is None or len(header) < counts_at + 4:
        return ()
    shoff = struct.unpack_from(order + shoff_format, header, shoff_at)[0]
    entsize, count = struct.unpack_from(order + "HH", header, counts_at)
    section = struct.Struct(order + _ELF_SECTION[header[4]])
    if shoff == 0 or entsize < section.size or shoff + entsize > len(image):
        return ()
    if count == 0:  # more sections than e_shnum holds: the count is section 0's sh_size
        count = section.unpack_from(image, shoff)[5]
    if shoff + count * entsize > len(image):
        return ()
    ranges = []
    for k in range(count):
        _name, kind, flags, addr, offset, size = section.unpack_from(image, shoff + k * entsize)
        if kind == _SHT_PROGBITS and flags & _SHF_EXECINSTR:
            ranges.append(CodeRange(arch, offset, size, addr))
    return _fit(ranges, len(image))


def _pe_ranges(image: Buffer) -> Ranges | None:
    """Code sections of a PE/COFF image (EXE, DLL, UEFI); None if not a PE image."""
    data = bytes(image[:1 << 16])
    if data[:2] != b"MZ" or len(data) < 0x40:
        return None
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    if pe + 24 > len(data) or data[pe:pe + 4] != b"PE\0\0":
        return None
    machine, nsections = struct.unpack_from("<HH", data, pe + 4)
    opt_size = struct.unpack_from("<H", data, pe + 20)[0]
    opt = pe + 24
    arch = _PE_MACHINES.get(machine)
    if arch is None or opt + opt_size + 40 * nsections > len(data) or opt_size < 32:
        return ()
    magic = struct.unpack_from("<H", data, opt)[0]
    base = struct.unpack_from("<Q", data, opt + 24)[0] if magic == 0x20B else struct.unpack_from("<I", data, opt + 28)[0]
    ranges = []
    for k in range(nsections):
        at = opt + opt_size + 40 * k
        vsize, vaddr, raw_size, raw_ptr = struct.unpack_from("<IIII", data, at + 8)
        flags = struct.unpack_from("<I", data, at + 36)[0]
        if flags & _PE_CODE:
            ranges.append(CodeRange(arch, raw_ptr, min(raw_size, vsize) if vsize else raw_size, base + vaddr))
    return _fit(ranges, len(image))


def reachable(old_ranges: Ranges, new_ranges: Ranges) -> tuple[Ranges, Ranges] | None:
    """Two images' code maps with run addresses a patch holds: as they are when they end at
    2^63 or below, else both moved down by one multiple of 2^32 that puts the lowest between 4
    and 8 GiB (None if they span more than that leaves). The fields the transforms rewrite are
    at most 32 bits wide and keep the low 32 bits of each address, so the transformed images are
    the same bytes either way (csrc/fd_code.c computes modulo 2^64)."""
    both = (*old_ranges, *new_ranges)
    top = max(r.addr + r.length for r in both)
    if top <= _ADDR_LIMIT:
        return old_ranges, new_ranges
    base = (min(r.addr for r in both) // _REBASE_STEP - 1) * _REBASE_STEP
    if base < 0 or top - base > _ADDR_LIMIT:
        return None
    return (tuple(r._replace(addr=r.addr - base) for r in old_ranges),
            tuple(r._replace(addr=r.addr - base) for r in new_ranges))


def plan(old: Buffer, new: Buffer, old_ranges: Ranges, new_ranges: Ranges, ctrl: bytes
         ) -> tuple[CodeTransform, int, int]:
    """The transform between two code maps, with the moves learnt from a plain delta's copies
    (its ctrl stream); its estimated gain: the references in copied code that come out equal
    in the transformed images and not in the plain ones, less the converse and the cost of the
    moves; and the references of the new image in copied code (csrc/fd_moves.h)."""
    moves, gain, paired = _core.code_moves(old, new, BLOCK_LOG, old_ranges, new_ranges, ctrl)
    return CodeTransform(BLOCK_LOG, old_ranges, new_ranges, tuple(Move(*m) for m in moves)), gain, paired


def offsets(ranges: Ranges) -> Ranges:
    """Code ranges addressed by image offset, as copies are relocated (csrc/fd_reloc.h for plain
    patches, csrc/fd_ip_code.h in place)."""
    return tuple(r._replace(addr=r.start) for r in ranges)


def relocation_ns(arch: int, relocated: int) -> int:
    """Expected apply CPU time of relocating that many copied bytes of code of arch."""
    return int(_RELOCATE_NS_PER_BYTE[arch] * relocated)


def apply_ns(transform: CodeTransform) -> int:
    """Expected apply CPU time the transform adds (its plan's own stream aside)."""
    ns = 0.0
    for side, ranges in enumerate((transform.old_ranges, transform.new_ranges)):
        rate = 1.0 if sum(r.length for r in ranges) >= _CACHED_CODE else _CACHED_SHARE
        ns += rate * sum(_APPLY_NS_PER_CODE_BYTE[r.arch][side] * r.length for r in ranges)
    return int(ns)


# A raw image reads as code of an architecture when, in _SCORE_SAMPLE bytes of it in
# _SCORE_PIECES evenly spread pieces, at least _SCORE_SHARE of the references the transform
# would rewrite (and _SCORE_MIN_SHARED of them) share their target with another one inside the
# image (_core.code_score). On the 41 raw images of both corpora the architecture of every
# image that takes a transform scored 0.33-0.90, the other architectures 0.00-0.09 (code of
# the image's own architecture scores low where it is a small part of compressed volumes, as
# in UEFI images, whose transforms gain nothing). The score takes 0.1-0.3 ms per architecture.
_SCORE_SAMPLE = 1 << 16
_SCORE_PIECES = 16
_SCORE_SHARE = 0.2
_SCORE_MIN_SHARED = 16


def likely(image: Buffer, candidates: Sequence[Ranges]) -> list[int]:
    """The indices of the candidate code maps of a raw image (code_ranges: the whole image as
    each architecture) that read as its code: its other architectures need not be learnt. Maps
    of sections (an ELF image's as Thumb-2 and A32) are all kept: the headers say it is code."""
    kept = []
    for k, ranges in enumerate(candidates):
        if len(ranges) != 1 or ranges[0].start != 0 or ranges[0].length != len(image):
            kept.append(k)
            continue
        sites, shared = _core.code_score(image, BLOCK_LOG, sampled(ranges, len(image), _SCORE_SAMPLE,
                                                                   _SCORE_PIECES))
        if shared >= _SCORE_MIN_SHARED and shared >= _SCORE_SHARE * sites:
            kept.append(k)
    return kept


def sampled(ranges: Ranges, size: int, length: int, pieces: int) -> Ranges:
    """A raw image's one range (the whole image, run address 0) cut down to pieces evenly
    spread pieces of length bytes in all, each run at its own offset. Unchanged when length
    covers the image."""
    (whole,) = ranges
    if length >= size or pieces < 2:
        return ranges
    piece = length // pieces
    stride = (size - piece) // (pieces - 1) & ~15  # pieces start on instruction boundaries
    return tuple(CodeRange(whole.arch, k * stride, piece, k * stride) for k in range(pieces))


def transformed(image: Buffer, ranges: Sequence[CodeRange], moves: Sequence[Move] = ()) -> bytes:
    """The image with its code transformed forward, targets moved by moves."""
    return _core.code_transform(image, BLOCK_LOG, tuple(ranges), moves=tuple(moves))
