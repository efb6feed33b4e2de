"""`fotadelta loadtest`: N emulated devices check in, get a campaign to the newest release, report.

The operator side goes through the fleet API with a token: the devices are imported from CSV and
given DM credentials, two in-place packages (1.0 -> 1.1 -> 1.2) are published, and a campaign to
1.2 is started; the server pushes a package #0 to each device as its attempt starts. A fifth of
the devices run 1.0 and need the chain of two, the rest run 1.1; a share (`refusing`) carry
another operator's SIM and fail every attempt on purpose, so failures and their reasons are
exercised too. Meanwhile a worker of the server may be killed every few seconds.

At the end the server's records are read back: each device must be `succeeded` at 1.2 (and the
emulated device must run 1.2, checked by the image's hash) or `failed` with a reason (and not
run 1.2); any other device is lost. No update job may be left pending, sent or accepted."""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fotadelta import package
from fotadelta.dm import listener as push_listener
from fotadelta.dm.provisioning import SERVER_ID
from fotadelta.load.devices import Devices, Firmware
from fotadelta.load.operator import ApiError, Operator
from fotadelta.load.server import Killer, Serve, ServerError
from fotadelta.package.signing import TrustStore, generate

MAKE, MODEL = "Acme", "LoadSensor"
BLOCK = 4096
OPERATOR = bytes.fromhex("c7" * 16)
CHAIN = (("1.0", "1.1"), ("1.1", "1.2"))
TARGET = "1.2"
IDLE_WAIT_S = 200.0  # after the campaign, for devices still finishing (their polls: 5 x 30 s at most)


class LoadError(Exception):
    """The load test could not run to its end."""


@dataclass
class Options:
    devices: int
    server: str | None = None  # None: start `fotadelta serve` here
    token: str | None = None
    server_pid: int | None = None  # of a server given by URL, for --kill-worker-every
    db: str | None = None
    workers: int | None = None
    concurrency: int = 64
    in_flight: int = 500
    kill_every: float | None = None
    image_size: int = 64 * 1024
    refusing: float = 1.0  # percent of devices that fail on purpose
    timeout: float = 3600.0
    seed: int = 1


@dataclass
class Result:
    devices: int
    updated: int
    failed: int
    lost: int
    sessions_per_s: float
    p95_ms: float
    failures: dict[str, int] = field(default_factory=dict)  # reason -> devices
    sessions: int = 0
    retries: int = 0
    stale_notifications: int = 0  # package #0s that no longer verified: the device checked in instead
    open_jobs: int = 0
    device_errors: int = 0
    kills: int = 0
    kill_recovery_s: float = 0.0  # the longest a killed worker's server took to answer again
    campaign_state: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.open_jobs == 0 and self.updated + self.failed == self.devices

    def line(self) -> dict[str, Any]:
        out = asdict(self)
        out["sessions_per_s"] = round(self.sessions_per_s, 2)
        out["p95_ms"] = round(self.p95_ms, 1)
        out["seconds"] = round(self.seconds, 1)
        out["kill_recovery_s"] = round(self.kill_recovery_s, 2)
        return out


def firmware(image_size: int, seed: int) -> tuple[Firmware, list[bytes]]:
    """Three releases of one image (each a few edits from the last) and the two signed in-place packages."""
    rng = random.Random(seed)
    images = {"1.0": rng.randbytes(image_size)}
    for old, new in CHAIN:
        edited = bytearray(images[old])
        for _ in range(4):
            pos = rng.randrange(max(1, len(edited) - 512))
            edited[pos:pos + 256] = rng.randbytes(256)
        images[new] = bytes(edited)
    key = generate()
    packages = [package.pack(images[a], images[b], key, make=MAKE, model=MODEL, from_version=a, to_version=b,
                             validation=OPERATOR, in_place=True, block_size=BLOCK) for a, b in CHAIN]
    return Firmware(MAKE, MODEL, images, TrustStore.of([key.public_key()]), BLOCK, OPERATOR), packages


