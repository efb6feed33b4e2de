"""UF2 images (csrc/fd_uf2.c, the layer of format version 4): split into payload and layout and
joined back exactly, files the layout cannot rebuild left alone, hostile layouts refused, deltas
between UF2 files made of the bytes they flash, and in-place patches of the flash they program."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import check_every_byte_change, firmware_like, mutate, to_uf2, uf2_block

import fotadelta
from fotadelta import PatchError, _core, inplace
from fotadelta.cli.common import main
from fotadelta.delta.format import Container, Patch
from fotadelta.inplace.flashimage import ERASED, flash_image


@st.composite
def uf2_images(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """Block sequences as writers make them and as they should not (payloads of any size up to
    476 bytes, address jumps, renumbering, flags and families that change, bytes after the
    payload); with the payload they carry."""
    blocks, payload = [], bytearray()
    flags, address, number, count, family = 0x2000, draw(st.integers(0, 2**32 - 1)), 0, 0, 0xE48BFF56
    size = draw(st.integers(0, 476))
    for _ in range(draw(st.integers(1, 12))):
        if draw(st.integers(0, 3)) == 0:
            size = draw(st.integers(0, 476))
        if draw(st.integers(0, 4)) == 0:
            address = draw(st.integers(0, 2**32 - 1))
        if draw(st.integers(0, 5)) == 0:
            flags, count, family, number = (draw(st.integers(0, 2**32 - 1)) for _ in range(4))
        data = draw(st.binary(min_size=size, max_size=size))
        tail = draw(st.binary(max_size=476 - size)) if draw(st.integers(0, 4)) == 0 else b""
        blocks.append(uf2_block(flags, address, data, number, count, family, tail))
        payload += data
        address = (address + size) & 0xFFFF_FFFF
        number = (number + 1) & 0xFFFF_FFFF
    return b"".join(blocks), bytes(payload)


@given(uf2_images())
def test_split_join_is_exact(case: tuple[bytes, bytes]) -> None:
    image, payload = case
    split = _core.uf2_split(image)
    assert split is not None
    assert split[0] == payload
    assert _core.uf2_join(split[0], split[1], len(image)) == image


def test_regular_blocks_make_a_short_layout() -> None:
    image = to_uf2(random.Random(1).randbytes(1172 * 256))
    payload, layout = _core.uf2_split(image) or (b"", b"")
    assert len(payload) == 1172 * 256
    # The first block spelt out (six header words and the 220 zero bytes after its payload),
    # then one run for the other 1,171 blocks.
    assert len(layout) < 260


@pytest.mark.parametrize("damage", ["first magic", "second magic", "end magic", "payload over 476",
                                    "not whole blocks", "empty"])
def test_files_the_layout_cannot_rebuild_are_not_split(damage: str) -> None:
    image = bytearray(to_uf2(bytes(range(256)) * 4))
    offset = {"first magic": 512, "second magic": 512 + 4, "end magic": 1024 - 4, "payload over 476": 512 + 16}
    if damage in offset:
        struct.pack_into("<I", image, offset[damage], 477 if damage == "payload over 476" else 0)
    elif damage == "not whole blocks":
        image += b"\0"
    else:
        image = bytearray()
    assert _core.uf2_split(bytes(image)) is None


@given(st.binary(max_size=64), st.binary(max_size=600), st.sampled_from([0, 1, 512, 1024, 1536, 1000]))
def test_hostile_layouts_are_refused_or_exact(payload: bytes, layout: bytes, image_len: int) -> None:
    """Whatever the layout says, join either refuses it or writes exactly image_len bytes of
    blocks that split back into the same payload."""
    try:
        image = _core.uf2_join(payload, layout, image_len)
    except PatchError:
        return
    assert len(image) == image_len
    assert (_core.uf2_split(image) or (None,))[0] == payload


def test_huge_run_counts_stop_at_the_image_length() -> None:
    layout = bytes((0,)) + bytes.fromhex("ffffffffffffffff7f")  # a run of 2**63 blocks
    with pytest.raises(PatchError):
        _core.uf2_join(b"", layout, 1024)


# --- deltas ----------------------------------------------------------------------------------

def uf2_pair(seed: int, size: int, **style: int) -> tuple[bytes, bytes]:
    rng = random.Random(seed)
    old = firmware_like(rng, size)
    new = mutate(rng, old, 20)
    return to_uf2(old, **style), to_uf2(new, **style)


@pytest.mark.parametrize("style", [{}, {"payload": 476}, {"payload": 256, "base": 0x2000, "family": 0x68ED2B88}])
def test_uf2_deltas_are_made_of_the_bytes(style: dict[str, int]) -> None:
    old, new = uf2_pair(7, 120_000, **style)
    patch = fotadelta.diff(old, new)
    info = fotadelta.info(patch)
    assert (info.format_version, info.layer) == (5, "uf2")
    assert info.layout_bytes < 64
    assert fotadelta.apply(old, patch) == new
    # The payloads' own delta, and the headers it leaves out, cost a few bytes more; the same
    # edits made to the file as it is (a byte more makes it no UF2) cost more: 1.2-1.5 times here,
    # with fewer headers to the payload byte the larger the blocks' payloads.
    payloads = (_core.uf2_split(old) or (b"",))[0], (_core.uf2_split(new) or (b"",))[0]
    assert len(patch) <= len(fotadelta.diff(*payloads)) + 64
    assert len(patch) * 1.15 < len(fotadelta.diff(old + b"\0", new + b"\0"))


def test_uf2_files_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = uf2_pair(8, 50_000)
    (tmp_path / "old.uf2").write_bytes(old)
    (tmp_path / "new.uf2").write_bytes(new)
    assert main(["diff", "-q", str(tmp_path / "old.uf2"), str(tmp_path / "new.uf2"), "-o", str(tmp_path / "p.fdp")]) == 0
    assert main(["info", str(tmp_path / "p.fdp")]) == 0
    assert "UF2: the delta is between the bytes the files program" in capsys.readouterr().out
    assert main(["apply", str(tmp_path / "old.uf2"), str(tmp_path / "p.fdp"), "-o", str(tmp_path / "out.uf2")]) == 0
    assert (tmp_path / "out.uf2").read_bytes() == new


def test_one_side_uf2_is_a_plain_delta() -> None:
    old, new = uf2_pair(9, 20_000)
    for a, b in ((old, new + b"\0"), (old[:-512] + bytes(512), new)):
        patch = fotadelta.diff(a, b)
        assert fotadelta.info(patch).layer == ""
        assert fotadelta.apply(a, patch) == b


def test_a_uf2_patch_applied_to_hex_text_is_refused() -> None:
    old, new = uf2_pair(10, 20_000)
    patch = fotadelta.diff(old, new)
    with pytest.raises(PatchError):
        fotadelta.apply(old[:-512], patch)


def test_format_flags_name_one_layer_and_only_in_version_4() -> None:
    old, new = uf2_pair(11, 4_000)
    patch = bytearray(fotadelta.diff(old, new))
    assert Patch.parse(bytes(patch)).layer.container == Container.UF2  # type: ignore[union-attr]
    flags_at = 6  # magic, version, kind
    for version, flags in ((4, patch[flags_at] | 0x02), (3, patch[flags_at])):
        mutant = bytearray(patch)
        mutant[4], mutant[flags_at] = version, flags
        with pytest.raises(PatchError, match="flags"):
            Patch.parse(bytes(mutant))


def test_every_byte_change_of_a_uf2_patch() -> None:
    old, new = uf2_pair(12, 4_000)
    patch = fotadelta.diff(old, new)
    assert Patch.parse(patch).layer is not None
    check_every_byte_change(old, new, patch)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_uf2_round_trips(seed: int) -> None:
    rng = random.Random(seed)
    old, new = uf2_pair(seed, rng.randrange(100, 30_000), payload=rng.choice((256, 476, 100)))
    assert fotadelta.apply(old, fotadelta.diff(old, new)) == new


# --- in place --------------------------------------------------------------------------------

def test_flash_image_lays_blocks_at_their_addresses() -> None:
    blocks = [uf2_block(0x2000, 0x100, b"\x11" * 16, 0, 3, 1),
              uf2_block(0x2001, 0x5000, b"a comment, not flash", 1, 3, 1),  # flag 1: not main flash
              uf2_block(0x2000, 0x120, b"\x22" * 8, 2, 3, 1)]
    image = flash_image(b"".join(blocks))
    assert (image.layer, image.base) == ("uf2", 0x100)
    assert image.data == b"\x11" * 16 + bytes([ERASED]) * 16 + b"\x22" * 8


def test_in_place_patch_makes_the_flash_contents_of_new(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(13)
    old_bin = firmware_like(rng, 60_000)
    new_bin = mutate(rng, old_bin, 12)
    old, new = to_uf2(old_bin), to_uf2(new_bin)
    patch = inplace.diff(old, new)
    assert inplace.apply(old, patch) == new_bin
    # As small as the patch of the flash contents themselves: the headers are not in the slot.
    assert len(patch) == len(inplace.diff(old_bin, new_bin))
    (tmp_path / "old.uf2").write_bytes(old)
    (tmp_path / "new.uf2").write_bytes(new)
    assert main(["diff", "--in-place", str(tmp_path / "old.uf2"), str(tmp_path / "new.uf2"), "-o",
                 str(tmp_path / "p.fdip")]) == 0
    assert "UF2 as the flash it programs from 0x10000000" in capsys.readouterr().out
    described = inplace.info(patch, old, new)
    assert (described.layer, described.flash_base, described.flash_left_out) == ("uf2", 0x1000_0000, 0)
    assert main(["diff", "--in-place", str(tmp_path / "old.uf2"), str(tmp_path / "p.fdip"), "-o",
                 str(tmp_path / "q.fdip")]) == 1
    assert "OLD is UF2 and NEW is a binary" in capsys.readouterr().err
