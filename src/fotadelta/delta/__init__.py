"""Plain binary deltas: make a patch from two images, apply it, describe it."""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import xxhash

from fotadelta import _core
from fotadelta.delta import code as code_transform
from fotadelta.delta.codec import (
    Codec,
    Estimate,
    compress,
    compress_streams,
    decompress,
    estimate,
    estimate_streams,
    open_stream,
)
from fotadelta.delta.format import (
    CODE_ARCHS,
    FORMAT_VERSION,
    PLAIN_VERSION,
    STREAM_NAMES,
    CodeTransform,
    Kind,
    Patch,
    Stream,
    source_fingerprint,
    target_digest,
)
from fotadelta.errors import PatchError
from fotadelta.files import atomic_writer, write_atomic

__all__ = ["PatchError", "PatchInfo", "apply", "apply_file", "diff", "diff_file", "info"]

Progress = Callable[[int, int], None]
Buffer = bytes | bytearray | memoryview | mmap.mmap

# Record streams shorter than this in all are also tried as one solid stream: on small
# deltas that saves the per-stream overhead (4-8% on ../shared/corpus's MCU images) and
# three decoder set-ups on apply; on large ones separate streams compress better.
_SOLID_MAX = 1 << 17
# A delta at least this fraction of the new image is worth comparing with the full image.
_FULL_IMAGE_CHECK_RATIO = 0.125
_FULL_IMAGE_SLACK = 16


# Match threshold (fd_diff_params.min_gain) of the first scan. The threshold used is then
# chosen from what that scan's streams cost (see _choose_gain), within these bounds.
PILOT_GAIN = 8
MIN_GAIN, MAX_GAIN = 3, 24
RESCAN_BAND = (0.8, 1.25)
# Thresholds an in-place diff tries (it has no time target): no single value is best
# everywhere, 4 suits ELF files with debug info, 6-8 raw MCU images, 16 a few.
GAINS_SMALL = (4, 6, 8, 16)
_PARALLEL_CODING = 1 << 20
# Bytes of container overhead per stream (codec, two length varints), for comparing layouts.
_STREAM_OVERHEAD = 4


def default_threads() -> int:
    """Threads a diff uses unless told: one per core."""
    return os.cpu_count() or 1


def diff(old: Buffer, new: Buffer, *, progress: Progress | None = None, threads: int | None = None,
         gain: int | None = None, code: bool = True) -> bytes:
    """Return a patch that turns old into new.

    progress(done, total) is called now and then. threads (default: one per core) share the
    work; the patch is the same whatever their number. gain fixes the match threshold instead
    of choosing it from the data. With code (the default) a delta between the images with
    their machine code transformed (fotadelta.delta.code) is also made, and kept when it is
    smaller. The result carries the compressed new image instead of a delta when that is
    smaller."""
    return _diff(old, new, None, progress=progress, threads=threads, gain=gain, code=code)


Header = tuple[int, int, bytes, bytes]


def _diff(old: Buffer, new: Buffer, index: _core.OldIndex | None, *, progress: Progress | None = None,
          threads: int | None = None, gain: int | None = None, code: bool = True) -> bytes:
    """diff, with the index of old given when the caller has built it already (inplace.diff)."""
    threads = default_threads() if threads is None else threads
    if threads < 1:
        raise ValueError("threads must be at least 1")
    if gain is not None and gain < 0:
        raise ValueError("gain must not be negative")
    header = (len(old), len(new), source_fingerprint(old), target_digest(new))
    own_index = index is None
    if index is None:
        index = _core.OldIndex(old, threads)
    # Below _PARALLEL_CODING bytes the coders' work is shorter than a thread hand-off (which
    # takes tens of milliseconds on a loaded machine): it runs on this thread.
    parallel = threads > 1 and len(new) >= _PARALLEL_CODING
    with ThreadPoolExecutor(max_workers=threads) if parallel else nullcontext() as pool:
        plans = _code_plans(old, new) if code else []
        trials = _SCANS * (1 + bool(plans))
        best, ctrl, expected, inserted = _best_delta(index, new, gain, header, None, pool,
                                                     _share(progress, 0, trials))
        if own_index:
            del index  # its suffix arrays (4 bytes per old byte) are not needed any more
        transform = _best_plan(old, new, plans, ctrl)
        if transform is not None:
            t_old = code_transform.transformed(old, transform.old_ranges, transform.moves)
            t_new = code_transform.transformed(new, transform.new_ranges)
            candidate, _, guessed, added = _best_delta(_core.OldIndex(t_old, threads), t_new, gain, header,
                                                       transform, pool, _share(progress, _SCANS, trials))
            if len(candidate) < len(best):
                best, expected, inserted = candidate, guessed, added
        if progress is not None:
            progress(trials * len(new), trials * len(new))  # scans that were not needed are done
        if len(best) >= _FULL_IMAGE_CHECK_RATIO * len(new):
            image = bytes(new)
            guess = estimate(image)
            # The full image is coded for real when the delta inserts most of the image or the
            # estimates (on samples, which differ) do not rule it out.
            if inserted * 2 >= len(new) or guess.size <= expected:
                full = Patch(Kind.FULL, *header, _streams((new,), [compress(image, guess, lean=True)])).encode()
                # Within a few bytes the full image wins: it applies to any source image.
                if len(full) <= len(best) + _FULL_IMAGE_SLACK:
                    return full
    return best


