"""Code transforms (csrc/fd_code.c, fotadelta.delta.code): exact inverses on any bytes and on
real code of every architecture, known answers per instruction, whole diff/apply round trips,
code-aware patches never larger than plain ones, and hostile code streams refused."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random
import platform
import struct
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import SHARED_CORPUS, firmware_like, layout, mutate

import fotadelta
from fotadelta import PatchError, _core, delta
from fotadelta.delta import code
from fotadelta.delta.codec import Codec
from fotadelta.delta.format import (
    CODE_ARCHS,
    LONG_DIGEST_LEN,
    LONG_FINGERPRINT_LEN,
    CodeRange,
    CodeTransform,
    Kind,
    Move,
    Patch,
    Relocation,
    Stream,
    encode_varint,
    source_fingerprint,
    target_digest,
)

ARCHS = sorted(CODE_ARCHS)


@contextmanager
def whole_image_transform() -> Iterator[None]:
    """fotadelta.diff without its relocated-copies candidate: on the generated programs below the
    relocated patch is smaller and cheaper than the whole-image transform, which these tests are
    about."""
    with mock.patch.object(delta, "_relocation", return_value=None):
        yield


def roundtrip(image: bytes, block_log: int, ranges: list[tuple[int, int, int, int]],
              moves: list[tuple[int, int]] | None = None) -> bytes:
    forward = _core.code_transform(image, block_log, ranges)
    assert _core.code_transform(forward, block_log, ranges, inverse=True) == image
    return forward


@st.composite
def code_maps(draw: st.DrawFn, size: int) -> list[tuple[int, int, int, int]]:
    """Sorted disjoint ranges of random architectures and addresses inside an image."""
    cuts = sorted(set(draw(st.lists(st.integers(0, size), max_size=8))))
    ranges = []
    for a, b in zip(cuts[::2], cuts[1::2]):
        if b > a:
            ranges.append((draw(st.sampled_from(ARCHS)), a, b - a, draw(st.integers(0, 2**40))))
    return ranges


@given(st.binary(max_size=5000), st.data(), st.integers(8, 12))
def test_inverse_on_random_bytes(image: bytes, data: st.DataObject, block_log: int) -> None:
    roundtrip(image, block_log, data.draw(code_maps(len(image))))


@pytest.mark.parametrize("arch", ARCHS, ids=[CODE_ARCHS[a] for a in ARCHS])
@given(seed=st.integers(0, 2**32 - 1), addr=st.integers(0, 2**64 - 1))
def test_inverse_on_every_arch_whole_image(arch: int, seed: int, addr: int) -> None:
    image = random.Random(seed).randbytes(3000)
    roundtrip(image, 8, [(arch, 0, len(image), addr)])


# --- real code ---------------------------------------------------------------------------------

def native_library() -> bytes:
    """The running interpreter's code: libpython when it is shared, else the executable."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    candidates = [Path(sys.executable).resolve()]
    if libdir and soname:
        candidates.append(Path(libdir) / soname)
    return max((p.read_bytes() for p in candidates if p.is_file()), key=len)


def real_images() -> list[tuple[str, bytes]]:
    """Machine code found on this machine and in ../shared/corpus: the running interpreter
    (x86-64 ELF here), the corpus's Thumb-2, AArch64 and Xtensa images."""
    found = [("interpreter", native_library()[:4 << 20])]
    for name in ("detools-shell-cortexm4", "detools-shell-pi3-aarch64", "detools-upy-esp8266-1.9.4-1.10-elf",
                 "detools-libpython-aarch64-3.7.2-3.7.3"):
        path = SHARED_CORPUS / name / "old"
        if path.is_file():
            found.append((name, path.read_bytes()))
    return found


@pytest.mark.parametrize("arch", ARCHS, ids=[CODE_ARCHS[a] for a in ARCHS])
def test_inverse_on_real_code(arch: int) -> None:
    """Every image above read as each architecture: its own, where it rewrites thousands of
    references, and the others, where the scan meets code it does not expect."""
    for _name, image in real_images():
        for block_log in (8, 10, 16):
            forward = roundtrip(image, block_log, [(arch, 0, len(image), 0x1000)])
            assert forward != image


def test_real_code_has_references_of_its_arch() -> None:
    """The ELF sections found in the interpreter are of this machine and hold many calls."""
    if platform.machine() not in ("x86_64", "AMD64", "aarch64", "arm64"):
        pytest.skip(f"no transform for this machine's code ({platform.machine()})")
    image = native_library()
    (ranges,) = code.code_ranges(image)
    assert ranges and {r.arch for r in ranges} == {code.X86_64 if "64" in platform.machine()
                                                   and "arm" not in platform.machine()
                                                   and "aarch" not in platform.machine() else code.AARCH64}
    sites = _core.code_sites(image, code.BLOCK_LOG, ranges)
    assert len(sites) > 1000
    assert [offset for offset, _ in sites] == sorted({offset for offset, _ in sites})


# Digests of each architecture's transform, forward with moves and back, of the image below,
# taken from the first implementation of the scans: a faster scan must rewrite exactly the same
# instructions, or patches already made would no longer apply.
PINNED = {
    1: ("a06573a9584ab6729d7e8a461a505f06", "d132086771b6cbf4a85da808bd8632f4"),
    2: ("5e8ac9ef8dc0a1f73e760bb4fd50f617", "b2e2bed7fe927989d9b8d68cd4d93754"),
    3: ("c5baaf673337388c30dd7b5bd7dca1de", "eaaf7a26cf899e3d1a0214d35f8a6a04"),
    4: ("263dea1533b483ed051d8cd6c0b18408", "6b346a86068efbd77cb9eef7eb818e42"),
    5: ("4dc321ec5813e834459bbda9b0b75a3e", "2c93390f9e52b499652bee29638d0f5f"),
    6: ("7881d813733dc5f74a271e852a09f51c", "0a8889f44264ceade54eba53836a1c1a"),
    7: ("6def4fdce60a42a973171ba869e42404", "ad26353152fa4f9804fb2206b85c527d"),
    8: ("8b9df70f448ec87a100a6374871c9ce8", "9ae0d10401dbe34047f902b096900923"),
    9: ("f428ebb8ef2d3eb2f408e453a42ebcbc", "77555f17f3ae2320b1dc9eed17a67a87"),
}


def opcode_soup(seed: int, size: int) -> bytes:
    """Random bytes, three in five drawn from the opcode, ModRM and field bytes the scans test."""
    rng = random.Random(seed)
    common = bytes([0xE8, 0xE9, 0x0F, 0x80, 0x85, 0xFF, 0x15, 0x25, 0x48, 0x4C, 0x89, 0x8B, 0x8D, 0x05, 0x3D,
                    0x63, 0x01, 0x94, 0x97, 0x90, 0xB0, 0xF0, 0xF8, 0xB8, 0x17, 0x6F, 0x13, 0x67, 0x03, 0x23,
                    0x05, 0x06, 0x01])
    return bytes(rng.choice(common) if rng.random() < 0.6 else rng.randrange(256) for _ in range(size))


