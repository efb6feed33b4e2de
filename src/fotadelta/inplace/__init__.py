"""In-place patches for single-slot devices: make them, apply them on flash, prove them power-safe."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple

from fotadelta import _core
from fotadelta.delta import (
    FIRST_GAIN,
    GAINS_SMALL,
    Buffer,
    Progress,
    _SPAN,
    _best_plan,
    _code_plans,
    _diff,
    _scaled,
    default_threads,
)
from fotadelta.delta import code as code_transform
from fotadelta.delta.codec import Codec, decompress, lzma_best
from fotadelta.delta.format import CODE_ARCHS, Grouping
from fotadelta.errors import PatchError
from fotadelta.flash import Flash, Geometry, PowerLoss
from fotadelta.inplace.flashimage import flash_image, flash_images
from fotadelta.inplace.format import (
    FORMAT_VERSION,
    IMAGE_MAX,
    MAX_BLOCK,
    MAX_MOVES,
    MIN_BLOCK,
    MOVE_SIZE,
    RELOCATED_ARCHS,
    InplaceHeader,
    PayloadCodec,
    digest,
    is_inplace,
    slot_blocks,
)
from fotadelta.inplace.format import MAX_PARK as MAX_PARK  # also inplace.MAX_PARK

__all__ = ["FORMAT_VERSION", "InplaceInfo", "Layout", "PowercutReport", "apply", "apply_on_flash", "diff",
           "emulated_device",
           "flash_image", "flash_images", "info", "is_inplace", "powercut", "update_state", "work_plan"]

DEFAULT_BLOCK = 4096


def default_park(image_size: int, block_size: int) -> int:
    """Park blocks the planner may use (spares for blocks built early to break write-order
    cycles): about 6% of the slot, 4 to 32; the patch then asks the device for only as many as
    it uses at once. Fewer turn more copies into literals where code moved both ways: on the
    micro:bit sample 2 park blocks left 26 KB of literals, 8 left 4 KB."""
    return min(MAX_PARK, max(4, -(-image_size // block_size) // 16))


# Runs of literals this long or longer may be looked for in the slot as the device reads it (old
# bytes not yet overwritten, new bytes already written): a copy from there costs a record, some
# 4 bytes of control lane, and the literals lane's small decoder window misses repeats far apart.
# 0 looks for none; 8 is the shortest the search finds (FIND_KEY in csrc/fd_ipdiff.c). Which does
# best depends on the pair, so both are tried; a third pass from 12 bytes changed one pair of both
# corpora, by 0.3%, for half as much diff time again.
LITERAL_COPY_MINS = (0, 8)
# Last, the best plan is tried again with those copies going on past bytes that differ (changed
# words correct them) while the bytes that match outweigh them, from APPROX_COPY_MIN equal
# bytes: data repeated with small changes far apart (AMD GC 11.0 MEC: 74,780 -> 68,161 bytes).
# Not in place of exact copies, nor before the order search: either made some patches larger.
APPROX_COPY_MIN = 8

# When the park blocks run out on the best plan, its write order is searched (a bounded while per
# plan, csrc/fd_ipdiff.c) giving up single copies (False) and whole blocks (True): which loses
# fewer bytes depends on the images. Searching every plan of the grid cost far more time for
# little more (micro:bit MicroPython 1.2.2 -> 1.2.3 of the broad corpus, docs/inplace.md).
ORDER_SEARCHES = (False, True)

# Spans of moves table entries left out in turn when that makes the patch smaller (on the
# AArch64 shell of ../shared/corpus short entries between longer ones cost more than the
# references they correct: 1,024 took 71 bytes off a 704-byte patch).
MOVE_SPANS_DROPPED = (64, 256, 1024, 4096)

# The groupings of the differences the best plan is tried with besides by word (_Trial.grouping,
# span): by byte, by word as sums, and as the sums of spans of the length the plain diff makes.
_GROUPINGS = ((Grouping.BYTES, 0), (Grouping.SUMS, 0), (Grouping.SPANS, _SPAN))

# MCU decoder window sizes (log2) a lane may use.
LZ_WINDOWS = (8, 9, 10, 11, 12)
Lanes = tuple[bytes, bytes, bytes]
# Work RAM beyond one erase block that a patch may ask of the device unless told otherwise.
DEFAULT_DECODER_RAM = 4096


def diff(old: Buffer, new: Buffer, *, block_size: int = DEFAULT_BLOCK, ram: int | None = None,
         codec: str = "lz", park: int | None = None, progress: Progress | None = None,
         gains: Sequence[int] | None = None, threads: int | None = None, code: bool = True) -> bytes:
    """Return an in-place patch that rewrites old into new inside the same flash slot.

    block_size is the device's erase block; ram caps the device's work memory (one block plus
    the payload decoder; by default one block plus 4 KiB), and a patch that would need more is
    refused here. Intel HEX and UF2 images are diffed as the flash contents they program
    (flashimage.flash_images: what the slot holds), and the patch makes those. codec is "lz"
    (the MCU codec), "lzma" (hosts and emulators only) or "stored". With code (the default)
    copies of machine code may be relocated on the device (csrc/fd_ip_code.h) when that makes
    the patch smaller. threads (default: one per core) share the work; the patch is the same
    whatever their number."""
    if block_size & (block_size - 1) or not MIN_BLOCK <= block_size <= MAX_BLOCK:
        # (The header stores its log2: anything else would be described wrongly.)
        raise ValueError(f"block size {block_size} is not a power of two from {MIN_BLOCK} to {MAX_BLOCK}")
    payload_codec = {"lz": PayloadCodec.LZ, "lzma": PayloadCodec.LZMA, "stored": PayloadCodec.STORED}.get(codec)
    if payload_codec is None:
        raise ValueError(f"unknown in-place codec {codec!r} (choose lz, lzma or stored)")
    old, new = (image.data for image in flash_images(old, new))
    if max(len(old), len(new)) > IMAGE_MAX:
        raise ValueError("in-place images must be smaller than 2 GiB")
    ram = block_size + DEFAULT_DECODER_RAM if ram is None else ram
    work_need, window_logs = work_plan(block_size, payload_codec, ram)
    if park is None:
        park = default_park(max(len(old), len(new)), block_size)
    if not 0 <= park <= MAX_PARK:
        raise ValueError(f"park must be 0 to {MAX_PARK} blocks")
    if gains is None:
        # Unlike plain diffs, in-place diffs have no time target: every threshold is tried.
        gains = GAINS_SMALL
    threads = default_threads() if threads is None else threads
    if threads < 1:
        raise ValueError("threads must be at least 1")
    index = _core.OldIndex(old, threads)
    plans: list[_Plan] = [_Plan(index, None, 0, b"")]
    if code:
        relocation = _relocation_plan(old, new, index, threads)
        if relocation is not None:
            plans.append(relocation)
    # Fewer park blocks than allowed change the write order, and with it what the slot holds
    # when literals are looked for there: sometimes a smaller patch (AMD GC 11.0 MEC: 4 of 6, -1.4%).
    # When the park blocks run out, which copies to give up is also the data's to say (_Trial).
    fewer_parks = sorted({park * 3 // 4, park // 2} - {park}, reverse=True)
    trials = (len(plans) * len(gains) * len(LITERAL_COPY_MINS) + len(fewer_parks) + len(ORDER_SEARCHES)
              + len(MOVE_SPANS_DROPPED) + 2 * len(_GROUPINGS) + 1)
    encode_as = payload_codec  # (its type narrowed for the closure)
    best: _Kept | None = None
    # The trials share each plan's records, write orders and the slot's hash tables, which
    # most of them have in common with an earlier one.
    memo = _core.InplaceMemo()

    def attempt(k: int, trial: _Trial, seq: int | None = None) -> None:
        """Plans and encodes the trial (the k-th, seq-th in the order the trials are ranked in
        on ties, k by default), keeping it if smallest; when the park blocks ran out, the same
        giving up whole blocks' copies as well."""
        nonlocal best
        rank = (k if seq is None else seq, trial.give_up_blocks)
        report = None if progress is None else _scaled(progress, k, trials)
        plan = trial.plan
        lanes, turns, stats = _core.inplace_payload(plan.index, new, block_size, trial.park, min_gain=trial.gain,
                                                    progress=report, old=old, match_new=plan.match_new,
                                                    arch=plan.arch, table=plan.table, copy_min=trial.copy_min,
                                                    approx=trial.approx, grouping=trial.grouping, span=trial.span,
                                                    give_up_blocks=trial.give_up_blocks,
                                                    search_order=trial.search_order, memo=memo)
        # Encoding stops once the trial cannot be kept (on a tie the earlier ranked is).
        limit = None if best is None else len(best.trial.plan.table) + len(best.stored) - len(plan.table)
        stored = _encode_payload(lanes, turns, encode_as, window_logs, limit)
        if stored is not None and (best is None or (len(plan.table) + len(stored), rank)
                                   < (len(best.trial.plan.table) + len(best.stored), best.rank)):
            best = _Kept(trial, rank, lanes, turns, stored, stats)
        if stats["starved"] and not trial.give_up_blocks and not trial.search_order:
            attempt(k, replace(trial, give_up_blocks=True), seq)

    grid = [_Trial(plan, gain, copy_min, False, park, False, False, Grouping.WORDS)
            for plan in plans for gain in gains for copy_min in LITERAL_COPY_MINS]
    # The plans likeliest to be kept first, so that the others' encoding stops early: code
    # relocated, literals looked for in the slot (the kept plan and ties are as in grid order).
    first = sorted(range(len(grid)), key=lambda k: (grid[k].plan is not plans[-1], grid[k].copy_min == 0))
    for k, seq in enumerate(first):
        attempt(k, grid[seq], seq)
    assert best is not None
    base = best.trial
    for k, fewer in enumerate(fewer_parks):
        attempt(len(grid) + k, replace(base, park=fewer, give_up_blocks=False))
    assert best is not None
    if best.stats["starved"]:
        # The park blocks ran out even so: the best plan again, its write order searched for one
        # that gives up fewer copies (csrc/fd_ipdiff.c, search_order), either way of giving up.
        base = best.trial
        for k, give_up_blocks in enumerate(ORDER_SEARCHES):
            attempt(len(grid) + len(fewer_parks) + k, replace(base, give_up_blocks=give_up_blocks,
                                                              search_order=True))
    assert best is not None
    # Each entry of the moves table costs 8 bytes whether or not it corrects many references:
    # the best plan again with the entries of short spans left out (their old bytes then move as
    # the entry before says), keeping the smallest.
    base, tried = best.trial, {best.trial.plan.table}
    for k, span in enumerate(MOVE_SPANS_DROPPED):
        table = _without_short_moves(base.plan.table, span, len(old))
        if table not in tried:
            tried.add(table)
            attempt(len(grid) + len(fewer_parks) + len(ORDER_SEARCHES) + k,
                    replace(base, plan=replace(base.plan, table=table)))
    assert best is not None
    # Code whose changes are mostly one byte in a word (x86-64 displacements, tables of bytes)
    # takes fewer bytes with its differences grouped by byte, addresses moved by a constant with
    # a word's differences as sums, and offsets at any alignment as the sums of spans: the best
    # plan again each way (_GROUPINGS). Each grouping then tries copies that differ in places;
    # they compete apart up to the windows below, which may still change which is smaller.
    groupings = [best]
    for k, (grouping, span) in enumerate(_GROUPINGS):
        best = None
        attempt(trials - 2 * len(_GROUPINGS) - 1 + k, replace(groupings[0].trial, grouping=grouping, span=span))
        assert best is not None
        groupings.append(best)
    finalists: list[_Kept] = []
    for k, exact in enumerate(groupings):
        best = exact
        attempt(trials - len(groupings) + k, replace(exact.trial, copy_min=max(exact.trial.copy_min, APPROX_COPY_MIN),
                                                     approx=True))
        assert best is not None
        finalists += [best] if best is exact else [best, exact]

    def finished(kept: _Kept) -> tuple[int, _Kept, PayloadCodec, bytes, tuple[int, int, int]]:
        """The kept plan's size, payload codec, payload and windows once the windows the RAM
        allows are shared out otherwise between the lanes, the smallest kept (the trials were
        encoded with work_plan's); stored as is where coding does not make it smaller, which also
        spares the device the decoder's memory."""
        stored, logs = kept.stored, window_logs
        if payload_codec == PayloadCodec.LZ:
            for other in lz_window_choices(block_size, ram):
                if other != window_logs:
                    again = _encode_payload(kept.lanes, kept.turns, payload_codec, other, len(stored) - 1)
                    if again is not None and len(again) < len(stored):
                        stored, logs = again, other
        stored_as, raw = encode_as, _stored(kept.lanes)
        if len(stored) >= len(raw):
            stored_as, stored = PayloadCodec.STORED, raw
        return len(kept.trial.plan.table) + len(stored), kept, stored_as, stored, logs

    # Other windows may make another finalist (either grouping, exact or approximate copies) the
    # smaller.
    _, kept, stored_as, stored, window_logs = min((finished(k) for k in finalists), key=lambda w: w[0])
    plan, lanes, stats = kept.trial.plan, kept.lanes, kept.stats
    if stored_as == PayloadCodec.STORED:
        work_need = block_size
    elif stored_as == PayloadCodec.LZ:
        work_need = _lz_work(block_size, window_logs)
    moves = len(plan.table) // MOVE_SIZE
    # The device sets aside only the park blocks the plan uses at once.
    header = InplaceHeader(stored_as, block_size, stats["park_used"], len(old), len(new),
                           (len(lanes[0]), len(lanes[1]), len(lanes[2])), len(plan.table) + len(stored), work_need,
                           plan.arch, moves,
                           digest(old), digest(new), b"", kept.trial.grouping, kept.trial.span)
    return header.seal(plan.table + stored)


