#!/usr/bin/env python3
"""How much the layout of the in-place payload costs: a measurement for the next format change.

The in-place payload interleaves, block by block, control records with their literals, the
changed words' gaps, and the words' differences (docs/inplace.md). This script parses the raw
(decoded) payload of each pair, regroups its parts, compresses them with the same MCU codec, and
prints the size against the plain patch for:

- `current`: the payload as the device reads it today (one stream);
- `two`: stream A = control, literals and gaps in today's order; stream B = every word
  difference back to back, each compressed on its own (1 KiB windows; `two-w9`: 512 B);
- `three`: control and literals / gaps / differences as three streams.

Every variant adds the 72-byte header. Run: `python benchmarks/inplace_layout.py [PAIRS_DIR]`
(default ../shared/corpus, else firmware_samples/pairs; pairs over 2 MB are skipped)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import fotadelta
from fotadelta import _core
from fotadelta.delta import GAINS_SMALL
from fotadelta.delta.format import encode_varint as _encode
from fotadelta.inplace.format import HEADER_SIZE

HERE = Path(__file__).resolve().parent
BLOCK = 4096


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def split(payload: bytes, new_size: int) -> tuple[bytes, bytes, bytes, bytes]:
    """(control records and literals, gaps, both of those interleaved as the device reads them,
    differences)."""
    control, gaps, diffs, interleaved = bytearray(), bytearray(), bytearray(), bytearray()
    i, previous = 0, -1
    while i < len(payload):
        start = len(control)
        code, i = _varint(payload, i)
        control += _encode(code)
        kind, z = code & 3, code >> 2
        block = previous + 1 + ((z >> 1) ^ -(z & 1))
        previous = block
        if kind in (2, 3):  # park and unpark name a slot
            slot, i = _varint(payload, i)
            control += _encode(slot)
        if kind == 3:
            interleaved += control[start:]
            continue
        length, pos = min(BLOCK, new_size - block * BLOCK), 0
        while pos < length:
            seek, i = _varint(payload, i)
            add, i = _varint(payload, i)
            inserted, i = _varint(payload, i)
            control += _encode(seek) + _encode(add) + _encode(inserted) + payload[i:i + inserted]
            i += inserted
            pos += add + inserted
        interleaved += control[start:]
        last = False
        while not last:
            n = 0
            while n < 64:
                gap, i = _varint(payload, i)
                gaps += _encode(gap)
                interleaved += _encode(gap)
                if gap == 0:
                    last = True
                    break
                n += 1
            if n == 0:
                break
            i += -i % 4  # the zero padding before the differences
            diffs += payload[i:i + 4 * n]
            i += 4 * n
    return bytes(control), bytes(gaps), bytes(interleaved), bytes(diffs)


def _mcu(data: bytes, window_log: int = 10) -> int:
    return len(_core.lz_compress(data, window_log))


def measure(old: bytes, new: bytes) -> dict[str, float]:
    index = _core.OldIndex(old)
    payload = min((_core.inplace_payload(index, new, BLOCK, 16, min_gain=g)[0] for g in GAINS_SMALL), key=_mcu)
    control, gaps, interleaved, diffs = split(payload, len(new))
    plain = len(fotadelta.diff(old, new))
    sizes = {
        "current": _mcu(payload),
        "two": _mcu(interleaved) + _mcu(diffs),
        "two-w9": _mcu(interleaved, 9) + _mcu(diffs, 9),
        "three": _mcu(control) + _mcu(gaps) + _mcu(diffs),
    }
    return {k: (v + HEADER_SIZE) / plain for k, v in sizes.items()}


def main() -> None:
    default = HERE.parent.parent / "shared" / "corpus"
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else default if default.is_dir() else HERE.parent / "firmware_samples" / "pairs"
    results: dict[str, list[float]] = {}
    for pair in sorted(p for p in root.iterdir() if (p / "old").is_file()):
        old, new = (pair / "old").read_bytes(), (pair / "new").read_bytes()
        if len(new) > 2_000_000:
            continue
        ratios = measure(old, new)
        print(f"{pair.name[:40]:40} " + "  ".join(f"{k} {v:.3f}" for k, v in ratios.items()), flush=True)
        for k, v in ratios.items():
            results.setdefault(k, []).append(v)
    print("geometric mean (in-place / plain): " + "  ".join(
        f"{k} {math.exp(sum(map(math.log, v)) / len(v)):.4f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