@pytest.mark.parametrize("arch", ARCHS, ids=[CODE_ARCHS[a] for a in ARCHS])
def test_transform_is_pinned(arch: int) -> None:
    image = opcode_soup(1, 1 << 16)
    ranges = [(arch, 3, 40000, 0x1234567), (arch, 40010, 25000, 0xFFFFFFF0), (arch, 65100, 400, 2**40)]
    forward = _core.code_transform(image, 10, ranges, moves=[(0x1000, 0x40), (0x1236000, -0x123), (0x12345678, 8)])
    back = _core.code_transform(image, 10, ranges, inverse=True)
    digests = tuple(hashlib.sha256(b).hexdigest()[:32] for b in (forward, back))
    assert digests == PINNED[arch]


# --- known answers: one instruction per architecture -------------------------------------------

def thumb_bl(at: int, target: int) -> bytes:
    off = ((target - at - 4) >> 1) & 0x3FFFFF
    return struct.pack("<HH", 0xF000 | off >> 11, 0xF800 | (off & 0x7FF))


def a64_bl(at: int, target: int) -> bytes:
    return struct.pack("<I", 0x94000000 | (((target - at) >> 2) & 0x3FFFFFF))


def x86_call(at: int, target: int) -> bytes:
    return b"\xe8" + struct.pack("<i", target - at - 5)


def xtensa_call0(at: int, target: int) -> bytes:
    off = ((target >> 2) - (at >> 2) - 1) & 0x3FFFF
    return bytes((0x05 | (off & 3) << 6, (off >> 2) & 0xFF, off >> 10))


def jal_field(imm: int) -> int:
    return (imm >> 20 & 1) << 31 | (imm >> 1 & 0x3FF) << 21 | (imm >> 11 & 1) << 20 | (imm >> 12 & 0xFF) << 12


def rv_jal(at: int, target: int) -> bytes:
    return struct.pack("<I", 0x6F | 1 << 7 | jal_field((target - at) & 0x1FFFFF))


def power_bl(at: int, target: int) -> bytes:
    return struct.pack(">I", 0x48000001 | (((target - at) >> 2) & 0xFFFFFF) << 2)


def sparc_call(at: int, target: int) -> bytes:
    return struct.pack(">I", 0x40000000 | (((target - at) >> 2) & 0x3FFFFFFF))


def a32_bl(at: int, target: int) -> bytes:
    return struct.pack("<I", 0xEB000000 | (((target - at - 8) >> 2) & 0xFFFFFF))


CALLS: dict[int, Callable[[int, int], bytes]] = {
    code.THUMB2: thumb_bl, code.AARCH64: a64_bl, code.X86_64: x86_call, code.XTENSA: xtensa_call0,
    code.RISCV: rv_jal, code.POWER: power_bl, code.SPARC: sparc_call, code.X86_32: x86_call, code.A32: a32_bl}

# The transformed call: its field holds the target address in the instruction's units.
ABSOLUTE: dict[int, Callable[[int], bytes]] = {
    code.THUMB2: lambda t: struct.pack("<HH", 0xF000 | (t >> 12 & 0x7FF), 0xF800 | (t >> 1 & 0x7FF)),
    code.AARCH64: lambda t: struct.pack("<I", 0x94000000 | t >> 2),
    code.X86_64: lambda t: b"\xe8" + struct.pack("<I", t),
    code.XTENSA: lambda t: bytes((0x05 | (t >> 2 & 3) << 6, t >> 4 & 0xFF, t >> 12)),
    code.RISCV: lambda t: struct.pack("<I", 0x6F | 1 << 7 | jal_field(t)),
    code.POWER: lambda t: struct.pack(">I", 0x48000001 | (t >> 2) << 2),
    code.SPARC: lambda t: struct.pack(">I", 0x40000000 | t >> 2),
    code.X86_32: lambda t: b"\xe8" + struct.pack("<I", t),
    code.A32: lambda t: struct.pack("<I", 0xEB000000 | t >> 2),
}


@pytest.mark.parametrize("arch", ARCHS, ids=[CODE_ARCHS[a] for a in ARCHS])
def test_a_call_becomes_its_absolute_target(arch: int) -> None:
    """The same call at two addresses: different bytes, the same bytes once transformed."""
    target = 0x1A340
    assert CALLS[arch](0x100, target) != CALLS[arch](0x7F00, target)
    for at in (0x100, 0x7F00):
        image = CALLS[arch](at, target)
        assert roundtrip(image, 8, [(arch, 0, len(image), at)]) == ABSOLUTE[arch](target)


def test_absolute_operands_of_32_bit_x86_take_the_moves() -> None:
    """mov eax, [0x2000] in 32-bit code names its address outright: the old image's operand
    gets the place the moves give it in the new image, the new image's stays (nothing to undo);
    x86-64 would have read the same bytes as relative to the instruction."""
    image = b"\x8b\x05" + struct.pack("<I", 0x2000)
    ranges = [(code.X86_32, 0, len(image), 0x1000)]
    assert _core.code_transform(image, 8, ranges, moves=[(0x1800, 0x40)]) == b"\x8b\x05" + struct.pack("<I", 0x2040)
    assert _core.code_transform(image, 8, ranges) == image
    assert _core.code_transform(image, 8, ranges, inverse=True) == image
    assert _core.code_transform(image, 8, [(code.X86_64, 0, len(image), 0x1000)]) != image


# --- generated programs that move -------------------------------------------------------------

def filler(arch: int, rng: random.Random, units: int) -> bytes:
    """Instructions of the architecture that reference nothing."""
    out = bytearray()
    for _ in range(units):
        if arch == code.THUMB2:
            out += struct.pack("<H", rng.randrange(0xE000))
        elif arch == code.AARCH64:
            out += struct.pack("<I", 0x0B000000 | rng.getrandbits(24))
        elif arch == code.X86_64:
            out.append(rng.choice((0x50, 0x51, 0x53, 0x58, 0x5B, 0x90, 0x55, 0x5D)))
        elif arch == code.X86_32:  # and now and then mov eax, [a global]: an absolute address (which
            # x86-64 would read as relative to the instruction)
            out += (b"\x8b\x05" + struct.pack("<I", 0x400 + 4 * rng.randrange(64)) if rng.random() < 0.03
                    else bytes((rng.choice((0x50, 0x51, 0x53, 0x58, 0x5B, 0x56, 0x55, 0x5D)),)))
        elif arch == code.A32:  # data processing, condition AL
            out += struct.pack("<I", 0xE0000000 | rng.getrandbits(25))
        elif arch == code.XTENSA:
            out += bytes((rng.choice((0x00, 0x02, 0x03)) | rng.getrandbits(4) << 4, rng.getrandbits(8),
                          rng.getrandbits(8)))
        elif arch == code.POWER:  # addi
            out += struct.pack(">I", 0x38000000 | rng.getrandbits(26))
        elif arch == code.SPARC:  # format 3 (arithmetic)
            out += struct.pack(">I", 0x80000000 | rng.getrandbits(30))
        else:
            out += struct.pack("<I", 0x33 | rng.getrandbits(25) << 7)
    return bytes(out)


