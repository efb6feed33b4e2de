"""Plain and in-place patches: diff, apply, info, powercut."""

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

import fotadelta
from fotadelta import PatchInfo, inplace
from fotadelta.cli.common import (
    CliError,
    DiffProgress,
    UsageError,
    check_block_size,
    check_image_file,
    check_outputs,
    command,
    count_bar,
    emit,
    grid,
    human_size,
    one_of,
    ratio_text,
    read_image,
)
from fotadelta.files import write_atomic
from fotadelta.inplace.flashimage import format_name


FORCE_HELP = "Write the output even if it is one of the input files."
CODECS = ("lz", "lzma", "stored")


@command(examples=[
    "fotadelta diff v1.bin v2.bin -o update.fdp",
    "fotadelta diff --in-place --block-size 4096 --ram 8192 v1.bin v2.bin -o update.fdip",
    "fotadelta diff -q --json v1.bin v2.bin -o update.fdp    # sizes as JSON",
    "fotadelta diff --extreme v1.bin v2.bin -o update.fdp    # smallest, several times slower",
])
def diff(
    old: Annotated[Path, typer.Argument(metavar="OLD", help="The image the device has now.", show_default=False)],
    new: Annotated[Path, typer.Argument(metavar="NEW", help="The image to update it to.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="FILE", help="Where to write the patch.",
                                         show_default=False)],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the patch's description as JSON.")] = False,
    force: Annotated[bool, typer.Option("--force", "-f", help=FORCE_HELP)] = False,
    in_place: Annotated[bool, typer.Option("--in-place", help="Make a patch a single-slot device applies in place.")]
    = False,
    block_size: Annotated[int | None, typer.Option("--block-size", metavar="BYTES", callback=check_block_size,
                                                   help="In-place: the device's erase-block size, a power of two "
                                                   f"(default {inplace.DEFAULT_BLOCK}).", show_default=False)] = None,
    ram: Annotated[int | None, typer.Option("--ram", metavar="BYTES", min=1, help="In-place: the most work RAM the "
                                            "device may use (default: one block + 4 KiB).", show_default=False)]
    = None,
    codec: Annotated[str | None, typer.Option("--codec", metavar="lz|lzma|stored", callback=one_of(*CODECS),
                                              help="In-place payload codec: lz (MCU, the default), lzma (hosts) "
                                              "or stored.", show_default=False)] = None,
    park: Annotated[int | None, typer.Option("--park", metavar="BLOCKS", min=0, max=inplace.MAX_PARK,
                                             help="In-place: spare blocks for breaking write-order cycles "
                                             "(default: about 6% of the slot, 4 to 32).", show_default=False)] = None,
    threads: Annotated[int | None, typer.Option("--threads", metavar="N", min=1, help="Threads to use (default: one "
                                                "per core); the patch is the same whatever their number.",
                                                show_default=False)] = None,
    compare_plain: Annotated[bool, typer.Option("--compare-plain", help="In-place: also make the plain patch and "
                                                "print the in-place penalty (as long again as a plain diff).")]
    = False,
    extreme: Annotated[bool, typer.Option("--extreme", help="The smallest plain patch of more candidates (every "
                                          "match threshold, spans of every length, NEW coded against OLD up to 16 "
                                          "MiB), for about 4 times the diff time (up to 16) and up to 30 bytes of "
                                          "memory per OLD byte.")] = False,
) -> None:
    """Make a patch that turns OLD into NEW."""
    given = {"--block-size": block_size, "--ram": ram, "--codec": codec, "--park": park}
    if not in_place and (stray := [name for name, value in given.items() if value is not None]):
        raise UsageError(f"{', '.join(stray)} only with --in-place (a plain patch has no erase blocks)")
    if in_place and extreme:
        raise UsageError("--extreme is for plain patches (an in-place diff tries its thresholds anyway)")
    check_outputs({"-o": output}, {"OLD": old, "NEW": new}, force)
    if in_place:
        _diff_in_place(old, new, output, quiet, as_json, block_size or inplace.DEFAULT_BLOCK, ram, codec or "lz",
                       park, threads, compare_plain)
        return
    check_image_file(old, "OLD")
    check_image_file(new, "NEW")
    with DiffProgress(os.stat(new).st_size, enabled=not quiet and not as_json) as progress:
        made = fotadelta.diff_file(old, new, output, progress=progress, threads=threads, extreme=extreme)
    carries = {"delta": "delta", "full": "full (a delta would not be smaller)",
               "referenced": "referenced (coded against the old image; records would not be smaller)"}[made.kind]
    emit(quiet, as_json, f"{output}: {human_size(made.patch_bytes)}, {ratio_text(made.patch_bytes, made.new_size)}"
         f" (old {human_size(made.old_size)}, new {human_size(made.new_size)}); kind: {carries}",
         {"output": str(output), **made.to_dict()})


