#!/usr/bin/env python3
"""What the in-place payload's layout costs: the shipped coding against two it cannot use.

The payload has three lanes, control (steps, records, word gaps), the records' literals and the
changed words' differences, read by the device in turns (docs/inplace.md). The MCU codec codes
them in one range-coded stream, each lane with its own window, literal tree and literal/match
flags, the rest of the model shared (docs/mcu-codec.md). For each pair this script prints,
against the default plain patch (all with the in-place header and moves table):

- `shipped`: what `fotadelta diff --in-place` makes with the default RAM (windows 256 + 512 +
  512 B);
- `separate`: each lane compressed on its own, with a whole model of its own and the same
  windows: a device with room for three models (about 2 KiB more work RAM) could decode this;
- `sequential`: the lanes one after the other as one lane with a 1 KiB window: a lower bound
  that no device reading block by block can use.

Run: `python benchmarks/inplace_layout.py [PAIRS_DIR]` (default ../shared/corpus, else
firmware_samples/pairs)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import fotadelta
from fotadelta import _core, inplace
from fotadelta.delta import GAINS_SMALL, default_threads
from fotadelta.inplace.format import InplaceHeader, PayloadCodec

HERE = Path(__file__).resolve().parent
BLOCK = 4096


def measure(old: bytes, new: bytes) -> dict[str, float]:
    index = _core.OldIndex(old)
    park = inplace.default_park(max(len(old), len(new)), BLOCK)
    _, logs = inplace.work_plan(BLOCK, PayloadCodec.LZ, BLOCK + inplace.DEFAULT_DECODER_RAM)
    shipped = inplace.diff(old, new, block_size=BLOCK)
    h = InplaceHeader.parse(shipped)
    # The relocation plan the shipped patch chose, if any.
    plan = inplace._relocation_plan(old, new, index, default_threads()) if h.arch else None
    fixed = h.lanes_start
    if plan is None:
        plan = inplace._Plan(index, None, 0, b"")
    payloads = [_core.inplace_payload(plan.index, new, BLOCK, park, min_gain=g, old=old, match_new=plan.match_new,
                                      arch=plan.arch, table=plan.table) for g in GAINS_SMALL]
    plain = len(fotadelta.diff(old, new))
    sizes = {
        "shipped": len(shipped),
        "separate": fixed + min(sum(len(_core.lz_compress(lane, log)) for lane, log in zip(lanes, logs, strict=True))
                                for lanes, _, _ in payloads),
        "sequential": fixed + min(len(_core.lz_compress(b"".join(lanes), 10)) for lanes, _, _ in payloads),
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
