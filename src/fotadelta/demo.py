"""`fotadelta demo`: the main job, end to end over OMA DM on real firmware with the embedded defaults.

It takes consecutive real firmware releases (found or fetched by fotadelta.samples.demo: the
repository's corpora, the per-user cache, the pinned demo set downloaded into it, or offline a
generated chain), builds signed in-place update packages between them, starts a
DM server on loopback (SQLite in a temporary directory), and runs emulated single-slot devices
(4 KiB erase blocks, one block + 4 KiB of work RAM) that are notified and update over DM/FUMO:

- one walks a chain of updates to the latest release, one package per reboot;
- one carries another operator's SIM and refuses the package before writing anything;
- one loses power in the middle of its install and resumes from its journal;
- one speaks WBXML and asks for software itself (device-initiated request);
- one picks its update on the server's web portal (web-initiated).

Then it prints what happened, from the devices' side and from the server's database."""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fotadelta import inplace, package
from fotadelta.dm.client import DmClient, ScriptedUi
from fotadelta.dm.codec import Encoding
from fotadelta.dm.fumo import describe
from fotadelta.emulator import Fleet, make_client
from fotadelta.package.signing import TrustStore, generate
from fotadelta.samples.demo import Firmware, locate
from fotadelta.server import DmServer, ServerConfig, create_app, serve_in_thread
from fotadelta.server.push import HttpPush
from fotadelta.sim import Sim

BLOCK = inplace.DEFAULT_BLOCK
OPERATOR_A = bytes.fromhex("a5" * 16)
OPERATOR_B = bytes.fromhex("b6" * 16)
MAKE, MODEL = "Acme", "Sensor"


class DemoError(Exception):
    """The demo cannot run or a step did not behave as it must."""


@dataclass(frozen=True)
class Release:
    version: str
    image: bytes


@dataclass(frozen=True)
class Outcome:
    device: str
    story: str
    path: str
    end: str
    result: str
    sessions: int
    messages: int


def releases_of(firmware: Firmware) -> tuple[str, list[Release]]:
    """The demo's releases: a generated chain as it is, else the longest run among the pairs."""
    if firmware.generated:
        return ("generated release chain (synthetic images, not real firmware)",
                [Release(f"1.{i}", image) for i, image in enumerate(firmware.generated)])
    return find_releases(list(firmware.roots))


def find_releases(roots: list[Path]) -> tuple[str, list[Release]]:
    """The longest run of consecutive releases among the firmware pairs (a pair's new = the next one's old)."""
    pairs = [d for root in roots if root.is_dir() for d in sorted(root.iterdir())
             if (d / "old").is_file() and (d / "new").is_file()]
    if not pairs:
        raise DemoError(f"no <pair>/old + <pair>/new found in {', '.join(map(str, roots))}")
    digest = {d: (hashlib.sha256((d / "old").read_bytes()).digest(), hashlib.sha256((d / "new").read_bytes()).digest())
              for d in pairs}
    after = {d: next((e for e in pairs if digest[e][0] == digest[d][1] and e != d), None) for d in pairs}

    def run_from(d: Path) -> list[Path]:
        out = [d]
        while (nxt := after[out[-1]]) is not None and nxt not in out:
            out.append(nxt)
        return out

    # The longest run; among equals the smallest images, which keep the demo quick.
    best = max((run_from(d) for d in pairs), key=lambda run: (len(run), -(run[0] / "new").stat().st_size))
    versions = [_versions(d.name) for d in best]
    names = [versions[0][0]] + [v[1] for v in versions]
    if len(set(names)) != len(names):
        names = [f"1.{i}" for i in range(len(best) + 1)]
    images = [(best[0] / "old").read_bytes()] + [(d / "new").read_bytes() for d in best]
    label = best[0].name if len(best) == 1 else f"{best[0].name} .. {best[-1].name}"
    return label, [Release(v, img) for v, img in zip(names, images)]


def _versions(name: str) -> tuple[str, str]:
    parts = name.split("-")
    if len(parts) >= 3 and parts[-1][:1].isdigit() and parts[-2][:1].isdigit():
        return parts[-2], parts[-1]
    return "", ""