def _diff_in_place(old: Path, new: Path, output: Path, quiet: bool, as_json: bool, block_size: int,
                   ram: int | None, codec: str, park: int | None, threads: int | None, compare_plain: bool) -> None:
    old_image, new_image = read_image(old, "OLD"), read_image(new, "NEW")
    try:
        flash = inplace.flash_images(old_image, new_image)[1]
    except ValueError as exc:
        raise CliError(str(exc)) from None
    with DiffProgress(len(new_image), enabled=not quiet and not as_json) as progress:
        patch = inplace.diff(old_image, new_image, block_size=block_size, ram=ram, codec=codec, park=park,
                             progress=progress, threads=threads)
    write_atomic(output, patch)
    made = inplace.info(patch, old_image, new_image) if compare_plain else inplace.info(patch)
    relocated = f"; relocates {made.code} code" if made.code else ""
    if flash.layer:
        # The device's slot holds flash contents, not HEX text or UF2 blocks: that is what the
        # patch makes.
        relocated += f"; {format_name(flash.layer)} as the flash it programs from 0x{flash.base:X}"
        if flash.left_out:
            relocated += (f" (NOT updated: {flash.left_out_bytes:,} B of NEW's records "
                          f"beyond the slot, from 0x{flash.left_out[0].address:X})")
    penalty = "" if made.penalty is None else f"; {made.penalty:.3f}x the plain patch"
    emit(quiet, as_json, f"{output}: {human_size(made.patch_bytes)}, {ratio_text(made.patch_bytes, made.new_size)}; "
         f"in place, {made.block_size:,}-byte blocks, {made.work_ram:,} B work RAM{relocated}{penalty}",
         {"output": str(output), **made.to_dict()})


@command(examples=[
    "fotadelta apply v1.bin update.fdp -o v2.bin",
    "fotadelta apply v1.bin update.fdip -o v2.bin    # in place, on emulated flash",
])
def apply(
    old: Annotated[Path, typer.Argument(metavar="OLD", help="The image the patch was made from.", show_default=False)],
    patch: Annotated[Path, typer.Argument(metavar="PATCH", help="The patch file.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="FILE", help="Where to write the new image.",
                                         show_default=False)],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was written as JSON.")] = False,
    force: Annotated[bool, typer.Option("--force", "-f", help=FORCE_HELP)] = False,
) -> None:
    """Apply PATCH to OLD, writing the new image (checked against its digest).

    An in-place patch is applied the way a device would, on emulated flash."""
    check_outputs({"-o": output}, {"OLD": old, "PATCH": patch}, force)
    data = patch.read_bytes()
    in_place = inplace.is_inplace(data)
    if in_place:
        try:
            write_atomic(output, inplace.apply(old.read_bytes(), data))
        except ValueError as exc:  # (an Intel HEX or UF2 OLD that lays out no flash image)
            raise CliError(f"{old}: {exc}") from None
    else:
        fotadelta.apply_file(old, patch, output)
    size = os.stat(output).st_size
    emit(quiet, as_json, f"{output}: {human_size(size)} written, digest verified",
         {"output": str(output), "bytes": size, "kind": "in-place" if in_place else fotadelta.info(data).kind})


def _changes_row(info: PatchInfo) -> tuple[str, str]:
    """What changed in the copied bytes, as the patch groups the differences."""
    if info.differences == "bytes":
        return "changed bytes", f"{info.changed_bytes:,} (differences grouped by byte)"
    if info.differences == "sums":
        return "changed words", f"{info.changed_words:,} (differences as 32-bit sums)"
    if info.differences == "spans":
        return "changed spans", f"{info.changed_words:,} (differences as sums of {info.span_bytes}-byte spans)"
    differ = "byte differs" if info.changed_bytes == 1 else "bytes differ"
    return "changed words", f"{info.changed_words:,} ({info.changed_bytes:,} {differ})"


