"""OMA DM delivery: serve, device, publish, assign."""

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fotadelta import inplace
from fotadelta.cli.common import CliError, command, stderr_console


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
    dm_path: Annotated[list[str] | None, typer.Option("--dm-path", help="Path of the DM endpoint (default /dm); "
                                                      "repeatable, or a comma list.", show_default=False)] = None,
    server_id: Annotated[str, typer.Option("--server-id", help="The server's id: its user name in its "
                                           "credentials and in package #0.")] = "fotadelta",
    snmp_port: Annotated[int | None, typer.Option("--snmp-port", help="Listen for devices' SNMP software-request "
                                                  "traps on this UDP port.", show_default=False)] = None,
    push_network: Annotated[list[str] | None, typer.Option("--push-network", help="A network HTTP push may reach "
                                                           "(CIDR); repeatable. Default: loopback only.",
                                                           show_default=False)] = None,
    limit: Annotated[list[str] | None, typer.Option("--limit", metavar="NAME=N", help="Change a limit (see "
                                                    "docs/security.md); repeatable.", show_default=False)] = None,
) -> None:
    """Run the OMA DM server: DM sessions at /dm, downloads at /packages/ID, the portal at /portal/DEVICE."""
    import dataclasses
    import uvicorn
    from fotadelta.dm.provisioning import DEMO_SECRET
    from fotadelta.server import DmServer, ServerConfig, create_app
    from fotadelta.server.limits import Limits
    from fotadelta.server.push import HttpPush, PushPolicy
    paths = tuple(p.strip() for arg in dm_path or ["/dm"] for p in arg.split(",") if p.strip())
    limits: dict[str, int] = {}
    for item in limit or []:
        name, _, value = item.partition("=")
        if name not in Limits.names() or not value.isdigit():
            raise CliError(f"--limit {item!r}: give NAME=N with NAME one of {', '.join(Limits.names())}")
        limits[name] = int(value)
    try:
        policy = PushPolicy(networks=tuple(push_network)) if push_network else PushPolicy()
        config = ServerConfig(data, public_url or f"http://{host}:{port}", db_url=db,
                              factory_secret=None if no_enrol else factory_secret or DEMO_SECRET,
                              admin_token=admin_token, limits=dataclasses.replace(Limits(), **limits),
                              push_policy=policy, dm_paths=paths, server_id=server_id, snmp_host=host,
                              snmp_port=snmp_port)
    except ValueError as exc:  # (--dm-path, --server-id, --push-network, --limit values)
        raise CliError(str(exc)) from None
    server = DmServer(config, push=HttpPush(policy=policy))
    files = [f for p in publish or [] for f in (sorted(p.glob("*.fdpkg")) if p.is_dir() else [p])]
    for f in files:
        row = server.publish(f.read_bytes())
        sys.stdout.write(f"published {row.name} ({row.size:,} B) as package {row.id}\n")
    if server.recovered:
        sys.stdout.write(f"{server.recovered} session(s) in flight at the last stop were failed cleanly\n")
    urls = ", ".join(f"{config.public_url}{p}" for p in paths)
    sys.stdout.write(f"fotadelta DM server {server_id} at {urls}, fleet state in {config.database}\n")
    if server.traps is not None:
        sys.stdout.write(f"SNMP software-request traps on udp {host}:{server.traps.port}\n")
    sys.stdout.flush()
    try:
        uvicorn.run(create_app(server), host=host, port=port, log_level="warning")
    finally:
        server.close()


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
        stderr_console().print("fotadelta: warning: no --pubkey: every package will be refused (404)")
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
