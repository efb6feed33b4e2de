#!/usr/bin/env python3
"""What the in-place payload's layout costs: the shipped coding against two it cannot use.

The payload has two lanes, control (steps, records, literals, word gaps) and the changed words'
differences, read by the device in turns (docs/inplace.md). The MCU codec codes both in one
range-coded stream with one shared model, each lane with its own window (docs/mcu-codec.md).
For each pair this script prints, against the plain patch (all with the 76-byte header):

- `shipped`: what `fotadelta diff --in-place` makes with the default RAM (windows 256 B + 1 KiB);
- `separate`: each lane compressed on its own, with its own model: a device with room for two
  models (2.7 KiB more work RAM) could decode this;
- `sequential`: the control lane then the differences, one lane, 1 KiB window: a lower bound
  that no device reading block by block can use.

Run: `python benchmarks/inplace_layout.py [PAIRS_DIR]` (default ../shared/corpus, else
firmware_samples/pairs)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import fotadelta
from fotadelta import _core, inplace
from fotadelta.delta import GAINS_SMALL
from fotadelta.inplace.format import HEADER_SIZE

HERE = Path(__file__).resolve().parent
BLOCK = 4096


def measure(old: bytes, new: bytes) -> dict[str, float]:
    index = _core.OldIndex(old)
    park = inplace.default_park(max(len(old), len(new)), BLOCK)
    _, (control_log, diffs_log) = inplace.work_plan(BLOCK, inplace.PayloadCodec.LZ,
                                                     BLOCK + inplace.DEFAULT_DECODER_RAM)
    payloads = [_core.inplace_payload(index, new, BLOCK, park, min_gain=g) for g in GAINS_SMALL]
    plain = len(fotadelta.diff(old, new))
    sizes = {
        "shipped": len(inplace.diff(old, new, block_size=BLOCK)),
        "separate": HEADER_SIZE + min(len(_core.lz_compress(control, control_log)) +
                                      len(_core.lz_compress(diffs, diffs_log)) for (control, diffs), _, _ in payloads),
        "sequential": HEADER_SIZE + min(len(_core.lz_compress(control + diffs, 10))
                                        for (control, diffs), _, _ in payloads),
    }
    return {k: v / plain for k, v in sizes.items()}


def main() -> None:
    default = HERE.parent.parent / "shared" / "corpus"
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else default if default.is_dir() else HERE.parent / "firmware_samples" / "pairs"
    results: dict[str, list[float]] = {}
    for pair in sorted(p for p in root.iterdir() if (p / "old").is_file()):
        ratios = measure((pair / "old").read_bytes(), (pair / "new").read_bytes())
        print(f"{pair.name[:40]:40} " + "  ".join(f"{k} {v:.3f}" for k, v in ratios.items()), flush=True)
        for k, v in ratios.items():
            results.setdefault(k, []).append(v)
    print("geometric mean (in-place / plain): " + "  ".join(
        f"{k} {math.exp(sum(map(math.log, v)) / len(v)):.4f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