def _code_row(info: PatchInfo) -> tuple[str, str]:
    """The delta's code transform or relocated copies (its own stream, not in the streams
    table), or none."""
    if not info.code:
        return "code transform", "none"
    if info.relocation:
        return "code relocation", (f"{info.code}: {info.relocated_records:,} of {info.records:,} copies relocated, "
                                   f"{info.code_moves:,} moves, {info.code_bytes:,} B")
    return "code transform", (f"{info.code}: {info.code_ranges:,} code ranges, {info.code_moves:,} moves, "
                              f"{info.code_bytes:,} B")


def _info_tables(info: PatchInfo) -> list[Table | str]:
    """The human form of `fotadelta info`."""
    if info.kind == "full":
        carries = "FULL IMAGE: the patch carries the whole new image, compressed (no delta)"
    elif info.kind == "referenced":
        carries = f"new image coded by {info.streams[0].codec} against the old image (no records)"
    else:
        carries = "delta against the old image" + (" (record streams compressed as one)" if info.solid else "")
    rows = [
        ("kind", carries),
        ("format version", str(info.format_version)),
        ("patch size", f"{human_size(info.patch_bytes)}, {ratio_text(info.patch_bytes, info.new_size)}"),
        ("old image", human_size(info.old_size)),
        ("new image", human_size(info.new_size)),
        ("old fingerprint", info.old_fingerprint),
        ("new digest", info.new_digest),
    ]
    if info.layer:
        rows.append(("file layer", f"{format_name(info.layer)}: the delta is between the bytes the files program; "
                                   f"a {info.layout_bytes:,}-byte layout rebuilds the new file"))
    if info.kind == "delta":
        rows += [
            ("records", f"{info.records:,}"),
            ("copied from old", f"{info.copied_bytes:,} B"),
            _changes_row(info),
            ("inserted", f"{info.inserted_bytes:,} B"),
            _code_row(info),
        ]
    summary = grid(rows)
    streams = Table(title="streams", title_justify="left")
    streams.add_column("stream")
    streams.add_column("codec")
    streams.add_column("raw bytes", justify="right")
    streams.add_column("stored bytes", justify="right")
    for s in info.streams:
        streams.add_row(s.name, s.codec, f"{s.raw_bytes:,}", f"{s.stored_bytes:,}")
    out: list[Table | str] = [summary, streams]
    if info.kind == "full":
        out.append("This patch carries the full new image; applying it does not need the old image's "
                   "contents.")
    return out


@command(examples=["fotadelta info update.fdp", "fotadelta info --json update.fdip"])
def info(
    patch: Annotated[Path, typer.Argument(metavar="PATCH", help="The patch file.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the description as JSON.")] = False,
    old: Annotated[Path | None, typer.Option("--old", metavar="FILE", help="In-place: the image the patch was made "
                                             "from; with --new, the plain patch is made to report the in-place "
                                             "penalty.", show_default=False)] = None,
    new: Annotated[Path | None, typer.Option("--new", metavar="FILE", help="In-place: the image the patch makes.",
                                             show_default=False)] = None,
) -> None:
    """Describe PATCH: kind, sizes, hashes, streams and record counts."""
    data = patch.read_bytes()
    if (old is None) != (new is None):
        raise UsageError("give both --old and --new, or neither")
    if inplace.is_inplace(data):
        images = (read_image(old, "--old"), read_image(new, "--new")) if old and new else (None, None)
        _info_in_place(inplace.info(data, *images), as_json)
        return
    if old is not None:
        raise UsageError("--old and --new are for in-place patches")
    described = fotadelta.info(data)
    if as_json:
        sys.stdout.write(json.dumps(described.to_dict(), indent=2) + "\n")
        return
    console = Console(highlight=False)
    for part in _info_tables(described):
        console.print(part)