def run(where: Path | None = None, console: Console | None = None, *, offline: bool = False,
        cache: Path | None = None) -> list[Outcome]:
    """Run the demo, printing as it goes; returns what happened to each device."""
    # Piped output gets a table wide enough to read rather than rich's 80-column default.
    out = console if console is not None else Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    firmware = locate(where, offline=offline, cache=cache)
    label, releases = releases_of(firmware)
    if len(releases) < 2:
        raise DemoError("the demo needs at least two releases")
    out.rule(f"fotadelta demo: over-the-air updates across {len(releases)} firmware releases, "
             f"{releases[0].version} to {releases[-1].version}")
    out.print(f"[bold]releases[/bold]: {label}")
    out.print(f"[bold]firmware[/bold]: {firmware.note}")
    key = generate()
    trust = TrustStore.of([key.public_key()])
    started = time.perf_counter()

    def build(i: int) -> bytes:
        old, new = releases[i], releases[i + 1]
        return package.pack(old.image, new.image, key, make=MAKE, model=MODEL, from_version=old.version,
                            to_version=new.version, validation=OPERATOR_A, in_place=True, block_size=BLOCK,
                            security_version=i + 2)  # (release i + 1 of the chain, counted from 1)

    with ThreadPoolExecutor(2) as pool:
        packages = list(pool.map(build, range(len(releases) - 1)))
    sizes = ", ".join(f"{r.version}->{n.version} {len(p):,} B" for r, n, p in zip(releases, releases[1:], packages))
    out.print(f"[bold]packages[/bold]: {len(packages)} signed in-place packages for operator A's SIMs "
              f"({sizes}; images {len(releases[-1].image):,} B), built in {time.perf_counter() - started:.1f} s")

    with tempfile.TemporaryDirectory(prefix="fotadelta-demo-") as tmp:
        server = DmServer(ServerConfig(Path(tmp), "http://127.0.0.1"), push=HttpPush())
        http = serve_in_thread(create_app(server))
        server.config.public_url = f"http://127.0.0.1:{http.port}"
        fleet = Fleet()
        try:
            for p in packages:
                server.publish(p)
            out.print(f"[bold]server[/bold]: OMA DM 1.2 at {server.config.public_url}/dm, fleet state in "
                      f"{server.config.database}")
            # The last package takes prev to last: its in-place patch is what the power-cut device installs.
            outcomes = _devices(server, fleet, releases, trust, out, package.parse(packages[-1]).payload)
        finally:
            fleet.stop()
            http.stop()
        _print(out, server, outcomes)
    return outcomes


