"""In-place patches: round trips on emulated flash, refusals before the first write, power cuts."""

from __future__ import annotations

import dataclasses
import random
import struct
from typing import Any

import pytest
from support import find_pairs, firmware_like, mutate

import fotadelta
from fotadelta import inplace
from fotadelta.errors import PatchError
from fotadelta.flash import Flash
from fotadelta.delta.format import CODE_ARCHS, Grouping
from fotadelta.inplace.format import (
    FIXED_SIZE,
    RELOCATED_ARCHS,
    InplaceHeader,
    PayloadCodec,
    digest,
)

CODECS = ("lz", "lzma", "stored")
SMALL_PAIRS = [p for p in find_pairs() if p.new.stat().st_size <= 400_000]


def _pair(seed: int, size: int, edits: int) -> tuple[bytes, bytes]:
    rng = random.Random(seed)
    old = firmware_like(rng, size)
    return old, mutate(rng, old, edits)


def _flash_with(patch: bytes, old: bytes) -> tuple[Flash, inplace.Layout]:
    return inplace.emulated_device(patch, old, write_size=8)


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_generated(codec: str) -> None:
    old, new = _pair(1, 60_000, 40)
    patch = inplace.diff(old, new, block_size=4096, codec=codec)
    assert inplace.apply(old, patch) == new


@pytest.mark.parametrize("pair", SMALL_PAIRS, ids=lambda p: p.name)
def test_round_trip_corpus(pair) -> None:  # type: ignore[no-untyped-def]
    old, new = pair.old.read_bytes(), pair.new.read_bytes()
    patch = inplace.diff(old, new, block_size=4096)
    assert inplace.apply(old, patch) == new


@pytest.mark.parametrize("grow", [True, False], ids=["grows", "shrinks"])
def test_growing_and_shrinking_images(grow: bool) -> None:
    rng = random.Random(2)
    old = firmware_like(rng, 40_000)
    new = old[:5000] + firmware_like(rng, 9000) + old[5000:] if grow else old[:5000] + old[17000:]
    patch = inplace.diff(old, new, block_size=1024)
    assert inplace.apply(old, patch) == new


def test_shifted_image_needs_cycles_broken() -> None:
    # Content moving both ways makes blocks read each other: the planner must still order them.
    rng = random.Random(3)
    a, b, c = (firmware_like(rng, 8192) for _ in range(3))
    old, new = a + b + c, c + a + b
    for park in (0, 2):
        patch = inplace.diff(old, new, block_size=1024, park=park)
        assert inplace.apply(old, patch) == new


def test_wrong_source_refused_before_any_write() -> None:
    old, new = _pair(4, 30_000, 20)
    patch = inplace.diff(old, new, block_size=1024)
    wrong = bytearray(old)
    wrong[1234] ^= 0x40
    flash, layout = _flash_with(patch, bytes(wrong))
    with pytest.raises(PatchError, match="source image"):
        inplace.apply_on_flash(flash, layout, patch)
    assert flash.operations == 0
    assert flash.read(0, len(wrong)) == bytes(wrong)


class _ImageHashedWrong(Flash):
    """A flash whose whole-image reads (the host's digest engine reads an image at once) return the wrong bytes
    from the first one on (limit: None) or from the limit-th on."""

    def __init__(self, flash: Flash, image: int, limit: int | None = None) -> None:
        super().__init__(flash.geometry)
        self.program(0, flash.read(0, flash.geometry.size))
        self.image, self.limit, self.whole_reads = image, limit, 0

    def read(self, addr: int, length: int) -> bytes:
        data = super().read(addr, length)
        if length != self.image:
            return data
        self.whole_reads += 1
        return data if self.limit is not None and self.whole_reads < self.limit else bytes(length)


