"""Reports: a device's whole history, a campaign's counts, devices and progress over time.

The update jobs, one device's or the fleet's, in pages. Per device: every session, job (with its FUMO result and what the code means), event, DM command
and campaign attempt, on one timeline, and for each failed update the step trace (the device's
events from the job's planning to its end). Per campaign: counts by state and by make/model/
version, the devices with their outcome and reason (filtered), the same as CSV, and the progress
over time as data points and as an SVG chart (no plotting library on the server)."""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass

from sqlalchemy import func, select

from fotadelta.dm.fumo import describe
from fotadelta.server.auth import Auth, Permission, Principal
from fotadelta.server.campaigns import DEVICE_STATES
from fotadelta.server.engine import DmServer
from fotadelta.server.store import DeviceRow, EventRow, JobRow, PackageRow, SessionRow
from fotadelta.server.tables import AttemptRow, CampaignDeviceRow, CampaignRow, CommandRow, SampleRow

MAX_ROWS = 10_000
MAX_PAGE = 1000


@dataclass(frozen=True)
class TimelineEntry:
    at: float
    kind: str  # session | job | event | command | attempt
    text: str


@dataclass(frozen=True)
class JobReport:
    id: int
    package: str
    goal_version: str
    state: str
    result_code: int | None
    result: str  # what the code means
    created: float
    updated: float
    trace: list[TimelineEntry]  # for a failed job: the device's events from planning to failure


@dataclass(frozen=True)
class Job:
    """An update job as the jobs listing shows it: the package's step, the chain's goal, the outcome."""

    id: int
    device: str
    package: str
    from_version: str
    to_version: str
    goal: str
    delivery: str
    state: str
    result_code: int | None
    result: str | None  # what the FUMO result code means
    message: str
    created: float
    updated: float


@dataclass(frozen=True)
class DeviceHistory:
    dev_id: str
    timeline: list[TimelineEntry]
    jobs: list[JobReport]


@dataclass(frozen=True)
class CampaignDevice:
    dev_id: str
    make: str
    model: str
    version: str
    wave: int
    state: str
    attempts: int
    result_code: int | None
    result: str
    reason: str


@dataclass(frozen=True)
class CampaignReport:
    campaign_id: int
    name: str
    state: str
    target_version: str
    counts: dict[str, int]
    by_model: list[dict[str, object]]  # {"make", "model", "version", <state>: n ...}
    devices: list[CampaignDevice]


@dataclass(frozen=True)
class Point:
    at: float
    counts: dict[str, int]