def _devices(server: DmServer, fleet: Fleet, releases: list[Release], trust: TrustStore,
             out: Console, last_patch: bytes) -> list[Outcome]:
    first, prev, last = releases[0], releases[-2], releases[-1]
    url = f"{server.config.public_url}/dm"

    def device(n: int, at: Release, sim_card: Sim, **kw: object) -> DmClient:
        dev_id = f"IMEI:35{n:013d}"
        client = make_client(at.image, dev_id=dev_id, make=MAKE, model=MODEL, version=at.version, server_url=url,
                             trust=trust, sim_card=sim_card, push_url=fleet.push_url(dev_id), **kw)  # type: ignore[arg-type]
        return fleet.add(client)

    chain = device(1, first, Sim.secured(OPERATOR_A))
    foreign = device(2, prev, Sim.secured(OPERATOR_B), lang="de", msisdn="+4915112345678")
    cut = device(3, prev, Sim.secured(OPERATOR_A), lang="fr")
    asker = device(4, prev, Sim(), encoding=Encoding.WBXML, lang="es")
    browser = device(5, prev, Sim.secured(OPERATOR_A))
    everyone = [chain, foreign, cut, asker, browser]
    starts = {c: c.device.version for c in everyone}
    for c in everyone:
        c.run()  # first contact: the device registers its DevInfo and push address
    out.print(f"[bold]devices[/bold]: {len(everyone)} emulated devices registered with the server")

    # A dry run of that install on its own flash: how many operations it takes, to cut in the middle.
    probe, layout = inplace.emulated_device(last_patch, prev.image)
    inplace.apply_on_flash(probe, layout, last_patch)
    cut.device.flash.arm(probe.operations // 2, seed=3)

    for c in (chain, foreign, cut):
        server.assign(c.config.dev_id, last.version)
        server.notify(c.config.dev_id)
    fleet.wait()
    with ThreadPoolExecutor(2) as pool:
        pool.submit(asker.request_software, lambda offers: len(offers) - 1)
        pool.submit(browser.browse, f"{server.config.public_url}/portal/{browser.config.dev_id}/select?"
                                    f"version={last.version}")
    fleet.wait()
    for c in everyone:
        if fleet.errors(c.config.dev_id):
            raise DemoError(f"{c.config.dev_id}: {fleet.errors(c.config.dev_id)}")

    if cut.device.flash.armed:
        raise DemoError("the power cut did not strike during the install")
    stories = {chain: "chain of updates", foreign: "other operator's SIM", cut: "power cut mid-install",
               asker: "asks for software (WBXML)", browser: "web portal pick"}
    snap = server.store.snapshot()
    outcomes = []
    for n, (c, story) in enumerate(stories.items(), 1):
        mine = sorted((j for j in snap.jobs if j.dev_id == c.config.dev_id), key=lambda j: j.id)
        path = [starts[c]] + [server_package(server, j.package_id) for j in mine if j.state == "succeeded"]
        outcomes.append(Outcome(f"#{n}", story, " > ".join(path), c.device.version,
                                " ".join(str(j.result_code) for j in mine if j.result_code is not None) or "-",
                                len(c.sessions), sum(s.messages for s in c.sessions)))
    _check(outcomes, releases, foreign, prev)
    out.print(f"[bold]power cut[/bold]: device #3 lost power at flash operation {probe.operations // 2 + 1} of "
              f"about {probe.operations} and resumed from its journal at reboot")
    out.print(f"[bold]refusal[/bold]: device #2 refused the package before any flash write "
              f"({foreign.device.flash.operations} flash operations; image unchanged)")
    return outcomes


def server_package(server: DmServer, package_id: int) -> str:
    """The version a published package updates to."""
    from fotadelta.server.store import PackageRow
    with server.store.tx() as s:
        row = s.get(PackageRow, package_id)
        return row.to_version if row is not None else "?"


def _check(outcomes: list[Outcome], releases: list[Release], foreign: DmClient, prev: Release) -> None:
    last = releases[-1].version
    by_story = {o.story: o for o in outcomes}
    expected_ok = [s for s in by_story if s != "other operator's SIM"]
    for story in expected_ok:
        if by_story[story].end != last:
            raise DemoError(f"the device that {story} ended at {by_story[story].end}, not {last}")
    if foreign.device.version != prev.version or foreign.device.image() != prev.image:
        raise DemoError("the device with another operator's SIM was changed")
    refused = by_story["other operator's SIM"].result
    if refused != "404":
        raise DemoError(f"the device with another operator's SIM reported {refused}, not 404")


def _print(out: Console, server: DmServer, outcomes: list[Outcome]) -> None:
    table = Table(title="What happened on each device", title_justify="left", title_style="bold")
    for col in ("device", "story", "versions", "FUMO result codes", "sessions", "messages"):
        table.add_column(col)
    for o in outcomes:
        table.add_row(o.device, o.story, o.path, o.result, str(o.sessions), str(o.messages))
    out.print(table)
    codes = sorted({int(c) for o in outcomes for c in o.result.split() if c.isdigit()})
    out.print("FUMO result codes, as each device reported its updates:")
    for code in codes:
        out.print(f"  {code}  {describe(code)}")
    snap = server.store.snapshot()
    jobs: dict[str, int] = {}
    for job in snap.jobs:
        jobs[job.state] = jobs.get(job.state, 0) + 1
    sessions: dict[str, int] = {}
    for s in snap.sessions:
        sessions[s.initiator] = sessions.get(s.initiator, 0) + 1
    out.print(f"[bold]server database[/bold]: jobs {', '.join(f'{n} {k}' for k, n in sorted(jobs.items()))}; "
              f"sessions {', '.join(f'{n} {k}-initiated' for k, n in sorted(sessions.items()))}")
