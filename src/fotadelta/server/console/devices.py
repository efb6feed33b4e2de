"""The fleet overview (counts, search, filters, keyset pages) and a device's page: its record and
lifecycle actions, an update to a version, its history, the DM tree explorer and the command
console. Commands are asynchronous: the page shows a command's state and a script polls
`/commands/{id}/status` until the device has answered."""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from fotadelta.server.command_spec import FORMATS
from fotadelta.server.commands import CommandView
from fotadelta.server.console.web import Console, Ctx, HttpError, link
from fotadelta.server.registry import STATUSES, DeviceFilter

PAGE = 50
COUNT_TTL = 30.0
MAX_CACHED = 256
FILTERS = ("status", "make", "model", "version", "group", "tag")
CONSOLE_OPS = ("Get", "Replace", "Exec", "Add", "Delete")
TREE_QUERY = "?list=Struct"
FINISHED = ("succeeded", "failed", "refused", "cancelled")


def device_link(dev_id: str, **query: Any) -> str:
    return link(f"/devices/{urllib.parse.quote(dev_id, safe=':')}", **query)


def search_filter(q: str) -> dict[str, str | None]:
    """What the search box means: '+…' an MSISDN, digits the start of an IMEI, else the start of a DevId."""
    if not q:
        return {}
    if q.startswith("+"):
        return {"msisdn": q}
    return {"dev_id_prefix": f"IMEI:{q}" if q.isdigit() else q}


class Counts:
    """The overview's counts (by status, by make/model/version) per filter, kept COUNT_TTL seconds: they
    cost a scan of an index over the whole fleet (about a second for a million devices), while paging
    through the list under one filter should not. Bounded to MAX_CACHED filters. (The page's list query
    still goes through the registry on every request, with its permission check.)"""

    def __init__(self) -> None:
        self._kept: OrderedDict[DeviceFilter, tuple[float, dict[str, int], list[tuple[str, str, str, int]]]] = \
            OrderedDict()
        self._lock = threading.Lock()

    def get(self, ctx: Ctx, where: DeviceFilter) -> tuple[float, dict[str, int], list[tuple[str, str, str, int]]]:
        now = time.time()
        with self._lock:
            kept = self._kept.get(where)
        if kept is None or now - kept[0] > COUNT_TTL:
            kept = (now, ctx.fleet.registry.count(ctx.me, where), ctx.fleet.registry.models(ctx.me, where))
            with self._lock:
                self._kept[where] = kept
                self._kept.move_to_end(where)
                while len(self._kept) > MAX_CACHED:
                    self._kept.popitem(last=False)
        return kept


def overview(ctx: Ctx, counts: Counts) -> Response:
    chosen = {name: ctx.arg(name) or None for name in FILTERS}
    if chosen["status"] and chosen["status"] not in STATUSES:
        raise HttpError(400, f"status is one of {', '.join(STATUSES)}")
    q = ctx.arg("q")
    where = DeviceFilter(**chosen, **search_filter(q))  # type: ignore[arg-type]
    after, before = ctx.arg("after"), ctx.arg("before") or None
    # One row more than a page tells whether there is a next (or previous) page.
    rows = ctx.fleet.registry.find(ctx.me, where, after=after, before=before, limit=PAGE + 1)
    more = len(rows) > PAGE
    devices = (rows[1:] if before is not None else rows[:PAGE]) if more else rows
    has_next = more if before is None else True
    has_prev = (more if before is not None else bool(after))
    counted_at, by_status, models = counts.get(ctx, where)
    return ctx.render("fleet.html", nav="fleet", devices=devices, chosen=chosen, q=q, statuses=STATUSES,
                      counts=by_status, models=models, counted_at=counted_at,
                      groups=ctx.fleet.registry.groups(ctx.me), has_next=has_next and bool(devices),
                      has_prev=has_prev and bool(devices),
                      here={**{k: v for k, v in chosen.items() if v}, "q": q})


def device(ctx: Ctx) -> Response:
    dev_id = ctx.request.path_params["dev_id"]
    if ctx.request.method == "POST":
        return _act(ctx, dev_id)
    dev = ctx.fleet.registry.get(ctx.me, dev_id)
    history = ctx.fleet.reports.device_history(ctx.me, dev_id, limit=200)
    versions = sorted({r.to_version for r in ctx.fleet.releases.find(ctx.me, make=dev.make, model=dev.model)
                       if r.state in ("released", "tested") and r.to_version != dev.version})
    watched = {name: _command(ctx, name) for name in ("explore", "command")}
    return ctx.render("device.html", nav="fleet", dev=dev, history=history, versions=versions,
                      commands=ctx.fleet.commands.find(ctx.me, dev_id=dev_id, before=2**62, limit=20),
                      explore=watched["explore"], command=watched["command"], ops=CONSOLE_OPS, formats=FORMATS,
                      timeline=history.timeline[::-1][:100])