def test_the_host_digest_engine_checks_the_source_and_the_result() -> None:
    """On the host the patcher's image digests come from the flash binding's engine (hashlib): what it reads is what
    is compared, before any write for the source and at the end for the result."""
    old, new = _pair(5, 30_000, 20)
    patch = inplace.diff(old, new, block_size=1024)
    flash, layout = _flash_with(patch, old)
    wrong_source = _ImageHashedWrong(flash, len(old))
    with pytest.raises(PatchError, match="source image"):
        inplace.apply_on_flash(wrong_source, layout, patch)
    assert wrong_source.operations == 0 and wrong_source.whole_reads == 1
    wrong_result = _ImageHashedWrong(flash, len(new), limit=1 if len(new) != len(old) else 2)
    with pytest.raises(PatchError, match="target digest"):
        inplace.apply_on_flash(wrong_result, layout, patch)
    assert Flash.read(wrong_result, layout.slot, len(new)) == new  # (the update ran: only its last check failed)
    inplace.apply_on_flash(flash, layout, patch)
    assert flash.read(layout.slot, len(new)) == new


@pytest.mark.parametrize("where", ["header", "payload"])
def test_corrupt_patch_refused_before_any_write(where: str) -> None:
    old, new = _pair(5, 30_000, 20)
    patch = bytearray(inplace.diff(old, new, block_size=1024))
    start = InplaceHeader.parse(bytes(patch)).header_len
    at = 20 if where == "header" else start + len(patch[start:]) // 2  # (20: in the new image's digest)
    patch[at] ^= 0x01
    flash, layout = _flash_with(bytes(patch), old)
    with pytest.raises(PatchError):
        inplace.apply_on_flash(flash, layout, bytes(patch))
    assert flash.operations == 0


def test_every_single_byte_change_refused_before_any_write() -> None:
    old, new = _pair(6, 6000, 6)
    patch = inplace.diff(old, new, block_size=512, codec="lz")
    for at in range(len(patch)):
        damaged = bytearray(patch)
        damaged[at] ^= 0xA5
        try:
            flash, layout = _flash_with(bytes(damaged), old)
        except (PatchError, ValueError):
            continue  # the header no longer describes a usable flash layout
        with pytest.raises(PatchError):
            inplace.apply_on_flash(flash, layout, bytes(damaged))
        assert flash.operations == 0, f"byte {at} changed, yet flash was written"


def test_ram_budget_refused_at_diff_time() -> None:
    old, new = _pair(7, 20_000, 10)
    with pytest.raises(ValueError, match="work RAM"):
        inplace.diff(old, new, block_size=4096, ram=4096)
    patch = inplace.diff(old, new, block_size=4096, ram=4096 + 4096)
    assert InplaceHeader.parse(patch).work_need <= 8192


def test_device_refuses_too_little_work_memory() -> None:
    from fotadelta import _core
    old, new = _pair(8, 20_000, 10)
    patch = inplace.diff(old, new, block_size=1024)
    h = InplaceHeader.parse(patch)
    flash, layout = _flash_with(patch, old)
    rc = _core.inplace_apply(flash, layout.slot, layout.slot_size, layout.scratch, layout.park,
                             layout.park_blocks, layout.journal, patch, None, h.work_need - 1, True)
    assert _core.inplace_strerror(rc) == "not enough work memory for this patch"
    assert flash.operations == 0


def test_info_reports_penalty_against_plain_patch_on_request() -> None:
    old, new = _pair(9, 50_000, 30)
    patch = inplace.diff(old, new, block_size=4096)
    info = inplace.info(patch)
    assert info.kind == "in-place" and info.patch_bytes == len(patch)
    assert info.plain_patch_bytes is None and info.penalty is None
    compared = inplace.info(patch, old, new)
    assert compared.plain_patch_bytes == len(fotadelta.diff(old, new))  # the default plain patch
    assert compared.penalty == pytest.approx(len(patch) / compared.plain_patch_bytes)
    with pytest.raises(PatchError, match="not the ones"):
        inplace.info(patch, new, old)


