"""OMA DM delivery: serve, device (an emulated one), and the operator's publish, assign, jobs, fleet."""

import contextlib
import errno
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fotadelta import inplace
from fotadelta.cli.common import (
    DEFAULT_SERVER,
    TOKEN_ENV,
    CliError,
    UsageError,
    check_block_size,
    check_imei,
    check_lang,
    check_name,
    check_outputs,
    check_text,
    check_url,
    check_validation_string,
    command,
    emit,
    load_public_keys,
    one_of,
    operator_pages,
    operator_request,
    read_image,
    server_option,
    token_option,
)
from fotadelta.dm.fumo import describe
from fotadelta.files import write_atomic

API = "/api/v1"  # the operator API (docs/fleet.md)


def _json_option(what: str) -> Any:
    return typer.Option("--json", help=f"Print {what} as JSON.")


QUIET = typer.Option("--quiet", "-q", help="Print nothing on success.")


@command(examples=[
    "fotadelta serve --data server --port 8080",
    "fotadelta serve --db postgresql+psycopg://fota@db/fota --publish repo/ --admin-token \"$TOKEN\"",
    "fotadelta serve --db postgresql+psycopg://fota@db/fota --workers 4 --host 0.0.0.0",
])
def serve(
    db: Annotated[str | None, typer.Option("--db", metavar="URL", help="Database URL (SQLAlchemy); default SQLite "
                                           "in --data.", show_default=False)] = None,
    data: Annotated[Path, typer.Option("--data", metavar="DIR", help="Directory for packages (and the default "
                                       "database).")] = Path("fotadelta-server"),
    host: Annotated[str, typer.Option("--host", metavar="ADDRESS", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", min=1, max=65535, help="Port to listen on.")] = 8080,
    public_url: Annotated[str | None, typer.Option("--public-url", metavar="URL", callback=check_url,
                                                   help="Base URL devices reach the server at (default "
                                                   "http://ADDRESS:PORT).", show_default=False)] = None,
    publish: Annotated[list[Path] | None, typer.Option("--publish", metavar="PACKAGE|DIR", help="Publish a package "
                                                       "(or every package of a repository directory) at start; "
                                                       "repeatable.", show_default=False)] = None,
    factory_secret: Annotated[str | None, typer.Option("--factory-secret", metavar="SECRET", callback=check_text,
                                                       help="Enrol unknown devices whose credentials derive from "
                                                       "this secret (default: the demo secret).",
                                                       show_default=False)] = None,
    no_enrol: Annotated[bool, typer.Option("--no-enrol", help="Accept provisioned devices only.")] = False,
    admin_token: Annotated[str | None, typer.Option("--admin-token", metavar="TOKEN", envvar=TOKEN_ENV,
                                                    callback=check_text, help="Token for the operator API "
                                                    f"(or ${TOKEN_ENV}; default: programs on this host need no token).",
                                                    show_default=False, show_envvar=False)] = None,
    dm_path: Annotated[list[str] | None, typer.Option("--dm-path", metavar="PATH", help="Path of the DM endpoint "
                                                      "(default /dm); repeatable, or a comma list.",
                                                      show_default=False)] = None,
    server_id: Annotated[str, typer.Option("--server-id", metavar="ID", help="The server's id: its user name in "
                                           "its credentials and in package #0.")] = "fotadelta",
    snmp_port: Annotated[int | None, typer.Option("--snmp-port", metavar="PORT", min=0, max=65535,
                                                  help="Listen for devices' SNMP software-request traps on this "
                                                  "UDP port (0: any free one).", show_default=False)] = None,
    push_network: Annotated[list[str] | None, typer.Option("--push-network", metavar="CIDR", help="A network HTTP "
                                                           "push may reach; repeatable. Default: loopback only.",
                                                           show_default=False)] = None,
    limit: Annotated[list[str] | None, typer.Option("--limit", metavar="NAME=N", help="Change a limit (see "
                                                    "docs/security.md); repeatable.", show_default=False)] = None,
    workers: Annotated[int, typer.Option("--workers", metavar="N", min=1, max=64, help="Server processes on the "
                                         "one port; any of them serves any message of any session.")] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No start-up lines.")] = False,
) -> None:
    """Run the OMA DM server: DM sessions at /dm, downloads at /packages/ID, the portal at /portal/DEVICE,
    the fleet API at /api/v1 (OpenAPI at /openapi.json), the web console at /console/. Stop it with Ctrl-C.

    With --workers N, N processes share the port (and the database: SQLite, or better PostgreSQL with
    --db); this process supervises them (restarting one that dies), and runs the schema migrations and
    the campaign scheduler, once."""
    import dataclasses
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from fotadelta.dm.provisioning import DEMO_SECRET
    from fotadelta.server import DmServer, ServerConfig, create_app
    from fotadelta.server.app import tune_gc
    from fotadelta.server.limits import Limits
    from fotadelta.server.push import HttpPush, PushPolicy
    paths = tuple(p.strip() for arg in dm_path or ["/dm"] for p in arg.split(",") if p.strip())
    limits: dict[str, int] = {}
    for item in limit or []:
        name, _, value = item.partition("=")
        if name not in Limits.names() or not value.isdigit():
            raise UsageError(f"--limit {item!r}: give NAME=N with NAME one of {', '.join(Limits.names())}")
        limits[name] = int(value)
    try:
        checked = dataclasses.replace(Limits(), **limits)
    except ValueError as exc:
        raise UsageError(f"--limit: {exc}") from None
    try:
        policy = PushPolicy(networks=tuple(push_network)) if push_network else PushPolicy()
    except ValueError as exc:
        raise UsageError(f"--push-network: {exc}") from None
    if snmp_port is not None and workers > 1:
        # (The trap listener and the requests it keeps until the device's session live in one process.)
        raise UsageError("--snmp-port works with one worker only (--workers 1)")
    public = public_url or f"http://{f'[{host}]' if ':' in host else host}:{port}"
    try:
        config = ServerConfig(data, public, db_url=db,
                              factory_secret=None if no_enrol else factory_secret or DEMO_SECRET,
                              admin_token=admin_token, limits=checked, push_policy=policy, dm_paths=paths,
                              server_id=server_id, snmp_host=host, snmp_port=snmp_port, workers=workers)
    except ValueError as exc:  # (--dm-path, --server-id)
        raise UsageError(str(exc)) from None
    # Bound before anything is said or stored: a busy port is one clear error, not a banner and a traceback.
    listener = _listen(host, port)
    try:
        server = DmServer(config, push=HttpPush(policy=policy))
    except (SQLAlchemyError, ImportError) as exc:
        listener.close()
        raise CliError(f"--db {config.database}: {' '.join(str(exc).split()).split(' (Background')[0]}") from None
    except OSError as exc:  # (the SNMP trap port)
        listener.close()
        raise CliError(f"cannot listen for SNMP traps on udp {host}:{snmp_port}: {exc.strerror or exc}") from None
    say = (lambda text: None) if quiet else (lambda text: sys.stdout.write(text + "\n"))
    files = [f for p in publish or [] for f in (sorted(p.glob("*.fdpkg")) if p.is_dir() else [p])]
    for f in files:
        row = server.publish(f.read_bytes())
        say(f"published {row.name} ({row.size:,} B) as package {row.id}")
    if server.replanned:
        say(f"{server.replanned} update chain(s) interrupted at the last stop planned on")
    urls = ", ".join(f"{config.public_url}{p}" for p in paths)
    say(f"fotadelta DM server {server_id} at {urls}, fleet state in {_redacted(config.database)}"
        f"{f', {workers} worker processes' if workers > 1 else ''} (Ctrl-C to stop)")
    say(f"web console at {config.public_url}/console/, fleet API at {config.public_url}/api/v1 "
        f"(OpenAPI at {config.public_url}/openapi.json)")
    if server.traps is not None:
        say(f"SNMP software-request traps on udp {host}:{server.traps.port}")
    sys.stdout.flush()
    from fotadelta.server.fleet import Fleet
    fleet = Fleet(server)
    fleet.run()  # the campaign scheduler
    # uvicorn stops on SIGINT and SIGTERM, then hands the signal back to the handler it found: for
    # SIGTERM a no-op here, for SIGINT Python's KeyboardInterrupt. Both are a clean stop.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            if workers == 1:
                app = create_app(server, fleet)
                tune_gc()
                uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[listener])
            else:
                _run_workers(config, workers, listener)
    finally:
        fleet.close()
        server.close()
    say("fotadelta DM server stopped")


def _run_workers(config: Any, workers: int, listener: socket.socket) -> None:
    """N worker processes on the listener (uvicorn's supervisor restarts one that dies); each opens the
    store itself (server.app.worker_app), the schema already brought up to date here."""
    import os

    import uvicorn

    from fotadelta.server.app import WORKER_CONFIG_ENV, Workers, config_to_json
    os.environ[WORKER_CONFIG_ENV] = config_to_json(config)
    # (A worker busy with a burst of devices may answer the supervisor's health check late: it is given
    # 30 s rather than 5 before it is taken for hung and replaced, dropping the requests it was serving.)
    uconfig = uvicorn.Config("fotadelta.server.app:worker_app", factory=True, workers=workers, log_level="warning",
                             access_log=False, timeout_worker_healthcheck=30)
    Workers(uconfig, sockets=[listener]).run()


def _redacted(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # (not a URL SQLAlchemy reads: shown as given, it held no parsable password)
        return url


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CliError(f"cannot listen on {host}:{port}: the address is in use (is another server running? "
                           "give another --port)") from None
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


@command(examples=[
    "fotadelta device --server http://127.0.0.1:8080 --imei 490154203237518 --image v1.bin --version 1.0 \\",
    "    --pubkey signing.key.pub              # listens for updates until Ctrl-C",
    "fotadelta device --imei 490154203237518 --image v1.bin --pubkey signing.key.pub --once --request-software",
])
def device(
    imei: Annotated[str, typer.Option("--imei", metavar="IMEI", callback=check_imei,
                                      help="The device's IMEI, 15 digits (its DM DevId is the IMEI with the prefix IMEI:).",
                                      show_default=False)],
    server: Annotated[str, server_option()] = DEFAULT_SERVER,
    image: Annotated[Path | None, typer.Option("--image", metavar="FILE", help="The firmware the device runs "
                                               "(default: a generated 64 KiB image).", show_default=False)] = None,
    make: Annotated[str, typer.Option("--make", metavar="MAKE", callback=check_name, help="Device manufacturer.")]
    = "Acme",
    model: Annotated[str, typer.Option("--model", metavar="MODEL", callback=check_name, help="Device model.")]
    = "S1",
    version: Annotated[str, typer.Option("--version", metavar="VERSION", callback=check_name,
                                         help="The firmware's version.")] = "1.0",
    pubkey: Annotated[list[Path] | None, typer.Option("--pubkey", metavar="FILE", help="A trusted package-signing "
                                                      "key (PEM); repeatable.", show_default=False)] = None,
    validation: Annotated[str | None, typer.Option("--validation-string", metavar="HEX",
                                                   callback=check_validation_string,
                                                   help="The SIM's 16-byte operator validation string (32 hex "
                                                   "digits); default an unsecured SIM.", show_default=False)] = None,
    auth_type: Annotated[str, typer.Option("--auth", metavar="md5|basic|hmac", callback=one_of("md5", "basic", "hmac"),
                                           help="How the device authenticates (the server enrols it for this "
                                           "scheme on first contact).")] = "md5",
    encoding: Annotated[str, typer.Option("--encoding", metavar="xml|wbxml", callback=one_of("xml", "wbxml"),
                                          help="SyncML encoding.")] = "xml",
    lang: Annotated[str, typer.Option("--lang", metavar="LANG", callback=check_lang,
                                      help="./DevInfo/Lang, e.g. en, de, fr, es.")] = "en",
    block_size: Annotated[int, typer.Option("--block-size", metavar="BYTES", callback=check_block_size,
                                            help="Erase-block size.")] = inplace.DEFAULT_BLOCK,
    listen: Annotated[int, typer.Option("--listen", metavar="PORT", min=0, max=65535,
                                        help="Port for push notifications (0: any free port).")] = 0,
    factory_secret: Annotated[str | None, typer.Option("--factory-secret", metavar="SECRET", callback=check_text,
                                                       help="Derive the DM credentials from this secret (default: "
                                                       "the demo secret).", show_default=False)] = None,
    request_software: Annotated[bool, typer.Option("--request-software", help="Ask the server for software and "
                                                   "install the newest offer.")] = False,
    once: Annotated[bool, typer.Option("--once", help="Run one session (and its update), then exit; exit status 1 "
                                       "if an update failed.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", metavar="FILE", help="Write the final image here "
                                                "on exit.", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Write -o even if it is the --image file.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print failed updates only.")] = False,
    as_json: Annotated[bool, _json_option("each event (one object per line)")] = False,
) -> None:
    """Run an emulated device: registers with the DM server, then updates whenever it is notified.

    Every update's outcome is printed, failures with their FUMO result code and its meaning.
    Ctrl-C or SIGTERM stops a listening device cleanly (exit status 0)."""
    import random

    from fotadelta import sim
    from fotadelta.dm.client import Report, SessionError
    from fotadelta.dm.codec import Encoding
    from fotadelta.dm.provisioning import DEMO_SECRET
    from fotadelta.emulator import Fleet, make_client
    check_outputs({"-o": output}, {"--image": image}, force)
    card = sim.Sim.secured(bytes.fromhex(validation)) if validation else sim.Sim()
    firmware = read_image(image, "--image") if image else random.Random(imei).randbytes(64 * 1024)
    trust = load_public_keys(pubkey or [])
    dev_id = f"IMEI:{imei}"
    log = _DeviceLog(dev_id, quiet, as_json)
    if not pubkey:
        log.warn("no --pubkey: every package will be refused (FUMO 404)")
    try:
        fleet = None if once else Fleet(port=listen)
    except OSError as exc:
        raise CliError(f"cannot listen for notifications on 127.0.0.1:{listen}: {exc.strerror or exc}") from None
    client = make_client(firmware, dev_id=dev_id, make=make, model=model, version=version,
                         server_url=server + "/dm", trust=trust, sim_card=card,
                         secret=factory_secret or DEMO_SECRET, auth=auth_type,
                         encoding=Encoding.XML if encoding == "xml" else Encoding.WBXML, lang=lang,
                         block_size=block_size, push_url=fleet.push_url(dev_id) if fleet else None)
    failures: list[Report] = []

    def on_result(report: Report) -> None:
        if not 200 <= report.code < 300:
            failures.append(report)
        log.result(report, client.device.version)

    client.on_result = on_result
    try:
        if request_software:
            client.request_software(lambda offers: len(offers) - 1 if offers else None)
            if not client.offers:
                log.say("offers", f"the server has no software for {make} {model} {client.device.version}",
                        offers=[])
        else:
            client.run()
        log.say("registered", f"{make} {model} at {client.device.version}, {len(client.sessions)} session(s)",
                version=client.device.version, sessions=len(client.sessions))
        if fleet is not None:
            fleet.add(client)
            stop = threading.Event()
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: stop.set())
            log.say("listening", f"listening for notifications at {fleet.push_url(dev_id)} (Ctrl-C to stop)",
                    push_url=fleet.push_url(dev_id))
            while not stop.wait(0.2):
                for err in fleet.errors(dev_id):
                    log.warn(err)
                fleet.errors(dev_id).clear()
    except SessionError as exc:
        raise CliError(str(exc)) from None
    finally:
        if fleet is not None:
            fleet.running.stop()
            log.say("stopped", f"stopped at {client.device.version}", version=client.device.version)
        if output is not None:
            write_atomic(output, client.device.image())
    if once and failures:
        last = failures[-1]
        raise CliError(f"update failed: FUMO {last.code} ({describe(last.code)}): {last.message}")


class _DeviceLog:
    """What a device prints: one line per event (or one JSON object per line); thread-safe, since
    results arrive on the notification worker's thread."""

    def __init__(self, dev_id: str, quiet: bool, as_json: bool) -> None:
        self.dev_id, self.quiet, self.as_json = dev_id, quiet, as_json
        self._lock = threading.Lock()

    def say(self, event: str, text: str, *, failed: bool = False, **fields: object) -> None:
        with self._lock:
            if self.as_json:
                sys.stdout.write(json.dumps({"event": event, "device": self.dev_id, **fields}) + "\n")
            elif not self.quiet or failed:
                sys.stdout.write(f"{self.dev_id}: {text}\n")
            sys.stdout.flush()

    def warn(self, text: str) -> None:
        with self._lock:
            sys.stderr.write(f"fotadelta: warning: {self.dev_id}: {text}\n")
            sys.stderr.flush()

    def result(self, report: Any, version: str) -> None:
        ok = 200 <= report.code < 300
        what = f"updated, now at {version}" if ok else "update failed"
        self.say("result", f"{what}: FUMO {report.code} ({describe(report.code)}): {report.message}",
                 failed=not ok, code=report.code, meaning=describe(report.code), message=report.message,
                 version=version)


@command(examples=["fotadelta publish update.fdpkg --server http://127.0.0.1:8080",
                   "fotadelta publish repo/*.fdpkg --admin-token \"$TOKEN\""])
def publish(
    packages: Annotated[list[Path], typer.Argument(metavar="PACKAGE...", help="Signed packages to publish.",
                                                   show_default=False)],
    server: Annotated[str, server_option()] = DEFAULT_SERVER,
    token: Annotated[str | None, token_option()] = None,
    quiet: Annotated[bool, QUIET] = False,
    as_json: Annotated[bool, _json_option("the published packages")] = False,
) -> None:
    """Publish update packages on a running DM server, released to every device they fit (the fleet
    API's releases: POST /api/v1/releases; use the API or the console to test with a group first)."""
    rows = []
    for p in packages:
        row = operator_request("POST", f"{server}{API}/releases", token, params={"state": "released"},
                               content=p.read_bytes(), headers={"content-type": "application/octet-stream"})
        rows.append({"file": str(p), **row})
        if not quiet and not as_json:
            sys.stdout.write(f"{p}: package {row['package_id']} ({row['name']}), {row['state']}\n")
    emit(True, as_json, "", rows)


@command(examples=[
    "fotadelta assign --imei 490154203237518 --to 1.1 --server http://127.0.0.1:8080 --wait",
    "fotadelta assign --imei 490154203237518 --to 1.2 --no-notify    # at the device's next session",
])
def assign(
    imei: Annotated[str, typer.Option("--imei", metavar="IMEI", callback=check_imei, help="The device's IMEI.",
                                      show_default=False)],
    to_version: Annotated[str, typer.Option("--to", metavar="VERSION", callback=check_name,
                                            help="The version to bring it to (a chain if needed).",
                                            show_default=False)],
    server: Annotated[str, server_option()] = DEFAULT_SERVER,
    notify: Annotated[bool, typer.Option("--notify/--no-notify", help="Send package #0 now.")] = True,
    inline: Annotated[bool, typer.Option("--inline", help="Send the package in the DM session (large object) "
                                         "instead of a download URL.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the device reports the result; exit status 1 if "
                                       "the update failed.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", metavar="SECONDS", min=0.1, help="How long --wait waits.")]
    = 300.0,
    token: Annotated[str | None, token_option()] = None,
    quiet: Annotated[bool, QUIET] = False,
    as_json: Annotated[bool, _json_option("the job (and with --wait its outcome)")] = False,
) -> None:
    """Ask a running DM server to update a device (and notify it).

    The server plans the cheapest chain of packages the device can install; if there is none (say,
    only a plain patch for a single-slot device) it answers why, and nothing is assigned."""
    if wait and not notify:
        raise UsageError("--wait needs --notify: without it the device updates only at its next session")
    dev_id = f"IMEI:{imei}"
    job = operator_request("POST", f"{server}{API}/devices/{dev_id}/update", token,
               json={"version": to_version, "notify": notify, "delivery": "inline" if inline else "download"})
    if notify and not job["notified"]:
        raise CliError(f"{dev_id}: job {job['job']} to {to_version} is planned, but the notification failed: "
                       f"{job['notify_error']} (the device gets the job at its next session)")
    if not quiet and not as_json:
        sys.stdout.write(f"{dev_id}: job {job['job']} to {to_version}" + (", notified\n" if notify else "\n"))
        sys.stdout.flush()
    if not wait:
        emit(True, as_json, "", {"device": dev_id, **job})
        return
    outcome = _wait_for(server, token, dev_id, int(job["job"]), to_version, timeout)
    emit(quiet, as_json, f"{dev_id}: {_outcome_text(outcome)}", {"device": dev_id, **job, "outcome": outcome})
    if outcome["state"] != "succeeded":
        raise typer.Exit(1)


def _wait_for(server: str, token: str | None, dev_id: str, first_job: int, goal: str,
              timeout: float) -> dict[str, Any]:
    """The job of the chain that ends it: the one that reached goal, or the one that failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for j in operator_pages(f"{server}{API}/jobs", token, {"device": dev_id}, "id", after=first_job - 1):
            if j["state"] in ("failed", "declined", "cancelled") or (j["state"] == "succeeded" and
                                                                     j["to_version"] == goal):
                return dict(j)
        time.sleep(0.25)
    raise CliError(f"{dev_id} did not finish the update to {goal} within {timeout:g} s (see fotadelta jobs)")


def _outcome_text(job: dict[str, Any]) -> str:
    if job["state"] == "succeeded":
        return f"updated to {job['to_version']} (job {job['id']}, FUMO 200)"
    code = job["result_code"]
    why = f"FUMO {code} ({describe(code)})" if code is not None else job["message"]
    return f"update to {job['to_version']} {job['state']}: {why} (job {job['id']})"


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "never"


@command(examples=["fotadelta jobs --server http://127.0.0.1:8080",
                   "fotadelta jobs --device 490154203237518 --json"])
def jobs(
    device_id: Annotated[str | None, typer.Option("--device", metavar="IMEI|DEVID", help="One device's jobs (an "
                                                  "IMEI or a full DevId).", show_default=False)] = None,
    server: Annotated[str, server_option()] = DEFAULT_SERVER,
    token: Annotated[str | None, token_option()] = None,
    as_json: Annotated[bool, _json_option("the jobs")] = False,
) -> None:
    """List update jobs: device, package, chain goal, state, and the FUMO result in words."""
    dev_id = None
    if device_id is not None:
        try:
            dev_id = device_id if ":" in device_id else f"IMEI:{check_imei(device_id)}"
        except typer.BadParameter as exc:
            raise UsageError(f"--device: {exc}") from None
    found = operator_pages(f"{server}{API}/jobs", token, {"device": dev_id} if dev_id else {}, "id", after=0)

    def row(j: dict[str, Any]) -> list[str]:
        result = f"{j['result_code']} {j['result']}" if j["result_code"] is not None else j["message"] or "-"
        return [str(j["id"]), j["device"], f"{j['from_version']} -> {j['to_version']}", j["goal"], j["state"], result,
                _when(j["updated"])]

    _listing(found, as_json, "no jobs", ("job", "device", "update", "goal", "state", "result", "updated"), row)


@command(examples=["fotadelta fleet --server http://127.0.0.1:8080", "fotadelta fleet --json"])
def fleet(
    server: Annotated[str, server_option()] = DEFAULT_SERVER,
    token: Annotated[str | None, token_option()] = None,
    as_json: Annotated[bool, _json_option("the devices")] = False,
) -> None:
    """List the server's devices: make, model, version, last contact and latest job."""
    found = operator_pages(f"{server}{API}/devices", token, {}, "dev_id", after="")

    def row(d: dict[str, Any]) -> list[str]:
        latest = d["latest_job"]
        job = "-" if latest is None else f"{latest['id']} {latest['state']}" + (
            f" ({latest['result_code']} {describe(latest['result_code'])})" if latest["result_code"] is not None
            else "")
        return [d["dev_id"], d["make"], d["model"], d["version"] or "?", " ".join(d["update_kinds"]) or "?",
                _when(d["last_seen"]), job]

    _listing(found, as_json, "no devices",
             ("device", "make", "model", "version", "installs", "last contact", "latest job"), row)


def _listing(items: list[dict[str, Any]], as_json: bool, nothing: str, columns: tuple[str, ...],
             row: Callable[[dict[str, Any]], list[str]]) -> None:
    """A listing from the operator API: JSON as it came, or a table (wide enough to read when piped)."""
    if as_json:
        sys.stdout.write(json.dumps(items, indent=2) + "\n")
    elif not items:
        sys.stdout.write(nothing + "\n")
    else:
        table = Table(*columns, box=None, pad_edge=False, header_style="bold")
        for item in items:
            table.add_row(*row(item))
        Console(highlight=False, width=max(100, Console().width)).print(table)