def _command(ctx: Ctx, name: str) -> CommandView | None:
    command_id = ctx.int_arg(name)
    return ctx.fleet.commands.get(ctx.me, command_id) if command_id is not None else None


def _act(ctx: Ctx, dev_id: str) -> Response:
    action, f, me = ctx.field("action"), ctx.fleet, ctx.me
    if action == "quarantine":
        f.registry.quarantine(me, dev_id, True, ctx.field("reason"))
        return ctx.done(device_link(dev_id), f"{dev_id} is quarantined.")
    if action == "release":
        f.registry.quarantine(me, dev_id, False, ctx.field("reason"))
        return ctx.done(device_link(dev_id), f"{dev_id} is out of quarantine.")
    if action == "adopt":
        f.registry.adopt(me, dev_id)
        return ctx.done(device_link(dev_id), f"{dev_id} is adopted.")
    if action == "update":
        job = f.commands.update_device(me, dev_id, ctx.field("version"))
        told = "the device is notified" if job.notified else f"the notification failed ({job.notify_error}): the " \
            "device gets it at its next session"
        return ctx.done(device_link(dev_id), f"Job {job.job} brings {dev_id} to {ctx.field('version')}; {told}.")
    # The page shows the last tree listing and the last command together: each form carries the other's id.
    if action == "explore":
        uri = ctx.field("uri") or "."
        spec = [{"op": "Get", "target": uri.removesuffix(TREE_QUERY) + TREE_QUERY}]
        cmd = f.commands.execute(me, [dev_id], spec)[0]
        return ctx.done(device_link(dev_id, explore=cmd.id, command=_id(ctx, "command")) + "#tree")
    if action == "command":
        cmd = f.commands.execute(me, [dev_id], [_spec(ctx)])[0]
        return ctx.done(device_link(dev_id, explore=_id(ctx, "explore"), command=cmd.id) + "#console")
    raise HttpError(400, f"unknown action {action!r}")


def _id(ctx: Ctx, name: str) -> int | None:
    value = ctx.field(name)
    return int(value) if value.isdigit() else None


def _spec(ctx: Ctx) -> dict[str, str]:
    op = ctx.field("op")
    if op not in CONSOLE_OPS:
        raise ValueError(f"a console command is one of {', '.join(CONSOLE_OPS)}")
    spec = {"op": op, "target": ctx.field("target")}
    if op in ("Replace", "Add") or (op == "Exec" and ctx.form.get("data")):
        spec["data"] = ctx.form.get("data", "")  # (as typed: spaces may matter in a value)
        if ctx.field("format"):
            spec["format"] = ctx.field("format")
    return spec


def command(ctx: Ctx) -> Response:
    command_id = ctx.request.path_params["id"]
    if ctx.request.method == "POST":
        action = ctx.field("action")
        if action == "cancel":
            view = ctx.fleet.commands.cancel(ctx.me, command_id)
            return ctx.done(link(f"/commands/{view.id}"), f"Command {view.id} is cancelled.")
        if action == "retry":
            view = ctx.fleet.commands.retry(ctx.me, command_id)
            return ctx.done(link(f"/commands/{view.id}"), f"Command {command_id} runs again as command {view.id}.")
        raise HttpError(400, f"unknown action {action!r}")
    return ctx.render("command.html", nav="fleet", cmd=ctx.fleet.commands.get(ctx.me, command_id))


def command_status(ctx: Ctx) -> Response:
    """The command's state and results, for the polling script (no layout)."""
    return ctx.fragment("command_status.html", cmd=ctx.fleet.commands.get(ctx.me, ctx.request.path_params["id"]))


@dataclass
class Node:
    """A node of a listed DM tree, for the explorer."""

    uri: str
    format: str
    children: list[Node] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1]

    @property
    def interior(self) -> bool:
        return self.format == "node"


def dm_tree(cmd: CommandView) -> list[Node] | None:
    """The nodes a Get with ?list=Struct returned, nested by URI; None for any other command."""
    if len(cmd.spec) != 1 or cmd.spec[0].get("op") != "Get" or not str(cmd.spec[0].get("target")).endswith(TREE_QUERY) \
            or not cmd.results:
        return None
    top: list[Node] = []
    nodes: dict[str, Node] = {}
    for item in cmd.results[0]["items"]:
        uri = str(item.get("source") or "")
        node = nodes[uri] = Node(uri, str(item.get("format") or ""))
        parent = nodes.get(uri.rsplit("/", 1)[0]) if "/" in uri else None
        (parent.children if parent is not None else top).append(node)
    return top


def routes(console: Console) -> list[Route]:
    console.env.globals.update(dm_tree=dm_tree, device_link=device_link, FINISHED=FINISHED)
    counts = Counts()
    return [Route("/fleet", console.page(lambda ctx: overview(ctx, counts))),
            Route("/devices/{dev_id:path}", console.page(device), methods=["GET", "POST"]),
            Route("/commands/{id:int}", console.page(command), methods=["GET", "POST"]),
            Route("/commands/{id:int}/status", console.page(command_status))]

