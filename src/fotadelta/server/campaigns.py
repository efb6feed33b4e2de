"""Campaigns (rollouts): bring a targeted set of devices to a version, in waves, within thresholds.

A campaign targets devices by group, tag, make/model/version, status or a list. Starting it fixes
its devices and splits them into waves: a tester group's members first if a wave names a group,
then the first N devices or N% of all, and so on; the last wave takes the rest. A wave opens when
the one before has reached its success threshold. Each device gets at most `max_attempts`
attempts; an attempt is an engine job to the target version (the engine plans the daisy chain
per device, as for any job) and a notification, and ends when the device runs the version, its
last job fails, or `attempt_timeout` passes. Attempts only start inside the campaign's schedule
windows (days of week and hours in the device's own time zone), at most `max_in_flight` at once,
campaigns of higher priority first, and never for a device another campaign is updating.

If failed attempts within `failure.period` seconds reach `failure.count` or `failure.percent`,
the campaign is suspended and an alert raised (log, alert row, webhook). Pause, resume, cancel
and retargeting the failed devices are operator actions; everything is driven by `tick()`,
which a `Runner` thread calls every second or so (tests and the scenario call it directly).

States: campaign draft -> running <-> paused | suspended -> completed | cancelled; device queued
-> running -> succeeded | failed (with a reason) | cancelled, running -> queued to retry."""

from __future__ import annotations

import logging
import math
import threading
import time
import zoneinfo
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from pydantic import ConfigDict, TypeAdapter

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from fotadelta.server.auth import Auth, Conflict, Permission, Principal
from fotadelta.server.engine import DmServer
from fotadelta.dm.fumo import describe
from fotadelta.server.push import PushError
from fotadelta.server.registry import DeviceFilter, Registry
from fotadelta.server.store import DeviceRow, JobRow, PackageRow
from fotadelta.server.tables import (AlertRow, AttemptRow, AuditRow, CampaignDeviceRow, CampaignRow, GroupRow, MemberRow,
                                     ReleaseRow, SampleRow)
from fotadelta.server.webhooks import Webhooks, check_url

log = logging.getLogger("fotadelta.server.campaigns")
OPEN_JOBS = ("pending", "sent", "accepted")
DEVICE_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")
MAX_WAVES = 20
MAX_TARGETS = 1_000_000
CHAIN_GRACE = 60.0  # after a chain step succeeds, how long the next step may take to be planned
# A job still pending this long after it was planned (or last notified) gets its notification again:
# the push may have been lost, or the server stopped between planning the job and sending the push.
RENOTIFY_AFTER = 60.0
STRICT = ConfigDict(extra="forbid")  # what the API reads into these dataclasses: unknown keys are errors


@dataclass
class Wave:
    """One wave: the tester group's members (group), the next count devices, or the next percent of all."""

    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    name: str = ""
    group: str | None = None
    count: int | None = None
    percent: float | None = None
    success_threshold: float = 100.0  # % of the wave's devices updated before the next wave opens


@dataclass
class FailureThreshold:
    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    count: int | None = None  # failed attempts within period
    percent: float | None = None  # of the attempts that ended within period, once min_attempts have
    period: float = 3600.0
    min_attempts: int = 10


@dataclass
class Window:
    """Attempts start on these days (0 Monday .. 6 Sunday) between start and end ("HH:MM", device time)."""

    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    days: list[int] = field(default_factory=lambda: list(range(7)))
    start: str = "00:00"
    end: str = "24:00"

    def admits(self, local: datetime) -> bool:
        minute = local.hour * 60 + local.minute
        lo, hi = _minutes(self.start), _minutes(self.end)
        if lo <= hi:
            return local.weekday() in self.days and lo <= minute < hi
        # Over midnight: the evening part on a listed day, the morning part on the day after one.
        return (local.weekday() in self.days and minute >= lo) or \
            ((local.weekday() - 1) % 7 in self.days and minute < hi)


@dataclass
class Targets:
    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    group: str | None = None
    tag: str | None = None
    make: str | None = None
    model: str | None = None
    version: str | None = None
    status: str | None = None
    dev_ids: list[str] | None = None


