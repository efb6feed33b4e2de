"""Campaigns: the list and the form that creates one, a campaign's page with its live progress
(the script polls `/campaigns/{id}/live` while it runs), its report (counts by state and by
make/model/version, devices by keyset pages, CSV) and the reports overview with the alerts."""

from __future__ import annotations

from starlette.responses import Response
from starlette.routing import Route

from fotadelta.server.campaigns import DEVICE_STATES, CampaignSpec, FailureThreshold, Targets, Wave
from fotadelta.server.console.web import Console, Ctx, HttpError, link

STATES = ("draft", "running", "paused", "suspended", "completed", "cancelled")
LIVE = ("running", "paused", "suspended")
ACTIONS = {"start": ("draft",), "pause": ("running", "suspended"), "resume": ("paused", "suspended"),
           "cancel": ("draft", "running", "paused", "suspended"), "retarget": ("running", "paused", "suspended",
                                                                               "completed")}
REPORT_PAGE = 100


def campaigns(ctx: Ctx) -> Response:
    if ctx.request.method == "POST":
        made = ctx.fleet.campaigns.create(ctx.me, spec_of(ctx))
        return ctx.done(link(f"/campaigns/{made.id}"), f"Campaign {made.id} ({made.name}) is a draft: start it when "
                                                        "ready.")
    state = ctx.arg("state") or None
    if state is not None and state not in STATES:
        raise HttpError(400, f"state is one of {', '.join(STATES)}")
    return ctx.render("campaigns.html", nav="campaigns", campaigns=ctx.fleet.campaigns.find(ctx.me, state),
                      state=state, states=STATES, groups=ctx.fleet.registry.groups(ctx.me),
                      versions=sorted({r.to_version for r in ctx.fleet.releases.find(ctx.me)}))


def spec_of(ctx: Ctx) -> CampaignSpec:
    """A campaign from the form: targets, a tester wave, percent waves, the failure threshold."""
    def number(name: str, default: float) -> float:
        text = ctx.field(name)
        try:
            return float(text) if text else default
        except ValueError:
            raise ValueError(f"{name.replace('_', ' ')} is a number") from None

    def whole(name: str, default: int) -> int:
        value = number(name, default)
        if value != int(value):
            raise ValueError(f"{name.replace('_', ' ')} is a whole number")
        return int(value)

    threshold = number("success_threshold", 100.0)
    waves = [Wave(name="testers", group=ctx.field("tester_group"), success_threshold=threshold)] \
        if ctx.field("tester_group") else []
    for part in filter(None, (p.strip() for p in ctx.field("waves").split(","))):
        try:
            waves.append(Wave(name=f"{part}%", percent=float(part.rstrip("%")), success_threshold=threshold))
        except ValueError:
            raise ValueError(f"waves are percentages separated by commas, not {part!r}") from None
    targets = Targets(group=ctx.field("group") or None, tag=ctx.field("tag") or None, make=ctx.field("make") or None,
                      model=ctx.field("model") or None, version=ctx.field("version") or None)
    failure = FailureThreshold(percent=number("failure_percent", 0.0) or None, count=whole("failure_count", 0) or None,
                               period=number("failure_period", 3600.0), min_attempts=whole("min_attempts", 10))
    return CampaignSpec(name=ctx.field("name"), target_version=ctx.field("target_version"), targets=targets,
                        waves=waves, failure=failure, max_attempts=whole("max_attempts", 3), priority=whole("priority", 0),
                        release_after_testers=ctx.field("release_after_testers") == "on")


def campaign(ctx: Ctx) -> Response:
    cid = ctx.request.path_params["id"]
    if ctx.request.method == "POST":
        return _act(ctx, cid)
    c = ctx.fleet.campaigns.get(ctx.me, cid)
    return ctx.render("campaign.html", nav="campaigns", c=c, actions=ACTIONS, live=c.state in LIVE,
                      targets={k: v for k, v in vars(c.spec.targets).items() if v},
                      svg=ctx.fleet.reports.progress_svg(ctx.me, cid),
                      alerts=ctx.fleet.campaigns.alerts(ctx.me, cid, limit=20))


def live(ctx: Ctx) -> Response:
    cid = ctx.request.path_params["id"]
    c = ctx.fleet.campaigns.get(ctx.me, cid)
    return ctx.fragment("campaign_live.html", c=c, live=c.state in LIVE, svg=ctx.fleet.reports.progress_svg(ctx.me, cid))


def _act(ctx: Ctx, cid: int) -> Response:
    action, f, me = ctx.field("action"), ctx.fleet.campaigns, ctx.me
    reason = ctx.field("reason")
    if action == "start":
        c = f.start(me, cid)
        return ctx.done(link(f"/campaigns/{cid}"), f"Campaign {cid} is running: {sum(c.counts.values())} devices.")
    if action == "pause":
        f.pause(me, cid, reason)
    elif action == "resume":
        f.resume(me, cid)
    elif action == "cancel":
        f.cancel(me, cid, reason)
    elif action == "retarget":
        n = f.retarget_failed(me, cid)
        return ctx.done(link(f"/campaigns/{cid}"), f"{n} failed devices get new attempts.")
    else:
        raise HttpError(400, f"unknown action {action!r}")
    return ctx.done(link(f"/campaigns/{cid}"), f"Campaign {cid} is {f.get(me, cid).state}.")


def report(ctx: Ctx) -> Response:
    cid = ctx.request.path_params["id"]
    chosen = {k: ctx.arg(k) or None for k in ("state", "make", "model", "version")}
    if chosen["state"] and chosen["state"] not in DEVICE_STATES:
        raise HttpError(400, f"state is one of {', '.join(DEVICE_STATES)}")
    rep = ctx.fleet.reports.campaign(ctx.me, cid, after=ctx.arg("after"), limit=REPORT_PAGE + 1, **chosen)
    return ctx.render("report.html", nav="reports", rep=rep, devices=rep.devices[:REPORT_PAGE],
                      more=len(rep.devices) > REPORT_PAGE, chosen=chosen, states=DEVICE_STATES,
                      svg=ctx.fleet.reports.progress_svg(ctx.me, cid), here={k: v for k, v in chosen.items() if v})


def report_csv(ctx: Ctx) -> Response:
    cid = ctx.request.path_params["id"]
    chosen = {k: ctx.arg(k) or None for k in ("state", "make", "model", "version")}
    return Response(ctx.fleet.reports.campaign_csv(ctx.me, cid, **chosen), media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="campaign-{cid}.csv"',
                             "cache-control": "no-store", "x-content-type-options": "nosniff"})


def reports(ctx: Ctx) -> Response:
    return ctx.render("reports.html", nav="reports", campaigns=ctx.fleet.campaigns.find(ctx.me),
                      alerts=ctx.fleet.campaigns.alerts(ctx.me, limit=50))


def routes(console: Console) -> list[Route]:
    return [Route("/campaigns", console.page(campaigns), methods=["GET", "POST"]),
            Route("/campaigns/{id:int}", console.page(campaign), methods=["GET", "POST"]),
            Route("/campaigns/{id:int}/live", console.page(live)),
            Route("/campaigns/{id:int}/report", console.page(report)),
            Route("/campaigns/{id:int}/report.csv", console.page(report_csv)),
            Route("/reports", console.page(reports))]
