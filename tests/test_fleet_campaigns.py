"""Campaigns through the Python service API with real emulated devices: waves and their success
thresholds, the failure threshold that suspends and alerts, tester groups and release, retries
and their limit, daisy chains, time-zone windows, priorities, timeouts, cancel. The scheduler is
driven by calling `tick` (the Runner thread does the same every second in a server)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from dm_fixtures import MAKE, MODEL, secured_sim
from fleet_fixtures import Api, api  # noqa: F401  (fixture)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from fotadelta.dm.client import DmClient
from fotadelta.server import serve_in_thread
from fotadelta.server.auth import Forbidden
from fotadelta.server.campaigns import RENOTIFY_AFTER, CampaignSpec, FailureThreshold, Targets, Wave, Window
from fotadelta.server.store import JobRow


def _devices(api: Api, n: int, version: str = "1.0", *, push_to: str | None = None, **kw: Any) -> list[DmClient]:
    """Devices that have opened their first session; push_to: a push address other than the emulator's."""
    out = []
    for _ in range(n):
        client = api.lab.device(version, listen=push_to is None, **kw)
        if push_to is not None:
            client.tree.put("./DevInfo/Ext/PushAddr", push_to)
        client.run()
        out.append(client)
    return out


@pytest.fixture
def sink() -> Iterator[str]:
    """A push address that takes notifications and does nothing: devices that never come."""
    async def take(request: Request) -> Response:
        return PlainTextResponse("accepted\n", status_code=202)
    running = serve_in_thread(Starlette(routes=[Route("/push", take, methods=["POST"])]))
    yield f"http://127.0.0.1:{running.port}/push"
    running.stop()


def _run(api: Api, campaign_id: int, until: Callable[[str], bool] = lambda s: s != "running",
         timeout: float = 90.0) -> str:
    """Tick until the campaign's state satisfies until; the state."""
    dana = api.principal("dana")
    deadline = time.monotonic() + timeout
    while True:
        api.services.campaigns.tick()
        state = api.services.campaigns.get(dana, campaign_id).state
        if until(state):
            return state
        assert time.monotonic() < deadline, (f"campaign {campaign_id} still {state}: ", [
            (d.dev_id, d.state, d.attempts, d.reason) for d in api.services.reports.campaign(dana, campaign_id).devices],
            [(j.dev_id, j.state) for d in api.services.reports.campaign(dana, campaign_id).devices
             for j in api.lab.jobs(d.dev_id)])
        time.sleep(0.05)


def _start(api: Api, spec: CampaignSpec) -> int:
    dana = api.principal("dana")
    return api.services.campaigns.start(dana, api.services.campaigns.create(dana, spec).id).id


def test_waves_open_in_turn_and_testers_release_what_they_installed(api: Api) -> None:
    s, dana = api.services, api.principal("dana")
    clients = _devices(api, 6)
    s.registry.create_group(dana, "testers")
    s.registry.add_members(dana, "testers", [clients[0].config.dev_id])
    for data in (api.lab.release.p10_11, api.lab.release.p11_12):
        rel = s.releases.publish(dana, data)
        s.releases.move(dana, rel.package_id, "tested", tester_group="testers")
    cid = _start(api, CampaignSpec("to 1.2", "1.2", Targets(make=MAKE), waves=[
        Wave("testers", group="testers"), Wave("two", count=2)], max_in_flight=10, release_after_testers=True))
    waves = {d.dev_id: d.wave for d in s.reports.campaign(dana, cid).devices}
    assert waves[clients[0].config.dev_id] == 0 and sorted(waves.values()) == [0, 1, 1, 2, 2, 2]
    # Only the tester runs at first; the others wait for the release.
    s.campaigns.tick()
    running = [d.dev_id for d in s.reports.campaign(dana, cid, state="running").devices]
    assert running == [clients[0].config.dev_id]
    assert _run(api, cid) == "completed"
    assert all(c.device.version == "1.2" for c in clients)
    assert {r.state for r in s.releases.find(dana)} == {"released"}
    assert any(e.actor == f"campaign:{cid}" and e.action == "release.released"
               for e in s.auth.audit_log(api.principal("ada"), limit=1000))
    # Every device walked the daisy chain 1.0 -> 1.1 -> 1.2 within one attempt.
    for c in clients:
        jobs = api.lab.jobs(c.config.dev_id)
        assert [(j.goal_version, j.state) for j in jobs] == [("1.2", "succeeded"), ("1.2", "succeeded")]
    assert [d.attempts for d in s.reports.campaign(dana, cid).devices] == [1] * 6