class _Kept(NamedTuple):
    """The smallest trial so far, its rank on ties (lower kept), its decoded lanes and turns,
    the payload encoded, its stats."""

    trial: _Trial
    rank: tuple[int, bool]
    lanes: Lanes
    turns: list[int]
    stored: bytes
    stats: dict[str, int]


@dataclass(frozen=True)
class _Plan:
    """What the records are searched between, and the code relocation the payload may use."""

    index: _core.OldIndex  # over old, or old with its code transformed
    match_new: bytes | None  # new with its code transformed, None: new itself
    arch: int  # 0: no relocation
    table: bytes  # the moves table as the patch carries it


@dataclass(frozen=True)
class _Trial:
    """One way of planning the payload: the records' source, their threshold, the search for
    literals in the slot (copy_min, 0: none; approx: copies from there may differ in places,
    csrc/fd_ipdiff.h), the park blocks the plan may use and what it gives
    up when they run out: the lightest copy of a write-order cycle, or every pending copy from
    the block cheapest to free (give_up_blocks; csrc/fd_ipdiff.h), whether the write order
    is then searched for one that gives up fewer copies (search_order), and how the differences
    are grouped (by word, by byte, by word as sums, or as the sums of spans of span bytes)."""

    plan: _Plan
    gain: int
    copy_min: int
    approx: bool
    park: int
    give_up_blocks: bool
    search_order: bool
    grouping: Grouping
    span: int = 0