def run(opts: Options, err: Console) -> Result:
    """Run the load test; progress goes to err."""
    with tempfile.TemporaryDirectory(prefix="fotadelta-load-") as tmp, _server(opts, Path(tmp)) as (url, token, serve):
        return asyncio.run(_run(opts, url, token, serve, err))


@contextlib.contextmanager
def _server(opts: Options, tmp: Path) -> Iterator[tuple[str, str | None, Serve | None]]:
    if opts.server is not None:
        yield opts.server, opts.token, None
        return
    token = opts.token or secrets.token_urlsafe(24)
    serve = Serve(tmp / "server", token=token, db=opts.db, workers=opts.workers)
    try:
        serve.start()
    except ServerError as exc:
        raise LoadError(str(exc)) from None
    try:
        yield serve.url, token, serve
    finally:
        serve.stop()


async def _run(opts: Options, url: str, token: str | None, serve: Serve | None, err: Console) -> Result:
    started = time.monotonic()
    fw, packages = firmware(opts.image_size, opts.seed)
    listener = socket.create_server(("127.0.0.1", 0))
    push_base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    async with httpx.AsyncClient(timeout=60.0) as http:  # the operator's
        devices = Devices(fw, server_url=f"{url}/dm", secret=secrets.token_urlsafe(16), server_id=SERVER_ID,
                          push_base=push_base, concurrency=opts.concurrency, seed=opts.seed)
        push = await push_listener.serve(devices.push, listener)
        killer = _killer(opts, url, token, serve)
        kill_task: asyncio.Task[None] | None = None
        devices.start()
        try:
            operator = Operator(http, url, token)
            with _progress(err) as progress:
                await _setup(opts, operator, devices, packages, progress)
                if killer is not None and opts.kill_every:
                    kill_task = asyncio.create_task(_kill_every(killer, opts.kill_every, err))
                campaign_id = await _campaign(opts, operator, devices, progress)
            if kill_task is not None:
                kill_task.cancel()
                await asyncio.gather(kill_task, return_exceptions=True)
            with contextlib.suppress(TimeoutError):  # a device still polling is judged as it stands
                await asyncio.wait_for(devices.wait_idle(), IDLE_WAIT_S)
            records = await operator.records(campaign_id, opts.devices)
        except ApiError as exc:
            raise LoadError(str(exc)) from None
        finally:
            if kill_task is not None:
                kill_task.cancel()
            await devices.stop()
            push.close()  # (its kept-alive connections go with the loop)
    result = _judge(devices, records.devices, records.target, records.campaign_state, err)
    result.open_jobs = len(records.open_jobs)
    for job in records.open_jobs[:5]:
        err.print(f"  [red]open job[/red] {job['id']} of {job['device']}: {job['state']} ({job['package']})")
    if killer is not None:
        result.kills = len(killer.kills)
        result.kill_recovery_s = max((k.seconds for k in killer.kills), default=0.0)
    result.seconds = time.monotonic() - started
    return result


def _killer(opts: Options, url: str, token: str | None, serve: Serve | None) -> Killer | None:
    if not opts.kill_every:
        return None
    if serve is not None and serve.process is not None:
        return Killer(serve.process.pid, restart=serve, url=url, token=token, seed=opts.seed)
    assert opts.server_pid is not None  # the command line insists on it
    return Killer(opts.server_pid, url=url, token=token, seed=opts.seed)


async def _kill_every(killer: Killer, seconds: float, err: Console) -> None:
    while True:
        await asyncio.sleep(seconds)
        kill = await asyncio.to_thread(killer.kill_one)
        err.log(f"killed worker {kill.pid} (SIGKILL): {kill.recovered}, answering again after {kill.seconds:.1f} s")