# Scans per delta: the first, and one with the threshold chosen from it.
_SCANS = 2


def _best_delta(index: _core.OldIndex, new: Buffer, gain: int | None, header: Header,
                transform: CodeTransform | None, pool: ThreadPoolExecutor | None,
                progress: Callable[[int], Progress | None]) -> tuple[bytes, bytes, int, int]:
    """A delta patch with the given match threshold or one chosen from the data, the ctrl
    stream of the first scan (for code plans), the patch's estimated size and the bytes it
    inserts."""
    code = None
    if transform is not None:
        raw_code = transform.encode()
        ((codec, data),) = compress_streams((raw_code,), estimate_streams((raw_code,), pool), pool)
        code = Stream(codec, len(raw_code), data)
    first = gain if gain is not None else PILOT_GAIN
    raw, stats = index.diff_streams(new, min_gain=first, progress=progress(0))
    first_ctrl = raw[0]
    estimates = estimate_streams(raw, pool)
    if gain is None:
        chosen = _choose_gain(estimates, stats)
        # A threshold near the first one changes little: the second scan is spared.
        if not RESCAN_BAND[0] <= chosen / first <= RESCAN_BAND[1]:
            again, stats = index.diff_streams(new, min_gain=chosen, progress=progress(1))
            guesses = estimate_streams(again, pool)
            # The first scan is kept when it is estimated smaller after all.
            if sum(e.size for e in guesses) < sum(e.size for e in estimates):
                raw, estimates = again, guesses
    # Small deltas may be smaller as one solid stream: decide on the estimates.
    separate = sum(e.size + _STREAM_OVERHEAD for e in estimates)
    records = b"".join(raw)
    solid = estimate(records) if len(records) < _SOLID_MAX else None
    if solid is not None and solid.size + _STREAM_OVERHEAD + len(raw) * 2 < separate:
        coded = compress_streams((records,), (solid,), pool)
        patch = Patch(Kind.SOLID, *header, _streams((records,), coded), tuple(map(len, raw)), code)
        return patch.encode(), first_ctrl, solid.size, len(raw[3])
    patch = Patch(Kind.DELTA, *header, _streams(raw, compress_streams(raw, estimates, pool)), code=code)
    return patch.encode(), first_ctrl, separate, len(raw[3])


def _choose_gain(estimates: Sequence[Estimate], stats: dict[str, int]) -> int:
    """The match threshold at which a new record pays for itself.

    A scan starts a record where a new match beats the running alignment by more than the
    threshold in matching bytes; each byte it does not beat by costs a difference byte instead.
    So the threshold is what a record costs in difference bytes: the ctrl stream's estimated
    size per record over the word streams' estimated size per changed byte, as measured on
    the first scan."""
    ctrl, wmap, words, _extra = estimates
    if not stats["records"] or not stats["changed"] or not wmap.size + words.size:
        return PILOT_GAIN
    per_record = ctrl.size / stats["records"]
    per_changed_byte = (wmap.size + words.size) / stats["changed"]
    return max(MIN_GAIN, min(MAX_GAIN, round(per_record / per_changed_byte)))


def _code_plans(old: Buffer, new: Buffer) -> list[tuple[code_transform.Ranges, code_transform.Ranges]]:
    """Pairs of code maps to try: the images' own when both name one architecture (ELF, PE),
    else one pair per architecture (raw images)."""
    olds, news = code_transform.code_ranges(old), code_transform.code_ranges(new)
    return [(o, n) for o in olds for n in news if o and n and o[0].arch == n[0].arch]