def align4(arch: int, body: bytes) -> bytes:
    """Functions start on 4-byte boundaries, padded with instructions of the architecture."""
    pad = -len(body) % 4
    if arch == code.XTENSA:  # 2-byte ADD.N and 3-byte forms keep the decoder in step
        return body + {0: b"", 1: b"\x0a\x00" * 3 + b"\x00\x00\x00", 2: b"\x0a\x00", 3: b"\x00\x00\x00"}[pad]
    return body + (b"\x90" if arch in (code.X86_64, code.X86_32) else b"\0") * pad


def program(arch: int, seed: int, grow: int | None) -> bytes:
    """Forty functions calling each other; function `grow` has some more instructions."""
    return program_layout(arch, seed, grow)[0]


def program_layout(arch: int, seed: int, grow: int | None) -> tuple[bytes, list[int]]:
    """program() and the offsets its functions start at."""
    rng = random.Random(seed)
    bodies = [[filler(arch, rng, rng.randrange(4, 40)) for _ in range(4)] for _ in range(40)]
    callees = [[rng.randrange(40) for _ in range(3)] for _ in range(40)]
    extra = filler(arch, random.Random(seed + 1), 16)
    call_len = len(CALLS[arch](0, 0))
    starts, at = [], 0
    for f in range(40):  # addresses first
        starts.append(at)
        at += len(align4(arch, b"".join(bodies[f]) + (extra if f == grow else b"") + b"\0" * (3 * call_len)))
    out = bytearray()
    for f in range(40):
        body = bytearray()
        for k in range(3):
            body += bodies[f][k]
            body += CALLS[arch](starts[f] + len(body), starts[callees[f][k]])
        body += bodies[f][3] + (extra if f == grow else b"")
        out += align4(arch, bytes(body))
        assert len(out) == (starts[f + 1] if f + 1 < 40 else len(out))
    return bytes(out), starts


@pytest.mark.parametrize("arch", ARCHS, ids=[CODE_ARCHS[a] for a in ARCHS])
def test_a_function_that_grows_costs_little(arch: int) -> None:
    """A function in the middle grows: in plain bytes every call across it changes; the
    transformed patch (raw images, architecture found by trial) is much smaller."""
    old, new = program(arch, 7, None), program(arch, 7, 20)
    plain = fotadelta.diff(old, new, code=False)
    aware = fotadelta.diff(old, new)
    info = fotadelta.info(aware)
    assert fotadelta.apply(old, aware) == new
    assert info.code == CODE_ARCHS[arch] and info.format_version == 5
    assert len(aware) < 0.8 * len(plain), (len(aware), len(plain))


@given(st.integers(0, 2**32 - 1), st.integers(0, 30_000), st.integers(0, 20))
def test_never_larger_than_plain(seed: int, size: int, edits: int) -> None:
    old = firmware_like(random.Random(seed), size)
    new = mutate(random.Random(seed + 1), old, edits)
    aware = fotadelta.diff(old, new)
    assert len(aware) <= len(fotadelta.diff(old, new, code=False))
    assert fotadelta.apply(old, aware) == new


@pytest.mark.parametrize("arch", ARCHS, ids=[CODE_ARCHS[a] for a in ARCHS])
@given(seed=st.integers(0, 2**32 - 1), grow=st.integers(0, 39))
def test_roundtrip_generated_programs(arch: int, seed: int, grow: int) -> None:
    old, new = program(arch, seed, None), program(arch, seed, grow)
    patch = fotadelta.diff(old, new)
    assert fotadelta.apply(old, patch) == new


@pytest.mark.parametrize("arch", ARCHS, ids=[CODE_ARCHS[a] for a in ARCHS])
def test_apply_file_streams_a_code_aware_patch(arch: int, tmp_path: Path) -> None:
    """A code transform or relocated copies, whichever the diff keeps."""
    old, new = program(arch, 3, None), program(arch, 3, 11)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "patch").write_bytes(fotadelta.diff(old, new))
    assert fotadelta.info((tmp_path / "patch").read_bytes()).code == CODE_ARCHS[arch]
    fotadelta.apply_file(tmp_path / "old", tmp_path / "patch", tmp_path / "new")
    assert (tmp_path / "new").read_bytes() == new


def test_info_names_the_code_transform(tmp_path: Path) -> None:
    """`fotadelta info` shows the transform (its stream is not among the record streams)."""
    old, new = program(code.AARCH64, 3, None), program(code.AARCH64, 3, 11)
    with whole_image_transform():
        (tmp_path / "patch").write_bytes(fotadelta.diff(old, new))
    described = fotadelta.info((tmp_path / "patch").read_bytes())
    assert described.code_ranges and not described.relocation
    shown = subprocess.run([sys.executable, "-m", "fotadelta.cli", "info", tmp_path / "patch"], check=True,
                           capture_output=True, text=True, timeout=120).stdout
    (row,) = [line for line in shown.splitlines() if line.startswith("code transform")]
    assert row.split()[2:] == ["aarch64:", f"{described.code_ranges:,}", "code", "ranges,",
                               f"{described.code_moves:,}", "moves,", f"{described.code_bytes:,}", "B"]
    (tmp_path / "plain").write_bytes(fotadelta.diff(old, new, code=False))
    shown = subprocess.run([sys.executable, "-m", "fotadelta.cli", "info", tmp_path / "plain"], check=True,
                           capture_output=True, text=True, timeout=120).stdout
    assert [line.split()[2:] for line in shown.splitlines() if line.startswith("code transform")] == [["none"]]


def test_stream_and_memory_apply_agree_with_moves() -> None:
    """The C reader (one block at a time, moves applied) against whole-image transforms."""
    arch = code.THUMB2
    old, new = program(arch, 5, None), program(arch, 5, 2)
    ranges = ((arch, 0, len(old), 0),)
    moves = ((0x40, 12), (0x400, -8), (0x900, 100))
    t_old = _core.code_transform(old, 8, ranges, moves=moves)
    t_new = _core.code_transform(new, 8, ((arch, 0, len(new), 0),))
    (ctrl, wmap, words, extra), _, _ = _core.OldIndex(t_old).diff_streams(t_new)
    plan = _core.CodePlan(CodeTransform(8, (CodeRange(*ranges[0]),), (CodeRange(arch, 0, len(new), 0),),
                                        tuple(Move(*m) for m in moves)).encode(), len(old), len(new))
    assert _core.apply_memory(old, ctrl, wmap, words, extra, len(new), plan) == new
    # The output's transform undone after the records, in spans on threads (cut inside blocks), alike.
    for threads in (2, 3, 7):
        assert _core.apply_memory(old, ctrl, wmap, words, extra, len(new), plan, undo_threads=threads) == new
    with pytest.raises(ValueError, match="undo_threads must be at least 1"):
        _core.apply_memory(old, ctrl, wmap, words, extra, len(new), plan, undo_threads=0)
    out = bytearray()
    readers = [io.BytesIO(s).read for s in (ctrl, wmap, words, extra)]
    _core.apply_stream(old, *readers, out.extend, len(new), 64, code=plan)
    assert bytes(out) == new


