"""`fotadelta demo --campaign --devices N`: a campaign over N emulated devices, end to end.

It starts a DM server (SQLite in a temporary directory) with its fleet services, imports N devices
from CSV with factory credentials, brings them up (each opens its first DM session), publishes a
1.0 -> 1.1 -> 1.2 release chain that a tester group tests first, and runs a campaign to 1.2 in
waves: the testers (whose success releases the packages), 10%, 30%, then the rest. A share of the
devices carries another operator's SIM and refuses the package (FUMO 404) on every attempt. When
the 30% wave opens, the download server fails (HTTP 503): the failure threshold suspends the
campaign and the alert webhook fires; the fault is fixed, the campaign resumed, and it finishes.

Every device ends updated or failed with a recorded reason; `lost` counts the devices for which
that is not so, or whose own state disagrees with the server's record. Devices are light: small
generated images (the same three for all), one shared HTTP client, one push listener. The operator
acts through the Python service API (`fotadelta.server.fleet.Fleet`), as the web console does."""

from __future__ import annotations

import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from fotadelta import package
from fotadelta.dm.client import DmClient
from fotadelta.emulator import Fleet as Devices
from fotadelta.emulator import make_client
from fotadelta.package.signing import TrustStore, generate
from fotadelta.server import DmServer, ServerConfig, create_app, serve_in_thread
from fotadelta.server.auth import Role
from fotadelta.server.campaigns import CampaignSpec, FailureThreshold, Targets, Wave
from fotadelta.server.fleet import Fleet
from fotadelta.server.push import HttpPush
from fotadelta.server.registry import DeviceFilter
from fotadelta.sim import Sim

MAKE, MODEL = "Acme", "Sensor"
BLOCK = 4096
IMAGE_SIZE = 12_000
OPERATOR_A = bytes.fromhex("a5" * 16)
OPERATOR_B = bytes.fromhex("b6" * 16)
FOREIGN_SHARE = 0.04  # devices with another operator's SIM: they fail on purpose
TESTERS = 10
TIMEOUT_S = 900.0
ZONES = ("Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC")


class ScenarioError(Exception):
    """The scenario could not run to its end."""


@dataclass
class Summary:
    devices: int
    succeeded: int
    failed: int
    suspended: bool
    resumed: bool
    lost: int
    seconds: float = 0.0
    alerts: list[str] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)  # reason -> devices

    def line(self) -> dict[str, Any]:
        return {"devices": self.devices, "succeeded": self.succeeded, "failed": self.failed,
                "suspended": self.suspended, "resumed": self.resumed, "lost": self.lost}


class Outage:
    """An ASGI wrapper that makes the package downloads answer 503 while `on` is set."""

    def __init__(self, app: ASGIApp) -> None:
        self.app, self.on = app, False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.on and scope["type"] == "http" and scope["path"].startswith("/packages/"):
            await PlainTextResponse("download server unavailable\n", status_code=503)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _images(seed: int = 11) -> dict[str, bytes]:
    rng = random.Random(seed)
    v10 = rng.randbytes(IMAGE_SIZE)

    def edit(image: bytes, n: int) -> bytes:
        out = bytearray(image)
        for _ in range(n):
            pos = rng.randrange(len(out) - 600)
            out[pos:pos + 300] = rng.randbytes(300)
        return bytes(out)

    v11 = edit(v10, 3)
    return {"1.0": v10, "1.1": v11, "1.2": edit(v11, 2)}