@dataclass
class CampaignSpec:
    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    name: str
    target_version: str
    targets: Targets = field(default_factory=Targets)
    waves: list[Wave] = field(default_factory=list)
    failure: FailureThreshold = field(default_factory=FailureThreshold)
    windows: list[Window] = field(default_factory=list)  # none: any time
    max_attempts: int = 3
    max_in_flight: int = 100
    attempt_timeout: float = 3600.0
    retry_delay: float = 60.0  # after a failed attempt, the device waits this long before the next
    priority: int = 0
    alert_url: str = ""
    delivery: str = "download"
    release_after_testers: bool = False  # release what a tester wave installed once it meets its threshold

    def check(self) -> None:
        """ValueError for a spec that cannot run."""
        if not self.name or len(self.name) > 128:
            raise ValueError("a campaign's name is 1 to 128 characters")
        if not self.target_version or len(self.target_version) > 64:
            raise ValueError("a campaign needs a target version")
        if len(self.waves) > MAX_WAVES:
            raise ValueError(f"at most {MAX_WAVES} waves")
        for w in self.waves:
            if sum(x is not None for x in (w.group, w.count, w.percent)) > 1:
                raise ValueError("a wave is a group, a count or a percent, not several")
            if w.count is not None and w.count < 1 or w.percent is not None and not 0 < w.percent <= 100:
                raise ValueError("a wave's count is at least 1, its percent in (0, 100]")
            if not 0 <= w.success_threshold <= 100:
                raise ValueError("a success threshold is a percent")
        f = self.failure
        if f.count is not None and f.count < 1 or f.percent is not None and not 0 < f.percent <= 100 \
                or f.period <= 0 or f.min_attempts < 1:
            raise ValueError("a failure threshold is a count >= 1 or a percent in (0, 100] over a positive period")
        for win in self.windows:
            if not win.days or any(d not in range(7) for d in win.days):
                raise ValueError("a window's days are 0 (Monday) to 6 (Sunday)")
            _minutes(win.start), _minutes(win.end)
        if not 1 <= self.max_attempts <= 100 or not 1 <= self.max_in_flight <= 100_000 or self.attempt_timeout <= 0 \
                or self.retry_delay < 0:
            raise ValueError("max_attempts is 1..100, max_in_flight 1..100000, attempt_timeout positive, "
                             "retry_delay not negative")
        if self.delivery not in ("download", "inline"):
            raise ValueError("delivery is download or inline")
        if self.alert_url:
            check_url(self.alert_url)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CampaignSpec:
        """The spec from its JSON form (unknown keys refused); pydantic.ValidationError if malformed."""
        return _SPEC.validate_python(data)


_SPEC = TypeAdapter(CampaignSpec)


def _minutes(hhmm: str) -> int:
    try:
        hours, minutes = hhmm.split(":")
        value = int(hours) * 60 + int(minutes)
    except ValueError:
        raise ValueError(f"a time is HH:MM, not {hhmm!r}") from None
    if not 0 <= value <= 24 * 60 or not 0 <= int(minutes) < 60:
        raise ValueError(f"a time is 00:00 to 24:00, not {hhmm!r}")
    return value


@dataclass(frozen=True)
class Campaign:
    id: int
    name: str
    state: str
    priority: int
    target_version: str
    spec: CampaignSpec
    wave: int
    reason: str
    counts: dict[str, int]
    created_at: float
    created_by: str
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True)
class Alert:
    id: int
    at: float
    campaign_id: int | None
    kind: str
    text: str
    delivery: str  # the webhook's outcome; empty without a webhook