@pytest.mark.parametrize("arch", ARCHS, ids=[CODE_ARCHS[a] for a in ARCHS])
def test_forward_through_the_moves_index_is_the_plain_lookup(arch: int) -> None:
    """CodePlan.forward looks targets up in the moves through a bucket index; code_transform
    searches them all: the same image, with more moves than the index has buckets (4096),
    packed where the targets are (tests/c/code_test.c spreads them to 2^64)."""
    rng = random.Random(arch)
    image = programs(arch, 1 << 16, False)
    ranges = ((arch, 0, len(image), 0x10000),)
    starts = sorted(rng.sample(range(0x8000, 0x8000 + 3 * len(image)), 6000))
    moves = tuple(Move(at, rng.randrange(-4096, 4096)) for at in starts)
    plan = _core.CodePlan(CodeTransform(10, (CodeRange(*ranges[0]),), (CodeRange(*ranges[0]),), moves).encode(),
                          len(image), len(image))
    forward = plan.forward(image)
    assert forward == _core.code_transform(image, 10, ranges, moves=list(moves))
    assert forward != _core.code_transform(image, 10, ranges)  # the moves changed references


# --- detection ----------------------------------------------------------------------------------

def pe_image(machine: int, sections: list[tuple[int, int, int, int]], base: int = 0x140000000) -> bytes:
    """A minimal PE32+ image: (virtual address, raw offset, raw size, characteristics) per section."""
    out = bytearray(0x400)
    out[:2] = b"MZ"
    struct.pack_into("<I", out, 0x3C, 0x80)
    out[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<HHIIIHH", out, 0x84, machine, len(sections), 0, 0, 0, 240, 0x22)
    struct.pack_into("<HBB", out, 0x98, 0x20B, 14, 0)
    struct.pack_into("<Q", out, 0x98 + 24, base)
    at = 0x98 + 240
    for vaddr, raw, size, flags in sections:
        struct.pack_into("<8sIIII", out, at, b".text", size, vaddr, size, raw)
        struct.pack_into("<I", out, at + 36, flags)
        at += 40
    return bytes(out) + bytes(0x4000)


def test_pe_code_sections() -> None:
    image = pe_image(0x8664, [(0x1000, 0x400, 0x2000, 0x60000020), (0x3000, 0x2400, 0x800, 0x40000040)])
    assert code.code_ranges(image) == [(CodeRange(code.X86_64, 0x400, 0x2000, 0x140001000),)]
    i386 = pe_image(0x14C, [(0x1000, 0x400, 0x100, 0x20)], base=0x400000)
    assert code.code_ranges(i386) == [(CodeRange(code.X86_32, 0x400, 0x100, 0x401000),)]
    assert code.code_ranges(pe_image(0x1A2, [(0x1000, 0x400, 0x100, 0x20)])) == []  # SH-3: not handled


KERNEL_BASE = 0xFFFF82D040000000  # where Xen runs; Linux kernels run at 0xffffffff8...


@pytest.mark.parametrize("arch", ARCHS, ids=[CODE_ARCHS[a] for a in ARCHS])
def test_code_at_kernel_addresses_is_moved_down_to_the_same_bytes(arch: int) -> None:
    """Run addresses from 2^63 on do not fit a patch's varints: reachable() moves both maps down
    by a multiple of 2^32, which leaves every transformed byte as it was."""
    old, new = program(arch, 5, None), program(arch, 5, 9)
    high = ((CodeRange(arch, 0, len(old), KERNEL_BASE + 0x200000),),
            (CodeRange(arch, 0, len(new), KERNEL_BASE + 0x201000),))
    low = code.reachable(*high)
    assert low is not None
    for ranges, moved in zip(high, low):
        assert moved[0].addr < 1 << 63 and moved[0].addr % (1 << 32) == ranges[0].addr % (1 << 32)
    for image, ranges, moved in ((old, high[0], low[0]), (new, high[1], low[1])):
        assert code.transformed(image, moved) == code.transformed(image, ranges)
    assert code.reachable(*low) == low  # below 2^63 already: as they are
    assert code.reachable((CodeRange(arch, 0, 16, 0x1000),), (CodeRange(arch, 0, 16, KERNEL_BASE),)) is None


def test_a_hypervisor_at_kernel_addresses_gets_its_transform() -> None:
    """An x86-64 PE image whose ImageBase is a kernel's (Xen's EFI image) was diffed plain: its
    code ranges were dropped. On Xen 4.17.5 -> 4.17.7 the patch is a quarter smaller with them."""
    old, new = program(code.X86_64, 8, None), program(code.X86_64, 8, 23)
    images = [pe_image(0x8664, [(0x200000, 0x400, len(body), 0x60000020)], KERNEL_BASE)[:0x400] + body
              for body in (old, new)]
    assert code.code_ranges(images[0]) == [(CodeRange(code.X86_64, 0x400, len(old), KERNEL_BASE + 0x200000),)]
    patch = fotadelta.diff(*images)
    assert fotadelta.info(patch).code == "x86_64"
    assert fotadelta.apply(images[0], patch) == images[1]
    assert len(patch) < 0.8 * len(fotadelta.diff(*images, code=False))


def elf_image(cls: int, order: str, machine: int, sections: list[tuple[int, int, int, int, int]],
              extended: bool = False) -> bytes:
    """A minimal ELF image with a null section and (type, flags, address, offset, size) per
    section, its header table at 0x1000; extended: e_shnum 0 and the count in section 0."""
    wide = cls == 2
    entry = struct.Struct(order + ("IIQQQQIIQQ" if wide else "IIIIIIIIII"))
    out = bytearray(0x1000)
    out[:6] = b"\x7fELF" + bytes((cls, 1 if order == "<" else 2))
    struct.pack_into(order + "HH", out, 16, 2, machine)
    count = len(sections) + 1
    struct.pack_into(order + ("Q" if wide else "I"), out, 0x28 if wide else 0x20, 0x1000)
    struct.pack_into(order + "HH", out, 0x3A if wide else 0x2E, entry.size, 0 if extended else count)
    out += entry.pack(0, 0, 0, 0, 0, count if extended else 0, 0, 0, 0, 0)
    for kind, flags, addr, offset, size in sections:
        out += entry.pack(1, kind, flags, addr, offset, size, 0, 0, 16, 0)
    return bytes(out) + bytes(0x4000)


@pytest.mark.parametrize("cls, order", [(1, "<"), (2, "<"), (1, ">"), (2, ">")])
def test_elf_code_sections(cls: int, order: str) -> None:
    """Executable PROGBITS sections, in 32- and 64-bit ELF of either byte order: data, non-
    executable and NOBITS sections are not code, nor is a section past the image's end."""
    sections = [(1, 0x6, 0x8000, 0x1100, 0x300),  # .text: PROGBITS, ALLOC|EXECINSTR
                (1, 0x2, 0x9000, 0x1400, 0x100),  # .rodata
                (8, 0x6, 0xA000, 0x1500, 0x100),  # NOBITS, executable
                (1, 0x6, 0xB000, 0x1800, 0x80),  # a second code section
                (1, 0x6, 0xC000, 0x100000, 0x80)]  # outside the image
    for extended in (False, True):
        image = elf_image(cls, order, 243, sections, extended)
        assert code.code_ranges(image) == [(CodeRange(code.RISCV, 0x1100, 0x300, 0x8000),
                                            CodeRange(code.RISCV, 0x1800, 0x80, 0xB000))]
    assert code.code_ranges(elf_image(cls, order, 8, sections)) == []  # MIPS: not handled


def test_arm_elf_images_are_planned_as_both_instruction_sets() -> None:
    """EM_ARM says nothing of Thumb-2 or A32: an Arm ELF image's code is planned as each, and
    the patch carries the one its calls are written in."""
    sections = [(1, 0x6, 0x8000, 0x1100, 0x300)]
    assert code.code_ranges(elf_image(1, "<", 40, sections)) == [(CodeRange(code.THUMB2, 0x1100, 0x300, 0x8000),),
                                                                  (CodeRange(code.A32, 0x1100, 0x300, 0x8000),)]
    for arch in (code.THUMB2, code.A32):
        old, new = program(arch, 4, None), program(arch, 4, 17)
        at = len(elf_image(1, "<", 40, sections))
        images = [elf_image(1, "<", 40, [(1, 0x6, 0x8000, at, len(body))]) + body for body in (old, new)]
        patch = fotadelta.diff(*images)
        assert fotadelta.info(patch).code == CODE_ARCHS[arch]
        assert fotadelta.apply(images[0], patch) == images[1]


def test_elf_section_table_outside_the_image() -> None:
    image = elf_image(2, "<", 62, [(1, 0x6, 0, 0x1100, 0x300)])
    assert code.code_ranges(image[:0x1000 + 64]) == []
    assert code.code_ranges(image[:40]) == []


@given(st.sampled_from([(1, "<"), (2, ">")]), st.lists(st.tuples(st.integers(4, 0x1000 + 3 * 64 - 1),
                                                                 st.integers(0, 255)), max_size=6),
       st.integers(0, 0x6000))
def test_damaged_elf_headers_are_read_without_raising(shape: tuple[int, str], edits: list[tuple[int, int]],
                                                      cut: int) -> None:
    """An ELF image with bytes of its headers changed and its end cut off anywhere: the reader
    returns code ranges inside the image or none, and never raises."""
    image = bytearray(elf_image(*shape, 40, [(1, 0x6, 0x8000, 0x1100, 0x300), (1, 0x2, 0, 0x1400, 0x10)]))
    for at, value in edits:
        image[at] = value
    image = image[:cut]
    for ranges in code.code_ranges(bytes(image)):
        assert all(r.start + r.length <= len(image) for r in ranges)


def test_damaged_headers_do_not_raise() -> None:
    elf = Path(sys.executable).resolve().read_bytes()[:64] + bytes(100)
    assert code.code_ranges(elf) == []
    assert code.code_ranges(b"MZ" + bytes(0x3A) + b"\xff\xff\xff\x7f") == [
        (CodeRange(a, 0, 0x40, 0),) for a in ARCHS]


def test_raw_images_try_every_arch() -> None:
    assert [r[0].arch for r in code.code_ranges(bytes(100))] == ARCHS
    assert code.code_ranges(b"") == []


def programs(arch: int, size: int, grown: bool) -> bytes:
    """Distinct programs joined up to size bytes, each with one function grown when grown."""
    parts: list[bytes] = []
    while sum(map(len, parts)) < size:
        parts.append(program(arch, len(parts), len(parts) % 40 if grown else None))
    return b"".join(parts)


@pytest.mark.parametrize("arch", ARCHS, ids=[CODE_ARCHS[a] for a in ARCHS])
def test_raw_images_read_as_their_own_architecture(arch: int) -> None:
    """The score tells a raw image's architecture from the others, and finds it in a sample of
    a large image (where the generated x86-64 code, of eight byte values and NOP padding, also
    reads as AArch64 ADRPs to a few pages); bytes that are no code read as none."""
    def kept(image: bytes) -> list[int]:
        candidates = code.code_ranges(image)
        return [candidates[k][0].arch for k in code.likely(image, candidates)]
    # x86 code reads as both x86-64 and 32-bit x86 (the same calls); the plans tell them apart.
    x86 = {code.X86_64, code.X86_32}
    assert set(kept(program(arch, 0, None))) == (x86 if arch in x86 else {arch})
    assert arch in kept(programs(arch, 1 << 18, False))
    noise = random.Random(arch).randbytes(1 << 18)
    for image in (noise, bytes(1 << 16), b"\xff" * 100):
        assert code.likely(image, code.code_ranges(image)) == []


@pytest.mark.parametrize("arch", ARCHS, ids=[CODE_ARCHS[a] for a in ARCHS])
def test_raw_images_learn_only_likely_architectures(arch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The patch of a raw image is the one learning every architecture gives. (The transform
    is made free to apply here: on these generated programs it saves too little to pay for its
    apply time, and the architecture found would not show in the patch.)"""
    monkeypatch.setattr(code, "apply_ns", lambda transform: 0)
    old, new = programs(arch, 1 << 20, False), programs(arch, 1 << 20, True)
    patch = fotadelta.diff(old, new)
    assert fotadelta.info(patch).code == CODE_ARCHS[arch]
    assert fotadelta.apply(old, patch) == new
    monkeypatch.setattr(code, "likely", lambda image, candidates: list(range(len(candidates))))
    assert fotadelta.diff(old, new) == patch


def test_plans_gaining_a_small_share_are_not_tried() -> None:
    """A plan is kept only when it gains at least the given share of the references it pairs
    up: a grown function's calls nearly all come out equal, and a plan can never gain more
    references than it pairs."""
    old, new = program(code.THUMB2, 5, None), program(code.THUMB2, 5, 3)
    plans = delta._code_plans(old, new)
    ctrl = _core.OldIndex(old).diff_streams(new)[0][0]
    transform, gain, paired = code.plan(old, new, *plans[code.THUMB2 - 1], ctrl)
    assert 0 < paired and delta._MIN_GAIN_SHARE * paired <= gain <= paired
    assert delta._best_plan(old, new, plans, ctrl, None, delta._MIN_GAIN_SHARE) == transform
    assert delta._best_plan(old, new, plans, ctrl, None, gain / paired + 1e-9) is None


def test_samples_of_a_raw_image() -> None:
    """Evenly spread pieces that start on 16-byte boundaries: read from anywhere else, the words
    of a 4-byte instruction set are misread (a quarter of any words read as SPARC CALLs)."""
    whole = (CodeRange(code.XTENSA, 0, (1 << 20) - 100, 0),)
    pieces = code.sampled(whole, (1 << 20) - 100, 1 << 17, 16)
    assert len(pieces) == 16 and all(r.arch == code.XTENSA and r.addr == r.start for r in pieces)
    assert all(r.start % 16 == 0 for r in pieces)
    assert pieces[0].start == 0 and (1 << 20) - 100 - 16 * 16 < pieces[-1].start + pieces[-1].length <= (1 << 20) - 100
    assert sum(r.length for r in pieces) == 1 << 17
    assert all(a.start + a.length <= b.start for a, b in zip(pieces, pieces[1:]))
    assert code.sampled(whole, (1 << 20) - 100, 1 << 20, 16) == whole


# --- hostile code streams -------------------------------------------------------------------

def transformed_patch() -> tuple[bytes, bytes, bytes]:
    old, new = program(code.AARCH64, 1, None), program(code.AARCH64, 1, 30)
    with whole_image_transform():
        patch = fotadelta.diff(old, new)
    assert Patch.parse(patch).code is not None
    return old, new, patch


def with_code(patch: bytes, raw: bytes) -> bytes:
    p = Patch.parse(patch)
    from fotadelta.delta.format import Stream
    from fotadelta.delta.codec import Codec
    return Patch(p.kind, p.old_size, p.new_size, p.old_fingerprint, p.new_digest, p.streams, p.parts,
                 Stream(Codec.STORED, len(raw), raw)).encode()


def test_code_stream_round_trip() -> None:
    t = CodeTransform(10, (CodeRange(1, 0, 100, 0x8000000), CodeRange(2, 200, 50, 0)),
                      (CodeRange(1, 4, 96, 0x8000004),), (Move(0, -4), Move(0x8000100, 12)))
    assert CodeTransform.parse(t.encode(), 300, 100) == t


RANGE = bytes((1,)) + encode_varint(0) + encode_varint(16) + encode_varint(0)


@pytest.mark.parametrize("raw, why", [
    (bytes((7,)) + b"\0\0\0", "block log"),
    (bytes((10,)) + encode_varint(65) + b"\0", "ranges"),
    (bytes((10, 1, max(CODE_ARCHS) + 1)) + encode_varint(0) + encode_varint(16) + encode_varint(0) + b"\0\0",
     "architecture"),
    (bytes((10, 1)) + bytes((1,)) + encode_varint(0) + encode_varint(0) + encode_varint(0) + b"\0\0", "outside"),
    (bytes((10, 1)) + bytes((1,)) + encode_varint(0) + encode_varint(10**6) + encode_varint(0) + b"\0\0", "outside"),
    (bytes((10, 2)) + RANGE + bytes((1,)) + encode_varint(2**40) + encode_varint(1) + b"\0\0\0", "outside"),
    (bytes((10, 0, 0)) + encode_varint(2) + encode_varint(5) + b"\0" + encode_varint(0) + b"\0", "order"),
    (bytes((10, 0, 0)) + encode_varint(2**20 + 1), "moves"),
    (bytes((10, 0, 0)) + encode_varint(2) + encode_varint(5) + b"\0", "truncated"),
    (bytes((10, 0, 0)) + encode_varint(1) + encode_varint(2**63) + b"\0", "malformed"),
    (bytes((10, 0, 0)) + encode_varint(1) + b"\xff" * 10 + b"\0", "malformed"),
    (bytes((10, 0, 0)) + encode_varint(2) + (encode_varint(2**62) + b"\0") * 2, "out of range"),
    (bytes((10, 0, 0, 0, 0)), "unexpected"),
    (bytes((10, 0, 0)), "truncated"),
])
def test_hostile_code_streams_refused(raw: bytes, why: str) -> None:
    old, _new, patch = transformed_patch()
    with pytest.raises(PatchError, match=why):
        fotadelta.apply(old, with_code(patch, raw))


def test_code_stream_bounded_before_decoding() -> None:
    """A code stream declaring a terabyte is refused by its bound before it is decoded."""
    old, _new, patch = transformed_patch()
    p = Patch.parse(patch)
    assert p.code is not None
    bomb = Patch(p.kind, p.old_size, p.new_size, p.old_fingerprint, p.new_digest, p.streams, p.parts,
                 p.code._replace(codec=Codec.ZSTD, raw_len=1 << 40)).encode()
    with pytest.raises(PatchError, match="implausibly long"):
        fotadelta.apply(old, bomb)


def test_full_image_with_code_refused() -> None:
    old, new, patch = transformed_patch()
    for kind in (1, 3):  # a full image, a referenced one
        bad = bytearray(patch)
        bad[5] = kind
        with pytest.raises(PatchError, match="a full or referenced image carries no code transform"):
            fotadelta.apply(old, bytes(bad))


def test_patches_are_version_5_and_versions_1_2_and_4_still_apply(tmp_path: Path) -> None:
    """Patches are written as version 5 (32-bit fingerprint, implied lengths left out). The same
    patch with a 64-bit fingerprint is version 4, and with a 128-bit digest too version 1, or 2
    with a code transform (no flags byte); each applies in memory and from a file, and a wrong
    digest of either length is refused."""
    plain_old = firmware_like(random.Random(1), 5000)
    plain_new = mutate(random.Random(2), plain_old, 3)
    code_old, code_new = program(code.AARCH64, 7, None), program(code.AARCH64, 7, 20)
    for old, new, version in ((plain_old, plain_new, 1), (code_old, code_new, 2)):
        with whole_image_transform():
            patch = fotadelta.diff(old, new)
        parsed = Patch.parse(patch)
        assert (parsed.code is not None) == (version == 2)  # relocated copies exist in version 5 only
        assert patch[4] == 5 and fotadelta.info(patch).format_version == 5
        assert parsed.new_digest == target_digest(new) and len(parsed.new_digest) == 8
        assert parsed.old_fingerprint == source_fingerprint(old) and len(parsed.old_fingerprint) == 4
        compact = dataclasses.replace(parsed, old_fingerprint=source_fingerprint(old, LONG_FINGERPRINT_LEN)).encode()
        assert compact[4] == 4 and len(compact) >= len(patch) + 5  # a lone stream's raw length at least
        older = dataclasses.replace(Patch.parse(compact), new_digest=target_digest(new, LONG_DIGEST_LEN)).encode()
        assert older[4] == version and len(older) == len(compact) + 7
        assert fotadelta.apply(old, older) == new and fotadelta.info(older).format_version == version
        assert fotadelta.apply(old, compact) == new
        (tmp_path / "old").write_bytes(old)
        (tmp_path / "patch").write_bytes(older)
        fotadelta.apply_file(tmp_path / "old", tmp_path / "patch", tmp_path / "new")
        assert (tmp_path / "new").read_bytes() == new
        for wrong in (patch, older):
            bad = bytearray(wrong)
            bad[layout(wrong).digest_span.stop - 1] ^= 1
            with pytest.raises(PatchError, match="target hash"):
                fotadelta.apply(old, bytes(bad))


def test_apply_time_is_priced_per_architecture_and_cache() -> None:
    """A transform's expected apply time follows what was measured: RISC-V and Xtensa code
    (decoded by length) costs more per byte than Thumb-2, and an image whose code leaves the
    cache more per byte than one whose code stays in it."""
    def priced(arch: int, size: int) -> float:
        whole = (CodeRange(arch, 0, size, 0),)
        return code.apply_ns(CodeTransform(10, whole, whole)) / size
    large, small = 3 << 20, 64 << 10
    assert priced(code.RISCV, large) > 2 * priced(code.THUMB2, large)
    assert priced(code.XTENSA, large) > 2 * priced(code.THUMB2, large)
    for arch in CODE_ARCHS:
        assert priced(arch, small) < priced(arch, large)
    # A 1.5 MB raw RISC-V image each way took 3.9 ms to transform (CodePlan.forward and .undo).
    assert code.apply_ns(CodeTransform(10, (CodeRange(code.RISCV, 0, 1_532_656, 0),),
                                       (CodeRange(code.RISCV, 0, 1_532_656, 0),))) >= 3_500_000


# ---- Relocated copies (docs/format.md#relocated-copies-flags-bit-7, csrc/fd_reloc.h) ----

def _relocated_patch(old: bytes, new: bytes, relocation: Relocation) -> tuple[bytes, dict[str, int], dict[str, int]]:
    """A patch with relocated copies along the plain delta's records, built from its parts (its
    streams stored), and the stats of the relocated and of the plain delta."""
    plain_streams, plain_stats, _ = _core.OldIndex(old).diff_streams(new)
    plan = _core.RelocPlan(relocation.encode())
    streams, stats, _ = _core.delta_along(old, new, plain_streams[0], reloc=plan)
    stored = tuple(Stream(Codec.STORED, len(s), s) for s in streams)
    plan_stream = Stream(Codec.STORED, len(relocation.encode()), relocation.encode())
    patch = Patch(Kind.DELTA, len(old), len(new), source_fingerprint(old), target_digest(new), stored,
                  relocation=plan_stream).encode()
    return patch, stats, plain_stats


@pytest.mark.parametrize("arch", ARCHS, ids=[CODE_ARCHS[a] for a in ARCHS])
def test_relocated_copies_follow_the_code_that_moved(arch: int, tmp_path: Path) -> None:
    """A function in the middle grows: relocated by one move (the functions after it), the
    copies of the code around it come out as the new image has them, where the plain delta
    along the same records changes every call across it; the patch applies in memory, streaming
    and through the one-call path alike."""
    (old, old_starts), (new, new_starts) = program_layout(arch, 7, None), program_layout(arch, 7, 20)
    relocation = Relocation(arch, (Move(old_starts[21], new_starts[21] - old_starts[21]),))
    patch, stats, plain_stats = _relocated_patch(old, new, relocation)
    assert stats["relocated"] > 0 and stats["records"] == plain_stats["records"]
    assert stats["changed"] == 0 and plain_stats["changed"] > 40, (stats["changed"], plain_stats["changed"])
    assert fotadelta.apply(old, patch) == new
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "patch").write_bytes(patch)
    fotadelta.apply_file(tmp_path / "old", tmp_path / "patch", tmp_path / "new")
    assert (tmp_path / "new").read_bytes() == new
    described = fotadelta.info(patch)
    assert (described.code, described.code_moves, described.code_ranges) == (CODE_ARCHS[arch], 1, 0)
    assert described.relocation
    assert described.relocated_records > 0 and described.copied_bytes == stats["copied"]
    # Every grouping of the differences makes the same choices along the same records.
    for grouping, span in ((_core.GROUP_BYTES, 0), (_core.GROUP_SPANS, 3)):
        again = _core.delta_along(old, new, _core.OldIndex(old).diff_streams(new)[0][0], grouping, span,
                                  _core.RelocPlan(relocation.encode()))
        assert again[0][0] == _core.delta_along(old, new, _core.OldIndex(old).diff_streams(new)[0][0],
                                                reloc=_core.RelocPlan(relocation.encode()))[0][0]


# Code, then data that reads as code (instructions at random), then more code: a whole-image
# transform changes the data too; the diff relocates the copies of code alone.
MIXED = {code.THUMB2: 4096, code.AARCH64: 4096, code.X86_64: 4096, code.POWER: 16384}


@pytest.mark.parametrize("arch", sorted(MIXED), ids=[CODE_ARCHS[a] for a in sorted(MIXED)])
def test_diff_relocates_copies_where_code_and_data_mix(arch: int, tmp_path: Path) -> None:
    soup = opcode_soup(1, MIXED[arch])
    old = program(arch, 1, None) + soup + program(arch, 11, None)
    new = program(arch, 1, 20) + soup + program(arch, 11, 5)
    patch = fotadelta.diff(old, new)
    described = fotadelta.info(patch)
    assert described.code == CODE_ARCHS[arch] and described.code_ranges == 0 and described.relocated_records > 0
    assert len(patch) < 0.95 * len(fotadelta.diff(old, new, code=False))
    assert fotadelta.apply(old, patch) == new
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "patch").write_bytes(patch)
    fotadelta.apply_file(tmp_path / "old", tmp_path / "patch", tmp_path / "new")
    assert (tmp_path / "new").read_bytes() == new
    shown = subprocess.run([sys.executable, "-m", "fotadelta.cli", "info", tmp_path / "patch"], check=True,
                           capture_output=True, text=True, timeout=120).stdout
    (row,) = [line for line in shown.splitlines() if line.startswith("code relocation")]
    assert row.split()[2:] == [f"{CODE_ARCHS[arch]}:", f"{described.relocated_records:,}", "of",
                               f"{described.records:,}", "copies", "relocated,", f"{described.code_moves:,}",
                               "moves,", f"{described.code_bytes:,}", "B"]


def test_stream_apply_relocates_piece_by_piece() -> None:
    """apply_stream with the smallest work area relocated copies allow (one piece) gives what
    apply_memory gives, and refuses a smaller one rather than relocate otherwise."""
    (old, old_starts), (new, new_starts) = program_layout(code.X86_64, 3, None), program_layout(code.X86_64, 3, 9)
    old, new = old * 3, new * 3  # copies longer than a piece
    relocation = Relocation(code.X86_64, (Move(old_starts[10], new_starts[10] - old_starts[10]),))
    (ctrl, wmap, words, extra), stats, _ = _core.delta_along(
        old, new, _core.OldIndex(old).diff_streams(new)[0][0], reloc=_core.RelocPlan(relocation.encode()))
    plan = _core.RelocPlan(relocation.encode())
    assert stats["relocated"] > _core.RELOC_PIECE
    assert _core.apply_memory(old, ctrl, wmap, words, extra, len(new), reloc=plan) == new
    out = bytearray()
    readers = [io.BytesIO(s).read for s in (ctrl, wmap, words, extra)]
    _core.apply_stream(old, *readers, out.extend, len(new), _core.RELOC_PIECE, reloc=plan)
    assert bytes(out) == new
    readers = [io.BytesIO(s).read for s in (ctrl, wmap, words, extra)]
    with pytest.raises(PatchError):
        _core.apply_stream(old, *readers, out.extend, len(new), _core.RELOC_PIECE - 1, reloc=plan)


def _relocated_in_halves(arch: int, copy: bytes, src: int, dst: int, moves: list[tuple[int, int]]) -> bytes:
    """A copy from old offset src to new offset dst relocated as docs/format.md defines it: each
    piece from its first 4-aligned old offset transformed forward as a block at its old offset,
    its targets moved, then back as a block at its new one."""
    out = bytearray(copy)
    for at in range(0, len(copy), _core.RELOC_PIECE):
        end = min(at + _core.RELOC_PIECE, len(copy))
        start = at + -(src + at) % 4
        if start < end:
            piece = _core.code_transform(bytes(out[start:end]), 12, [(arch, 0, end - start, src + start)],
                                         moves=moves)
            out[start:end] = _core.code_transform(piece, 12, [(arch, 0, end - start, dst + start)], inverse=True)
    return bytes(out)


@pytest.mark.parametrize("arch", ARCHS, ids=[CODE_ARCHS[a] for a in ARCHS])
@settings(max_examples=30, deadline=None)
@given(src=st.integers(0, 70), dst=st.integers(0, 70), shift=st.integers(-5000, 5000), soup=st.integers(0, 9))
def test_a_relocated_copy_is_the_transform_forward_then_back(arch: int, src: int, dst: int, shift: int,
                                                               soup: int) -> None:
    """fd_reloc_copy does both halves in one pass over each piece (one decode of the
    instructions); its copies come out as the two halves in turn make them, in memory and
    streaming: over several pieces, from any alignment, into any offset, with references that
    the move reaches and ones it does not, in code and in instructions at random."""
    old = program(arch, 5, None) + opcode_soup(soup, 6000)
    moves = [(len(old) // 3, shift)] if len(old) // 3 + shift >= 0 else []
    relocation = Relocation(arch, tuple(Move(start, delta) for start, delta in moves))
    copy_len = len(old) - src
    prefix = bytes(range(dst))
    new = prefix + _relocated_in_halves(arch, old[src:], src, dst, moves)
    ctrl = (encode_varint(0) + encode_varint(0) + encode_varint(dst) if dst else b"") + \
        encode_varint(2 * src) + encode_varint(2 * copy_len + 1) + encode_varint(0)
    streams = tuple(Stream(Codec.STORED, len(s), s) for s in (ctrl, b"", b"", prefix))
    plan = relocation.encode()
    patch = Patch(Kind.DELTA, len(old), len(new), source_fingerprint(old), target_digest(new), streams,
                  relocation=Stream(Codec.STORED, len(plan), plan)).encode()
    assert fotadelta.apply(old, patch) == new
    out = bytearray()
    readers = [io.BytesIO(s).read for s in (ctrl, b"", b"", prefix)]
    _core.apply_stream(old, *readers, out.extend, len(new), _core.RELOC_PIECE, reloc=_core.RelocPlan(plan))
    assert bytes(out) == new


@pytest.mark.parametrize("plan, message", [
    (b"", "truncated"),
    (b"\x00\x00", "unknown code architecture 0"),
    (bytes((len(CODE_ARCHS) + 1, 0)), f"unknown code architecture {len(CODE_ARCHS) + 1}"),
    (b"\x03\x02\x10\x02\x00\x04", "not in increasing order"),
    (b"\x03\x01\x10\x02\x00", "unexpected bytes after the relocation plan"),
    (b"\x03\x05\x10\x02", "truncated"),
    (b"\x03" + encode_varint((1 << 20) + 1), "code moves \\(at most"),
])
def test_relocation_plan_refusals(plan: bytes, message: str) -> None:
    with pytest.raises(PatchError, match=message):
        _core.RelocPlan(plan)


def test_a_relocated_record_that_copies_nothing_is_refused() -> None:
    """Each copy length says whether it is relocated; a record that copies nothing has one way
    to be written (the bit clear), else the patch is corrupt."""
    new = bytes(range(100))
    plan = Stream(Codec.STORED, 2, Relocation(code.X86_64).encode())
    for ctrl, ok in ((b"\x00\x00\x64", True), (b"\x00\x01\x64", False)):
        streams = (Stream(Codec.STORED, 3, ctrl), Stream(Codec.STORED, 0, b""), Stream(Codec.STORED, 0, b""),
                   Stream(Codec.STORED, 100, new))
        patch = Patch(Kind.DELTA, 100, 100, source_fingerprint(bytes(100)), target_digest(new), streams,
                      relocation=plan).encode()
        if ok:
            assert fotadelta.apply(bytes(100), patch) == new
        else:
            with pytest.raises(PatchError, match="corrupt"):
                fotadelta.apply(bytes(100), patch)


def test_relocated_copies_need_version_5_and_no_code_transform() -> None:
    plan = Stream(Codec.STORED, 2, Relocation(code.X86_64).encode())
    streams = (Stream(Codec.STORED, 3, b"\x00\x00\x64"),) + (Stream(Codec.STORED, 0, b""),) * 2 + (
        Stream(Codec.STORED, 100, bytes(100)),)
    with pytest.raises(ValueError, match="relocated copies in format version 4"):
        Patch(Kind.DELTA, 100, 100, bytes(8), bytes(8), streams, relocation=plan).encode()
    transform = Stream(Codec.STORED, 4, CodeTransform(10, (), ()).encode())
    with pytest.raises(ValueError, match="or with a code transform"):
        Patch(Kind.DELTA, 100, 100, bytes(4), bytes(8), streams, code=transform, relocation=plan).encode()