def _best_plan(old: Buffer, new: Buffer, plans: list[tuple[code_transform.Ranges, code_transform.Ranges]],
               ctrl: bytes) -> CodeTransform | None:
    """The plan with the largest estimated gain, None when none gains."""
    best, best_gain = None, 0
    for old_ranges, new_ranges in plans:
        transform, gain = code_transform.plan(old, new, old_ranges, new_ranges, ctrl)
        if gain > best_gain:
            best, best_gain = transform, gain
    return best


def _share(progress: Progress | None, first: int, trials: int) -> Callable[[int], Progress | None]:
    """progress for the trial numbered first + k of trials, as its share of the whole diff."""
    def for_trial(k: int) -> Progress | None:
        return _scaled(progress, first + k, trials)
    return for_trial


def _scaled(progress: Progress | None, trial: int, trials: int) -> Progress | None:
    """Report one trial's progress as its share of the whole diff."""
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        progress(trial * total + done, trials * total)
    return report


def apply(old: Buffer, patch: bytes) -> bytes:
    """Return the new image; PatchError if the patch is bad or was made from another image."""
    p = _parse_for(old, patch)
    if p.kind == Kind.FULL:
        new = bytes(decompress(p.streams[0].codec, p.streams[0].data, p.new_size))
    else:
        ctrl, wmap, words, extra = _record_streams(p)
        new = _core.apply_memory(old, ctrl, wmap, words, extra, p.new_size, _code_args(p))
    _verify(p, target_digest(new))
    return new


def diff_file(old_path: str | Path, new_path: str | Path, patch_path: str | Path, *,
              progress: Progress | None = None, threads: int | None = None) -> PatchInfo:
    """Diff two image files into a patch file; returns its description."""
    with _mapped(old_path) as old, _mapped(new_path) as new:
        patch = diff(old, new, progress=progress, threads=threads)
    write_atomic(patch_path, patch)
    return info(patch)


def apply_file(old_path: str | Path, patch_path: str | Path, out_path: str | Path) -> None:
    """Apply a patch file, streaming the new image to out_path.

    The new image is never held in memory whole; out_path appears only once the target hash
    has been verified."""
    patch = Path(patch_path).read_bytes()
    with _mapped(old_path) as old:
        p = _parse_for(old, patch)

        def produce(f: BinaryIO) -> None:
            digest = xxhash.xxh3_128()

            def write(chunk: bytes) -> None:
                digest.update(chunk)
                f.write(chunk)

            if p.kind == Kind.FULL:
                s = p.streams[0]
                read = open_stream(s.codec, s.data, s.raw_len)
                while chunk := read(1 << 16):
                    write(chunk)
            elif p.kind == Kind.SOLID:
                # A solid patch is small by construction: decode its records in memory.
                ctrl, wmap, words, extra = (open_stream(Codec.STORED, b, len(b)) for b in _record_streams(p))
                _core.apply_stream(old, ctrl, wmap, words, extra, write, p.new_size, code=_code_args(p))
            else:
                ctrl, wmap, words, extra = (open_stream(s.codec, s.data, s.raw_len) for s in p.streams)
                _core.apply_stream(old, ctrl, wmap, words, extra, write, p.new_size, code=_code_args(p))
            _verify(p, digest.digest())

        with atomic_writer(out_path) as f:
            produce(f)


@dataclass(frozen=True)
class StreamInfo:
    """Size of one stream before and after compression."""

    name: str
    codec: str
    raw_bytes: int
    stored_bytes: int


