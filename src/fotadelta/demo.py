"""`fotadelta demo`: the main job, end to end on real firmware with the embedded defaults.

It takes a real firmware pair (firmware_samples/pairs, fetched from pinned PyPI releases, or
../shared/corpus), makes a plain and an in-place patch, updates an emulated single-slot device
with 4 KiB erase blocks and one block + 4 KiB of work RAM, cuts its power halfway and lets it
resume, and shows that a wrong source image and a damaged patch are refused before the first
flash write."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

import fotadelta
from fotadelta import inplace
from fotadelta.errors import PatchError
from fotadelta.flash import PowerLoss

REPO = Path(__file__).resolve().parents[2]
SEARCH = (REPO / "firmware_samples" / "pairs", REPO.parent / "shared" / "corpus")
PREFERRED = ("uflash-microbit-upy-1.0.0b1-1.0.1", "detools-shell-cortexm4")
BLOCK = inplace.DEFAULT_BLOCK


class DemoError(Exception):
    """The demo cannot run or a step did not behave as it must."""


@dataclass(frozen=True)
class Step:
    what: str
    result: str


def find_pair(where: Path | None) -> tuple[str, bytes, bytes]:
    """The first preferred pair found (else any pair) under where or the default places."""
    roots = [where] if where is not None else [r for r in SEARCH if r.is_dir()]
    candidates = [d for root in roots for d in sorted(root.iterdir())
                  if (d / "old").is_file() and (d / "new").is_file()] if roots else []
    if not candidates:
        raise DemoError("no firmware pair found: run `python firmware_samples/fetch.py` (or `make demo`)")
    chosen = next((d for name in PREFERRED for d in candidates if d.name == name), candidates[0])
    return chosen.name, (chosen / "old").read_bytes(), (chosen / "new").read_bytes()


def run(where: Path | None = None, console: Console | None = None) -> list[Step]:
    """Run the demo, printing as it goes; returns the steps and their results."""
    out = console if console is not None else Console(highlight=False)
    name, old, new = find_pair(where)
    steps: list[Step] = []

    def report(what: str, result: str) -> None:
        steps.append(Step(what, result))
        out.print(f"[bold]{what}[/bold]: {result}")

    out.rule(f"fotadelta demo: {name}")
    report("images", f"old {len(old):,} B, new {len(new):,} B")

    started = time.perf_counter()
    plain = fotadelta.diff(old, new)
    made = time.perf_counter() - started
    if fotadelta.apply(old, plain) != new:
        raise DemoError("the plain patch did not reproduce the new image")
    report("plain patch", f"{len(plain):,} B ({100 * len(plain) / len(new):.2f}% of the new image), "
           f"made in {made:.2f} s, applied and verified")

    patch = inplace.diff(old, new, block_size=BLOCK)
    info = inplace.info(patch)
    report("in-place patch", f"{info.patch_bytes:,} B, {info.penalty:.3f}x the plain patch; {BLOCK:,}-byte blocks, "
           f"{info.work_ram:,} B device work RAM, MCU codec")

    flash, layout = inplace.emulated_device(patch, old)
    probe, _ = inplace.emulated_device(patch, old)
    inplace.apply_on_flash(probe, layout, patch)
    total_ops = probe.operations
    flash.arm(total_ops // 2, seed=1)
    try:
        inplace.apply_on_flash(flash, layout, patch)
        raise DemoError("the power cut did not happen")
    except PowerLoss:
        pass
    flash.arm(None)
    inplace.apply_on_flash(flash, layout, patch)
    if flash.read(layout.slot, len(new)) != new:
        raise DemoError("the device did not end with the new image after the power cut")
    report("device update", f"power cut during operation {total_ops // 2 + 1} of {total_ops}, rebooted, resumed: "
           f"slot verified; most erases of one block: {max(flash.erase_counts)}")

    wrong = bytearray(old)
    wrong[len(wrong) // 3] ^= 0x01
    device, layout = inplace.emulated_device(patch, wrong)
    try:
        inplace.apply_on_flash(device, layout, patch)
        raise DemoError("an update for another image was accepted")
    except PatchError as exc:
        report("wrong source", f"refused before any flash write ({device.operations} operations): {exc}")

    damaged = bytearray(patch)
    damaged[len(damaged) // 2] ^= 0x10
    device, layout = inplace.emulated_device(bytes(damaged), old)
    try:
        inplace.apply_on_flash(device, layout, bytes(damaged))
        raise DemoError("a damaged patch was accepted")
    except PatchError as exc:
        report("damaged patch", f"refused before any flash write ({device.operations} operations): {exc}")

    table = Table(title="summary", title_justify="left")
    table.add_column("step")
    table.add_column("result")
    for s in steps:
        table.add_row(s.what, s.result)
    out.print(table)
    return steps