def test_the_failure_threshold_suspends_alerts_by_webhook_and_resume_counts_afresh(api: Api) -> None:
    s, dana = api.services, api.principal("dana")
    got: list[dict[str, Any]] = []

    async def hook(request: Request) -> Response:
        got.append(await request.json())
        return PlainTextResponse("ok\n")
    receiver = serve_in_thread(Starlette(routes=[Route("/a", hook, methods=["POST"])]))
    try:
        api.lab.publish_chain()
        foreign = _devices(api, 3, sim_card=secured_sim(b"other operator"))
        good = _devices(api, 2)
        cid = _start(api, CampaignSpec("to 1.1", "1.1", Targets(make=MAKE), failure=FailureThreshold(count=2),
                                       max_attempts=1, alert_url=f"http://127.0.0.1:{receiver.port}/a"))
        assert _run(api, cid) == "suspended"
        c = s.campaigns.get(dana, cid)
        assert c.reason.startswith("failure threshold reached: ") and "(threshold 2)" in c.reason
        s.webhooks.flush()
        assert [g["event"] for g in got] == ["campaign.suspended"] and got[0]["campaign"] == cid
        alert = s.campaigns.alerts(dana, cid)[0]
        assert alert.kind == "campaign.suspended" and alert.delivery == "HTTP 200"
        # Suspended: no new attempts start.
        started = sum(1 for d in s.reports.campaign(dana, cid).devices if d.attempts)
        s.campaigns.tick()
        assert sum(1 for d in s.reports.campaign(dana, cid).devices if d.attempts) == started
        # Resumed, failures count from now: the third foreign device alone does not reach 2.
        s.campaigns.resume(dana, cid)
        state = _run(api, cid, until=lambda st: st != "running")
        report = s.reports.campaign(dana, cid)
        assert state == "completed", (state, s.campaigns.get(dana, cid).reason)
        assert report.counts["failed"] == 3 and report.counts["succeeded"] == 2
        assert all(c.device.version == "1.1" for c in good) and all(c.device.version == "1.0" for c in foreign)
    finally:
        receiver.stop()


def test_a_wave_that_ends_below_its_success_threshold_suspends_the_campaign(api: Api) -> None:
    s, dana = api.services, api.principal("dana")
    api.lab.publish_chain()
    bad = _devices(api, 1, sim_card=secured_sim(b"other operator"))[0]
    _devices(api, 2)
    # The bad device sorts first: the first wave is it alone.
    cid = _start(api, CampaignSpec("w", "1.1", Targets(make=MAKE), waves=[Wave(count=1, success_threshold=100)],
                                   max_attempts=2))
    assert _run(api, cid) == "suspended"
    c = s.campaigns.get(dana, cid)
    assert "wave 0 ended with 0 of 1 devices updated" in c.reason
    failed = s.reports.campaign(dana, cid, state="failed").devices
    assert [(d.dev_id, d.attempts) for d in failed] == [(bad.config.dev_id, 2)]
    assert failed[0].reason.endswith("(after 2 attempts)")
    assert s.reports.campaign(dana, cid, state="queued").devices  # wave 1 never opened


