"""What every command shares: the typer app, help and error reporting, argument checks, output.

Every command is registered through `command()`, which gives it git-style help (real metavars,
examples) and turns the errors a user can cause (a bad or corrupt patch, a missing file, the
wrong source image) into one line on stderr and exit status 1. Bad arguments are usage errors:
one line naming the argument, exit status 2 (`main`). Add a command by writing a function in
the module of its group and decorating it with `@command(examples=[...])`. The exit statuses
are listed in docs/cli.md."""

import functools
import importlib
import json
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, Self, TypeVar

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
from typer.core import TyperArgument, TyperCommand, TyperOption

import fotadelta
from fotadelta import PatchError
from fotadelta.inplace.format import MAX_BLOCK, MIN_BLOCK

if TYPE_CHECKING:  # (cryptography is imported only by the commands that sign or verify)
    from fotadelta.package.signing import PrivateKey, PublicKey, TrustStore

# Typer 0.29 runs on its own copy of click, older versions on click itself: take whichever it uses.
_ClickException: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_globals: Any = importlib.import_module(typer.BadParameter.__module__.rpartition(".")[0] + ".globals")

P = ParamSpec("P")
R = TypeVar("R")

PROG = "fotadelta"
EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
# The diff progress bar appears at once for new images from this size on, else only once the
# diff has been running this long.
PROGRESS_MIN_BYTES = 1 << 20
PROGRESS_DELAY_S = 0.5

app = typer.Typer(
    name=PROG,
    help="Firmware-over-the-air updates: binary deltas, signed packages, OMA DM delivery.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help in the manner of git and zstd, not boxes
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


class CliError(Exception):
    """A failure to report to the user as `fotadelta: error: <message>` (exit status 1)."""


class UsageError(CliError):
    """Arguments that do not go together (exit status 2)."""


class HelpCommand(TyperCommand):
    """A command whose help reads like git's: `Usage: fotadelta diff [OPTIONS] OLD NEW`, each
    argument and option with its metavar, then examples."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        params = self.get_params(ctx)
        pieces = [self.options_metavar] if self.options_metavar and any(
            isinstance(p, TyperOption) for p in params) else []
        for p in params:
            if isinstance(p, TyperArgument):
                name = _argument_name(p)
                pieces.append(name if p.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        params = self.get_params(ctx)
        args = [(_argument_name(p), getattr(p, "help", None) or "") for p in params
                if isinstance(p, TyperArgument) and not getattr(p, "hidden", False)]
        opts = [(r[0], _without_range(r[1])) for p in params
                if isinstance(p, TyperOption) and (r := p.get_help_record(ctx)) is not None]
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        if opts:
            with formatter.section("Options"):
                formatter.write_dl(opts)


_RANGE = re.compile(r"(?:; )?(?:-?[\d.]+<=?)?x(?:[<>]=?-?[\d.]+)?(?=[;\]])")


def _without_range(help: str) -> str:
    """Help without typer's "[x>=1]" range notes: the help text says what is allowed, in words."""
    return _RANGE.sub("", help).replace("[; ", "[").replace("  []", "").rstrip()


def _argument_name(p: Any) -> str:
    name: str = p.metavar or (p.name or "").upper()
    return name if p.nargs == 1 or name.endswith("...") else f"{name}..."


def _examples(lines: Sequence[str]) -> str | None:
    # "\b" keeps click from re-wrapping the paragraph.
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines) if lines else None


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


def fail(message: str, status: int = EXIT_FAILURE) -> typer.Exit:
    """Print `fotadelta: error: message` on stderr; returns the Exit to raise."""
    sys.stderr.write(f"{PROG}: error: {' '.join(message.split())}\n")
    sys.stderr.flush()
    return typer.Exit(status)