@dataclass(frozen=True)
class PatchInfo:
    """What `fotadelta info` reports about a patch."""

    format_version: int
    kind: str  # "delta" or "full"
    solid: bool  # the delta's record streams are compressed as one
    patch_bytes: int
    old_size: int
    new_size: int
    old_fingerprint: str
    new_digest: str
    streams: list[StreamInfo] = field(default_factory=list)
    records: int = 0
    copied_bytes: int = 0
    changed_words: int = 0
    changed_bytes: int = 0
    inserted_bytes: int = 0
    code: str = ""  # architecture of a code-transformed delta ("thumb2", ...), "" for none
    code_ranges: int = 0  # code ranges of the new image
    code_moves: int = 0  # target moves applied to the old image
    code_bytes: int = 0  # stored bytes of the code transform

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def info(patch: bytes) -> PatchInfo:
    """Describe a patch: sizes, hashes, per-stream compression and record counts."""
    p = Patch.parse(patch)
    streams = [StreamInfo(name, Codec(s.codec).name.lower(), s.raw_len, len(s.data))
               for name, s in zip(STREAM_NAMES[p.kind], p.streams)]
    counts: dict[str, Any] = {"records": 0, "copied_bytes": 0, "changed_words": 0, "changed_bytes": 0,
                              "inserted_bytes": 0}
    if p.kind != Kind.FULL:
        ctrl, wmap, words, _extra = _record_streams(p)
        fields = _varints(ctrl)
        counts["records"] = len(fields) // 3
        counts["copied_bytes"] = sum(fields[1::3])
        counts["inserted_bytes"] = sum(fields[2::3])
        counts["changed_words"] = len(_varints(wmap))
        counts["changed_bytes"] = len(words) - bytes(words).count(0)
    else:
        counts["inserted_bytes"] = p.new_size
    transform = _code_transform(p)
    code: dict[str, Any] = {}
    if transform is not None and p.code is not None:
        archs = sorted({CODE_ARCHS[r.arch] for r in (*transform.old_ranges, *transform.new_ranges)})
        code = {"code": "+".join(archs), "code_ranges": len(transform.new_ranges),
                "code_moves": len(transform.moves), "code_bytes": len(p.code.data)}
    return PatchInfo(PLAIN_VERSION if p.code is None else FORMAT_VERSION,
                     "full" if p.kind == Kind.FULL else "delta", p.kind == Kind.SOLID,
                     len(patch), p.old_size, p.new_size,
                     p.old_fingerprint.hex(), p.new_digest.hex(), streams, **counts, **code)


def _parse_for(old: Buffer, patch: bytes) -> Patch:
    """Parse the patch and check that old is the image it was made from."""
    p = Patch.parse(patch)
    if p.kind != Kind.FULL and (len(old) != p.old_size or source_fingerprint(old) != p.old_fingerprint):
        raise PatchError("the source image is not the one this patch was made from")
    return p


def _code_transform(p: Patch) -> CodeTransform | None:
    if p.code is None:
        return None
    return CodeTransform.parse(bytes(decompress(p.code.codec, p.code.data, p.code.raw_len)), p.old_size, p.new_size)


def _code_args(p: Patch) -> Any:
    transform = _code_transform(p)
    return None if transform is None else transform.core_args()


def _verify(p: Patch, digest: bytes) -> None:
    if digest != p.new_digest:
        raise PatchError("patched image does not match the target hash")


# Streams are decoded on threads only when two or more have this much compressed data: below
# it a decode is shorter than a thread hand-off on a loaded machine.
_PARALLEL_DECODE_BYTES = 1 << 17


def _record_streams(p: Patch) -> list[bytes | memoryview]:
    """ctrl, wmap, words and extra of a delta, decoded (stored ones as views into the patch)."""
    if p.kind == Kind.SOLID:
        records = memoryview(decompress(p.streams[0].codec, p.streams[0].data, p.streams[0].raw_len))
        out: list[bytes | memoryview] = []
        pos = 0
        for n in p.parts:
            out.append(records[pos:pos + n])
            pos += n
        return out
    return _decompress_all(p.streams)


def _decompress_all(streams: tuple[Stream, ...]) -> list[bytes | memoryview]:
    # Threads only when two streams or more have real decoding to do (stored ones have none).
    if sum(s.codec != Codec.STORED and len(s.data) >= _PARALLEL_DECODE_BYTES for s in streams) < 2:
        return [decompress(s.codec, s.data, s.raw_len) for s in streams]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(lambda s: decompress(s.codec, s.data, s.raw_len), streams))


def _streams(raw: Sequence[Buffer], coded: list[tuple[Codec, bytes]]) -> tuple[Stream, ...]:
    return tuple(Stream(codec, len(r), data) for r, (codec, data) in zip(raw, coded))


def _varints(data: bytes | memoryview) -> list[int]:
    values, value, shift = [], 0, 0
    for b in data:
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            values.append(value)
            value, shift = 0, 0
    return values


@contextmanager
def _mapped(path: str | Path) -> Iterator[Buffer]:
    """The file's bytes, memory-mapped (an empty file cannot be mapped)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            yield m
