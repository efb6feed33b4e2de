"""Property tests: apply(old, diff(old, new)) == new for arbitrary and firmware-like inputs."""

from __future__ import annotations

import struct

from hypothesis import given, note
from hypothesis import strategies as st
from support import firmware_like

import fotadelta

HEADER_ALLOWANCE = 128


def check(old: bytes, new: bytes) -> None:
    patch = fotadelta.diff(old, new)
    info = fotadelta.info(patch)
    note(f"kind={info.kind} patch={len(patch)}")
    assert (info.old_size, info.new_size) == (len(old), len(new))
    assert len(patch) <= len(new) + HEADER_ALLOWANCE
    assert fotadelta.apply(old, patch) == new


@given(st.binary(max_size=600), st.binary(max_size=600))
def test_arbitrary_bytes(old: bytes, new: bytes) -> None:
    check(old, new)


@given(st.binary(min_size=1, max_size=300), st.data())
def test_new_built_from_pieces_of_old(old: bytes, data: st.DataObject) -> None:
    """New images made of slices of old (moved, repeated, reordered) and a few literals."""
    pieces = data.draw(st.lists(
        st.one_of(
            st.tuples(st.integers(0, len(old) - 1), st.integers(1, 64)).map(lambda t: old[t[0]:t[0] + t[1]]),
            st.binary(min_size=1, max_size=8)),
        max_size=12))
    check(old, b"".join(pieces))


Edit = tuple[str, int, int, bytes]

EDITS = st.tuples(
    st.sampled_from(["insert", "delete", "overwrite", "word"]),
    st.integers(0, 1 << 20),  # position, reduced modulo the image size
    st.integers(1, 300),  # length
    st.binary(min_size=1, max_size=300),
)


def apply_edits(image: bytes, edits: list[Edit]) -> bytes:
    out = bytearray(image)
    for op, pos, length, payload in edits:
        pos %= len(out) + 1
        if op == "insert":
            out[pos:pos] = payload
        elif op == "delete":
            del out[pos:pos + length]
        elif op == "overwrite":
            out[pos:pos + len(payload)] = payload
        elif len(out) >= 4:  # a 4-byte word changes by a small delta, like a relocated address
            pos = min(pos & ~3, len(out) - 4)
            value = struct.unpack_from("<I", out, pos)[0]
            struct.pack_into("<I", out, pos, (value + length * 4) & 0xFFFFFFFF)
    return bytes(out)


@given(st.integers(0, 2**32 - 1), st.integers(0, 20_000), st.lists(EDITS, max_size=12))
def test_firmware_like_mutations(seed: int, size: int, edits: list[Edit]) -> None:
    import random
    old = firmware_like(random.Random(seed), size)
    check(old, apply_edits(old, edits))


@given(st.integers(0, 2**32 - 1), st.integers(4, 5000), st.lists(st.integers(0, 1 << 20), max_size=40),
       st.sampled_from([4, 8, 0x100, 0x1000, -4]))
def test_relocated_words(seed: int, size: int, positions: list[int], shift: int) -> None:
    """Many 4-byte words shifted by one constant: what a relink does to address literals."""
    import random
    old = firmware_like(random.Random(seed), size)
    new = bytearray(old)
    for pos in positions:
        pos = min((pos % size) & ~3, size - 4)
        value = struct.unpack_from("<I", new, pos)[0]
        struct.pack_into("<I", new, pos, (value + shift) & 0xFFFFFFFF)
    check(old, bytes(new))


@given(st.integers(0, 2**32 - 1), st.integers(1, 3000), st.lists(st.tuples(st.integers(1, 12), st.integers(1, 255)),
                                                              min_size=1, max_size=3),
       st.integers(-3, 3))
def test_edits_near_the_end(seed: int, size: int, edits: list[tuple[int, int]], tail: int) -> None:
    """Byte changes in the last few words, with the image cut or extended by a few bytes:
    the partial last word and the last COPY span are where the word map ends."""
    import random
    r = random.Random(seed)
    old = firmware_like(r, size)
    new = bytearray(old)
    for back, delta in edits:
        pos = max(0, len(new) - back)
        new[pos] = (new[pos] + delta) & 0xFF
    if tail > 0:
        new += r.randbytes(tail)
    elif tail < 0:
        del new[tail:]
    check(old, bytes(new))