def _relocation_plan(old: Buffer, new: Buffer, index: _core.OldIndex, threads: int) -> _Plan | None:
    """Code relocation for the images, when their code is of an architecture this build relocates
    and moving its references gains (the plain engine's estimate): moves learnt from the
    references a plain scan pairs up, addresses being image offsets (what the device uses)."""
    plans = [(code_transform.offsets(o), code_transform.offsets(n)) for o, n in _code_plans(old, new)]
    plans = [(o, n) for o, n in plans if o[0].arch in RELOCATED_ARCHS]
    if not plans:
        return None
    ctrl = index.diff_streams(new, min_gain=FIRST_GAIN)[0][0]
    transform = _best_plan(old, new, plans, ctrl, None)
    if transform is None:
        return None
    moves = [m for m in transform.moves if 0 <= m.start < 1 << 32][:MAX_MOVES]
    table = b"".join(struct.pack("<II", m.start, m.delta % (1 << 32)) for m in moves)
    t_old = code_transform.transformed(old, transform.old_ranges, transform.moves)
    t_new = code_transform.transformed(new, transform.new_ranges)
    return _Plan(_core.OldIndex(t_old, threads), t_new, transform.old_ranges[0].arch, table)


def _without_short_moves(table: bytes, span: int, image_len: int) -> bytes:
    """The moves table without the entries whose span (up to the next entry, or the image's
    end) is span bytes or shorter."""
    starts = [start for start, _ in struct.iter_unpack("<II", table)] + [image_len]
    return b"".join(table[k * MOVE_SIZE:(k + 1) * MOVE_SIZE] for k in range(len(starts) - 1)
                    if starts[k + 1] - starts[k] > span)


