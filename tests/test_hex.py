"""Intel HEX images (csrc/fd_hex.c, the layer of format version 3): split into payload and
layout and joined back exactly, text the layout cannot rebuild left alone, hostile layouts
refused, and deltas between HEX files made of their bytes, several times smaller than deltas
of their text."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import check_every_byte_change, firmware_like, mutate, record, to_hex

import fotadelta
from fotadelta import PatchError, _core
from fotadelta.delta.format import Patch


@st.composite
def hex_texts(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """Arbitrary record sequences (any type, address and length; runs and jumps) in one of the
    writings a file may have; with the payload they spell."""
    lower, eol, final = draw(st.booleans()), draw(st.sampled_from(["\n", "\r\n"])), draw(st.booleans())
    lines, payload, addr = [], bytearray(), draw(st.integers(0, 0xFFFF))
    for _ in range(draw(st.integers(1, 40))):
        rtype = draw(st.sampled_from([0, 0, 0, 0, 1, 2, 3, 4, 5, 0x7F]))
        data = draw(st.binary(max_size=48))
        if draw(st.integers(0, 4)) == 0:
            addr = draw(st.integers(0, 0xFFFF))  # a jump breaks the run
        lines.append(record(rtype, addr, data, lower))
        if rtype == 0:
            payload += data
            addr = (addr + len(data)) & 0xFFFF
    text = eol.join(lines) + (eol if final else "")
    return text.encode(), bytes(payload)


@given(hex_texts())
def test_split_join_is_exact(case: tuple[bytes, bytes]) -> None:
    text, payload = case
    split = _core.hex_split(text)
    assert split is not None
    assert split[0] == payload
    assert _core.hex_join(split[0], split[1], len(text)) == text


def test_runs_make_a_short_layout() -> None:
    text = to_hex(random.Random(1).randbytes(300_000))
    payload, layout = _core.hex_split(text) or (b"", b"")
    assert len(payload) == 300_000
    assert len(layout) < 200  # runs between the address records, not one entry per line


@pytest.mark.parametrize("damage", [
    "bad checksum", "mixed case", "mixed line ends", "blank line", "no colon", "odd digits",
    "count too short", "text after the digits", "empty"])
def test_text_the_layout_cannot_rebuild_is_not_split(damage: str) -> None:
    good = to_hex(bytes(range(64)))
    lines = good.decode().split("\n")
    if damage == "bad checksum":
        lines[1] = lines[1][:-2] + ("00" if lines[1][-2:] != "00" else "01")
    elif damage == "mixed case":
        lines[1] = lines[1].lower()
    elif damage == "mixed line ends":
        lines[1] += "\r"
    elif damage == "blank line":
        lines.insert(2, "")
    elif damage == "no colon":
        lines[1] = lines[1][1:]
    elif damage == "odd digits":
        lines[1] = lines[1][:-1]
    elif damage == "count too short":
        lines[1] = record(0, 0, bytes(4))[:3] + lines[1][3:]
    elif damage == "text after the digits":
        lines[1] += " ; comment"
    else:
        lines = []
    assert _core.hex_split("\n".join(lines).encode()) is None


@given(st.binary(max_size=64), st.binary(max_size=64), st.integers(0, 2000))
def test_hostile_layouts_are_refused_or_exact(payload: bytes, layout: bytes, text_len: int) -> None:
    """Whatever the layout says, join either refuses it or writes exactly text_len bytes of
    records that split back into the same payload."""
    try:
        text = _core.hex_join(payload, layout, text_len)
    except PatchError:
        return
    assert len(text) == text_len
    assert (_core.hex_split(text) or (None,))[0] == payload


def test_huge_run_counts_stop_at_the_text_length() -> None:
    layout = bytes((0, 0)) + bytes.fromhex("ffffffffffffffff7f") + b"\x00"  # 2**63 empty records
    with pytest.raises(PatchError):
        _core.hex_join(b"", layout, 1000)


# --- deltas ----------------------------------------------------------------------------------

def hex_pair(seed: int, size: int, **style: object) -> tuple[bytes, bytes]:
    rng = random.Random(seed)
    old = firmware_like(rng, size)
    new = mutate(rng, old, 20)
    return to_hex(old, **style), to_hex(new, **style)  # type: ignore[arg-type]


@pytest.mark.parametrize("style", [{}, {"eol": "\r\n"}, {"lower": True}, {"width": 32}])
def test_hex_deltas_are_made_of_the_bytes(style: dict[str, object]) -> None:
    old, new = hex_pair(7, 120_000, **style)
    patch = fotadelta.diff(old, new)
    info = fotadelta.info(patch)
    assert (info.format_version, info.layer) == (5, "ihex")
    assert fotadelta.apply(old, patch) == new
    # The same edits made to the text directly, without the layer, cost several times more.
    assert len(patch) * 3 < len(fotadelta.diff(old + b"\n", new + b"\n"))


def test_hex_apply_file(tmp_path: Path) -> None:
    old, new = hex_pair(8, 50_000)
    (tmp_path / "old.hex").write_bytes(old)
    (tmp_path / "new.hex").write_bytes(new)
    fotadelta.diff_file(tmp_path / "old.hex", tmp_path / "new.hex", tmp_path / "p.fdp")
    fotadelta.apply_file(tmp_path / "old.hex", tmp_path / "p.fdp", tmp_path / "out.hex")
    assert (tmp_path / "out.hex").read_bytes() == new


def test_one_side_hex_is_a_text_delta() -> None:
    old, new = hex_pair(9, 20_000)
    for a, b in ((old, new + b"; a comment"), (old + b"junk", new)):
        patch = fotadelta.diff(a, b)
        assert fotadelta.info(patch).layer == ""
        assert fotadelta.apply(a, patch) == b


def test_other_hex_of_the_same_length_is_refused() -> None:
    old, new = hex_pair(10, 20_000)
    patch = fotadelta.diff(old, new)
    other = to_hex(bytes(len(_core.hex_split(old)[0])))  # type: ignore[index]
    with pytest.raises(PatchError):
        fotadelta.apply(other, patch)


def test_every_byte_change_of_a_hex_patch() -> None:
    old, new = hex_pair(11, 4_000)
    patch = fotadelta.diff(old, new)
    assert Patch.parse(patch).layer is not None
    check_every_byte_change(old, new, patch)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_hex_round_trips(seed: int) -> None:
    rng = random.Random(seed)
    old, new = hex_pair(seed, rng.randrange(100, 30_000), width=rng.choice((16, 32)))
    assert fotadelta.apply(old, fotadelta.diff(old, new)) == new
