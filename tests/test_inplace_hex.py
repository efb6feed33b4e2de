"""In-place patches of Intel HEX images: made between, and making, the flash contents the HEX
programs (the slot holds those, not HEX text); records far beyond the slot are reported, not written."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from support import firmware_like, mutate, record, to_hex

import fotadelta
from fotadelta import inplace, package
from fotadelta.cli.common import main
from fotadelta.inplace.flashimage import ERASED, GAP_MAX
from fotadelta.package import signing


def _with_uicr(text: bytes, data: bytes) -> bytes:
    """text with a record at 0x1000_10C0 (nRF UICR, a separate memory) before its start-address
    and end records."""
    lines = text.decode().splitlines()
    extra = [record(4, 0, (0x1000).to_bytes(2, "big")), record(0, 0x10C0, data)]
    return ("\n".join(lines[:-2] + extra + lines[-2:]) + "\n").encode()


def _pair(seed: int, size: int = 60_000) -> tuple[bytes, bytes]:
    rng = random.Random(seed)
    old = firmware_like(rng, size)
    return old, mutate(rng, old, 12)


def test_patch_makes_the_flash_contents_of_new() -> None:
    old, new = _pair(1)
    old_hex, new_hex = to_hex(old, base=0x0800_0000), to_hex(new, base=0x0800_0000)
    patch = inplace.diff(old_hex, new_hex)
    assert inplace.apply(old_hex, patch) == new
    # The same patch as of the binaries, and far smaller than one of the text would be.
    assert inplace.apply(old, patch) == new
    assert len(patch) < len(inplace.diff(old, new)) + 64
    described = inplace.info(patch, old_hex, new_hex)
    assert (described.flash_base, described.flash_left_out, described.new_size) == (0x0800_0000, 0, len(new))
    assert described.plain_patch_bytes == len(fotadelta.diff(old_hex, new_hex))


def test_gaps_read_as_erased_flash_and_far_records_are_left_out() -> None:
    rng = random.Random(2)
    low, high = firmware_like(rng, 5000), firmware_like(rng, 3000)
    text = (to_hex(low, base=0).decode().rsplit(":", 2)[0] + to_hex(high, base=0x3000).decode()).encode()
    text = _with_uicr(text, b"\x01\x02\x03\x04")
    image = inplace.flash_image(text)
    assert image.layer == "ihex" and image.base == 0
    assert image.data == low + bytes([ERASED]) * (0x3000 - len(low)) + high
    assert [(r.address, r.data) for r in image.left_out] == [(0x1000_10C0, b"\x01\x02\x03\x04")]
    assert GAP_MAX < 0x1000_10C0 - 0x3000 - len(high)


def test_cli_says_what_is_patched_and_what_is_not(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = _pair(3)
    (tmp_path / "old.hex").write_bytes(to_hex(old, base=0))
    (tmp_path / "new.hex").write_bytes(_with_uicr(to_hex(new, base=0), b"\xAA" * 8))
    assert main(["diff", "--in-place", str(tmp_path / "old.hex"), str(tmp_path / "new.hex"), "-o",
                 str(tmp_path / "p.fdip")]) == 0
    said = capsys.readouterr().out
    assert "Intel HEX as the flash it programs from 0x0" in said and "NOT updated: 8 B" in said
    assert main(["apply", str(tmp_path / "old.hex"), str(tmp_path / "p.fdip"), "-o", str(tmp_path / "new.bin")]) == 0
    assert (tmp_path / "new.bin").read_bytes() == new
    capsys.readouterr()
    assert main(["info", "--json", str(tmp_path / "p.fdip"), "--old", str(tmp_path / "old.hex"), "--new",
                 str(tmp_path / "new.hex")]) == 0
    described = json.loads(capsys.readouterr().out)
    assert (described["flash_base"], described["flash_left_out"]) == (0, 8)
    assert main(["diff", "--in-place", str(tmp_path / "old.hex"), str(tmp_path / "new.bin"), "-o",
                 str(tmp_path / "q.fdip")]) == 1
    assert "OLD is Intel HEX and NEW is a binary" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["one side", "overlap", "bases", "span"])
def test_images_that_lay_out_no_slot_are_one_clear_error(case: str) -> None:
    old, new = _pair(4, 4000)
    old_hex = to_hex(old, base=0)
    if case == "one side":
        new_hex = new
    elif case == "overlap":
        new_hex = to_hex(new, base=0).replace(b"\n:00000001FF", ("\n" + record(0, 0x10, b"\x00" * 4)
                                                                 + "\n:00000001FF").encode())
    elif case == "bases":
        new_hex = to_hex(new, base=0x1000)
    else:
        new_hex = to_hex(new, base=0).replace(b"\n:00000001FF", b"\n" + b"\n".join(
            (record(4, 0, (k << 4).to_bytes(2, "big")) + "\n" + record(0, 0, b"\x00")).encode()
            for k in range(1, 70)) + b"\n:00000001FF")
    with pytest.raises(ValueError, match="HEX"):
        inplace.diff(old_hex, new_hex)


@st.composite
def _records(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    """Data records at arbitrary 32-bit addresses (some near each other, some far), in any order,
    possibly overlapping."""
    out = []
    at = draw(st.integers(0, 1 << 32 - 1))
    for _ in range(draw(st.integers(1, 12))):
        data = draw(st.binary(min_size=0, max_size=40))
        out.append((max(at, 0) % (1 << 32), data))
        at += len(data) + draw(st.sampled_from([-3, 0, 0, 1, 300, 70_000, GAP_MAX - 1, GAP_MAX, 1 << 28]))
    return draw(st.permutations(out))


def _text(records: list[tuple[int, bytes]]) -> bytes:
    lines = []
    for address, data in records:
        lines.append(record(4, 0, (address >> 16).to_bytes(2, "big")))
        lines.append(record(0, address & 0xFFFF, data))
    return ("\n".join(lines + [record(1, 0, b"")]) + "\n").encode()


@settings(max_examples=200, deadline=None)
@given(_records())
def test_flash_image_lays_out_exactly_the_records(records: list[tuple[int, bytes]]) -> None:
    # Records crossing a 64 KiB boundary are left out of the oracle: HEX would wrap them.
    records = [(a, d) for a, d in records if (a & 0xFFFF) + len(d) <= 0x10000]
    if not records:
        return
    memory: dict[int, int] = {}
    overlap = False
    for address, data in records:
        for k, b in enumerate(data):
            overlap |= address + k in memory
            memory[address + k] = b
    try:
        image = inplace.flash_image(_text(records))
    except ValueError as exc:
        event(str(exc).split(" at ")[0].split(" of ")[0])
        assert overlap or "programs no data" in str(exc) and not memory or "spans more than" in str(exc)
        return
    assert not overlap and memory
    event("records left out" if image.left_out else "all in the slot")
    addresses = sorted(memory)
    assert image.layer == "ihex" and image.base == addresses[0]
    inside = [a for a in addresses if a < image.base + len(image.data)]
    expected = bytearray([ERASED]) * len(image.data)
    for a in inside:
        expected[a - image.base] = memory[a]
    assert image.data == expected
    left = {r.address + k: b for r in image.left_out for k, b in enumerate(r.data)}
    assert left == {a: memory[a] for a in addresses if a not in set(inside)}
    gaps = [b - a for a, b in zip(inside, inside[1:])]
    assert all(g <= GAP_MAX for g in gaps)
    if left:
        assert min(left) - (inside[-1] + 1) >= GAP_MAX


def test_in_place_package_describes_the_flash_contents() -> None:
    old, new = _pair(5)
    key = signing.generate()
    made = package.pack(to_hex(old, base=0), to_hex(new, base=0), key, make="Acme", model="M", from_version="1",
                        to_version="2", in_place=True)
    m = package.verify(made, signing.TrustStore.of([key.public_key()])).manifest
    # What the device checks its slot against before and after: the flash contents, not the text.
    assert (m.source_sha256, m.target_sha256) == (hashlib.sha256(old).digest(), hashlib.sha256(new).digest())
    assert (m.source_size, m.target_size) == (len(old), len(new))