@contextlib.contextmanager
def _progress(err: Console) -> Iterator[Progress]:
    with Progress(TextColumn("{task.description:<11}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                  TimeElapsedColumn(), console=err, transient=False) as progress:
        yield progress


async def _setup(opts: Options, operator: Operator, devices: Devices, packages: list[bytes],
                 progress: Progress) -> None:
    n = opts.devices
    every = round(100 / opts.refusing) if opts.refusing > 0 else 0
    rows = []
    for i in range(n):
        dev_id = f"IMEI:99{i:013d}"
        version = "1.0" if i % 5 == 0 else "1.1"  # a fifth need the chain of two packages
        devices.add(dev_id, version, refuses=bool(every) and i % every == every // 2)
        rows.append((dev_id, MAKE, MODEL, version))
    task = progress.add_task("register", total=n, note="import, credentials")
    await operator.register(rows, {d: devices.credentials(d) for d, *_ in rows}, opts.concurrency)
    progress.update(task, completed=n)
    for data in packages:
        await operator.publish(data)
    task = progress.add_task("check in", total=n, note="")
    for device in devices.devices.values():
        devices.check_in(device)
    while not devices.idle:
        await asyncio.sleep(0.25)
        progress.update(task, completed=n - devices.pending(), note=f"{devices.stats.sessions} sessions")
    progress.update(task, completed=n)
    counts = await operator.call("GET", "/devices/counts", params={"make": MAKE, "model": MODEL})
    if counts.get("provisioned", 0) != n:
        raise LoadError(f"after checking in, {counts.get('provisioned', 0)} of {n} devices are provisioned: {counts}")


async def _campaign(opts: Options, operator: Operator, devices: Devices, progress: Progress) -> int:
    spec = {"name": f"load {opts.devices}", "target_version": TARGET, "targets": {"make": MAKE, "model": MODEL},
            "max_attempts": 3, "max_in_flight": opts.in_flight, "attempt_timeout": 900.0, "retry_delay": 2.0}
    campaign_id = await operator.start_campaign(spec)
    task = progress.add_task("update", total=opts.devices, note="")
    deadline = time.monotonic() + opts.timeout
    while True:
        c = await operator.campaign(campaign_id)
        counts = c["counts"]
        done = counts["succeeded"] + counts["failed"] + counts["cancelled"]
        progress.update(task, completed=done, note=f"{counts['succeeded']} updated, {counts['failed']} failed, "
                                                   f"{counts['running']} running")
        if c["state"] in ("completed", "cancelled"):
            return campaign_id
        if c["state"] == "suspended":
            raise LoadError(f"the campaign was suspended: {c['reason']}")
        if time.monotonic() > deadline:  # judged as it stands: the devices not done are lost
            progress.console.print(f"[red]the campaign did not finish within {opts.timeout:.0f} s[/red]: {counts}")
            return campaign_id
        await asyncio.sleep(1.0)


def _judge(devices: Devices, records: list[dict[str, Any]], target: str, state: str, err: Console) -> Result:
    lost = updated = failed = 0
    failures: Counter[str] = Counter()
    seen = set()
    for d in records:
        seen.add(d["dev_id"])
        device = devices.devices.get(d["dev_id"])
        if device is None:
            continue
        if d["state"] == "succeeded":
            ok = d["version"] == target and device.version == target
            updated += ok
        elif d["state"] == "failed":
            ok = bool(d["reason"]) and device.version != target
            failed += ok
            if ok:
                failures[d["reason"].split(": ", 1)[-1]] += 1
        else:
            ok = False
        if not ok:
            lost += 1
            if lost <= 10:
                err.print(f"  [red]lost[/red] {d['dev_id']}: the server says {d['state']} at {d['version']} "
                          f"({d['reason'] or 'no reason'}), the device runs {device.version}"
                          + (f"; its errors: {device.errors[-2:]}" if device.errors else ""))
    lost += len(set(devices.devices) - seen)
    stats = devices.stats
    return Result(len(devices.devices), updated, failed, lost, stats.per_second(), stats.p95_ms(), dict(failures),
                  sessions=stats.sessions, retries=stats.retries, stale_notifications=stats.bad_notifications,
                  device_errors=sum(1 for d in devices.devices.values() if d.errors), campaign_state=state)
