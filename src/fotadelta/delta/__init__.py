"""Plain binary deltas: make a patch from two images, apply it, describe it."""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import xxhash

from fotadelta import _core
from fotadelta.delta import code as code_transform
from fotadelta.delta.codec import Codec, compress_streams, decompress, open_stream
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


# Match thresholds (fd_diff_params.min_gain) tried per diff, each a scan over the same
# suffix arrays; the smallest patch wins. No single value is best everywhere: on
# ../shared/corpus 4 suits ELF files with debug info, 6-8 raw MCU images, 16 a few.
# Large images get one scan so that diff time stays near HDiffPatch's.
GAINS_SMALL = (4, 6, 8, 16)
GAINS_LARGE = (8,)
LARGE_IMAGE = 1 << 20


def diff(old: Buffer, new: Buffer, *, progress: Progress | None = None,
         gains: Sequence[int] | None = None, code: bool = True) -> bytes:
    """Return a patch that turns old into new.

    progress(done, total) is called now and then. gains overrides the match thresholds tried
    (see GAINS_SMALL). With code (the default) a delta between the images with their machine
    code transformed (fotadelta.delta.code) is also made, and kept when it is smaller. The
    result carries the compressed new image instead of a delta when that is smaller."""
    return _diff(old, new, None, progress=progress, gains=gains, code=code)


def _diff(old: Buffer, new: Buffer, index: _core.OldIndex | None, *, progress: Progress | None = None,
          gains: Sequence[int] | None = None, code: bool = True) -> bytes:
    """diff, with the index of old given when the caller has built it already (inplace.diff)."""
    if gains is None:
        gains = GAINS_LARGE if len(new) >= LARGE_IMAGE else GAINS_SMALL
    if not gains:
        raise ValueError("gains must name at least one match threshold")
    header = (len(old), len(new), source_fingerprint(old), target_digest(new))
    if index is None:
        index = _core.OldIndex(old)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        plans = _code_plans(old, new) if code else []
        trials = len(gains) * (1 + bool(plans))
        best, ctrl = _best_delta(index, new, gains, header, None, pool, _share(progress, 0, trials))
        transform = _best_plan(old, new, plans, ctrl)
        if transform is None and plans and progress is not None:
            progress(trials * len(new), trials * len(new))  # the transformed trials are not needed
        if transform is not None:
            t_old = code_transform.transformed(old, transform.old_ranges, transform.moves)
            t_new = code_transform.transformed(new, transform.new_ranges)
            candidate, _ = _best_delta(_core.OldIndex(t_old), t_new, gains, header, transform, pool,
                                       _share(progress, len(gains), trials))
            if len(candidate) < len(best):
                best = candidate
        if len(best) >= _FULL_IMAGE_CHECK_RATIO * len(new):
            (image,) = compress_streams((bytes(new),), pool)
            full = Patch(Kind.FULL, *header, _streams((new,), [image])).encode()
            # Within a few bytes the full image wins: it applies to any source image.
            if len(full) <= len(best) + _FULL_IMAGE_SLACK:
                return full
    return best


Header = tuple[int, int, bytes, bytes]


def _best_delta(index: _core.OldIndex, new: Buffer, gains: Sequence[int], header: Header,
                transform: CodeTransform | None, pool: ThreadPoolExecutor,
                progress: Callable[[int], Progress | None]) -> tuple[bytes, bytes]:
    """The smallest delta patch over the match thresholds, and the ctrl stream of the first."""
    best: bytes | None = None
    first_ctrl = b""
    code = None
    if transform is not None:
        raw_code = transform.encode()
        ((codec, data),) = compress_streams((raw_code,), pool)
        code = Stream(codec, len(raw_code), data)
    for trial, gain in enumerate(gains):
        raw, _stats = index.diff_streams(new, min_gain=gain, progress=progress(trial))
        if trial == 0:
            first_ctrl = raw[0]
        candidates = [Patch(Kind.DELTA, *header, _streams(raw, compress_streams(raw, pool)), code=code)]
        if sum(map(len, raw)) < _SOLID_MAX:
            records = b"".join(raw)
            candidates.append(Patch(Kind.SOLID, *header, _streams((records,), compress_streams((records,), pool)),
                                    tuple(map(len, raw)), code))
        for patch in candidates:
            encoded = patch.encode()
            if best is None or len(encoded) < len(best):
                best = encoded
    assert best is not None
    return best, first_ctrl


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
        return None if progress is None else _scaled(progress, first + k, trials)
    return for_trial


def _scaled(progress: Progress, trial: int, trials: int) -> Progress:
    """Report one trial's progress as its share of the whole diff."""
    def report(done: int, total: int) -> None:
        progress(trial * total + done, trials * total)
    return report


def apply(old: Buffer, patch: bytes) -> bytes:
    """Return the new image; PatchError if the patch is bad or was made from another image."""
    p = _parse_for(old, patch)
    if p.kind == Kind.FULL:
        new = decompress(p.streams[0].codec, p.streams[0].data, p.new_size)
    else:
        ctrl, wmap, words, extra = _record_streams(p)
        new = _core.apply_memory(old, ctrl, wmap, words, extra, p.new_size, _code_args(p))
    _verify(p, target_digest(new))
    return new


def diff_file(old_path: str | Path, new_path: str | Path, patch_path: str | Path, *,
              progress: Progress | None = None) -> PatchInfo:
    """Diff two image files into a patch file; returns its description."""
    with _mapped(old_path) as old, _mapped(new_path) as new:
        patch = diff(old, new, progress=progress)
    _write_atomic(Path(patch_path), lambda f: f.write(patch))
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

        _write_atomic(Path(out_path), produce)


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
        counts["changed_bytes"] = len(words) - words.count(0)
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
    return CodeTransform.parse(decompress(p.code.codec, p.code.data, p.code.raw_len), p.old_size, p.new_size)


def _code_args(p: Patch) -> Any:
    transform = _code_transform(p)
    return None if transform is None else transform.core_args()


def _verify(p: Patch, digest: bytes) -> None:
    if digest != p.new_digest:
        raise PatchError("patched image does not match the target hash")


# Below this much compressed data, thread hand-off costs more than parallel decoding saves.
_PARALLEL_DECODE_BYTES = 1 << 15


def _record_streams(p: Patch) -> list[bytes]:
    """ctrl, wmap, words and extra of a delta, decoded."""
    if p.kind == Kind.SOLID:
        records = memoryview(decompress(p.streams[0].codec, p.streams[0].data, p.streams[0].raw_len))
        out, pos = [], 0
        for n in p.parts:
            out.append(bytes(records[pos:pos + n]))
            pos += n
        return out
    return _decompress_all(p.streams)


def _decompress_all(streams: tuple[Stream, ...]) -> list[bytes]:
    if sum(len(s.data) for s in streams) < _PARALLEL_DECODE_BYTES:
        return [decompress(s.codec, s.data, s.raw_len) for s in streams]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(lambda s: decompress(s.codec, s.data, s.raw_len), streams))


def _streams(raw: Sequence[Buffer], coded: list[tuple[Codec, bytes]]) -> tuple[Stream, ...]:
    return tuple(Stream(codec, len(r), data) for r, (codec, data) in zip(raw, coded))


def _varints(data: bytes) -> list[int]:
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


def _write_atomic(path: Path, produce: Callable[[BinaryIO], Any]) -> None:
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "wb") as f:
            produce(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