class Reports:
    def __init__(self, server: DmServer, auth: Auth) -> None:
        self.store, self.auth = server.store, auth

    def device_history(self, actor: Principal, dev_id: str, limit: int = 1000) -> DeviceHistory:
        self.auth.require(actor, Permission.READ, "report.device", dev_id)
        limit = max(1, min(limit, MAX_ROWS))
        with self.store.tx() as s:
            if s.get(DeviceRow, dev_id) is None:
                raise LookupError(f"no device {dev_id}")
            events = [TimelineEntry(e.at, "event", f"{e.kind}: {e.text}") for e in s.scalars(
                select(EventRow).where(EventRow.dev_id == dev_id).order_by(EventRow.id.desc()).limit(limit))]
            sessions = [TimelineEntry(r.started, "session", f"session {r.session_id} ({r.initiator}-initiated): "
                                      f"{r.state}, {r.messages} messages" + (f"; {r.note}" if r.note else ""))
                        for r in s.scalars(select(SessionRow).where(SessionRow.dev_id == dev_id)
                                           .order_by(SessionRow.id.desc()).limit(limit))]
            commands = [TimelineEntry(c.created_at, "command", f"command {c.id} by {c.created_by}: "
                                      f"{', '.join(str(x.get('op')) for x in c.spec)} -> {c.state}"
                                      + (f" ({c.error})" if c.error else ""))
                        for c in s.scalars(select(CommandRow).where(CommandRow.dev_id == dev_id)
                                           .order_by(CommandRow.id.desc()).limit(limit))]
            attempts = [TimelineEntry(a.ended, "attempt", f"campaign {a.campaign_id} attempt {a.attempt}: {a.outcome}"
                                      + (f" ({a.reason})" if a.reason else ""))
                        for a in s.scalars(select(AttemptRow).where(AttemptRow.dev_id == dev_id)
                                           .order_by(AttemptRow.id.desc()).limit(limit))]
            jobs = []
            until = float("inf")  # a job's trace runs from its planning to the next job's
            for j, name in s.execute(select(JobRow, PackageRow.name).join(PackageRow, PackageRow.id == JobRow.package_id)
                                     .where(JobRow.dev_id == dev_id).order_by(JobRow.id.desc()).limit(limit)).all():
                trace = [e for e in events if j.created <= e.at < until] if j.state in ("failed", "declined") else []
                until = j.created
                jobs.append(JobReport(j.id, name, j.goal_version, j.state, j.result_code,
                                      describe(j.result_code) if j.result_code is not None else "", j.created,
                                      j.updated, sorted(trace, key=lambda e: e.at)))
        job_entries = [TimelineEntry(j.created, "job", f"job {j.id}: {j.package} -> {j.state}"
                                     + (f", FUMO {j.result_code} ({j.result})" if j.result_code is not None else ""))
                       for j in jobs]
        timeline = sorted(events + sessions + commands + attempts + job_entries, key=lambda e: e.at)
        return DeviceHistory(dev_id, timeline[-limit:], jobs[::-1])

    def jobs(self, actor: Principal, *, dev_id: str | None = None, after: int = 0, limit: int = 100) -> list[Job]:
        """Update jobs by id from after on (one device's, or all), with their packages and results in words."""
        self.auth.require(actor, Permission.READ, "report.jobs", dev_id or "")
        q = select(JobRow, PackageRow).join(PackageRow, JobRow.package_id == PackageRow.id).where(JobRow.id > after)
        if dev_id is not None:
            q = q.where(JobRow.dev_id == dev_id)
        with self.store.tx() as s:
            return [Job(j.id, j.dev_id, p.name, p.from_version, p.to_version, j.goal_version, j.delivery, j.state,
                        j.result_code, describe(j.result_code) if j.result_code is not None else None, j.message,
                        j.created, j.updated)
                    for j, p in s.execute(q.order_by(JobRow.id).limit(max(1, min(limit, MAX_PAGE)))).all()]

    def campaign(self, actor: Principal, campaign_id: int, *, state: str | None = None, make: str | None = None,
                 model: str | None = None, version: str | None = None, after: str = "",
                 limit: int = 1000) -> CampaignReport:
        """Counts by state and by make/model/version, and the devices (filtered) by DevId from after on."""
        self.auth.require(actor, Permission.READ, "report.campaign", str(campaign_id))
        with self.store.tx() as s:
            c = s.get(CampaignRow, campaign_id)
            if c is None:
                raise LookupError(f"no campaign {campaign_id}")
            counts = {k: 0 for k in DEVICE_STATES}
            by: dict[tuple[str, str, str], dict[str, object]] = {}
            for mk, md, ver, st, n in s.execute(
                    select(DeviceRow.make, DeviceRow.model, DeviceRow.version, CampaignDeviceRow.state, func.count())
                    .join(DeviceRow, DeviceRow.dev_id == CampaignDeviceRow.dev_id)
                    .where(CampaignDeviceRow.campaign_id == campaign_id)
                    .group_by(DeviceRow.make, DeviceRow.model, DeviceRow.version, CampaignDeviceRow.state)).all():
                counts[st] += n
                entry = by.setdefault((mk, md, ver), {"make": mk, "model": md, "version": ver,
                                                      **{k: 0 for k in DEVICE_STATES}})
                entry[st] = int(str(entry[st])) + n
            q = (select(CampaignDeviceRow, DeviceRow.make, DeviceRow.model, DeviceRow.version)
                 .join(DeviceRow, DeviceRow.dev_id == CampaignDeviceRow.dev_id)
                 .where(CampaignDeviceRow.campaign_id == campaign_id, CampaignDeviceRow.dev_id > after))
            for column, value in ((CampaignDeviceRow.state, state), (DeviceRow.make, make), (DeviceRow.model, model),
                                  (DeviceRow.version, version)):
                if value:
                    q = q.where(column == value)
            devices = [CampaignDevice(cd.dev_id, mk, md, ver, cd.wave, cd.state, cd.attempts, cd.result_code,
                                      describe(cd.result_code) if cd.result_code is not None else "", cd.reason)
                       for cd, mk, md, ver in s.execute(q.order_by(CampaignDeviceRow.dev_id)
                                                        .limit(max(1, min(limit, MAX_ROWS * 100)))).all()]
            return CampaignReport(c.id, c.name, c.state, c.target_version, counts,
                                  sorted(by.values(), key=lambda e: (str(e["make"]), str(e["model"]),
                                                                     str(e["version"]))), devices)

    def campaign_csv(self, actor: Principal, campaign_id: int, *, state: str | None = None, make: str | None = None,
                     model: str | None = None, version: str | None = None) -> str:
        report = self.campaign(actor, campaign_id, state=state, make=make, model=model, version=version,
                               limit=MAX_ROWS * 100)
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(("dev_id", "make", "model", "version", "wave", "state", "attempts", "result_code", "result",
                    "reason"))
        for d in report.devices:
            w.writerow((d.dev_id, d.make, d.model, d.version, d.wave, d.state, d.attempts,
                        "" if d.result_code is None else d.result_code, d.result, d.reason))
        return out.getvalue()

    def progress(self, actor: Principal, campaign_id: int) -> list[Point]:
        self.auth.require(actor, Permission.READ, "report.campaign", str(campaign_id))
        with self.store.tx() as s:
            if s.get(CampaignRow, campaign_id) is None:
                raise LookupError(f"no campaign {campaign_id}")
            return [Point(p.at, dict(p.counts)) for p in s.scalars(
                select(SampleRow).where(SampleRow.campaign_id == campaign_id).order_by(SampleRow.id))]

    def progress_svg(self, actor: Principal, campaign_id: int, width: int = 640, height: int = 320) -> str:
        """The campaign's device counts by state over time, as an SVG line chart."""
        points = self.progress(actor, campaign_id)
        colours = {"queued": "#9e9e9e", "running": "#1e88e5", "succeeded": "#43a047", "failed": "#e53935",
                   "cancelled": "#8e24aa"}
        left, right, top, bottom = 48, 110, 16, 32
        plot_w, plot_h = width - left - right, height - top - bottom
        t0 = points[0].at if points else 0.0
        span = max((points[-1].at - t0) if points else 0.0, 1e-9)
        peak = max((max(p.counts.values(), default=0) for p in points), default=0) or 1
        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                 f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
                 f'<title>campaign {campaign_id}: devices by state over time</title>',
                 f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>',
                 f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{peak}</text>',
                 f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>',
                 f'<text x="{left}" y="{height - 8}">0 s</text>',
                 f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end">{span:.0f} s</text>']
        for i, (state, colour) in enumerate(colours.items()):
            xy = " ".join(f"{left + plot_w * (p.at - t0) / span:.1f},{top + plot_h * (1 - p.counts.get(state, 0) / peak):.1f}"
                          for p in points)
            if xy:
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{xy}"/>')
            y = top + 14 * i + 8
            parts.append(f'<rect x="{width - right + 10}" y="{y - 8}" width="10" height="10" fill="{colour}"/>'
                         f'<text x="{width - right + 24}" y="{y}">{html.escape(state)}</text>')
        parts.append("</svg>")
        return "\n".join(parts) + "\n"