@pytest.mark.parametrize("codec", ["lz", "lzma"])
def test_power_cut_at_every_operation(codec: str) -> None:
    old, new = _pair(10, 12_000, 12)
    patch = inplace.diff(old, new, block_size=1024, codec=codec)
    report = inplace.powercut(old, patch, expected=new)
    assert report.failed == 0
    assert report.recovered == report.operations
    assert report.cuts > report.operations  # the recoveries were cut as well


def test_power_cut_with_park_steps_and_journal_wrap() -> None:
    # Small blocks: many journal records, so the journal moves between its two blocks.
    rng = random.Random(11)
    a, b, c = (firmware_like(rng, 2048) for _ in range(3))
    old, new = a + b + c, mutate(rng, c + a + b, 4)
    patch = inplace.diff(old, new, block_size=256, park=2)
    assert inplace.apply(old, patch) == new
    report = inplace.powercut(old, patch, expected=new, every=3)
    assert report.failed == 0 and report.recovered > 0


def test_update_already_complete_is_not_redone() -> None:
    old, new = _pair(12, 10_000, 8)
    patch = inplace.diff(old, new, block_size=1024)
    flash, layout = _flash_with(patch, old)
    inplace.apply_on_flash(flash, layout, patch)
    done_ops = flash.operations
    inplace.apply_on_flash(flash, layout, patch)
    assert flash.operations == done_ops
    assert flash.read(0, len(new)) == new


def test_power_cut_at_journal_switch_after_staging() -> None:
    # Small blocks make the journal move to its other block every few steps, and small edits
    # make every step a staged one: a cut right after the move must not lose the staged state.
    old, new = _pair(13, 9000, 30)
    patch = inplace.diff(old, new, block_size=256, park=0)
    report = inplace.powercut(old, patch, expected=new, write_size=4)
    assert report.failed == 0 and report.recovered == report.operations


# -- code relocation (csrc/fd_ip_code.c) ----------------------------------------------------------

