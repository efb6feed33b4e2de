"""Shared helpers for the test suite: corpus discovery, image generators, patch layout."""

from __future__ import annotations

import importlib.util
import os
import random
import struct
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType

import fotadelta
from fotadelta import PatchError

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO.parent / "shared" / "corpus"
SAMPLE_PAIRS = REPO / "firmware_samples" / "pairs"

STORED = 0

# The C core built on its own (test_c_core.py, test_c_inplace.py).
CSRC = REPO / "csrc"
C_SOURCES = sorted(CSRC.glob("*.c"))
CC = os.environ.get("CC", "gcc")
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g"]
# setup.py builds the core with two-thread diffs on POSIX; test that configuration.
THREADS = ["-DFD_HAVE_PTHREADS", "-pthread"]


@dataclass(frozen=True)
class Pair:
    """An old/new image pair on disk."""

    name: str
    old: Path
    new: Path


def load_script(path: Path, name: str) -> ModuleType:
    """A script of the repository (benchmarks/, firmware_samples/) loaded as module name, registered
    in sys.modules (dataclasses look their module up by name)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def find_pairs() -> list[Pair]:
    """Every pair directory (holding `old` and `new`) of the shared corpus and of
    firmware_samples/pairs; empty when neither exists."""
    pairs = []
    for label, root in (("shared", SHARED_CORPUS), ("samples", SAMPLE_PAIRS)):
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            if (d / "old").is_file() and (d / "new").is_file():
                pairs.append(Pair(f"{label}/{d.name}", d / "old", d / "new"))
    return pairs


# --- generated images ----------------------------------------------------------------------

def spliced(rng: random.Random, old: bytes, size: int, shortest: int = 8, longest: int = 24) -> bytes:
    """size bytes made of short pieces of old taken from anywhere: the dense, short and
    scattered matches of code rebuilt by another toolchain, where a referenced patch (LZ77
    against the old image) beats copy records."""
    out = bytearray()
    while len(out) < size:
        n = rng.randint(shortest, longest)
        at = rng.randrange(len(old) - n)
        out += old[at:at + n]
    return bytes(out[:size])


def recompiled(rng: random.Random, old: bytes, size: int) -> bytes:
    """size bytes in which runs of old (100-600 bytes, from anywhere) alternate with new code
    spliced from 4-12 byte snippets of old: a larger program rebuilt by another toolchain, where
    LZMA against the old image (a referenced patch) beats copy records."""
    out = bytearray()
    while len(out) < size:
        if rng.random() < 0.5:
            n = rng.randint(100, 600)
            at = rng.randrange(len(old) - n)
            out += old[at:at + n]
        else:
            out += spliced(rng, old, rng.randint(50, 300), 4, 12)
    return bytes(out[:size])


def firmware_like(rng: random.Random, size: int) -> bytes:
    """Bytes that look like a 32-bit firmware image: instruction words drawn from a small
    vocabulary, literal pools of addresses, string tables and 0xFF-padded gaps."""
    opcodes = [rng.getrandbits(32) for _ in range(48)]
    base = 0x0800_0000
    out = bytearray()
    while len(out) < size:
        kind = rng.random()
        if kind < 0.6:  # code
            for _ in range(rng.randrange(8, 128)):
                out += struct.pack("<I", rng.choice(opcodes) ^ (rng.randrange(16) << 8))
        elif kind < 0.8:  # literal pool
            for _ in range(rng.randrange(2, 24)):
                out += struct.pack("<I", base + 4 * rng.randrange(size // 4 + 1))
        elif kind < 0.93:  # strings
            words = [b"error", b"flash", b"boot", b"update", b"version", b"device", b"ok", b"\0"]
            for _ in range(rng.randrange(2, 20)):
                out += rng.choice(words)
        else:  # padding
            out += b"\xff" * rng.randrange(4, 256)
    return bytes(out[:size])


def mutate(rng: random.Random, image: bytes, edits: int) -> bytes:
    """A new version of image: word changes, overwrites, inserts and deletes."""
    out = bytearray(image)
    for _ in range(edits):
        op = rng.random()
        pos = rng.randrange(len(out) + 1)
        if op < 0.45 and len(out) >= 4:  # relocated address / changed instruction
            pos = rng.randrange(len(out) - 3) & ~3
            value = (struct.unpack_from("<I", out, pos)[0] + rng.choice((4, 8, 0x100, -4))) & 0xFFFFFFFF
            struct.pack_into("<I", out, pos, value)
        elif op < 0.65:
            n = rng.randrange(1, 64)
            out[pos:pos + n] = rng.randbytes(n)
        elif op < 0.85:
            out[pos:pos] = rng.randbytes(rng.randrange(1, 256))
        else:
            del out[pos:pos + rng.randrange(1, 256)]
    return bytes(out)


# --- patch layout --------------------------------------------------------------------------

@dataclass(frozen=True)
class StreamSpan:
    name: str
    codec: int
    codec_at: int
    start: int  # offset of the stream's data in the patch
    end: int


@dataclass(frozen=True)
class Layout:
    """Where the fields of a patch sit (docs/format.md), from an independent parser."""

    kind: int
    old_size_span: range
    fingerprint_span: range
    digest_span: range
    streams: tuple[StreamSpan, ...]

    def stream(self, name: str) -> StreamSpan:
        return next(s for s in self.streams if s.name == name)


def record(rtype: int, addr: int, data: bytes, lower: bool = False) -> str:
    """One Intel HEX record, written independently of the package."""
    body = bytes((len(data), addr >> 8, addr & 0xFF, rtype)) + data
    line = ":" + (body + bytes(((-sum(body)) & 0xFF,))).hex().upper()
    return line.lower() if lower else line


def to_hex(image: bytes, base: int = 0x0800_0000, width: int = 16, eol: str = "\n",
           lower: bool = False) -> bytes:
    """An image as HEX the way linkers write it: extended linear address records at every
    64 KiB, data records of `width` bytes, a start address and the end record."""
    lines = []
    for off in range(0, len(image), width):
        addr = base + off
        if off == 0 or addr & 0xFFFF < width:
            lines.append(record(4, 0, (addr >> 16).to_bytes(2, "big"), lower))
        lines.append(record(0, addr & 0xFFFF, image[off:off + width], lower))
    lines.append(record(5, 0, base.to_bytes(4, "big"), lower))
    lines.append(record(1, 0, b"", lower))
    return (eol.join(lines) + eol).encode()


UF2_FAMILY_RP2040 = 0xE48BFF56


def uf2_block(flags: int, address: int, data: bytes, number: int, count: int, family: int,
              tail: bytes = b"") -> bytes:
    """One 512-byte UF2 block, written independently of the package: data is its payload, tail
    what follows it in the 476 data bytes (zeros after that)."""
    header = struct.pack("<IIIIIIII", 0x0A324655, 0x9E5D5157, flags, address, len(data), number, count, family)
    return header + (data + tail).ljust(476, b"\0") + struct.pack("<I", 0x0AB16F30)


def to_uf2(image: bytes, base: int = 0x1000_0000, payload: int = 256, family: int = UF2_FAMILY_RP2040) -> bytes:
    """An image as UF2 the way uf2conv and the Pico SDK write it: blocks of payload bytes at
    consecutive addresses, numbered, with the family id (flag 0x2000)."""
    count = (len(image) + payload - 1) // payload
    return b"".join(uf2_block(0x2000, base + k * payload, image[k * payload:(k + 1) * payload], k, count, family)
                    for k in range(count))


def _varint_end(data: bytes, pos: int) -> int:
    while data[pos] & 0x80:
        pos += 1
    return pos + 1


def layout(patch: bytes) -> Layout:
    """Offsets of a valid patch's fields: magic, version, kind, varint old and new sizes,
    fingerprint, target digest, then per stream a codec byte, varint raw and stored lengths
    and the stored bytes (version 5 leaves out the raw length of a full, referenced or solid
    patch's stream and the stored length of a stored stream). Field values come from the
    package's parser, offsets from here."""
    from fotadelta.delta.format import IMPLIED_VERSION, LAYERED_VERSION, MAGIC, Patch
    p = Patch.parse(patch)
    implied = patch[len(MAGIC)] == IMPLIED_VERSION
    blobs = [v for v in (getattr(p, f.name) for f in fields(p)) if isinstance(v, bytes)]
    fingerprint_len, digest_len = (len(b) for b in blobs)
    sizes_at = len(MAGIC) + 2 + (patch[len(MAGIC)] >= LAYERED_VERSION)  # versions 3 to 5 have a flags byte
    old_end = _varint_end(patch, sizes_at)
    new_end = _varint_end(patch, old_end)
    fp = range(new_end, new_end + fingerprint_len)
    digest = range(fp.stop, fp.stop + digest_len)
    pos = digest.stop
    streams = []

    def stream(name: str, codec: int, stored: int) -> None:
        nonlocal pos
        codec_at = pos
        pos += 1
        if not (implied and name in ("image", "records")):
            pos = _varint_end(patch, pos)
        if not (implied and codec == STORED):
            pos = _varint_end(patch, pos)
        streams.append(StreamSpan(name, codec, codec_at, pos, pos + stored))
        pos += stored

    if p.layer is not None:  # version 3: the payload sizes and the HEX layout
        pos = _varint_end(patch, _varint_end(patch, pos))
        stream("layout", int(p.layer.layout.codec), len(p.layer.layout.data))
    for _ in p.parts:  # a solid delta's four record-stream lengths
        pos = _varint_end(patch, pos)
    names = {0: ("ctrl", "wmap", "words", "extra"), 1: ("image",), 2: ("records",), 3: ("image",)}[int(p.kind)]
    all_streams = p.streams
    if p.code is not None:  # versions 2 and 3: the code transform comes first
        names, all_streams = ("code", *names), (p.code, *p.streams)
    for name, st in zip(names, all_streams, strict=True):
        stream(name, int(st.codec), len(st.data))
    assert pos == len(patch)
    return Layout(int(p.kind), range(sizes_at, old_end), fp, digest, tuple(streams))


def harmless_positions(patch: bytes) -> set[int]:
    """Offsets where a changed byte may still yield the right image, and why:

    - the old fingerprint only explains a failure (the target digest guards the result);
    - a full-image patch does not use the old image, so its old size is not checked;
    - compressed streams have bits their decoders ignore (zstd window size, padding);
    - the control stream has fields without effect (the seek of a record that copies
      nothing); stored word map, word and extra bytes always reach the output;
    - the code transform may move targets that no reference uses.
    Everywhere a changed byte is accepted, the result must still be exactly the new image."""
    lay = layout(patch)
    ok = set(lay.fingerprint_span)
    if lay.kind == 1:
        ok |= set(lay.old_size_span)
    for s in lay.streams:
        if s.codec != STORED or s.name in ("ctrl", "code"):
            ok |= set(range(s.start, s.end))
    return ok


def check_every_byte_change(old: bytes, new: bytes, patch: bytes) -> None:
    """Flip one and then the top bit of every byte of the patch in turn: each mutant is refused,
    or (at a harmless position) still makes exactly the new image (check_mutant)."""
    harmless = harmless_positions(patch)
    for pos in range(len(patch)):
        for delta in (1, 0x80):
            mutant = bytearray(patch)
            mutant[pos] ^= delta
            check_mutant(old, new, bytes(mutant), pos, harmless)


def check_mutant(old: bytes, new: bytes, mutant: bytes, position: int | None,
                 harmless: set[int]) -> str:
    """Apply a damaged patch: it must raise PatchError, or (only for a harmless position)
    give exactly the new image. Returns 'error' or 'ok'."""
    try:
        out = fotadelta.apply(old, mutant)
    except PatchError:
        return "error"
    assert position is not None and position in harmless, (
        f"damage at offset {position} went unnoticed")
    assert out == new, f"damage at offset {position} gave a wrong image without an error"
    return "ok"



# --- C drivers -----------------------------------------------------------------------------

def compile_(args: list[str], cwd: Path, cc: str = CC) -> None:
    proc = subprocess.run([cc, *args], cwd=cwd, check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cc} {' '.join(args)}\n{proc.stdout}{proc.stderr}"
    assert "warning" not in proc.stderr, proc.stderr


def run_driver(driver: Path, *args: str, timeout: float) -> str:
    """Run a sanitized C test driver: it must exit 0, say "all checks passed" and report nothing."""
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1:strict_string_checks=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    proc = subprocess.run([str(driver), *args], check=False, capture_output=True, text=True, timeout=timeout, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-20000:]
    assert "all checks passed" in proc.stdout, output[-20000:]
    assert "Sanitizer" not in output and "runtime error" not in output, output[-20000:]
    return proc.stdout