def work_plan(block_size: int, codec: PayloadCodec, ram: int) -> tuple[int, tuple[int, int, int]]:
    """Work memory the device needs and the decoder windows (control, literals, differences)
    that fit the RAM budget: the literals and differences lanes get equal windows as large as
    fit with the smallest for control, then control grows into what is left. On the corpora
    (benchmarks/compare.py) equal windows for the data lanes did better than giving one of
    them more, and the control lane's varints repeat at short distances."""
    if codec != PayloadCodec.LZ:
        need = block_size
        if need > ram:
            raise ValueError(f"the patch needs {need} bytes of work RAM (one {block_size}-byte block), "
                             f"more than the {ram} allowed")
        return need, (0, 0, 0)
    smallest = LZ_WINDOWS[0]

    def work(windows: tuple[int, int, int]) -> int:
        return _lz_work(block_size, windows)

    if work((smallest, smallest, smallest)) > ram:
        raise ValueError(f"the patch needs at least {work((smallest, smallest, smallest))} bytes of work RAM (a "
                         f"{block_size}-byte block plus the decoder), more than the {ram} allowed")
    data = max(w for w in LZ_WINDOWS if work((smallest, w, w)) <= ram)
    control = max(w for w in LZ_WINDOWS if w <= data and work((w, data, data)) <= ram)
    return work((control, data, data)), (control, data, data)


