"""Load and faults: `fotadelta loadtest --devices N` against a server of its own or --server URL."""

import inspect
import json
import sys
from typing import Annotated

import typer

from fotadelta.cli.common import CliError, UsageError, check_text, check_url, command, stderr_console, token_option


@command(examples=[
    "fotadelta loadtest --devices 1000                      # against a serve it starts (SQLite)",
    "fotadelta loadtest --devices 10000 --db postgresql+psycopg://fota@/fota --workers 2 \\",
    "    --kill-worker-every 20 --json",
    "fotadelta loadtest --devices 500 --server http://10.0.0.5:8080 --admin-token \"$TOKEN\"",
])
def loadtest(
    devices: Annotated[int, typer.Option("--devices", metavar="N", min=1, max=1_000_000,
                                         help="How many emulated devices.")] = 1000,
    server: Annotated[str | None, typer.Option("--server", metavar="URL", callback=check_url,
                                               help="A running server's base URL (default: start `fotadelta serve` "
                                               "on a free loopback port, in a temporary directory).",
                                               show_default=False)] = None,
    token: Annotated[str | None, token_option()] = None,
    server_pid: Annotated[int | None, typer.Option("--server-pid", metavar="PID", min=1,
                                                   help="The serve process of --server, whose workers "
                                                   "--kill-worker-every kills (it must run on this host).",
                                                   show_default=False)] = None,
    db: Annotated[str | None, typer.Option("--db", metavar="URL", callback=check_text,
                                           help="The database of the server it starts (default SQLite).",
                                           show_default=False)] = None,
    workers: Annotated[int | None, typer.Option("--workers", metavar="N", min=1, max=64,
                                                help="Worker processes of the server it starts (serve --workers).",
                                                show_default=False)] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", metavar="C", min=1, max=10_000,
                                             help="Devices in a session, download or install at once.")] = 64,
    in_flight: Annotated[int, typer.Option("--in-flight", metavar="N", min=1, max=100_000,
                                           help="The campaign's attempts in flight at once.")] = 500,
    kill_every: Annotated[float | None, typer.Option("--kill-worker-every", metavar="S", min=1.0,
                                                     help="SIGKILL a random worker of the server every S seconds "
                                                     "of the campaign, and see it respawned or restart it.",
                                                     show_default=False)] = None,
    image_size: Annotated[int, typer.Option("--image-size", metavar="BYTES", min=4096, max=16 << 20,
                                            help="The firmware image's size.")] = 64 * 1024,
    refusing: Annotated[float, typer.Option("--refusing", metavar="PERCENT", min=0.0, max=100.0,
                                            help="Devices whose SIM refuses the packages: they fail on purpose, "
                                            "with a reason.")] = 1.0,
    timeout: Annotated[float, typer.Option("--timeout", metavar="S", min=1.0,
                                           help="Judge the campaign after S seconds even if it has not finished "
                                           "(its devices not done are lost).")] = 3600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Progress on stderr, and a last line of JSON with the "
                                          "outcome on stdout.")] = False,
) -> None:
    """Load a DM server with N light emulated devices (asyncio) that check in, get a campaign to a new
    release (real DM sessions, downloads and in-place installs) and report; optionally kill its workers.

    The devices are registered and the campaign run through the fleet API with --admin-token. At the
    end the server's records are checked: every device updated or failed with a reason (else lost),
    no update job left open. Exit status 1 if any device is lost or a job left open."""
    if server is None and (token is not None or server_pid is not None):
        raise UsageError("--admin-token and --server-pid go with --server")
    if server is not None and (db is not None or workers is not None):
        raise UsageError("--db and --workers are for the server the load test starts, not with --server")
    if server is not None and kill_every is not None and server_pid is None:
        raise UsageError("--kill-worker-every with --server needs --server-pid (the serve process on this host)")
    if workers is not None and not _serve_has_workers():
        raise UsageError("--workers: this fotadelta's serve runs one process (it has no --workers)")
    from fotadelta.load import run
    err = stderr_console()
    opts = run.Options(devices, server=server, token=token, server_pid=server_pid, db=db, workers=workers,
                       concurrency=concurrency, in_flight=in_flight, kill_every=kill_every, image_size=image_size,
                       refusing=refusing, timeout=timeout)
    try:
        result = run.run(opts, err)
    except run.LoadError as exc:
        raise CliError(str(exc)) from None
    line = result.line()
    summary = (f"{result.devices} devices: {result.updated} updated, {result.failed} failed with a reason, "
               f"{result.lost} lost, {result.open_jobs} jobs left open; {result.sessions} sessions, "
               f"{result.sessions_per_s:.1f}/s, p95 {result.p95_ms:.0f} ms; {result.kills} workers killed; "
               f"{result.seconds:.1f} s")
    if as_json:
        err.print(summary)
        sys.stdout.write(json.dumps(line) + "\n")
    else:
        print(summary)
        for reason, n in sorted(result.failures.items()):
            print(f"  {n} failed: {reason}")
    if not result.ok:
        raise typer.Exit(1)


def _serve_has_workers() -> bool:
    from fotadelta.cli.dm import serve
    return "workers" in inspect.signature(serve).parameters
