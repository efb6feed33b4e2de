"""The `fotadelta` command line: one function per command on a typer app.

Every command is registered through `command()`, which turns the errors a user can cause (a bad
or corrupt patch, a missing file, the wrong source image) into one line on stderr and exit
status 1. Add a command by writing a function and decorating it with `@command()`."""

import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Annotated, ParamSpec, Self, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

import fotadelta
from fotadelta import PatchError, PatchInfo, inplace

P = ParamSpec("P")
R = TypeVar("R")

PROG = "fotadelta"
# The diff progress bar appears at once for new images from this size on, else only once the
# diff has been running this long.
PROGRESS_MIN_BYTES = 1 << 20
PROGRESS_DELAY_S = 0.5

app = typer.Typer(
    name=PROG,
    help="Firmware-over-the-air binary deltas: make, apply and inspect patches.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class CliError(Exception):
    """A failure to report to the user as `fotadelta: error: <message>`."""


def _error_message(exc: BaseException) -> str:
    """One line describing exc for the user."""
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        if exc.filename2 is not None:
            where = f"{where} -> {exc.filename2}"
        text = f"{where}: {exc.strerror}" if where else exc.strerror
    elif isinstance(exc, MemoryError):
        text = "out of memory"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def fail(message: str, status: int = 1) -> typer.Exit:
    """Print `fotadelta: error: message` on stderr; returns the Exit to raise."""
    sys.stderr.write(f"{PROG}: error: {' '.join(message.split())}\n")
    sys.stderr.flush()
    return typer.Exit(status)


def command(name: str | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Register a function as a command, with the shared error handling around it."""

    def register(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except (CliError, PatchError, OSError, ValueError, MemoryError) as exc:
                raise fail(_error_message(exc)) from None
            except KeyboardInterrupt:
                raise fail("interrupted", 130) from None

        app.command(name)(run)
        return fn

    return register


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"{PROG} {fotadelta.__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Firmware-over-the-air binary deltas: make, apply and inspect patches."""


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def _size(n: int) -> str:
    """Bytes in a short human form: 1,156,000 B (1.1 MiB)."""
    if n < 1024:
        return f"{n:,} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024:
            break
    return f"{n:,} B ({value:.1f} {unit})"


def _ratio(patch_bytes: int, new_size: int) -> str:
    if new_size == 0:
        return "n/a"
    return f"{100 * patch_bytes / new_size:.2f}% of the new image"


def _grid(rows: list[tuple[str, str]]) -> Table:
    """Key/value rows as a borderless two-column table, keys in bold."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    return table


@contextmanager
def _count_bar(label: str, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A progress(done, total) callback drawing a transient "label [bar] done/total" on stderr."""
    with Progress(TextColumn(label), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=_stderr(), transient=True, disable=quiet) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


class DiffProgress:
    """A progress(done, total) callback that shows a rich bar on a terminal, once the diff is
    large (PROGRESS_MIN_BYTES) or slow (PROGRESS_DELAY_S); a no-op otherwise."""

    def __init__(self, new_size: int, enabled: bool = True, console: Console | None = None) -> None:
        self._console = console if console is not None else _stderr()
        self._enabled = enabled and self._console.is_terminal
        self._lock = threading.Lock()
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._done = 0
        self._total = max(new_size, 1)
        self._timer: threading.Timer | None = None
        self._eager = new_size >= PROGRESS_MIN_BYTES

    def __enter__(self) -> Self:
        if self._enabled:
            if self._eager:
                self._show()
            else:
                self._timer = threading.Timer(PROGRESS_DELAY_S, self._show)
                self._timer.daemon = True
                self._timer.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            self._enabled = False
            if self._bar is not None:
                self._bar.stop()
                self._bar = None

    def _show(self) -> None:
        with self._lock:
            if not self._enabled or self._bar is not None:
                return
            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                console=self._console, transient=True,
            )
            self._task = self._bar.add_task("matching", total=self._total, completed=self._done)
            self._bar.start()
            self._update()

    def _update(self) -> None:
        if self._bar is not None and self._task is not None:
            described = "compressing" if self._done >= self._total else "matching"
            self._bar.update(self._task, completed=self._done, total=self._total, description=described)

    def __call__(self, done: int, total: int) -> None:
        with self._lock:
            self._done, self._total = done, max(total, 1)
            self._update()


@command()
def diff(
    old: Annotated[Path, typer.Argument(metavar="OLD", help="The image the device has now.", show_default=False)],
    new: Annotated[Path, typer.Argument(metavar="NEW", help="The image to update it to.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the patch.",
                                         show_default=False)],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
    in_place: Annotated[bool, typer.Option("--in-place", help="Make a patch a single-slot device applies in place.")]
    = False,
    block_size: Annotated[int, typer.Option("--block-size", help="In-place: the device's erase-block size in bytes.")]
    = inplace.DEFAULT_BLOCK,
    ram: Annotated[int | None, typer.Option("--ram", help="In-place: the most work RAM the device may use, bytes.",
                                            show_default=False)] = None,
    codec: Annotated[str, typer.Option("--codec", help="In-place payload codec: lz (MCU), lzma (hosts) or stored.")]
    = "lz",
    park: Annotated[int | None, typer.Option("--park", help="In-place: spare blocks for breaking write-order cycles "
                                             "(default: about 6% of the slot, 4 to 32 blocks).", show_default=False)] = None,
) -> None:
    """Make a patch that turns OLD into NEW."""
    if in_place:
        _diff_in_place(old, new, output, quiet, block_size, ram, codec, park)
        return
    with DiffProgress(os.stat(new).st_size, enabled=not quiet) as progress:
        made = fotadelta.diff_file(old, new, output, progress=progress)
    if not quiet:
        carries = "delta" if made.kind == "delta" else "full (a delta would not be smaller)"
        sys.stdout.write(f"{output}: {_size(made.patch_bytes)}, {_ratio(made.patch_bytes, made.new_size)}"
                         f" (old {_size(made.old_size)}, new {_size(made.new_size)}); kind: {carries}\n")


def _diff_in_place(old: Path, new: Path, output: Path, quiet: bool, block_size: int, ram: int | None,
                   codec: str, park: int | None) -> None:
    old_image, new_image = old.read_bytes(), new.read_bytes()
    with DiffProgress(len(new_image), enabled=not quiet) as progress:
        patch = inplace.diff(old_image, new_image, block_size=block_size, ram=ram, codec=codec, park=park,
                             progress=progress)
    output.write_bytes(patch)
    if not quiet:
        made = inplace.info(patch)
        sys.stdout.write(f"{output}: {_size(made.patch_bytes)}, {_ratio(made.patch_bytes, made.new_size)}; in place, "
                         f"{made.block_size:,}-byte blocks, {made.work_ram:,} B work RAM; "
                         f"{made.penalty:.3f}x the plain patch\n")


@command()
def apply(
    old: Annotated[Path, typer.Argument(metavar="OLD", help="The image the patch was made from.", show_default=False)],
    patch: Annotated[Path, typer.Argument(metavar="PATCH", help="The patch file.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the new image.",
                                         show_default=False)],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
) -> None:
    """Apply PATCH to OLD, writing the new image (checked against its digest).

    An in-place patch is applied the way a device would, on emulated flash."""
    data = patch.read_bytes()
    if inplace.is_inplace(data):
        output.write_bytes(inplace.apply(old.read_bytes(), data))
    else:
        fotadelta.apply_file(old, patch, output)
    if not quiet:
        sys.stdout.write(f"{output}: {_size(os.stat(output).st_size)} written, digest verified\n")


def _info_tables(info: PatchInfo) -> list[Table | str]:
    """The human form of `fotadelta info`."""
    if info.kind == "full":
        carries = "FULL IMAGE: the patch carries the whole new image, compressed (no delta)"
    else:
        carries = "delta against the old image" + (" (record streams compressed as one)" if info.solid else "")
    rows = [
        ("kind", carries),
        ("format version", str(info.format_version)),
        ("patch size", f"{_size(info.patch_bytes)}, {_ratio(info.patch_bytes, info.new_size)}"),
        ("old image", _size(info.old_size)),
        ("new image", _size(info.new_size)),
        ("old fingerprint", info.old_fingerprint),
        ("new digest", info.new_digest),
    ]
    if info.kind == "delta":
        rows += [
            ("records", f"{info.records:,}"),
            ("copied from old", f"{info.copied_bytes:,} B"),
            ("changed words", f"{info.changed_words:,} ({info.changed_bytes:,} bytes differ)"),
            ("inserted", f"{info.inserted_bytes:,} B"),
        ]
    summary = _grid(rows)
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


@command()
def info(
    patch: Annotated[Path, typer.Argument(metavar="PATCH", help="The patch file.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the description as JSON.")] = False,
) -> None:
    """Describe PATCH: kind, sizes, hashes, streams and record counts."""
    data = patch.read_bytes()
    if inplace.is_inplace(data):
        _info_in_place(inplace.info(data), as_json)
        return
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
    table = _grid([
        ("kind", "in place: rewrites a single flash slot block by block"),
        ("patch size", f"{_size(info.patch_bytes)}, {_ratio(info.patch_bytes, info.new_size)}"),
        ("plain patch", f"{_size(info.plain_patch_bytes)}; in-place penalty {info.penalty:.3f}x"),
        ("payload codec", info.codec),
        ("erase block", _size(info.block_size)),
        ("park blocks", str(info.park_slots)),
        ("device work RAM", _size(info.work_ram)),
        ("old image", _size(info.old_size)),
        ("new image", _size(info.new_size)),
        ("old digest", info.old_digest),
        ("new digest", info.new_digest),
    ])
    Console(highlight=False).print(table)


@command()
def powercut(
    old: Annotated[Path, typer.Argument(metavar="OLD", help="The image the device has now.", show_default=False)],
    new: Annotated[Path | None, typer.Argument(metavar="NEW", help="The image to update it to (or give --patch).",
                                               show_default=False)] = None,
    patch: Annotated[Path | None, typer.Option("--patch", help="An in-place patch to test instead of making one.",
                                               show_default=False)] = None,
    block_size: Annotated[int, typer.Option("--block-size", help="Erase-block size for a patch made from NEW.")]
    = inplace.DEFAULT_BLOCK,
    ram: Annotated[int | None, typer.Option("--ram", help="Work RAM limit for a patch made from NEW, bytes.",
                                            show_default=False)] = None,
    every: Annotated[int, typer.Option("--every", min=1, help="Cut the power after every N-th flash operation.")] = 1,
    write_size: Annotated[int, typer.Option("--write-size", help="Flash programming granularity, bytes.")] = 4,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Prove an in-place update survives power loss: cut after every operation, reboot, resume.

    Each recovery is cut once more at a random point (double fault) before it may finish. Prints
    a JSON summary and exits 1 if any scenario did not end with exactly the new image."""
    if (new is None) == (patch is None):
        raise CliError("give either NEW or --patch PATCH")
    old_image = old.read_bytes()
    expected = new.read_bytes() if new is not None else None
    if patch is not None:
        data = patch.read_bytes()
        if not inplace.is_inplace(data):
            raise CliError(f"{patch} is not an in-place patch (make one with `fotadelta diff --in-place`)")
    else:
        assert expected is not None
        data = inplace.diff(old_image, expected, block_size=block_size, ram=ram)
    with _count_bar("power cuts", quiet) as progress:
        report = inplace.powercut(old_image, data, expected=expected, every=every, write_size=write_size,
                                  progress=progress)
    sys.stdout.write(json.dumps(report.to_dict()) + "\n")
    if report.failed:
        raise typer.Exit(1)


@command()
def demo(
    pairs: Annotated[Path | None, typer.Option("--pairs", help="A directory of <pair>/old and <pair>/new to take "
                                               "the firmware from.", show_default=False)] = None,
) -> None:
    """The main job: a DM server and emulated devices updating over OMA DM on real firmware."""
    from fotadelta import demo as demo_job
    try:
        demo_job.run(pairs)
    except demo_job.DemoError as exc:
        raise CliError(str(exc)) from None


@command()
def keygen(
    output: Annotated[Path, typer.Option("--output", "-o", help="Private key file (PEM); the public key goes to "
                                         "OUTPUT.pub.", show_default=False)],
    algorithm: Annotated[str, typer.Option("--algorithm", help="ed25519 or p256 (ECDSA P-256).")] = "ed25519",
) -> None:
    """Make a package-signing key pair."""
    from fotadelta.package import signing
    algorithms = {"ed25519": signing.Algorithm.ED25519, "p256": signing.Algorithm.ECDSA_P256_SHA256}
    if algorithm not in algorithms:
        raise CliError(f"unknown algorithm {algorithm!r} (choose ed25519 or p256)")
    key = signing.generate(algorithms[algorithm])
    pub = output.with_name(output.name + ".pub")
    output.write_bytes(signing.private_pem(key))
    os.chmod(output, 0o600)
    pub.write_bytes(signing.public_pem(key.public_key()))
    sys.stdout.write(f"{output}: private key; {pub}: public key; key id {signing.key_id(key.public_key()).hex()}\n")


@command()
def pack(
    old: Annotated[Path, typer.Argument(metavar="OLD", help="The image devices have now.", show_default=False)],
    new: Annotated[Path, typer.Argument(metavar="NEW", help="The image to update them to.", show_default=False)],
    key: Annotated[Path, typer.Option("--key", help="Private signing key (PEM).", show_default=False)],
    make: Annotated[str, typer.Option("--make", help="Device manufacturer.", show_default=False)],
    model: Annotated[str, typer.Option("--model", help="Device model.", show_default=False)],
    from_version: Annotated[str, typer.Option("--from", help="Version the package updates from.",
                                              show_default=False)],
    to_version: Annotated[str, typer.Option("--to", help="Version it updates to.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the package.", show_default=False)],
    validation_string: Annotated[str | None, typer.Option("--validation-string", help="Operator's 16-byte SIM "
                                                          "validation string, 32 hex digits.",
                                                          show_default=False)] = None,
    content_type: Annotated[str, typer.Option("--content-type", help="firmware, application or configuration "
                                              "(OLD and NEW then hold JSON objects of string values).")]
    = "firmware",
    target: Annotated[str, typer.Option("--target", help="What is updated: firmware, an application's file name, "
                                        "a configuration's name.")] = "firmware",
    in_place: Annotated[bool, typer.Option("--in-place", help="Carry an in-place patch.")] = False,
    full: Annotated[bool, typer.Option("--full", help="Carry the full new image (with --from '*' it installs over "
                                       "any version and OLD is not read).")] = False,
    block_size: Annotated[int, typer.Option("--block-size", help="In-place: erase-block size.")]
    = inplace.DEFAULT_BLOCK,
    ram: Annotated[int | None, typer.Option("--ram", help="In-place: work RAM limit, bytes.",
                                            show_default=False)] = None,
) -> None:
    """Make a signed update package taking OLD to NEW."""
    from fotadelta import package
    from fotadelta.package import signing
    validation = package.NO_VALIDATION
    if validation_string is not None:
        try:
            validation = bytes.fromhex(validation_string)
        except ValueError:
            raise CliError("--validation-string must be hexadecimal") from None
        if len(validation) != package.VALIDATION_LEN:
            raise CliError(f"--validation-string must be {package.VALIDATION_LEN} bytes (32 hex digits)")
    kinds = {t.name.lower(): t for t in package.ContentType}
    if content_type not in kinds:
        raise CliError(f"unknown content type {content_type!r} (choose {', '.join(kinds)})")
    if full and in_place:
        raise CliError("--full and --in-place exclude each other")
    old_bytes = b"" if from_version == package.ANY_VERSION else old.read_bytes()
    new_bytes = new.read_bytes()
    if kinds[content_type] == package.ContentType.CONFIGURATION:
        from fotadelta.agent import config_bytes
        old_bytes, new_bytes = (config_bytes(json.loads(b)) for b in (old_bytes, new_bytes))
    made = package.pack(old_bytes, new_bytes, signing.load_private(key.read_bytes()), make=make, model=model,
                        from_version=from_version, to_version=to_version, content_type=kinds[content_type],
                        target=target, validation=validation, in_place=in_place, block_size=block_size, ram=ram,
                        full_image=full)
    output.write_bytes(made)
    sys.stdout.write(f"{output}: {_size(len(made))}, {make} {model} {from_version} -> {to_version}\n")


@command()
def verify(
    pkg: Annotated[Path, typer.Argument(metavar="PKG", help="The package file.", show_default=False)],
    pubkey: Annotated[list[Path], typer.Option("--pubkey", help="A trusted public key (PEM); repeat for several.",
                                               show_default=False)],
) -> None:
    """Check a package's structure and signature against trusted keys; exit 1 if it fails."""
    from fotadelta import package
    from fotadelta.package import signing
    trust = signing.TrustStore.of(signing.load_public(p.read_bytes()) for p in pubkey)
    checked = package.verify(pkg.read_bytes(), trust)
    sys.stdout.write(f"{pkg}: signature OK (key {checked.signer.hex()}, {checked.algorithm.name.lower()})\n")


@command()
def inspect(
    pkg: Annotated[Path, typer.Argument(metavar="PKG", help="The package file.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the description as JSON.")] = False,
) -> None:
    """Describe a package (without checking its signature: use `verify` for that)."""
    from fotadelta import package
    described = package.parse(pkg.read_bytes()).to_dict()
    if as_json:
        sys.stdout.write(json.dumps(described, indent=2) + "\n")
        return
    table = _grid([(k.replace("_", " "), json.dumps(v) if isinstance(v, dict) else str(v))
                   for k, v in described.items()])
    Console(highlight=False).print(table)


@command("build-repo")
def build_repo(
    releases: Annotated[list[str], typer.Argument(metavar="VERSION=IMAGE...", help="Released images, oldest first.",
                                                  show_default=False)],
    key: Annotated[Path, typer.Option("--key", help="Private signing key (PEM).", show_default=False)],
    make: Annotated[str, typer.Option("--make", help="Device manufacturer.", show_default=False)],
    model: Annotated[str, typer.Option("--model", help="Device model.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Repository directory.", show_default=False)],
    block_size: Annotated[int, typer.Option("--block-size", help="Erase-block size of the devices.")]
    = inplace.DEFAULT_BLOCK,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    full_images: Annotated[bool, typer.Option("--full-images", help="Also package each release as a full image "
                                              "installable over any version.")] = False,
) -> None:
    """Package every release against every later one, in parallel, and write the repository index."""
    from fotadelta import chain
    from fotadelta.package import signing
    images = []
    for item in releases:
        version, sep, path = item.partition("=")
        if not sep or not version or not path:
            raise CliError(f"{item!r}: give releases as VERSION=IMAGE")
        images.append((version, Path(path).read_bytes()))
    if len(images) < 2:
        raise CliError("a repository needs at least two releases")
    signer = signing.load_private(key.read_bytes())
    with _count_bar("packaging", quiet) as progress:
        index = chain.build_repo(images, output, signer, make=make, model=model, block_size=block_size,
                                 progress=progress, full_images=full_images)
    sys.stdout.write(f"{output}: {len(index.entries)} packages for {make} {model}, "
                     f"{sum(e.size for e in index.entries):,} bytes\n")


@command("chain")
def chain_command(
    repo: Annotated[Path, typer.Option("--repo", help="Repository directory.", show_default=False)],
    make: Annotated[str, typer.Option("--make", help="Device manufacturer.", show_default=False)],
    model: Annotated[str, typer.Option("--model", help="Device model.", show_default=False)],
    from_version: Annotated[str, typer.Option("--from", help="The device's version.", show_default=False)],
    image: Annotated[Path, typer.Option("--image", help="The device's current image.", show_default=False)],
    pubkey: Annotated[list[Path], typer.Option("--pubkey", help="A trusted public key (PEM); repeat for several.",
                                               show_default=False)],
    to_version: Annotated[str, typer.Option("--to", help="Target version, or latest.")] = "latest",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the updated image here.",
                                                show_default=False)] = None,
) -> None:
    """Plan the cheapest package chain and apply it to an emulated device in one session."""
    from fotadelta import chain
    from fotadelta.agent import Device, Outcome
    from fotadelta.package import signing
    from fotadelta.sim import Sim, handoff
    index = chain.Index.load(repo)
    target = None if to_version == "latest" else to_version
    steps = chain.plan(index, make, model, from_version, target)
    sys.stdout.write("plan: " + (" -> ".join([from_version, *(s.to_version for s in steps)]) if steps
                                 else "already up to date") + f" ({sum(s.size for s in steps):,} bytes)\n")
    from fotadelta import package
    # Full images need no particular block size; the device's comes from its in-place packages.
    block_size = next((b for b in (package.parse((repo / e.file).read_bytes()).manifest.block_size
                                   for e in index.entries if (e.make, e.model) == (make, model)) if b),
                      inplace.DEFAULT_BLOCK)
    trust = signing.TrustStore.of(signing.load_public(p.read_bytes()) for p in pubkey)
    device = Device.with_image(image.read_bytes(), make=make, model=model, version=from_version,
                                       trust=trust, nvm=handoff(Sim()), block_size=block_size,
                                       park_blocks=inplace.MAX_PARK)

    def report(step: chain.Entry, o: Outcome) -> None:
        sys.stdout.write(f"  {step.from_version} -> {step.to_version}: {o.code.value} {o.message}\n")

    outcome = chain.run(device, repo, target, report=report)
    if not outcome.ok:
        raise CliError(f"update stopped: {outcome.code.value} {outcome.message}")
    if output is not None:
        output.write_bytes(device.image())


