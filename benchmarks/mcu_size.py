#!/usr/bin/env python3
"""Code size and RAM of the device-side in-place patcher on a Cortex-M4.

Cross-compiles the patcher, the journal, the MCU payload decoder, SHA-256 and the code
relocation exactly as a Cortex-M bootloader would (arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb
-Os, C99, warnings as errors, relocating Thumb-2 code only: -DFD_IP_ARCHS='(1u << FD_CODE_THUMB2)'),
reports .text/.data/.bss per object and in total, what the relocation of each other architecture
would add, the deepest stack through the call graph (GCC's -fcallgraph-info, with the patcher's
calls through the payload-source pointers added), and the work memory per erase-block size.
Needs Debian's gcc-arm-none-eabi.

    python benchmarks/mcu_size.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CSRC = REPO / "csrc"
SOURCES = ("fd_inplace.c", "fd_ip_lz.c", "fd_lz.c", "fd_sha256.c", "fd_ip_code.c")
CC = "arm-none-eabi-gcc"
CFLAGS = ["-mcpu=cortex-m4", "-mthumb", "-Os", "-std=c99", "-Wall", "-Wextra", "-Werror",
          "-ffunction-sections", "-fdata-sections", "-fcallgraph-info=su"]
# The architectures whose code the patcher relocates (csrc/fd_ip_code.h): a Cortex-M device
# only ever runs Thumb-2.
ARCHS = {"thumb2": 1, "aarch64": 2, "x86_64": 3, "xtensa": 4, "riscv": 5, "power": 6, "sparc": 7, "x86_32": 8,
         "a32": 9}
DEVICE_ARCH = "thumb2"
# Calls made through fd_payload_source's function pointers, which the call graph cannot see.
INDIRECT = {"payload_open": ["lz_open"], "payload_read": ["lz_read"]}
ROOT = "fd_inplace_apply"


def compile_size(tmp: Path, name: str, archs: int) -> dict[str, int]:
    """.text/.data/.bss of one source compiled for the device, relocating archs (a bit mask)."""
    obj = tmp / name.replace(".c", ".o")
    subprocess.run([CC, *CFLAGS, f"-DFD_IP_ARCHS={archs:#x}u", f"-I{CSRC}", "-c", str(CSRC / name), "-o",
                    str(obj)], check=True, cwd=tmp)
    out = subprocess.run(["arm-none-eabi-size", str(obj)], check=True, capture_output=True,
                         text=True).stdout.splitlines()[1].split()
    return {"text": int(out[0]), "data": int(out[1]), "bss": int(out[2])}


def build(tmp: Path) -> dict[str, dict[str, int]]:
    return {name: compile_size(tmp, name, 1 << ARCHS[DEVICE_ARCH]) for name in SOURCES}


def relocation_sizes(tmp: Path) -> dict[str, int]:
    """.text of fd_ip_code.c relocating each architecture alone, and all of them."""
    sizes = {arch: compile_size(tmp, "fd_ip_code.c", 1 << bit)["text"] for arch, bit in ARCHS.items()}
    sizes["all"] = compile_size(tmp, "fd_ip_code.c", sum(1 << bit for bit in ARCHS.values()))["text"]
    return sizes


def deepest_stack(tmp: Path) -> tuple[int, list[str]]:
    """Largest sum of frame sizes on a call path from ROOT."""
    frames: dict[str, int] = {}
    calls: dict[str, set[str]] = {}
    for ci in tmp.glob("*.ci"):
        text = ci.read_text()
        for title, label in re.findall(r'node: \{ title: "([^"]+)" label: "([^"]*)"', text):
            m = re.search(r"(\d+) bytes", label)
            frames[title] = int(m.group(1)) if m else 0
        for src, dst in re.findall(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"', text):
            calls.setdefault(src, set()).add(dst)
    for src, dsts in INDIRECT.items():
        calls.setdefault(src, set()).update(dsts)

    def short(name: str) -> str:
        return name.split(":")[-1]

    by_short = {short(k): k for k in frames}
    memo: dict[str, tuple[int, list[str]]] = {}

    def walk(fn: str, seen: frozenset[str]) -> tuple[int, list[str]]:
        if fn in memo:
            return memo[fn]
        key = by_short.get(fn, fn)
        best = (0, [])
        for callee in calls.get(key, set()) | calls.get(fn, set()):
            c = short(callee)
            if c in seen:
                continue
            best = max(best, walk(c, seen | {c}), key=lambda r: r[0])
        result = (frames.get(key, 0) + best[0], [fn, *best[1]])
        memo[fn] = result
        return result

    return walk(ROOT, frozenset({ROOT}))


def work_sizes() -> dict[str, int]:
    """Decoder work memory with 4 KiB blocks for a few RAM budgets, with the lane windows
    fotadelta diff --in-place picks for each."""
    from fotadelta.inplace import PayloadCodec, work_plan
    sizes = {}
    for extra in (4096, 8192, 16384):
        need, windows = work_plan(4096, PayloadCodec.LZ, 4096 + extra)
        sizes[f"--ram block+{extra // 1024}K: windows {' + '.join(str(1 << w) for w in windows)} B"] = need - 4096
    return sizes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if not shutil.which(CC):
        print(f"{CC} not found: apt-get install gcc-arm-none-eabi", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        sizes = build(Path(tmp))
        stack, path = deepest_stack(Path(tmp))
        relocation = relocation_sizes(Path(tmp))
    total = {k: sum(s[k] for s in sizes.values()) for k in ("text", "data", "bss")}
    decoder = work_sizes()
    print(f"{'object':16} {'.text':>7} {'.data':>6} {'.bss':>5}")
    for name, s in sizes.items():
        print(f"{name:16} {s['text']:7} {s['data']:6} {s['bss']:5}")
    print(f"{'total':16} {total['text']:7} {total['data']:6} {total['bss']:5}")
    print(f"code relocation (fd_ip_code.c .text) of one architecture each: "
          + ", ".join(f"{arch} {n}" for arch, n in relocation.items() if arch != "all")
          + f"; all {len(ARCHS)} {relocation['all']} (total with all {len(ARCHS)}: "
          f"{total['text'] - relocation[DEVICE_ARCH] + relocation['all']})")
    print(f"deepest stack: {stack} bytes via {' -> '.join(path)}")
    print("decoder work memory (add one erase block for the patcher's total):")
    for label, n in decoder.items():
        print(f"  {label}: {n} bytes; with 4 KiB blocks {4096 + n}, peak RAM with stack {4096 + n + stack}")
    if args.json:
        args.json.write_text(json.dumps({"objects": sizes, "total": total, "relocation_text": relocation,
                                         "stack": stack, "stack_path": path, "decoder_work": decoder}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