class Campaigns:
    """Create and steer campaigns; `tick` moves them on."""

    def __init__(self, server: DmServer, auth: Auth, registry: Registry, webhooks: Webhooks, *,
                 max_in_flight: int = 1000) -> None:
        self.server, self.store, self.auth, self.registry, self.webhooks = server, server.store, auth, registry, webhooks
        self.max_in_flight = max_in_flight  # across all campaigns
        self._zones: dict[str, zoneinfo.ZoneInfo] = {}
        self._tick_lock = threading.Lock()
        self._last_counts: dict[int, dict[str, int]] = {}

    # -- operator actions --------------------------------------------------------------------------

    def create(self, actor: Principal, spec: CampaignSpec) -> Campaign:
        self.auth.require(actor, Permission.CAMPAIGNS_MANAGE, "campaign.create", spec.name)
        if spec.release_after_testers:
            self.auth.require(actor, Permission.RELEASES_MANAGE, "campaign.create", spec.name)
        spec.check()
        with self.store.tx() as s:
            for name in {w.group for w in spec.waves if w.group} | ({spec.targets.group} - {None}):
                if s.scalars(select(GroupRow.id).where(GroupRow.name == name)).first() is None:
                    raise LookupError(f"no group {name}")
            row = CampaignRow(name=spec.name, priority=spec.priority, target_version=spec.target_version,
                              spec=asdict(spec), created_by=actor.name)
            s.add(row)
            s.flush()
            cid = row.id
        self.auth.audit(actor, "campaign.create", spec.name, detail={"campaign": cid})
        return self.get(actor, cid)

    def start(self, actor: Principal, campaign_id: int) -> Campaign:
        """Fix the campaign's devices, split them into waves and open the first."""
        self.auth.require(actor, Permission.CAMPAIGNS_MANAGE, "campaign.start", str(campaign_id))
        with self.store.tx() as s:
            row = self._row(s, campaign_id)
            if row.state != "draft":
                raise Conflict(f"campaign {campaign_id} is {row.state}, not a draft")
            spec = CampaignSpec.from_json(row.spec)
            t = spec.targets
            where = DeviceFilter(status=t.status, make=t.make, model=t.model, version=t.version, group=t.group,
                                 tag=t.tag, dev_ids=tuple(t.dev_ids) if t.dev_ids is not None else None)
            devices = list(s.scalars(select(DeviceRow.dev_id).where(
                self.registry.condition(s, where), DeviceRow.status.not_in(("quarantined", "unassigned")),
                DeviceRow.version != spec.target_version).order_by(DeviceRow.dev_id).limit(MAX_TARGETS + 1)))
            if not devices:
                raise ValueError("the campaign targets no device that needs the update")
            if len(devices) > MAX_TARGETS:
                raise ValueError(f"a campaign targets at most {MAX_TARGETS} devices")
            waves = self._split(s, spec, devices)
            s.add_all(CampaignDeviceRow(campaign_id=campaign_id, dev_id=d, wave=w) for d, w in waves.items())
            now = time.time()
            row.state, row.wave, row.started_at, row.counted_from = "running", 0, now, now
        self.auth.audit(actor, "campaign.start", str(campaign_id), detail={"devices": len(devices)})
        return self.get(actor, campaign_id)

    @staticmethod
    def _split(s: Session, spec: CampaignSpec, devices: list[str]) -> dict[str, int]:
        left = list(devices)
        total, out = len(devices), {}
        for i, w in enumerate(spec.waves):
            if w.group:
                members = set(s.scalars(select(MemberRow.dev_id).join(GroupRow, GroupRow.id == MemberRow.group_id)
                                        .where(GroupRow.name == w.group)))
                take = [d for d in left if d in members]
            else:
                n = w.count if w.count is not None else math.ceil(total * (w.percent or 100) / 100)
                take = left[:n]
            for d in take:
                out[d] = i
            chosen = set(take)
            left = [d for d in left if d not in chosen]
        for d in left:  # whatever the waves did not take goes in a wave after them
            out[d] = len(spec.waves)
        return out

    def pause(self, actor: Principal, campaign_id: int, reason: str = "") -> Campaign:
        return self._set_state(actor, campaign_id, "paused", ("running", "suspended"), reason or f"paused by {actor.name}")

    def resume(self, actor: Principal, campaign_id: int) -> Campaign:
        """Run a paused or suspended campaign again; failures count afresh from now."""
        return self._set_state(actor, campaign_id, "running", ("paused", "suspended"), "")

    def cancel(self, actor: Principal, campaign_id: int, reason: str = "") -> Campaign:
        """Stop for good: queued devices are cancelled, and so are jobs not yet sent to a device."""
        view = self._set_state(actor, campaign_id, "cancelled", ("draft", "running", "paused", "suspended"),
                               reason or f"cancelled by {actor.name}")
        now = time.time()
        with self.store.tx() as s:
            running = s.scalars(select(CampaignDeviceRow).where(CampaignDeviceRow.campaign_id == campaign_id,
                                                                CampaignDeviceRow.state.in_(("queued", "running"))))
            for cd in running:
                if cd.state == "running" and cd.first_job is not None:
                    s.execute(update(JobRow).where(JobRow.dev_id == cd.dev_id, JobRow.id >= cd.first_job,
                                                   JobRow.state == "pending")
                              .values(state="cancelled", message=f"campaign {campaign_id} cancelled"))
                    s.add(AttemptRow(campaign_id=campaign_id, dev_id=cd.dev_id, attempt=cd.attempts,
                                     started=cd.started or now, ended=now, outcome="cancelled",
                                     reason="the campaign was cancelled"))
                cd.state, cd.finished, cd.reason = "cancelled", now, "the campaign was cancelled"
            s.execute(update(CampaignRow).where(CampaignRow.id == campaign_id).values(finished_at=now))
        return self.get(actor, view.id)

    def retarget_failed(self, actor: Principal, campaign_id: int) -> int:
        """Give every failed device of the campaign new attempts; a completed campaign runs again."""
        self.auth.require(actor, Permission.CAMPAIGNS_MANAGE, "campaign.retarget", str(campaign_id))
        with self.store.tx() as s:
            row = self._row(s, campaign_id)
            if row.state in ("draft", "cancelled"):
                raise Conflict(f"campaign {campaign_id} is {row.state}")
            failed = list(s.scalars(select(CampaignDeviceRow).where(CampaignDeviceRow.campaign_id == campaign_id,
                                                                    CampaignDeviceRow.state == "failed")))
            for cd in failed:
                cd.state, cd.attempts, cd.finished = "queued", 0, None
            n = len(failed)
            if n and row.state == "completed":
                row.state, row.finished_at, row.counted_from = "running", None, time.time()
        self.auth.audit(actor, "campaign.retarget", str(campaign_id), detail={"devices": n})
        return int(n)

    def _set_state(self, actor: Principal, campaign_id: int, state: str, allowed: tuple[str, ...],
                   reason: str) -> Campaign:
        action = {"paused": "pause", "running": "resume", "cancelled": "cancel"}[state]
        self.auth.require(actor, Permission.CAMPAIGNS_MANAGE, f"campaign.{action}", str(campaign_id))
        with self.store.tx() as s:
            row = self._row(s, campaign_id)
            if row.state not in allowed:
                raise Conflict(f"campaign {campaign_id} is {row.state}: it cannot {action}")
            row.state, row.reason = state, reason[:512]
            if state == "running":
                row.counted_from = time.time()
        self.auth.audit(actor, f"campaign.{action}", str(campaign_id), detail={"reason": reason})
        return self.get(actor, campaign_id)

    # -- reading -----------------------------------------------------------------------------------

    def get(self, actor: Principal, campaign_id: int) -> Campaign:
        self.auth.require(actor, Permission.READ, "campaign.read", str(campaign_id))
        with self.store.tx() as s:
            return self._view(s, self._row(s, campaign_id))

    def find(self, actor: Principal, state: str | None = None) -> list[Campaign]:
        self.auth.require(actor, Permission.READ, "campaign.read")
        q = select(CampaignRow).order_by(CampaignRow.id)
        if state:
            q = q.where(CampaignRow.state == state)
        with self.store.tx() as s:
            return [self._view(s, r) for r in s.scalars(q)]

    def alerts(self, actor: Principal, campaign_id: int | None = None, limit: int = 100) -> list[Alert]:
        """The newest alerts first."""
        self.auth.require(actor, Permission.READ, "alert.read")
        q = select(AlertRow).order_by(AlertRow.id.desc()).limit(max(1, min(limit, 1000)))
        if campaign_id is not None:
            q = q.where(AlertRow.campaign_id == campaign_id)
        with self.store.tx() as s:
            return [Alert(a.id, a.at, a.campaign_id, a.kind, a.text, a.delivery) for a in s.scalars(q)]

    @staticmethod
    def _row(s: Session, campaign_id: int) -> CampaignRow:
        row = s.get(CampaignRow, campaign_id)
        if row is None:
            raise LookupError(f"no campaign {campaign_id}")
        return row

    @staticmethod
    def counts(s: Session, campaign_id: int) -> dict[str, int]:
        out = {k: 0 for k in DEVICE_STATES}
        for state, n in s.execute(select(CampaignDeviceRow.state, func.count())
                                  .where(CampaignDeviceRow.campaign_id == campaign_id)
                                  .group_by(CampaignDeviceRow.state)).all():
            out[state] = n
        return out

    def _view(self, s: Session, r: CampaignRow) -> Campaign:
        return Campaign(r.id, r.name, r.state, r.priority, r.target_version, CampaignSpec.from_json(r.spec), r.wave,
                        r.reason, self.counts(s, r.id), r.created_at, r.created_by, r.started_at, r.finished_at)

    # -- the scheduler -----------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """One pass over every active campaign, highest priority first."""
        with self._tick_lock:
            now = now or time.time()
            with self.store.tx() as s:
                active = list(s.execute(select(CampaignRow.id, CampaignRow.state).where(
                    CampaignRow.state.in_(("running", "paused", "suspended")))
                    .order_by(CampaignRow.priority.desc(), CampaignRow.id)).all())
                in_flight = s.scalar(select(func.count()).select_from(CampaignDeviceRow)
                                     .where(CampaignDeviceRow.state == "running")) or 0
            budget = self.max_in_flight - in_flight
            for campaign_id, state in active:
                self._track(campaign_id, now)
                if state == "running":
                    budget -= self._advance(campaign_id, now, budget)
                self._sample(campaign_id, now)

    def _track(self, campaign_id: int, now: float) -> None:
        """Settle the attempts in flight: succeeded, failed (retry or give up), or still going; notify
        again the devices whose job has waited RENOTIFY_AFTER without being sent."""
        renotify: list[str] = []
        with self.store.tx() as s:
            c = self._row(s, campaign_id)
            spec = CampaignSpec.from_json(c.spec)
            running = list(s.scalars(select(CampaignDeviceRow).where(CampaignDeviceRow.campaign_id == campaign_id,
                                                                     CampaignDeviceRow.state == "running")))
            if not running:
                return
            ids = [cd.dev_id for cd in running]
            found = s.execute(select(DeviceRow.dev_id, DeviceRow.version, DeviceRow.status)
                              .where(DeviceRow.dev_id.in_(ids))).all()
            versions = {d: v for d, v, _ in found}
            quarantined = {d for d, _, status in found if status == "quarantined"}
            first = min(cd.first_job or 0 for cd in running)
            jobs: dict[str, list[tuple[JobRow, str]]] = {}
            for job, pkg in s.execute(select(JobRow, PackageRow.name).join(PackageRow, PackageRow.id == JobRow.package_id)
                                      .where(JobRow.dev_id.in_(ids), JobRow.id >= first).order_by(JobRow.id)).all():
                jobs.setdefault(job.dev_id, []).append((job, pkg))
            for cd in running:
                mine = [(j, p) for j, p in jobs.get(cd.dev_id, []) if j.id >= (cd.first_job or 0)]
                if cd.dev_id in quarantined:
                    # Quarantined in the middle of its attempt: it leaves the campaign now, and the update
                    # it has not started yet is withdrawn (a quarantined device gets no package).
                    s.execute(update(JobRow).where(JobRow.dev_id == cd.dev_id, JobRow.id >= (cd.first_job or 0),
                                                   JobRow.state == "pending")
                              .values(state="cancelled", message="the device was quarantined"))
                    cd.state, cd.finished, cd.reason = "cancelled", now, "the device was quarantined"
                elif versions.get(cd.dev_id) == c.target_version:
                    self._end_attempt(s, cd, spec, now, True, 200, "")
                elif any(j.state in OPEN_JOBS for j, _ in mine):
                    if now - (cd.started or now) > spec.attempt_timeout:
                        s.execute(update(JobRow).where(JobRow.dev_id == cd.dev_id, JobRow.id >= (cd.first_job or 0),
                                                       JobRow.state == "pending")
                                  .values(state="cancelled", message="the campaign attempt timed out"))
                        self._end_attempt(s, cd, spec, now, False, None,
                                          f"no result within {spec.attempt_timeout:.0f} s")
                    elif all(j.state == "pending" for j, _ in mine if j.state in OPEN_JOBS) and \
                            min(j.updated for j, _ in mine if j.state == "pending") < now - RENOTIFY_AFTER:
                        for j, _ in mine:
                            if j.state == "pending":
                                j.updated = now
                        renotify.append(cd.dev_id)
                elif mine and mine[-1][0].state == "succeeded" and now - mine[-1][0].updated < CHAIN_GRACE:
                    pass  # a step of a daisy chain succeeded: the engine is planning the next one
                elif mine:
                    job, pkg = mine[-1]
                    code = job.result_code
                    if job.state == "succeeded":
                        why = f"{pkg}: the chain stopped at {versions.get(cd.dev_id)}, short of {c.target_version}"
                    elif job.state == "declined":
                        why = f"{pkg}: the user declined the update"
                    elif job.state == "cancelled":
                        why = f"{pkg}: job cancelled ({job.message or 'superseded'})"
                    elif code is None:
                        why = f"{pkg}: {job.message or 'failed without a result'}"
                    else:
                        why = f"{pkg}: FUMO {code} ({describe(code)})"
                    self._end_attempt(s, cd, spec, now, False, code, why)
                else:
                    self._end_attempt(s, cd, spec, now, False, None, "the attempt's job disappeared")
        if self.server.push is None:
            return
        for dev_id in renotify:
            try:
                self.server.notify(dev_id)
            except (PushError, LookupError) as exc:  # the attempt's timeout settles it if it stays unsent
                log.warning("campaign %d: %s could not be notified again: %s", campaign_id, dev_id, exc)

    def _end_attempt(self, s: Session, cd: CampaignDeviceRow, spec: CampaignSpec, now: float, ok: bool,
                     code: int | None, reason: str) -> None:
        s.add(AttemptRow(campaign_id=cd.campaign_id, dev_id=cd.dev_id, attempt=cd.attempts, started=cd.started or now,
                         ended=now, outcome="succeeded" if ok else "failed", result_code=code, reason=reason[:512]))
        cd.result_code, cd.reason = code, reason[:512]
        if ok:
            cd.state, cd.finished = "succeeded", now
        elif cd.attempts >= spec.max_attempts:
            cd.state, cd.finished = "failed", now
            cd.reason = f"{reason} (after {cd.attempts} attempt{'s' if cd.attempts > 1 else ''})"[:512]
        else:
            cd.state, cd.not_before = "queued", now + spec.retry_delay  # another attempt, later

    def _advance(self, campaign_id: int, now: float, budget: int) -> int:
        """Thresholds, waves, then new attempts; returns how many attempts it started."""
        with self.store.tx() as s:
            c = self._row(s, campaign_id)
            spec = CampaignSpec.from_json(c.spec)
            if self._failure_threshold(s, c, spec, now):
                return 0
            # A device quarantined meanwhile leaves the campaign (else it would hold it open for ever).
            s.execute(update(CampaignDeviceRow).where(
                CampaignDeviceRow.campaign_id == campaign_id, CampaignDeviceRow.state == "queued",
                CampaignDeviceRow.dev_id.in_(select(DeviceRow.dev_id).where(DeviceRow.status == "quarantined")))
                .values(state="cancelled", finished=now, reason="the device was quarantined"))
            waves = self._open_waves(s, c, spec)
            if c.state != "running":
                return 0
            if waves is None:
                return 0
            running = s.scalar(select(func.count()).select_from(CampaignDeviceRow).where(
                CampaignDeviceRow.campaign_id == campaign_id, CampaignDeviceRow.state == "running")) or 0
            room = min(spec.max_in_flight - running, budget)
            if room <= 0:
                return 0
            busy = select(CampaignDeviceRow.dev_id).where(CampaignDeviceRow.state == "running",
                                                          CampaignDeviceRow.campaign_id != campaign_id)
            candidates = list(s.execute(
                select(CampaignDeviceRow.dev_id, DeviceRow.timezone).join(DeviceRow, DeviceRow.dev_id ==
                                                                          CampaignDeviceRow.dev_id)
                .where(CampaignDeviceRow.campaign_id == campaign_id, CampaignDeviceRow.state == "queued",
                       CampaignDeviceRow.wave <= c.wave, CampaignDeviceRow.dev_id.not_in(busy),
                       or_(CampaignDeviceRow.not_before.is_(None), CampaignDeviceRow.not_before <= now))
                .order_by(CampaignDeviceRow.wave, CampaignDeviceRow.attempts, CampaignDeviceRow.dev_id)
                .limit(room * 4 if spec.windows else room)).all())
        chosen = [d for d, tz in candidates if self._in_window(spec, tz, now)][:room]
        for dev_id in chosen:
            self._attempt(campaign_id, dev_id, spec, now)
        return len(chosen)

    def _attempt(self, campaign_id: int, dev_id: str, spec: CampaignSpec, now: float) -> None:
        failure = ""
        job_id = None
        try:
            job_id = self.server.assign(dev_id, spec.target_version, delivery=spec.delivery).id
        except (ValueError, LookupError) as exc:
            failure = f"no update planned: {exc}"
        with self.store.tx() as s:
            cd = s.get(CampaignDeviceRow, (campaign_id, dev_id))
            assert cd is not None
            cd.state, cd.attempts, cd.started, cd.first_job = "running", cd.attempts + 1, now, job_id
            if failure:
                self._end_attempt(s, cd, spec, now, False, None, failure)
        if failure or self.server.push is None:
            return
        try:
            self.server.notify(dev_id)
        except (PushError, LookupError) as exc:
            with self.store.tx() as s:
                s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.state == "pending")
                          .values(state="cancelled", message=f"notification failed: {exc}"[:512]))
                cd = s.get(CampaignDeviceRow, (campaign_id, dev_id))
                assert cd is not None
                self._end_attempt(s, cd, spec, now, False, None, f"notification failed: {exc}")

    def _in_window(self, spec: CampaignSpec, tz: str, now: float) -> bool:
        if not spec.windows:
            return True
        zone = self._zones.get(tz)
        if zone is None:
            try:
                zone = self._zones[tz] = zoneinfo.ZoneInfo(tz)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                zone = self._zones[tz] = zoneinfo.ZoneInfo("UTC")
        local = datetime.fromtimestamp(now, zone)
        return any(w.admits(local) for w in spec.windows)

    def _failure_threshold(self, s: Session, c: CampaignRow, spec: CampaignSpec, now: float) -> bool:
        f = spec.failure
        if f.count is None and f.percent is None:
            return False
        since = max(now - f.period, c.counted_from or 0.0)
        ended = dict(s.execute(select(AttemptRow.outcome, func.count()).where(
            AttemptRow.campaign_id == c.id, AttemptRow.ended >= since).group_by(AttemptRow.outcome)).all())
        failed, total = ended.get("failed", 0), sum(ended.values())
        why = ""
        if f.count is not None and failed >= f.count:
            why = f"{failed} failed attempts within {f.period:.0f} s (threshold {f.count})"
        elif f.percent is not None and total >= f.min_attempts and 100 * failed / total >= f.percent:
            why = f"{failed} of {total} attempts failed within {f.period:.0f} s ({100 * failed / total:.0f}%, " \
                  f"threshold {f.percent:g}%)"
        if not why:
            return False
        c.state, c.reason = "suspended", f"failure threshold reached: {why}"
        self._alert(s, c, spec, "campaign.suspended", c.reason)
        return True

    def _open_waves(self, s: Session, c: CampaignRow, spec: CampaignSpec) -> int | None:
        """Open the next waves whose predecessors met their success threshold; complete a finished
        campaign, suspend one whose finished wave fell short. Returns the open wave, None when done."""
        while True:
            rows = dict(((w, st), n) for w, st, n in s.execute(
                select(CampaignDeviceRow.wave, CampaignDeviceRow.state, func.count())
                .where(CampaignDeviceRow.campaign_id == c.id).group_by(CampaignDeviceRow.wave, CampaignDeviceRow.state)))
            last = max((w for w, _ in rows), default=0)
            size = sum(n for (w, _), n in rows.items() if w == c.wave)
            done = sum(n for (w, st), n in rows.items() if w == c.wave and st in FINAL)
            ok = rows.get((c.wave, "succeeded"), 0)
            wave = spec.waves[c.wave] if c.wave < len(spec.waves) else Wave()
            met = size == 0 or 100 * ok / size >= wave.success_threshold
            if c.wave >= last:
                if all(st in FINAL for (_, st) in rows):
                    c.state, c.finished_at = "completed", time.time()
                    self._alert(s, c, spec, "campaign.completed",
                                f"campaign {c.name} completed: {sum(n for (_, st), n in rows.items() if st == 'succeeded')}"
                                f" updated, {sum(n for (_, st), n in rows.items() if st == 'failed')} failed")
                    return None
                return c.wave
            if met:
                if wave.group and spec.release_after_testers:
                    self._release_tested(s, c)
                c.wave += 1
                log.info("campaign %s: wave %d opens", c.id, c.wave)
                continue
            if done == size:
                c.state = "suspended"
                c.reason = (f"wave {c.wave} ended with {ok} of {size} devices updated, below its success threshold "
                            f"of {wave.success_threshold:g}%")
                self._alert(s, c, spec, "campaign.suspended", c.reason)
            return c.wave

    def _release_tested(self, s: Session, c: CampaignRow) -> None:
        """Release the tested packages that the tester wave's devices installed."""
        firsts = select(CampaignDeviceRow.dev_id).where(CampaignDeviceRow.campaign_id == c.id,
                                                        CampaignDeviceRow.wave == c.wave,
                                                        CampaignDeviceRow.state == "succeeded")
        since = c.started_at or 0.0
        packages = set(s.scalars(select(JobRow.package_id).where(JobRow.dev_id.in_(firsts), JobRow.state == "succeeded",
                                                                 JobRow.created >= since)))
        actor = f"campaign:{c.id}"
        for rel in s.scalars(select(ReleaseRow).where(ReleaseRow.package_id.in_(packages),
                                                      ReleaseRow.state == "tested")):
            rel.state, rel.changed_at, rel.changed_by = "released", time.time(), actor
            # (In this transaction: a second one would wait on this one's write lock in SQLite.)
            s.add(AuditRow(actor=actor, action="release.released", target=str(rel.package_id),
                           detail={"package": rel.package_id, "why": f"wave {c.wave} met its success threshold"}))

    def _alert(self, s: Session, c: CampaignRow, spec: CampaignSpec, kind: str, text: str) -> None:
        alert = AlertRow(campaign_id=c.id, kind=kind, text=text[:1024])
        s.add(alert)
        s.flush()
        log.warning("campaign %s (%s): %s", c.id, c.name, text)
        if spec.alert_url:
            alert_id = alert.id
            self.webhooks.post(spec.alert_url, {"event": kind, "campaign": c.id, "name": c.name, "text": text,
                                                "at": alert.at}, lambda outcome: self._delivered(alert_id, outcome))

    def _delivered(self, alert_id: int, outcome: str) -> None:
        with self.store.tx() as s:
            s.execute(update(AlertRow).where(AlertRow.id == alert_id).values(delivery=outcome[:128]))

    def _sample(self, campaign_id: int, now: float) -> None:
        with self.store.tx() as s:
            counts = self.counts(s, campaign_id)
            if counts != self._last_counts.get(campaign_id):
                s.add(SampleRow(campaign_id=campaign_id, at=now, counts=counts))
                self._last_counts[campaign_id] = counts


class Runner:
    """Calls `tick` (and the command expiry) every `interval` seconds in a background thread."""

    def __init__(self, campaigns: Campaigns, interval: float = 1.0, extra: list[Any] | None = None) -> None:
        self.campaigns, self.interval = campaigns, interval
        self.extra = extra or []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="campaigns")

    def start(self) -> Runner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.campaigns.tick()
                for job in self.extra:
                    job()
            except Exception:  # one bad pass is logged; the next one tries again
                log.exception("campaign tick failed")