def command(name: str | None = None, *, group: typer.Typer | None = None, examples: Sequence[str] = ()
            ) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Register a function as a command (of a command group, if given), with examples for its help and
    the shared error handling."""

    def register(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except UsageError as exc:
                ctx = _globals.get_current_context(silent=True)
                hint = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
                raise fail(f"{exc}{hint}", EXIT_USAGE) from None
            except (CliError, PatchError, OSError, ValueError, MemoryError) as exc:
                raise fail(_error_message(exc)) from None
            except KeyboardInterrupt:
                raise fail("interrupted", EXIT_INTERRUPTED) from None

        (group or app).command(name, cls=HelpCommand, epilog=_examples(examples))(run)
        return fn

    return register


def main(args: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status. Usage errors become one line, status 2."""
    try:
        status = app(args=args, prog_name=PROG, standalone_mode=False)
    except _ClickException as exc:
        text: str = exc.format_message()  # type: ignore[attr-defined]
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.stdout.write(f"{text}\n")  # `fotadelta` alone: the overview
            return EXIT_USAGE
        ctx = getattr(exc, "ctx", None)
        hint = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
        message = text.rstrip(".")
        fail(message[:1].lower() + message[1:] + hint)
        code: int = getattr(exc, "exit_code", EXIT_USAGE)
        return code
    except typer.Abort:
        fail("interrupted")
        return EXIT_INTERRUPTED
    return status if isinstance(status, int) else 0


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
    """Firmware-over-the-air updates: binary deltas, signed packages, OMA DM delivery.

    Start with `fotadelta demo`, or the walkthrough in docs/quickstart.md. Each command's -h shows
    its options and examples; exit statuses are 0 (done), 1 (failed), 2 (bad arguments)."""


# -- argument checks: each raises typer.BadParameter, which names the argument ------------------


def check_block_size(value: int | None) -> int | None:
    """An erase-block size: a power of two an in-place patch can describe."""
    if value is None:
        return None
    if value <= 0 or value & (value - 1):
        raise typer.BadParameter(f"{value} is not a power of two (erase blocks are {MIN_BLOCK:,} to {MAX_BLOCK:,} "
                                 "bytes)")
    if not MIN_BLOCK <= value <= MAX_BLOCK:
        raise typer.BadParameter(f"{value:,} is out of range (erase blocks are {MIN_BLOCK:,} to {MAX_BLOCK:,} bytes)")
    return value