def _thumb_calls(rng: random.Random, functions: int, grown: int, growth: int) -> tuple[bytes, bytes]:
    """Thumb-2 code as a compiler lays it out (functions of filler halfwords calling each other
    with BL) and the same code with one function longer by growth bytes, every call encoded for
    where its target is then: what relocated copies reproduce given the move."""
    lengths = [rng.randrange(40, 400) * 2 for _ in range(functions)]
    calls = [[rng.randrange(functions) for _ in range(length // 16)] for length in lengths]
    body = bytearray()
    for length in lengths:
        for _ in range(length // 2):
            hw = rng.randrange(1 << 16)
            if (hw >> 11) == 0x1E:  # not the first halfword of a BL
                hw ^= 0x8000
            body += hw.to_bytes(2, "little")

    def lay_out(extra: int) -> bytes:
        starts, at = [], 0
        for k, length in enumerate(lengths):
            starts.append(at)
            at += length + (extra if k == grown else 0)
        image, src = bytearray(), 0
        for k, length in enumerate(lengths):
            image += body[src:src + length] + (body[src:src + extra] if k == grown else b"")
            for c, target in enumerate(calls[k]):
                pc = starts[k] + 16 * c
                v = ((starts[target] - (pc + 4)) >> 1) & 0x3FFFFF
                image[pc:pc + 4] = bytes((v >> 11 & 0xFF, 0xF0 | v >> 19, v & 0xFF, 0xF8 | (v >> 8 & 7)))
            src += length
        return bytes(image)

    return lay_out(0), lay_out(growth)


def test_moved_code_is_relocated_on_the_device() -> None:
    """A function that grows moves everything after it: the patch relocates the copies of the
    moved code (Thumb-2 found by trial in a raw image), is far smaller than one without
    relocation, and the device patcher rebuilds the new image exactly, across power cuts too."""
    old, new = _thumb_calls(random.Random(21), 60, 25, 132)
    patch = inplace.diff(old, new, block_size=1024)
    plain_copies = inplace.diff(old, new, block_size=1024, code=False)
    info = inplace.info(patch)
    assert info.code == "thumb2" and info.code_moves >= 1
    assert len(patch) * 2 < len(plain_copies)
    assert inplace.apply(old, patch) == new
    report = inplace.powercut(old, patch, expected=new, every=7)
    assert report.failed == 0 and report.recovered == len(range(0, report.operations, 7))


@pytest.mark.parametrize("arch", sorted(RELOCATED_ARCHS), ids=lambda arch: CODE_ARCHS[arch])
def test_moved_code_of_each_architecture_is_relocated(arch: int) -> None:
    """Programs of the architecture in a raw image, each with one function grown: the patch
    relocates their copies (the architecture found by trial), is far smaller than one without
    relocation, and the device rebuilds the new image exactly."""
    from test_code import programs

    old, new = programs(arch, 1 << 17, False), programs(arch, 1 << 17, True)
    patch = inplace.diff(old, new, block_size=1024)
    assert inplace.info(patch).code == CODE_ARCHS[arch]
    assert len(patch) < 0.7 * len(inplace.diff(old, new, block_size=1024, code=False))
    assert inplace.apply(old, patch) == new


def test_relocation_is_skipped_where_it_does_not_pay() -> None:
    old, new = _pair(22, 40_000, 20)  # word edits, no moved code
    patch = inplace.diff(old, new, block_size=4096)
    assert len(patch) <= len(inplace.diff(old, new, block_size=4096, code=False))
    assert inplace.apply(old, patch) == new


def test_inserted_data_repeated_far_apart_is_copied_from_flash() -> None:
    """Data new to the image, inserted twice 12 KiB apart: the block written second copies it from
    the first one's new bytes in flash (beyond the payload decoder's window), and the device
    rebuilds the image exactly, across power cuts too."""
    rng = random.Random(24)
    old = firmware_like(rng, 24_000)
    blob = rng.randbytes(1500)
    new = old[:3000] + blob + old[3000:15000] + blob + old[15000:]
    patch = inplace.diff(old, new, block_size=1024)
    assert len(patch) < len(blob) * 3 // 2  # (2,801 bytes with the blob twice as literals)
    assert inplace.apply(old, patch) == new
    report = inplace.powercut(old, patch, expected=new, every=5)
    assert report.failed == 0 and report.recovered == len(range(0, report.operations, 5))


def test_data_repeated_with_changes_is_copied_from_flash_and_corrected() -> None:
    """Data new to the image, inserted twice 20 KiB apart, the second time with one byte in every
    eight changed (no run of eight equal bytes after the first 16, so no exact copy): the block
    written later copies it from the other's new bytes anyway and its changed words correct it,
    and the device rebuilds the image exactly."""
    rng = random.Random(25)
    old = firmware_like(rng, 40_000)
    blob = rng.randbytes(1500)
    changed = bytes(b ^ 0x5A if k >= 16 and k % 8 == 7 else b for k, b in enumerate(blob))
    new = old[:4196] + blob + old[4196:24000] + changed + old[24000:]  # each within one block
    index = inplace._core.OldIndex(old, 1)
    found = [inplace._core.inplace_payload(index, new, 4096, 2, copy_min=8, approx=approx)[2]["found"]
             for approx in (False, True)]
    assert found[0] < 100 and found[1] >= len(blob) - 16
    patch = inplace.diff(old, new, block_size=4096)
    assert len(patch) < len(blob) * 3 // 2  # (1,854 bytes; the blob is incompressible)
    assert inplace.apply(old, patch) == new


def _grouped_as(monkeypatch: pytest.MonkeyPatch, old: bytes, new: bytes, grouping: Grouping = Grouping.WORDS,
                block_size: int = 4096, codec: str = "lz") -> bytes:
    """The in-place patch with every trial's differences grouped as grouping says (by word, the
    bytes of each, by default)."""
    payload = inplace._core.inplace_payload
    with monkeypatch.context() as m:
        m.setattr(inplace._core, "inplace_payload", lambda *a, **k: payload(*a, **{**k, "grouping": grouping}))
        return inplace.diff(old, new, block_size=block_size, codec=codec)


def test_one_byte_changes_take_byte_differences_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """One byte changed here and there (offsets into a section that grew, x86-64 displacements):
    the differences are grouped by byte, the patch is far smaller than by word, and the device
    rebuilds the image with each codec, across power cuts too."""
    from test_grouping import _debug_like

    old, new = _debug_like(random.Random(6), 6000)
    patch = inplace.diff(old, new, block_size=4096)
    assert InplaceHeader.parse(patch).grouping == Grouping.BYTES and inplace.info(patch).differences == "bytes"
    by_word = _grouped_as(monkeypatch, old, new)
    assert InplaceHeader.parse(by_word).grouping == Grouping.WORDS and len(patch) < 0.8 * len(by_word)
    assert inplace.apply(old, patch) == new
    for codec in ("lzma", "stored"):
        other = inplace.diff(old, new, block_size=4096, codec=codec)
        assert InplaceHeader.parse(other).grouping == Grouping.BYTES and inplace.apply(old, other) == new
    report = inplace.powercut(old, patch, expected=new, every=13)
    assert report.failed == 0 and report.recovered == len(range(0, report.operations, 13))


def _moved_words(seed: int, size: int, by: int) -> tuple[bytes, bytes]:
    """Firmware-like bytes with an aligned 4-byte value every 64 bytes by higher (addresses)."""
    old = bytearray(firmware_like(random.Random(seed), size))
    new = bytearray(old)
    for at in range(0, len(new) - 4, 64):
        new[at:at + 4] = ((int.from_bytes(old[at:at + 4], "little") + by) & 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(old), bytes(new)


def test_moved_addresses_take_sums_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """Aligned 4-byte values that moved by a constant (addresses): the differences are words as
    sums, smaller than the words' bytes, and the device rebuilds the image with each codec,
    across power cuts too."""
    old, new = _moved_words(7, 60_000, 0x1234)
    patch = inplace.diff(old, new, block_size=4096)
    assert InplaceHeader.parse(patch).grouping == Grouping.SUMS and inplace.info(patch).differences == "sums"
    assert len(patch) < 0.7 * len(_grouped_as(monkeypatch, old, new))
    assert inplace.apply(old, patch) == new
    other = inplace.diff(old, new, block_size=4096, codec="lzma")
    assert InplaceHeader.parse(other).grouping == Grouping.SUMS and inplace.apply(old, other) == new
    report = inplace.powercut(old, patch, expected=new, every=11)
    assert report.failed == 0 and report.recovered == len(range(0, report.operations, 11))


def test_sums_carry_within_words_only() -> None:
    """A payload of sums, stored, on images whose last word is partial and whose changes carry
    out of nearly every byte: the device's carries stop at each word's end and the block's, and
    it rebuilds the image across power cuts."""
    old, new = _moved_words(9, 10_001, 0xFFFFFF01)
    index = inplace._core.OldIndex(old, 1)
    for block_size in (1024, 4096):
        lanes, _turns, stats = inplace._core.inplace_payload(index, new, block_size, 2, grouping=Grouping.SUMS)
        by_bytes = inplace._core.inplace_payload(index, new, block_size, 2)[0]
        assert lanes[0] == by_bytes[0] and lanes[2] != by_bytes[2]  # the same changed words, other digits
        payload = b"".join(lanes)
        header = InplaceHeader(PayloadCodec.STORED, block_size, stats["park_used"], len(old), len(new),
                               (len(lanes[0]), len(lanes[1]), len(lanes[2])), len(payload), block_size, 0, 0,
                               digest(old), digest(new), b"", Grouping.SUMS)
        patch = header.seal(payload)
        assert inplace.apply(old, patch) == new
        assert inplace.powercut(old, patch, expected=new, every=5).failed == 0


@pytest.mark.parametrize("grouping", [Grouping.BYTES, Grouping.SUMS, Grouping.SPANS])
def test_the_grouping_flags_are_covered_by_the_digest_and_not_interchangeable(grouping: Grouping) -> None:
    """Cleared, a grouping's flags break the patch digest: refused before any write. Resealed
    with another grouping (a hostile builder), the same lanes do not rebuild the image: refused,
    never a wrong image. A grouping past the last (spans of 4 bytes) is malformed."""
    from test_grouping import _debug_like, _offsets_moved

    old, new = (_debug_like(random.Random(8), 1500) if grouping == Grouping.BYTES
                else _offsets_moved(random.Random(8), 5000) if grouping == Grouping.SPANS
                else _moved_words(8, 20_000, 0x1C4))
    # (Stored, the bytes of moved words or offsets cost no more than their sums: those go through LZMA.)
    patch = inplace.diff(old, new, block_size=1024, codec="stored" if grouping == Grouping.BYTES else "lzma")
    h = InplaceHeader.parse(patch)
    assert h.grouping == grouping
    cleared = patch[:5] + bytes([patch[5] & 0x0F]) + patch[6:]
    flash, layout = _flash_with(cleared, old)
    with pytest.raises(PatchError, match="corrupt"):
        inplace.apply_on_flash(flash, layout, cleared)
    assert flash.operations == 0
    others = [(g, 0) for g in Grouping if g != Grouping.SPANS] + [(Grouping.SPANS, n) for n in (2, 3, 4)]
    for other, span in set(others) - {(h.grouping, h.span)}:
        with pytest.raises(PatchError):
            inplace.apply(old, dataclasses.replace(h, grouping=other, span=span).seal(patch[h.header_len:]))
    for flags in (0x60, 0xF0):  # (the device's refusal: tests/c/ip_test.c)
        with pytest.raises(PatchError, match="malformed"):
            InplaceHeader.parse(patch[:5] + bytes([patch[5] & 0x0F | flags]) + patch[6:])


def test_diff_makes_no_plain_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-place diff does not pay for a plain diff it does not need: only info() with the
    images makes one."""
    def refuse(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("a plain patch was made")
    monkeypatch.setattr(inplace, "_diff", refuse)
    old, new = _pair(23, 30_000, 20)
    patch = inplace.diff(old, new, block_size=1024)
    assert inplace.info(patch).plain_patch_bytes is None
    with pytest.raises(AssertionError, match="plain patch was made"):
        inplace.info(patch, old, new)


@pytest.mark.parametrize("block_size", [0, 100, 1000, 3000, 1 << 18])
def test_unusable_block_sizes_are_one_clear_error(block_size: int) -> None:
    old, new = _pair(24, 5000, 4)
    with pytest.raises(ValueError, match="power of two from 256 to 131072"):
        inplace.diff(old, new, block_size=block_size)


def test_headers_of_other_versions_and_unknown_architectures_are_refused() -> None:
    old, new = _pair(25, 8000, 6)
    patch = bytearray(inplace.diff(old, new, block_size=1024))
    for version in (2, 3):
        with pytest.raises(PatchError, match=f"version {version}"):
            InplaceHeader.parse(bytes(patch[:4]) + bytes((version,)) + bytes(patch[5:]))
    unknown = bytes(patch[:8]) + bytes((max(CODE_ARCHS) + 1,)) + bytes(patch[9:])  # (FD_CODE_ARCH_END)
    with pytest.raises(PatchError, match="malformed"):
        InplaceHeader.parse(unknown)
    unknown_grouping = bytes(patch[:5]) + bytes([patch[5] & 0x0F | 0x60]) + bytes(patch[6:])
    with pytest.raises(PatchError, match="malformed"):
        InplaceHeader.parse(unknown_grouping)


def test_the_header_varints_are_bounded_and_the_patch_must_hold_them() -> None:
    """The sizes after the fixed fields are varints of at most five bytes (32 bits): a longer one is
    malformed, a patch that ends within them truncated, both before the device reads any payload."""
    old, new = _pair(26, 8000, 6)
    patch = inplace.diff(old, new, block_size=1024)
    h = InplaceHeader.parse(patch)
    assert h.header_len == FIXED_SIZE + 8 + 2 + 2 + 1  # (old and new size take two bytes each)
    for cut in (FIXED_SIZE, FIXED_SIZE + 3, h.header_len - 1):
        with pytest.raises(PatchError, match="truncated"):
            InplaceHeader.parse(patch[:cut])
    for varint in (b"\x80\x80\x80\x80\x10", b"\x80\x80\x80\x80\x80\x00"):  # 2**32, and six bytes
        with pytest.raises(PatchError, match="malformed"):
            InplaceHeader.parse(patch[:FIXED_SIZE] + varint + patch[FIXED_SIZE + 2:])
    flash, layout = _flash_with(patch, old)  # (the device's own refusal: tests/c/ip_test.c)
    with pytest.raises(PatchError, match="truncated"):
        inplace.apply_on_flash(flash, layout, patch[:h.header_len - 1])
    assert flash.operations == 0


def _shuffled_blocks(seed: int, blocks: int, block_size: int) -> tuple[bytes, bytes]:
    """An image whose blocks are permuted, each new block made of halves of two old ones:
    write-order cycles everywhere, more than a few park blocks can break."""
    rng = random.Random(seed)
    half = block_size // 2
    pieces = [firmware_like(rng, half) for _ in range(2 * blocks)]
    order = list(range(2 * blocks))
    rng.shuffle(order)
    return b"".join(pieces), mutate(rng, b"".join(pieces[k] for k in order), 6)


def test_park_shortage_plans_both_ways_of_giving_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the park blocks run out, diff also plans giving up whole blocks' copies and keeps the
    smaller patch, which the device applies, across power cuts too; with park blocks enough it
    plans one way only."""
    old, new = _shuffled_blocks(31, 16, 1024)
    policies: list[bool] = []
    payload = inplace._core.inplace_payload

    def recording(*args: Any, **kwargs: Any) -> Any:
        policies.append(kwargs["give_up_blocks"])
        return payload(*args, **kwargs)

    monkeypatch.setattr(inplace._core, "inplace_payload", recording)
    patch = inplace.diff(old, new, block_size=1024, park=1, code=False)
    assert True in policies and False in policies
    assert inplace.apply(old, patch) == new
    report = inplace.powercut(old, patch, expected=new, every=5)
    assert report.failed == 0 and report.recovered > 0

    policies.clear()
    roomy = inplace.diff(old, new, block_size=1024, park=inplace.MAX_PARK, code=False)
    assert inplace.info(roomy).park_slots < inplace.MAX_PARK  # never ran out
    assert policies and True not in policies
    assert inplace.apply(old, roomy) == new


@pytest.mark.parametrize("seed", range(6))
def test_order_search_gives_up_no_more_copies(seed: int) -> None:
    """Searching the write order when the park blocks run out never gives up more copied bytes
    than the heuristic's order (it keeps that order unless it finds a better one), whichever way
    copies are given up and however few park blocks there are; and on these tangles it finds
    better ones. (tests/c/ip_test.c applies searched plans with the device code.)"""
    old, new = _shuffled_blocks(40 + seed, 12 + 2 * seed, 1024)
    index = inplace._core.OldIndex(old, 1)
    gained = 0
    for park in (1, 2, 4):
        for give_up_blocks in (False, True):
            plain, searched = (inplace._core.inplace_payload(index, new, 1024, park, give_up_blocks=give_up_blocks,
                                                              search_order=search)[2] for search in (False, True))
            assert searched["given_up"] <= plain["given_up"]
            assert searched["park_used"] <= park
            gained += plain["given_up"] - searched["given_up"]
    assert gained > 0


def test_memo_changes_no_payload() -> None:
    """Payloads planned with a memo shared between trials (records, write orders and hash tables
    worked out once) are those planned without; a memo of other images is refused."""
    old, new = _shuffled_blocks(52, 16, 1024)
    index = inplace._core.OldIndex(old, 1)
    memo = inplace._core.InplaceMemo()
    groupings = [(g, 0) for g in Grouping if g != Grouping.SPANS] + [(Grouping.SPANS, n) for n in (2, 3, 4)]
    trials = [dict(min_gain=gain, copy_min=copy_min, approx=approx, give_up_blocks=blocks, search_order=search,
                   grouping=grouping, span=span)
              for gain in (4, 8) for copy_min, approx in ((0, False), (8, False), (8, True))
              for blocks in (False, True) for search in (False, True) for grouping, span in groupings]
    for kwargs in trials + trials[::-1]:
        plain = inplace._core.inplace_payload(index, new, 1024, 2, **kwargs)
        assert inplace._core.inplace_payload(index, new, 1024, 2, memo=memo, **kwargs) == plain
    with pytest.raises(ValueError):
        inplace._core.inplace_payload(index, new[::-1], 1024, 2, memo=memo)


def test_order_search_patch_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    """diff searches the best plan's write order when its park blocks ran out, both ways of
    giving up; the patch it keeps applies, across power cuts too."""
    old, new = _shuffled_blocks(47, 20, 1024)
    searched: list[bool] = []
    payload = inplace._core.inplace_payload

    def recording(*args: Any, **kwargs: Any) -> Any:
        if kwargs["search_order"] and not kwargs["approx"] and kwargs["grouping"] == Grouping.WORDS:  # (not the last)
            searched.append(kwargs["give_up_blocks"])
        return payload(*args, **kwargs)

    monkeypatch.setattr(inplace._core, "inplace_payload", recording)
    patch = inplace.diff(old, new, block_size=1024, park=2, code=False)
    assert sorted(searched) == [False, True]
    assert inplace.apply(old, patch) == new
    report = inplace.powercut(old, patch, expected=new, every=7)
    assert report.failed == 0 and report.recovered > 0


@pytest.mark.parametrize(("block_size", "ram"), [(256, 256 + 4096), (4096, 8192), (4096, 16384), (1024, 9000)])
def test_window_choices_fit_the_ram_and_waste_none(block_size: int, ram: int) -> None:
    choices = inplace.lz_window_choices(block_size, ram)
    assert inplace.work_plan(block_size, PayloadCodec.LZ, ram)[1] in choices
    for logs in choices:
        assert block_size + inplace._core.lz_work_size(*logs) <= ram
        for k in range(3):
            grown = tuple(w + (j == k) for j, w in enumerate(logs))
            assert logs[k] == inplace.LZ_WINDOWS[-1] or block_size + inplace._core.lz_work_size(*grown) > ram
    old, new = _pair(32, 30_000, 30)
    patch = inplace.diff(old, new, block_size=block_size, ram=ram)
    header = InplaceHeader.parse(patch)
    assert header.codec != PayloadCodec.LZ or header.work_need <= ram
    assert inplace.apply(old, patch) == new


def test_moves_of_short_spans_are_left_out() -> None:
    table = b"".join(struct.pack("<II", start, delta) for start, delta in
                     [(100, 16), (4000, 0), (4016, 16), (9000, 0), (9500, 16)])
    kept = inplace._without_short_moves(table, 64, 10_000)
    assert [s for s, _ in struct.iter_unpack("<II", kept)] == [100, 4016, 9000, 9500]
    assert [s for s, _ in struct.iter_unpack("<II", inplace._without_short_moves(table, 1024, 10_000))] == [100, 4016]
    assert inplace._without_short_moves(table, 0, 10_000) == table