def test_windows_follow_each_devices_time_zone() -> None:
    spec = CampaignSpec("w", "1", windows=[Window(days=[0, 1, 2, 3, 4], start="02:00", end="04:00")])
    # Monday 2024-01-08 01:30 UTC: 02:30 in Berlin (inside), 20:30 Sunday in New York (outside), 10:30 in Tokyo.
    at = datetime(2024, 1, 8, 1, 30, tzinfo=ZoneInfo("UTC")).timestamp()
    from fotadelta.server.campaigns import Campaigns
    inside = Campaigns._in_window
    assert inside(_Zones(), spec, "Europe/Berlin", at)
    assert not inside(_Zones(), spec, "America/New_York", at)
    assert not inside(_Zones(), spec, "Asia/Tokyo", at)
    assert not inside(_Zones(), spec, "UTC", at)
    # A window over midnight: Friday 22:00 to 02:00 is open early on Saturday, not early on Friday.
    night = Window(days=[4], start="22:00", end="02:00")
    assert night.admits(datetime(2024, 1, 13, 1, 0)) and night.admits(datetime(2024, 1, 12, 23, 0))
    assert not night.admits(datetime(2024, 1, 12, 1, 0))
    with pytest.raises(ValueError):
        CampaignSpec("w", "1", windows=[Window(start="25:00")]).check()


class _Zones:
    """Stands in for the Campaigns instance: _in_window only uses its zone cache."""

    def __init__(self) -> None:
        self._zones: dict[str, Any] = {}


def test_a_campaign_outside_its_window_starts_nothing(api: Api) -> None:
    s, dana = api.services, api.principal("dana")
    api.lab.publish_chain()
    _devices(api, 2)
    now = datetime.now(ZoneInfo("UTC"))
    closed = [Window(days=[(now.weekday() + 3) % 7], start="00:00", end="24:00")]
    cid = _start(api, CampaignSpec("later", "1.1", Targets(make=MAKE), windows=closed))
    for _ in range(3):
        s.campaigns.tick()
    assert s.campaigns.get(dana, cid).counts["queued"] == 2


def test_the_higher_priority_campaign_takes_the_shared_capacity_first(api: Api, sink: str) -> None:
    s, dana = api.services, api.principal("dana")
    api.lab.publish_chain()
    low_devices = _devices(api, 2, push_to=sink)
    high_devices = _devices(api, 2, push_to=sink)
    s.campaigns.max_in_flight = 2
    low = _start(api, CampaignSpec("low", "1.1", Targets(dev_ids=[c.config.dev_id for c in low_devices]),
                                   priority=1))
    high = _start(api, CampaignSpec("high", "1.1", Targets(dev_ids=[c.config.dev_id for c in high_devices]),
                                    priority=5))
    s.campaigns.tick()
    assert s.campaigns.get(dana, high).counts["running"] == 2
    assert s.campaigns.get(dana, low).counts["running"] == 0


def test_a_device_that_never_answers_times_out_and_a_device_is_never_in_two_attempts(api: Api, sink: str) -> None:
    s, dana = api.services, api.principal("dana")
    api.lab.publish_chain()
    silent = _devices(api, 1, push_to=sink)[0]
    first = _start(api, CampaignSpec("a", "1.1", Targets(dev_ids=[silent.config.dev_id]), attempt_timeout=0.2,
                                     max_attempts=1))
    second = _start(api, CampaignSpec("b", "1.1", Targets(dev_ids=[silent.config.dev_id])))
    s.campaigns.tick()
    states = {c: s.campaigns.get(dana, c).counts for c in (first, second)}
    assert states[first]["running"] + states[second]["running"] == 1
    time.sleep(0.3)
    _run(api, first)
    failed = s.reports.campaign(dana, first, state="failed").devices
    assert len(failed) == 1 and "no result within" in failed[0].reason
    assert [j.state for j in api.lab.jobs(silent.config.dev_id)][0] == "cancelled"


