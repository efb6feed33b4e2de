"""What every command shares: the typer app, error reporting, sizes, tables and progress bars.

Every command is registered through `command()`, which turns the errors a user can cause (a bad
or corrupt patch, a missing file, the wrong source image) into one line on stderr and exit
status 1. Add a command by writing a function in the module of its group and decorating it
with `@command()`."""

import functools
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from fotadelta import PatchError

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


def command(name: str | None = None, *, group: typer.Typer | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Register a function as a command (of a command group, if given), with the shared error handling around it."""

    def register(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except (CliError, PatchError, OSError, ValueError, MemoryError) as exc:
                raise fail(_error_message(exc)) from None
            except KeyboardInterrupt:
                raise fail("interrupted", 130) from None

        (group or app).command(name)(run)
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


def admin_request(method: str, url: str, token: str | None, **kwargs: object) -> object:
    """A call to a running server's operator API; its JSON answer, or CliError with the server's reason."""
    import httpx
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(method, url, headers=headers, timeout=60.0, **kwargs)  # type: ignore[arg-type]
    except httpx.HTTPError as exc:
        raise CliError(f"{url}: {exc}") from None
    if response.status_code >= 300:
        raise CliError(f"{url}: HTTP {response.status_code}: {response.text.strip()}")
    return response.json()


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