@command()
def serve(
    db: Annotated[str | None, typer.Option("--db", help="Database URL (SQLAlchemy); default SQLite in --data.",
                                           show_default=False)] = None,
    data: Annotated[Path, typer.Option("--data", help="Directory for packages (and the default database).")]
    = Path("fotadelta-server"),
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8080,
    public_url: Annotated[str | None, typer.Option("--public-url", help="Base URL devices reach the server at "
                                                   "(default http://HOST:PORT).", show_default=False)] = None,
    publish: Annotated[list[Path] | None, typer.Option("--publish", help="Publish a package (or every package of a "
                                                       "repository directory) at start; repeatable.",
                                                       show_default=False)] = None,
    factory_secret: Annotated[str | None, typer.Option("--factory-secret", help="Enrol unknown devices whose "
                                                       "credentials derive from this secret (default: the demo "
                                                       "secret).", show_default=False)] = None,
    no_enrol: Annotated[bool, typer.Option("--no-enrol", help="Accept provisioned devices only.")] = False,
    admin_token: Annotated[str | None, typer.Option("--admin-token", envvar="FOTADELTA_ADMIN_TOKEN",
                                                    help="Token for the operator API (default: loopback callers "
                                                    "only).", show_default=False)] = None,
) -> None:
    """Run the OMA DM server: DM sessions at /dm, downloads at /packages/ID, the portal at /portal/DEVICE."""
    import uvicorn
    from fotadelta.dm.provisioning import DEMO_SECRET
    from fotadelta.server import DmServer, ServerConfig, create_app
    from fotadelta.server.push import HttpPush
    config = ServerConfig(data, public_url or f"http://{host}:{port}", db_url=db,
                          factory_secret=None if no_enrol else factory_secret or DEMO_SECRET, admin_token=admin_token)
    server = DmServer(config, push=HttpPush())
    files = [f for p in publish or [] for f in (sorted(p.glob("*.fdpkg")) if p.is_dir() else [p])]
    for f in files:
        row = server.publish(f.read_bytes())
        sys.stdout.write(f"published {row.name} ({row.size:,} B) as package {row.id}\n")
    if server.recovered:
        sys.stdout.write(f"{server.recovered} session(s) in flight at the last stop were failed cleanly\n")
    sys.stdout.write(f"fotadelta DM server at {config.public_url}/dm, fleet state in {config.database}\n")
    sys.stdout.flush()
    uvicorn.run(create_app(server), host=host, port=port, log_level="warning")