def _lz_work(block_size: int, windows: tuple[int, int, int]) -> int:
    """Work memory of the patcher with the MCU decoder: one block and the lanes' windows."""
    return block_size + _core.lz_work_size(*windows)


def lz_window_choices(block_size: int, ram: int) -> list[tuple[int, int, int]]:
    """Every way of giving the three lanes decoder windows within ram (one block plus the
    decoder) that leaves no lane's window able to double: the candidates diff encodes the
    chosen lanes with, keeping the smallest. Which lane gains most from a larger window depends
    on the data (the control lane's varints on images with many changed words, the literals on
    others)."""
    def fits(c: int, lit: int, d: int) -> bool:
        return max(c, lit, d) <= LZ_WINDOWS[-1] and _lz_work(block_size, (c, lit, d)) <= ram

    return [(c, lit, d) for c in LZ_WINDOWS for lit in LZ_WINDOWS for d in LZ_WINDOWS
            if fits(c, lit, d) and not (fits(c + 1, lit, d) or fits(c, lit + 1, d) or fits(c, lit, d + 1))]


def _stored(lanes: Lanes) -> bytes:
    """The decoded payload as stored, and as the host LZMA codec sees it: the lanes in order."""
    return b"".join(lanes)


def _encode_payload(lanes: Lanes, turns: list[int], codec: PayloadCodec, window_logs: tuple[int, int, int],
                    limit: int | None = None) -> bytes | None:
    """The payload encoded; None when it is known to be longer than limit bytes (which only
    the LZ codec tells before it is done)."""
    if codec == PayloadCodec.LZ:
        packed = _core.lz_compress_lanes(lanes, window_logs, turns, None if limit is None else max(limit, 1))
        return None if packed is None else bytes(packed)
    if codec == PayloadCodec.LZMA:
        return lzma_best(_stored(lanes))
    return _stored(lanes)