def check_validation_string(value: str | None) -> str | None:
    """The operator's SIM validation string: 16 bytes as 32 hex digits."""
    if value is None:
        return None
    if len(value) != 32:
        raise typer.BadParameter(f"{len(value)} characters given; it takes 32 hex digits (16 bytes)")
    try:
        bytes.fromhex(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not hexadecimal (32 digits 0-9, a-f)") from None
    return value.lower()


_NAME = re.compile(r"[^\s/\\]{1,64}")


def check_name(value: str | None) -> str | None:
    """A make, model or version: 1 to 64 bytes of printable text without spaces or slashes (it names
    files and index entries)."""
    if value is not None and not (_NAME.fullmatch(value) and value.isprintable() and len(value.encode()) <= 64):
        raise typer.BadParameter(f"{value!r}: use 1 to 64 printable characters without spaces or slashes")
    return value


def check_imei(value: str | None) -> str | None:
    """An IMEI (15 digits) or IMEISV (16); a leading IMEI: is accepted."""
    if value is None:
        return None
    digits = value.removeprefix("IMEI:")
    if not (digits.isascii() and digits.isdigit() and 14 <= len(digits) <= 16):
        raise typer.BadParameter(f"{value!r} is not an IMEI (14 to 16 digits, e.g. 490154203237518)")
    return digits


def check_lang(value: str) -> str:
    """A language code such as en or deu."""
    if not (value.isascii() and value.isalpha() and 2 <= len(value) <= 3):
        raise typer.BadParameter(f"{value!r} is not a language code (two or three letters, e.g. en)")
    return value.lower()


def check_url(value: str | None) -> str | None:
    """A server's base URL: http(s)://host[:port]."""
    if value is None:
        return None
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise typer.BadParameter(f"{value!r} is not an http:// or https:// URL (e.g. http://127.0.0.1:8080)")
    return value.rstrip("/")


def one_of(*choices: str) -> Callable[[str | None], str | None]:
    """A check that the value is one of choices."""
    def check(value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value
    return check


def check_text(value: str | None) -> str | None:
    """A secret or token: not empty."""
    if value is not None and not value.strip():
        raise typer.BadParameter("must not be empty")
    return value


def check_outputs(outputs: dict[str, Path | None], inputs: dict[str, Path | None], force: bool) -> None:
    """Refuse to write an output over one of the inputs (unless force)."""
    if force:
        return
    for out_name, out in outputs.items():
        if out is None or not out.exists():
            continue
        for in_name, src in inputs.items():
            if src is not None and src.exists() and os.path.samefile(out, src):
                raise UsageError(f"{out_name} {out} is the same file as {in_name}; give --force to overwrite it")


def read_image(path: Path, what: str) -> bytes:
    """A firmware image from a file; an empty one is refused (there is nothing to update)."""
    data = path.read_bytes()
    if not data:
        raise CliError(f"{path} ({what}) is empty: a firmware image has at least one byte")
    return data


def check_image_file(path: Path, what: str) -> None:
    """Like read_image, for files that are read elsewhere (memory-mapped)."""
    if os.stat(path).st_size == 0:
        raise CliError(f"{path} ({what}) is empty: a firmware image has at least one byte")


def load_private_key(path: Path) -> "PrivateKey":
    """A signing key from a PEM file; a file that is not one is named in the error."""
    from fotadelta.package import signing
    try:
        return signing.load_private(path.read_bytes())
    except (ValueError, TypeError) as exc:
        raise CliError(f"{path}: not a usable private signing key ({_first_sentence(exc)})") from None


def load_public_keys(paths: Sequence[Path]) -> "TrustStore":
    """A trust store of the PEM public keys in paths; a file that is not one is named in the error."""
    from fotadelta.package import signing
    keys: list[PublicKey] = []
    for path in paths:
        try:
            keys.append(signing.load_public(path.read_bytes()))
        except (ValueError, TypeError) as exc:
            raise CliError(f"{path}: not a usable public key ({_first_sentence(exc)})") from None
    return signing.TrustStore.of(keys)


def _first_sentence(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.split(". ")[0].rstrip(".")


def emit(quiet: bool, as_json: bool, text: str, data: Any) -> None:
    """A command's result: data as JSON with --json, else text unless -q."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif not quiet and text:
        sys.stdout.write(text + "\n")


def group(name: str, help: str) -> typer.Typer:
    """A command group (`fotadelta NAME COMMAND`), with the app's help settings; register its commands
    with `command(..., group=...)`."""
    sub = typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=None,
                      context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
    app.add_typer(sub, name=name)
    return sub


# -- the operator API of a running server ------------------------------------------------------

DEFAULT_SERVER = "http://127.0.0.1:8080"  # where `fotadelta serve` listens by default
SERVER_ENV, TOKEN_ENV = "FOTADELTA_SERVER", "FOTADELTA_ADMIN_TOKEN"


def server_option() -> Any:
    return typer.Option("--server", metavar="URL", envvar=SERVER_ENV, callback=check_url,
                        help=f"The DM server's base URL (default {DEFAULT_SERVER}, or ${SERVER_ENV}).",
                        show_default=False, show_envvar=False)


def token_option() -> Any:
    return typer.Option("--admin-token", metavar="TOKEN", envvar=TOKEN_ENV, callback=check_text,
                        help=f"The server's operator token (or ${TOKEN_ENV}; a server without one takes "
                        "loopback callers).", show_default=False, show_envvar=False)


def operator_request(method: str, url: str, token: str | None, **kwargs: Any) -> Any:
    """One operator API request; its JSON answer, or a one-line error saying what the server said."""
    import httpx
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(method, url, headers=headers, timeout=60.0, **kwargs)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the server at {url}: {exc}") from None
    if response.status_code >= 300:
        said = " ".join(response.text.split()) or response.reason_phrase
        hint = {401: " (give --admin-token)", 403: " (run it on the server's machine or give --admin-token)"}
        raise CliError(f"{url}: HTTP {response.status_code}: {said}{hint.get(response.status_code, '')}")
    try:
        return response.json()
    except ValueError:
        raise CliError(f"{url}: the answer is not JSON: is this a fotadelta server?") from None


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def human_size(n: int) -> str:
    """Bytes in a short human form: 1,156,000 B (1.1 MiB)."""
    if n < 1024:
        return f"{n:,} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024:
            break
    return f"{n:,} B ({value:.1f} {unit})"


def ratio_text(patch_bytes: int, new_size: int) -> str:
    if new_size == 0:
        return "n/a"
    return f"{100 * patch_bytes / new_size:.2f}% of the new image"


def grid(rows: list[tuple[str, str]]) -> Table:
    """Key/value rows as a borderless two-column table, keys in bold."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    return table


@contextmanager
def count_bar(label: str, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A progress(done, total) callback drawing a transient "label [bar] done/total" on stderr."""
    with Progress(TextColumn(label), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=stderr_console(), transient=True, disable=quiet) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


class DiffProgress:
    """A progress(done, total) callback that shows a rich bar on a terminal, once the diff is
    large (PROGRESS_MIN_BYTES) or slow (PROGRESS_DELAY_S); a no-op otherwise."""

    def __init__(self, new_size: int, enabled: bool = True, console: Console | None = None) -> None:
        self._console = console if console is not None else stderr_console()
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