def run(devices: int, out: Console, *, seed: int = 11) -> Summary:
    """Run the scenario with this many devices (at least 20); progress goes to out."""
    if devices < 20:
        raise ScenarioError("the campaign scenario needs at least 20 devices")
    started = time.perf_counter()
    images = _images(seed)
    key = generate()
    trust = TrustStore.of([key.public_key()])
    packages = [package.pack(images[a], images[b], key, make=MAKE, model=MODEL, from_version=a, to_version=b,
                             validation=OPERATOR_A, in_place=True, block_size=BLOCK)
                for a, b in (("1.0", "1.1"), ("1.1", "1.2"))]
    alerts: list[dict[str, Any]] = []
    receiver = serve_in_thread(Starlette(routes=[Route("/alerts", _collect(alerts), methods=["POST"])]))
    with tempfile.TemporaryDirectory(prefix="fotadelta-campaign-") as tmp:
        server = DmServer(ServerConfig(Path(tmp), "http://127.0.0.1", admin_token=None), push=HttpPush())
        fleet = Fleet(server, max_in_flight=50)
        outage = Outage(create_app(server, fleet))
        http = serve_in_thread(outage)
        server.config.public_url = f"http://127.0.0.1:{http.port}"
        emulated = Devices()
        shared = httpx.Client(timeout=30.0, limits=httpx.Limits(max_connections=64))
        try:
            clients = _setup(fleet, emulated, shared, devices, images, trust, out)
            summary = _campaign(fleet, emulated, outage, packages, clients, alerts,
                                f"http://127.0.0.1:{receiver.port}/alerts", out)
        finally:
            emulated.stop()
            http.stop()
            receiver.stop()
            fleet.close()
            shared.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _collect(into: list[dict[str, Any]]) -> Any:
    async def receive(request: Request) -> Response:
        into.append(await request.json())
        return PlainTextResponse("ok\n")
    return receive


def _setup(fleet: Fleet, emulated: Devices, shared: httpx.Client, n: int, images: dict[str, bytes],
           trust: TrustStore, out: Console) -> dict[str, DmClient]:
    """Users, groups, the CSV import, credentials and each device's first session."""
    admin = fleet.auth.bootstrap_admin()
    fleet.auth.create_user(admin, "dana", "deployment-manager-password", Role.DEPLOYMENT_MANAGER)
    dana = fleet.auth.login("dana", "deployment-manager-password")
    fleet.registry.create_group(dana, "testers", "devices that get packages before everyone else")
    ids = [f"IMEI:35{i:013d}" for i in range(1, n + 1)]
    count = max(1, round(n * FOREIGN_SHARE))
    foreign = {int((k + 0.5) * n / count) for k in range(count)}  # spread over the fleet
    rows = ["dev_id,make,model,version,timezone,tags,groups"]
    for i, dev_id in enumerate(ids):
        version = "1.0" if i % 5 else "1.1"  # a fifth run 1.1: they need one package, the others a chain of two
        tester = i < TESTERS * 5 and i % 5 == 1  # testers run 1.0, so they try both packages
        rows.append(f"{dev_id},{MAKE},{MODEL},{version},{ZONES[i % len(ZONES)]},"
                    f"{'foreign-sim' if i in foreign else 'fleet'},"
                    f"{'testers' if tester else ''}")
    report = fleet.registry.import_csv(dana, "\n".join(rows) + "\n")
    if report.errors or report.created != n:
        raise ScenarioError(f"the CSV import failed: {report.errors[:3]}")
    for dev_id in ids:
        fleet.registry.set_account(dana, dev_id, factory=True)
    out.print(f"[bold]registry[/bold]: {n} devices imported from CSV, credentials assigned, "
              f"{len(fleet.registry.find(dana, DeviceFilter(group='testers')))} in the tester group")
    url = f"{fleet.server.config.public_url}/dm"
    clients: dict[str, DmClient] = {}
    for i, dev_id in enumerate(ids):
        version = "1.0" if i % 5 else "1.1"
        client = make_client(images[version], dev_id=dev_id, make=MAKE, model=MODEL, version=version, server_url=url,
                             trust=trust, sim_card=Sim.secured(OPERATOR_B if i in foreign else OPERATOR_A),
                             push_url=emulated.push_url(dev_id), block_size=BLOCK)
        client.http.close()
        client.http = shared
        client.config.backoff = 0.02
        clients[dev_id] = emulated.add(client)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda c: c.run(), clients.values()))
    counts = fleet.registry.count(dana)
    if counts["provisioned"] != n:
        raise ScenarioError(f"only {counts['provisioned']} of {n} devices were provisioned by their first session")
    out.print(f"[bold]devices[/bold]: {n} emulated devices opened their first DM session: all provisioned")
    return clients