@command()
def device(
    server: Annotated[str, typer.Option("--server", help="The DM server's base URL, e.g. http://127.0.0.1:8080.",
                                        show_default=False)],
    imei: Annotated[str, typer.Option("--imei", help="The device's IMEI (its DevId is IMEI:<imei>).",
                                      show_default=False)],
    image: Annotated[Path | None, typer.Option("--image", help="The firmware the device runs (default: a generated "
                                               "64 KiB image).", show_default=False)] = None,
    make: Annotated[str, typer.Option("--make", help="Device manufacturer.")] = "Acme",
    model: Annotated[str, typer.Option("--model", help="Device model.")] = "Sensor",
    version: Annotated[str, typer.Option("--version", help="The firmware's version.")] = "1.0",
    pubkey: Annotated[list[Path] | None, typer.Option("--pubkey", help="A trusted package-signing key (PEM); "
                                                      "repeatable.", show_default=False)] = None,
    validation: Annotated[str | None, typer.Option("--validation-string", help="The SIM's 16-byte operator "
                                                   "validation string (32 hex digits); default an unsecured SIM.",
                                                   show_default=False)] = None,
    auth_type: Annotated[str, typer.Option("--auth", help="md5, basic or hmac.")] = "md5",
    encoding: Annotated[str, typer.Option("--encoding", help="xml or wbxml.")] = "xml",
    lang: Annotated[str, typer.Option("--lang", help="./DevInfo/Lang.")] = "en",
    block_size: Annotated[int, typer.Option("--block-size", help="Erase-block size.")] = inplace.DEFAULT_BLOCK,
    listen: Annotated[int, typer.Option("--listen", help="Port for push notifications (0: any).")] = 0,
    factory_secret: Annotated[str | None, typer.Option("--factory-secret", help="Derive the DM credentials from "
                                                       "this secret (default: the demo secret).",
                                                       show_default=False)] = None,
    request_software: Annotated[bool, typer.Option("--request-software", help="Ask the server for software and "
                                                   "install the newest offer.")] = False,
    once: Annotated[bool, typer.Option("--once", help="Run one session (and its update), then exit.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the final image here on exit.",
                                                show_default=False)] = None,
) -> None:
    """Run an emulated device: registers with the DM server, then updates whenever it is notified."""
    import random
    import time
    from fotadelta import sim
    from fotadelta.dm.client import SessionError
    from fotadelta.dm.codec import Encoding
    from fotadelta.dm.provisioning import DEMO_SECRET
    from fotadelta.emulator import Fleet, make_client
    from fotadelta.package import signing
    if auth_type not in ("md5", "basic", "hmac"):
        raise CliError(f"unknown --auth {auth_type!r} (md5, basic or hmac)")
    if encoding not in ("xml", "wbxml"):
        raise CliError(f"unknown --encoding {encoding!r} (xml or wbxml)")
    try:
        card = sim.Sim.secured(bytes.fromhex(validation)) if validation else sim.Sim()
    except ValueError:
        raise CliError("--validation-string takes 32 hex digits") from None
    firmware = image.read_bytes() if image else random.Random(imei).randbytes(64 * 1024)
    trust = signing.TrustStore.of(signing.load_public(p.read_bytes()) for p in pubkey or [])
    if not pubkey:
        _stderr().print("fotadelta: warning: no --pubkey: every package will be refused (404)")
    fleet = None if once else Fleet(port=listen)
    dev_id = f"IMEI:{imei}"
    client = make_client(firmware, dev_id=dev_id, make=make, model=model, version=version,
                         server_url=server.rstrip("/") + "/dm", trust=trust, sim_card=card,
                         secret=factory_secret or DEMO_SECRET, auth=auth_type,
                         encoding=Encoding.XML if encoding == "xml" else Encoding.WBXML, lang=lang,
                         block_size=block_size, push_url=fleet.push_url(dev_id) if fleet else None)
    out = Console(highlight=False)
    try:
        if request_software:
            client.request_software(lambda offers: len(offers) - 1 if offers else None)
        else:
            client.run()
        out.print(f"{dev_id}: {make} {model} at {client.device.version}, {len(client.sessions)} session(s)")
        if fleet is not None:
            fleet.add(client)
            signal.signal(signal.SIGTERM, _interrupt)  # stop as on Ctrl-C: the image is still written
            out.print(f"listening for notifications at {fleet.push_url(dev_id)} (Ctrl-C to stop)")
            seen = client.device.version
            while True:
                time.sleep(0.5)
                if client.device.version != seen:
                    seen = client.device.version
                    out.print(f"{dev_id}: updated to {seen}")
                for err in fleet.errors(dev_id):
                    out.print(f"{dev_id}: {err}")
                fleet.errors(dev_id).clear()
    except SessionError as exc:
        raise CliError(str(exc)) from None
    finally:
        if fleet is not None:
            fleet.running.stop()
            out.print(f"{dev_id}: stopped at {client.device.version}")
        if output is not None:
            output.write_bytes(client.device.image())


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _admin_post(url: str, token: str | None, **kwargs: object) -> dict[str, object]:
    import httpx
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.post(url, headers=headers, timeout=60.0, **kwargs)  # type: ignore[arg-type]
    except httpx.HTTPError as exc:
        raise CliError(f"{url}: {exc}") from None
    if response.status_code >= 300:
        raise CliError(f"{url}: HTTP {response.status_code}: {response.text.strip()}")
    result: dict[str, object] = response.json()
    return result