def _info_in_place(info: inplace.InplaceInfo, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(info.to_dict(), indent=2) + "\n")
        return
    rows = [
        ("kind", "in place: rewrites a single flash slot block by block"),
        ("format version", str(inplace.FORMAT_VERSION)),
        ("patch size", f"{human_size(info.patch_bytes)}, {ratio_text(info.patch_bytes, info.new_size)}"),
    ]
    if info.plain_patch_bytes is not None and info.penalty is not None:
        rows.append(("plain patch", f"{human_size(info.plain_patch_bytes)}; in-place penalty {info.penalty:.3f}x"))
    if info.layer is not None:
        rows.append((format_name(info.layer), f"patches the flash it programs, from 0x{info.flash_base or 0:X}; "
                     f"{info.flash_left_out or 0:,} B of records beyond the slot not updated"))
    rows += [
        ("code relocation", f"{info.code}, {info.code_moves:,} moves" if info.code else "none"),
        ("payload codec", info.codec),
        ("differences", {"bytes": "by byte", "sums": "by 4-byte word, as sums",
                         "spans": f"as sums of {info.span_bytes}-byte spans"}.get(info.differences, "by 4-byte word")),
        ("erase block", human_size(info.block_size)),
        ("park blocks", str(info.park_slots)),
        ("device work RAM", human_size(info.work_ram)),
        ("old image", human_size(info.old_size)),
        ("new image", human_size(info.new_size)),
        ("old digest", info.old_digest),
        ("new digest", info.new_digest),
    ]
    Console(highlight=False).print(grid(rows))


@command(examples=[
    "fotadelta powercut v1.bin v2.bin --block-size 4096",
    "fotadelta powercut v1.bin --patch update.fdip --every 10",
])
def powercut(
    old: Annotated[Path, typer.Argument(metavar="OLD", help="The image the device has now.", show_default=False)],
    new: Annotated[Path | None, typer.Argument(metavar="NEW", help="The image to update it to (or give --patch).",
                                               show_default=False)] = None,
    patch: Annotated[Path | None, typer.Option("--patch", metavar="FILE", help="An in-place patch to test instead "
                                               "of making one.", show_default=False)] = None,
    block_size: Annotated[int | None, typer.Option("--block-size", metavar="BYTES", callback=check_block_size,
                                                   help="Erase-block size for a patch made from NEW (default "
                                                   f"{inplace.DEFAULT_BLOCK}).", show_default=False)] = None,
    ram: Annotated[int | None, typer.Option("--ram", metavar="BYTES", min=1, help="Work RAM limit for a patch made "
                                            "from NEW.", show_default=False)] = None,
    every: Annotated[int, typer.Option("--every", metavar="N", min=1, help="Cut the power after every N-th flash "
                                       "operation.")] = 1,
    write_size: Annotated[int, typer.Option("--write-size", metavar="BYTES", min=1, help="Flash programming "
                                            "granularity: a power of two dividing the erase block.")] = 4,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Prove an in-place update survives power loss: cut after every operation, reboot, resume.

    Each recovery is cut once more at a random point (double fault) before it may finish. Prints
    a JSON summary and exits 1 if any scenario did not end with exactly the new image."""
    if (new is None) == (patch is None):
        raise UsageError("give either NEW or --patch FILE")
    if patch is not None and (block_size is not None or ram is not None):
        raise UsageError("--block-size and --ram describe a patch made from NEW; --patch carries its own")
    if write_size & (write_size - 1) or write_size > (block_size or inplace.DEFAULT_BLOCK):
        raise UsageError(f"--write-size {write_size}: a power of two no larger than the erase block")
    old_image = read_image(old, "OLD")
    expected = read_image(new, "NEW") if new is not None else None
    if patch is not None:
        data = patch.read_bytes()
        if not inplace.is_inplace(data):
            raise CliError(f"{patch} is not an in-place patch (make one with `fotadelta diff --in-place`)")
    try:
        if patch is None:
            assert expected is not None
            data = inplace.diff(old_image, expected, block_size=block_size or inplace.DEFAULT_BLOCK, ram=ram)
        with count_bar("power cuts", quiet) as progress:
            report = inplace.powercut(old_image, data, expected=expected, every=every, write_size=write_size,
                                      progress=progress)
    except ValueError as exc:  # (Intel HEX or UF2 images that lay out no flash image)
        raise CliError(str(exc)) from None
    sys.stdout.write(json.dumps(report.to_dict()) + "\n")
    if report.failed:
        raise typer.Exit(1)