@dataclass(frozen=True)
class Layout:
    """Where the image slot and the spare blocks (scratch, park area, two for the journal) sit."""

    slot: int
    slot_size: int
    scratch: int
    park: int
    park_blocks: int
    journal: int

    @classmethod
    def after_slot(cls, block_size: int, image_size: int, park_blocks: int) -> Layout:
        """The slot at address 0, the spare blocks right after it."""
        slot_size = slot_blocks(block_size, image_size) * block_size
        park = slot_size + block_size
        return cls(0, slot_size, slot_size, park, park_blocks, park + park_blocks * block_size)

    def geometry(self, block_size: int, write_size: int) -> Geometry:
        return Geometry(self.journal + 2 * block_size, block_size, write_size)


class _LzmaSource:
    """Decoded LZMA payload (the lanes one after the other) for the C patcher: open(start,
    length) restarts on those bytes of the patch, read(lane, n) yields exactly the lane's next n
    bytes."""

    def __init__(self, patch: bytes, lanes_raw: tuple[int, int, int]) -> None:
        self._patch = patch
        self._starts = [sum(lanes_raw[:k]) for k in range(len(lanes_raw) + 1)]
        self._raw = b""
        self._next = self._starts[:-1]

    def open(self, start: int, length: int) -> None:
        self._raw = bytes(decompress(Codec.LZMA, self._patch[start:start + length], self._starts[-1]))
        self._next = self._starts[:-1]

    def read(self, lane: int, n: int) -> bytes:
        start = self._next[lane]
        end = start + n
        if end > self._starts[lane + 1]:
            raise PatchError("in-place payload ends too early")
        self._next[lane] = end
        return self._raw[start:end]


def apply_on_flash(flash: Flash, layout: Layout, patch: bytes) -> None:
    """Run the device patcher against flash: start or resume the update and finish it.

    PatchError when the patch is refused (nothing is written then unless an update of this patch
    was already under way); PowerLoss propagates from the flash emulator."""
    h = InplaceHeader.parse(patch)
    source: Any = None
    if h.codec == PayloadCodec.LZMA:
        source = _LzmaSource(patch, h.lanes_raw)
    rc = _core.inplace_apply(flash, layout.slot, layout.slot_size, layout.scratch, layout.park,
                             layout.park_blocks, layout.journal, patch, source, h.work_need,
                             h.codec == PayloadCodec.LZ)
    if rc != 0:
        raise PatchError(_core.inplace_strerror(rc))


def update_state(flash: Flash, layout: Layout, patch: bytes) -> str:
    """"none", "running" or "complete": what the journal says of an update with this patch."""
    rc = _core.inplace_state(flash, layout.slot, layout.slot_size, layout.scratch, layout.park,
                             layout.park_blocks, layout.journal, patch)
    if rc < 0:
        raise PatchError(_core.inplace_strerror(rc))
    return ("none", "running", "complete")[rc]


def emulated_device(patch: bytes, image: Buffer, *, write_size: int = 4) -> tuple[Flash, Layout]:
    """Emulated flash laid out for the patch (slot, scratch, park, journal), image in the slot."""
    h = InplaceHeader.parse(patch)
    layout = Layout.after_slot(h.block_size, max(h.old_size, h.new_size), h.park_slots)
    flash = Flash(layout.geometry(h.block_size, write_size))
    flash.program(layout.slot, bytes(image))
    return flash, layout


def apply(old: Buffer, patch: bytes, *, write_size: int = 4) -> bytes:
    """Apply an in-place patch the way a device would, on emulated flash; returns the new image
    (for an Intel HEX or UF2 old, the new flash contents: old is laid out as diff laid it out)."""
    old = flash_image(old).data
    h = InplaceHeader.parse(patch)
    if len(old) != h.old_size:
        raise PatchError("the source image is not the one this patch was made from (its size differs)")
    flash, layout = emulated_device(patch, old, write_size=write_size)
    apply_on_flash(flash, layout, patch)
    return flash.read(layout.slot, h.new_size)