def _campaign(fleet: Fleet, emulated: Devices, outage: Outage, packages: list[bytes], clients: dict[str, DmClient],
              alerts: list[dict[str, Any]], alert_url: str, out: Console) -> Summary:
    dana = fleet.auth.login("dana", "deployment-manager-password")
    for data in packages:
        rel = fleet.releases.publish(dana, data)
        fleet.releases.move(dana, rel.package_id, "tested", tester_group="testers")
    out.print("[bold]releases[/bold]: 1.0 -> 1.1 and 1.1 -> 1.2 published and handed to the tester group")
    spec = CampaignSpec(name="Sensor 1.2", target_version="1.2", targets=Targets(make=MAKE, model=MODEL),
                        waves=[Wave("testers", group="testers"), Wave("early", percent=10, success_threshold=75),
                               Wave("broad", percent=30, success_threshold=75)],
                        failure=FailureThreshold(percent=30, period=300, min_attempts=max(5, min(20, len(clients) // 10))),
                        max_attempts=3, retry_delay=1.0, max_in_flight=50, attempt_timeout=300, alert_url=alert_url,
                        release_after_testers=True)
    campaign = fleet.campaigns.start(dana, fleet.campaigns.create(dana, spec).id)
    out.print(f"[bold]campaign[/bold] {campaign.id}: {sum(campaign.counts.values())} devices to 1.2 in waves: "
              f"testers, 10%, 30%, the rest; suspend at 30% failed attempts")
    suspended = resumed = False
    wave = 0
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        fleet.campaigns.tick()
        c = fleet.campaigns.get(dana, campaign.id)
        if c.wave != wave:
            wave = c.wave
            out.print(f"  wave {wave} opens ({c.counts['succeeded']} updated, {c.counts['failed']} failed so far)")
            if wave == 2 and not suspended:
                outage.on = True
                out.print("  [red]the download server fails (HTTP 503)[/red]")
        if c.state == "suspended" and not suspended:
            suspended = True
            out.print(f"  [yellow]suspended[/yellow]: {c.reason}")
            emulated.wait()  # the attempts in flight end (they fail too) before the fix
            fleet.campaigns.tick()
            outage.on = False
            out.print("  the download server is fixed; the campaign is resumed")
            fleet.campaigns.resume(dana, campaign.id)
            resumed = True
        elif c.state == "suspended":
            raise ScenarioError(f"suspended again: {c.reason}")
        if c.state == "completed":
            break
        if time.monotonic() > deadline:
            raise ScenarioError(f"the campaign did not finish in {TIMEOUT_S:.0f} s: {c.counts}")
        time.sleep(0.1)
    emulated.wait()
    fleet.webhooks.flush()
    return _summary(fleet, emulated, clients, campaign.id, suspended, resumed, alerts, out)


def _summary(fleet: Fleet, emulated: Devices, clients: dict[str, DmClient], campaign_id: int, suspended: bool,
             resumed: bool, alerts: list[dict[str, Any]], out: Console) -> Summary:
    admin = fleet.auth.bootstrap_admin()
    report = fleet.reports.campaign(admin, campaign_id, limit=len(clients))
    lost = 0
    failures: dict[str, int] = {}
    for d in report.devices:
        client = clients[d.dev_id]
        errors = emulated.errors(d.dev_id)
        if d.state == "succeeded":
            ok = client.device.version == "1.2" and d.version == "1.2" and not errors
        elif d.state == "failed":
            ok = bool(d.reason) and client.device.version != "1.2"
            key = d.reason.split(": ", 1)[-1]
            failures[key] = failures.get(key, 0) + 1
        else:
            ok = False
        if not ok:
            lost += 1
            out.print(f"  [red]lost[/red] {d.dev_id}: server says {d.state} at {d.version} ({d.reason or 'no reason'}),"
                      f" the device runs {client.device.version}" + (f", errors {errors}" if errors else ""))
    lost += len(clients) - len(report.devices)
    out.print(f"[bold]result[/bold]: {report.counts['succeeded']} updated, {report.counts['failed']} failed "
              f"with a reason, {lost} lost")
    for reason, n in sorted(failures.items()):
        out.print(f"  {n} failed: {reason}")
    for a in alerts:
        out.print(f"  alert webhook: {a['event']}: {a['text']}")
    return Summary(len(clients), report.counts["succeeded"], report.counts["failed"], suspended, resumed, lost,
                   alerts=[f"{a['event']}: {a['text']}" for a in alerts], failures=failures)


__all__ = ["ScenarioError", "Summary", "run"]
