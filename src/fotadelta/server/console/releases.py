"""Releases: the packages and their lifecycle (publish a signed package; test it with a tester
group, release, reject, deactivate)."""

from __future__ import annotations

from starlette.responses import Response
from starlette.routing import Route

from fotadelta.server.console.web import Console, Ctx, HttpError, link
from fotadelta.server.releases import STATES

# What may follow each state (releases._MOVES read the other way round), for the buttons.
NEXT = {"created": ("tested", "released", "rejected"), "tested": ("tested", "released", "rejected"),
        "released": ("deactivated",), "rejected": (), "deactivated": ()}


def releases(ctx: Ctx) -> Response:
    if ctx.request.method == "POST":
        package = ctx.files.get("package")
        if not package:
            raise ValueError("choose a signed package file to publish")
        rel = ctx.fleet.releases.publish(ctx.me, package, ctx.field("note"))
        return ctx.done(link("/releases"), f"Package {rel.package_id} ({rel.name}) is published: created.")
    state = ctx.arg("state") or None
    if state is not None and state not in STATES:
        raise HttpError(400, f"state is one of {', '.join(STATES)}")
    return ctx.render("releases.html", nav="releases", releases=ctx.fleet.releases.find(ctx.me, state=state),
                      state=state, states=STATES, next_states=NEXT, groups=ctx.fleet.registry.groups(ctx.me))


def move(ctx: Ctx) -> Response:
    package_id = ctx.request.path_params["id"]
    rel = ctx.fleet.releases.move(ctx.me, package_id, ctx.field("state"), tester_group=ctx.field("tester_group") or None,
                                  note=ctx.field("note"))
    return ctx.done(link("/releases"), f"Package {rel.package_id} ({rel.name}) is {rel.state}.")


def routes(console: Console) -> list[Route]:
    return [Route("/releases", console.page(releases, upload=True), methods=["GET", "POST"]),
            Route("/releases/{id:int}", console.page(move), methods=["POST"])]