@dataclass(frozen=True)
class InplaceInfo:
    """What `fotadelta info` reports about an in-place patch."""

    kind: str
    codec: str
    park_slots: int
    patch_bytes: int
    block_size: int
    work_ram: int
    old_size: int
    new_size: int
    payload_raw_bytes: int
    code: str  # architecture whose copies the device relocates ("thumb2", ...), "" for none
    code_moves: int  # entries of the moves table
    old_digest: str
    new_digest: str
    differences: str  # their grouping: "words", "bytes", "sums" or "spans" (format.Grouping)
    span_bytes: int = 0  # bytes per span of "spans"
    # The default plain patch (fotadelta.diff, code-aware) for the same images, and the in-place
    # penalty against it: only when info() was given the images.
    plain_patch_bytes: int | None = None
    penalty: float | None = None
    # Intel HEX or UF2 images: their format ("ihex", "uf2"), the address the slot starts at, and
    # the data bytes of new's records beyond the slot, which the patch does not write
    # (flashimage.flash_image).
    layer: str | None = None
    flash_base: int | None = None
    flash_left_out: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def info(patch: bytes, old: Buffer | None = None, new: Buffer | None = None) -> InplaceInfo:
    """Describe an in-place patch. Given the images it was made from, also make the default
    plain patch for them (which takes as long as a plain diff) and report the penalty."""
    h = InplaceHeader.parse(patch)
    described = InplaceInfo("in-place", h.codec.name.lower(), h.park_slots, len(patch), h.block_size,
                            h.work_need, h.old_size, h.new_size, h.payload_raw, CODE_ARCHS.get(h.arch, ""),
                            h.moves, h.old_digest.hex(), h.new_digest.hex(), h.grouping.name.lower(), h.span)
    if old is None and new is None:
        return described
    if old is None or new is None:
        raise ValueError("give both images, or neither")
    flash_old, flash_new = flash_images(old, new)
    if digest(flash_old.data) != h.old_digest or digest(flash_new.data) != h.new_digest:
        raise PatchError("the images are not the ones this patch was made for")
    plain = len(_diff(old, new, None))  # of the images as given: what a plain update ships
    if flash_new.layer:
        described = replace(described, layer=flash_new.layer, flash_base=flash_new.base,
                            flash_left_out=flash_new.left_out_bytes)
    return replace(described, plain_patch_bytes=plain, penalty=len(patch) / plain)


@dataclass(frozen=True)
class PowercutReport:
    """Outcome of `fotadelta powercut`: every scenario must end with exactly the new image."""

    operations: int
    cuts: int
    recovered: int
    failed: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def powercut(old: Buffer, patch: bytes, *, expected: bytes | None = None, write_size: int = 4,
             every: int = 1, double_faults: bool = True,
             progress: Callable[[int, int], None] | None = None) -> PowercutReport:
    """Cut the power after every every-th flash operation of the update, reboot and resume.

    After each cut, recovery is itself cut once at a pseudo-random point (double fault) and
    resumed again. A scenario is recovered when the slot ends up holding the new image."""
    h = InplaceHeader.parse(patch)
    old = flash_image(old).data
    if expected is not None:
        expected = bytes(flash_image(expected).data)

    def fresh() -> Flash:
        return emulated_device(patch, old, write_size=write_size)[0]

    clean, layout = emulated_device(patch, old, write_size=write_size)
    apply_on_flash(clean, layout, patch)
    operations = clean.operations
    target = expected if expected is not None else clean.read(layout.slot, h.new_size)
    if digest(target) != h.new_digest:
        raise PatchError("the patch does not produce the expected new image")
    rng = random.Random(operations)
    cuts = recovered = failed = 0
    scenarios = range(0, operations, max(every, 1))
    for done, k in enumerate(scenarios):
        flash = fresh()
        # Cut after k operations, then cut the recovery once more, then let it finish.
        plan: list[int | None] = [k]
        if double_faults:
            plan.append(rng.randrange(operations - k + 2))
        plan.append(None)
        ok = True
        for cut_after in plan:
            flash.arm(cut_after, seed=rng.randrange(1 << 30))
            try:
                apply_on_flash(flash, layout, patch)
                break
            except PowerLoss:
                cuts += 1
            except PatchError:
                ok = False
                break
        flash.arm(None)
        if ok and flash.read(layout.slot, h.new_size) == target:
            recovered += 1
        else:
            failed += 1
        if progress is not None:
            progress(done + 1, len(scenarios))
    return PowercutReport(operations, cuts, recovered, failed)