def test_a_job_whose_notification_never_went_out_is_notified_again(api: Api) -> None:
    """The server stopped between planning a device's job and pushing its notification (here: no
    transport on that tick): a later tick, once RENOTIFY_AFTER has passed, notifies it and the
    device updates, long before the attempt's timeout."""
    s, dana = api.services, api.principal("dana")
    api.lab.publish_chain()
    [device] = _devices(api, 1)
    cid = _start(api, CampaignSpec("r", "1.1", Targets(dev_ids=[device.config.dev_id]), attempt_timeout=3600))
    push, s.campaigns.server.push = s.campaigns.server.push, None
    try:
        s.campaigns.tick()
    finally:
        s.campaigns.server.push = push
    [job] = api.lab.jobs(device.config.dev_id)
    start = time.time()
    s.campaigns.tick(start + RENOTIFY_AFTER / 2)  # not yet: a notification may still be on its way
    assert api.lab.job(job.id).state == "pending"
    s.campaigns.tick(start + RENOTIFY_AFTER + 1)
    assert _run(api, cid, timeout=60) == "completed"
    assert s.campaigns.get(dana, cid).counts["succeeded"] == 1 and device.device.version == "1.1"


def test_cancel_stops_queued_devices_and_pending_jobs(api: Api, sink: str) -> None:
    s, dana = api.services, api.principal("dana")
    api.lab.publish_chain()
    clients = _devices(api, 3, push_to=sink)
    cid = _start(api, CampaignSpec("c", "1.1", Targets(make=MAKE), max_in_flight=1))
    s.campaigns.tick()
    c = s.campaigns.cancel(dana, cid, "wrong build")
    assert c.state == "cancelled" and c.counts["cancelled"] == 3 and c.reason == "wrong build"
    with api.lab.server.store.tx() as tx:
        assert {j.state for j in tx.query(JobRow).all()} == {"cancelled"}
    for client in clients:
        client.run()
        assert client.device.version == "1.0"


def test_campaign_rules_are_checked_and_roles_enforced(api: Api) -> None:
    s = api.services
    with pytest.raises(Forbidden):
        s.campaigns.create(api.principal("carl"), CampaignSpec("x", "1.1"))
    with pytest.raises(ValueError, match="group, a count or a percent"):
        s.campaigns.create(api.principal("dana"), CampaignSpec("x", "1.1", waves=[Wave(count=1, percent=5)]))
    with pytest.raises(LookupError, match="no group"):
        s.campaigns.create(api.principal("dana"), CampaignSpec("x", "1.1", waves=[Wave(group="nobody")]))
    cid = s.campaigns.create(api.principal("dana"), CampaignSpec("x", "1.1", Targets(make="Nobody"))).id
    with pytest.raises(ValueError, match="targets no device"):
        s.campaigns.start(api.principal("dana"), cid)
    _ = MODEL


def test_a_device_quarantined_during_a_campaign_leaves_it(api: Api, sink: str) -> None:
    """Whether it is waiting for its turn or in the middle of its attempt: it is cancelled with the
    reason, and the update it was given and has not started is withdrawn."""
    s, dana = api.services, api.principal("dana")
    api.lab.publish_chain()
    clients = _devices(api, 3, push_to=sink)
    cid = _start(api, CampaignSpec("q", "1.1", Targets(make=MAKE), max_in_flight=1, attempt_timeout=0.5,
                                   max_attempts=1))
    s.campaigns.tick()  # one device's attempt starts (one in flight at most); the others wait
    [busy] = [d.dev_id for d in s.reports.campaign(dana, cid, state="running").devices]
    waiting, last = [c.config.dev_id for c in clients if c.config.dev_id != busy]
    [job] = api.lab.jobs(busy)
    s.registry.quarantine(dana, busy, True, "lost in the field")
    s.registry.quarantine(dana, waiting, True, "stolen")
    assert _run(api, cid) == "completed"
    by_dev = {d.dev_id: (d.state, d.reason) for d in s.reports.campaign(dana, cid).devices}
    assert by_dev[busy] == by_dev[waiting] == ("cancelled", "the device was quarantined")
    assert api.lab.job(job.id).state == "cancelled"
    assert by_dev[last][0] == "failed"  # (it never comes: its attempt times out)