@command()
def publish(
    packages: Annotated[list[Path], typer.Argument(metavar="PACKAGE...", help="Signed packages to publish.",
                                                   show_default=False)],
    server: Annotated[str, typer.Option("--server", help="The DM server's base URL.", show_default=False)],
    token: Annotated[str | None, typer.Option("--admin-token", envvar="FOTADELTA_ADMIN_TOKEN",
                                              help="The server's admin token.", show_default=False)] = None,
) -> None:
    """Publish update packages on a running DM server."""
    for p in packages:
        row = _admin_post(f"{server.rstrip('/')}/api/packages", token, content=p.read_bytes())
        sys.stdout.write(f"{p}: package {row['id']} ({row['name']})\n")


@command()
def assign(
    imei: Annotated[str, typer.Option("--imei", help="The device's IMEI.", show_default=False)],
    to_version: Annotated[str, typer.Option("--to", help="The version to bring it to (a chain if needed).",
                                            show_default=False)],
    server: Annotated[str, typer.Option("--server", help="The DM server's base URL.", show_default=False)],
    notify: Annotated[bool, typer.Option("--notify/--no-notify", help="Send package #0 now.")] = True,
    inline: Annotated[bool, typer.Option("--inline", help="Send the package in the DM session (large object) "
                                         "instead of a download URL.")] = False,
    token: Annotated[str | None, typer.Option("--admin-token", envvar="FOTADELTA_ADMIN_TOKEN",
                                              help="The server's admin token.", show_default=False)] = None,
) -> None:
    """Ask a running DM server to update a device (and notify it)."""
    job = _admin_post(f"{server.rstrip('/')}/api/devices/IMEI:{imei}/update", token,
                      json={"version": to_version, "notify": notify, "delivery": "inline" if inline else "download"})
    sys.stdout.write(f"IMEI:{imei}: job {job['job']} to {to_version}" + (", notified\n" if notify else "\n"))


def main() -> None:
    """Entry point of the `fotadelta` script."""
    app(prog_name=PROG)


if __name__ == "__main__":
    main()
