"""DM commands of the application API: Get, Replace, Add, Delete, Exec, Atomic and Sequence on one
device or many, asynchronous, results by polling or webhook, cancel and retry.

A command is a row (`dm_commands`) and, while it waits for the device's next session, a task in
the engine's queue. Each command goes out behind an identity probe: the session first answers a
Get of `./DevInfo/DevId`, and only if that is the device the command is for does the command
follow in the next package. A command for device A answered by device B (cloned credentials, a
swapped module) is refused, recorded on the command and in A's events, and never executed.

At start-up `restore` queues again what was waiting. A command whose session ends before the device
answers it (the device went silent, or opened a new session) fails with the session's reason; one
sent longer than SENT_TIMEOUT ago without either is failed by `expire`."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from fotadelta.dm.model import Add, Atomic, Command, Delete, Exec, Get, Item, Meta, Replace, Sequence, Status
from fotadelta.dm.session import walk
from fotadelta.server.auth import Auth, Conflict, Permission, Principal
from fotadelta.server.engine import DmServer, Task
from fotadelta.server.push import PushError
from fotadelta.server.store import DeviceRow
from fotadelta.server.tables import CommandRow
from fotadelta.server.webhooks import Webhooks, check_url

DEVID_URI = "./DevInfo/DevId"
MAX_COMMANDS = 64  # per request, nested ones included
MAX_DEPTH = 3
MAX_DATA = 64 * 1024
MAX_DEVICES = 10_000  # per request
SENT_TIMEOUT = 600.0  # a command sent this long ago with no answer has failed
OPS = ("Get", "Replace", "Add", "Delete", "Exec", "Atomic", "Sequence")
FORMATS = ("chr", "int", "bool", "b64", "bin", "xml", "node", "float", "date", "time", "null")


@dataclass(frozen=True)
class CommandView:
    id: int
    dev_id: str
    batch: str
    spec: list[dict[str, Any]]
    state: str
    statuses: list[dict[str, Any]]
    results: list[dict[str, Any]]
    error: str
    callback_url: str
    retry_of: int | None
    created_at: float
    created_by: str
    sent_at: float | None
    finished_at: float | None


@dataclass(frozen=True)
class UpdateJob:
    """An update job just planned: its id and correlator, and whether the device was notified (if not,
    why: it gets the job at its next session)."""

    job: int
    correlator: str
    notified: bool
    notify_error: str


def _view(r: CommandRow) -> CommandView:
    return CommandView(r.id, r.dev_id, r.batch, list(r.spec), r.state, list(r.statuses), list(r.results), r.error,
                       r.callback_url, r.retry_of, r.created_at, r.created_by, r.sent_at, r.finished_at)


def build(spec: list[dict[str, Any]]) -> list[Command]:
    """DM commands from their JSON form; ValueError with the reason for anything malformed.

    Each element is {"op": Get|Replace|Add|Delete|Exec, "target": URI, "data": text, "data_b64": b64,
    "format": chr|int|b64|..., "type": MIME} or {"op": Atomic|Sequence, "commands": [...]}."""
    count = [0]

    def one(c: Any, depth: int) -> Command:
        if not isinstance(c, dict):
            raise ValueError("a command is a JSON object")
        count[0] += 1
        if count[0] > MAX_COMMANDS:
            raise ValueError(f"at most {MAX_COMMANDS} commands in one request")
        op = c.get("op")
        if op not in OPS:
            raise ValueError(f"op is one of {', '.join(OPS)}, not {op!r}")
        if op in ("Atomic", "Sequence"):
            inner = c.get("commands")
            if depth >= MAX_DEPTH or not isinstance(inner, list) or not inner:
                raise ValueError(f"{op} holds a non-empty list of commands, nested at most {MAX_DEPTH} deep")
            built = [one(x, depth + 1) for x in inner]
            return Atomic(built) if op == "Atomic" else Sequence(built)
        target = c.get("target")
        # (The root itself only with a query: a Get of ".?list=Struct" lists the whole tree.)
        if not isinstance(target, str) or not target.startswith(("./", ".?")) or len(target) > 256 \
                or not target.isprintable():
            raise ValueError(f"{op}: target is a URI under ./ of at most 256 characters")
        data: str | bytes | None = None
        if "data_b64" in c:
            try:
                data = base64.b64decode(str(c["data_b64"]), validate=True)
            except ValueError:
                raise ValueError(f"{op} {target}: data_b64 is not base64") from None
        elif "data" in c:
            if not isinstance(c["data"], str):
                raise ValueError(f"{op} {target}: data is a string")
            data = c["data"]
        if data is not None and len(data) > MAX_DATA:
            raise ValueError(f"{op} {target}: data over {MAX_DATA} bytes")
        fmt, typ = c.get("format"), c.get("type")
        if fmt is not None and fmt not in FORMATS:
            raise ValueError(f"{op} {target}: format is one of {', '.join(FORMATS)}")
        if typ is not None and (not isinstance(typ, str) or len(typ) > 128):
            raise ValueError(f"{op} {target}: type is a MIME type")
        meta = Meta(format=fmt or ("bin" if isinstance(data, bytes) else None), type=typ)
        item = Item(target=target, data=data, meta=None if meta.empty() else meta)
        if op == "Exec":
            return Exec(item)
        if op in ("Get", "Delete"):
            if data is not None:
                raise ValueError(f"{op} {target}: takes no data")
            return (Get if op == "Get" else Delete)([Item(target=target)])
        return (Replace if op == "Replace" else Add)([item])

    if not isinstance(spec, list) or not spec:
        raise ValueError("commands is a non-empty list")
    return [one(c, 1) for c in spec]


def _label(cmd: Command) -> dict[str, Any]:
    name = type(cmd).__name__
    if isinstance(cmd, Exec):
        return {"op": name, "target": cmd.item.target}
    if isinstance(cmd, (Atomic, Sequence)):
        return {"op": name}
    return {"op": name, "target": cmd.items[0].target if getattr(cmd, "items", None) else None}


class Commands:
    """Execute DM commands on devices and keep their outcome."""

    def __init__(self, server: DmServer, auth: Auth, webhooks: Webhooks) -> None:
        self.server, self.store, self.auth, self.webhooks = server, server.store, auth, webhooks
        self._tasks: dict[int, tuple[Task, Task]] = {}  # command id -> (probe, command) while queued

    # -- asking ------------------------------------------------------------------------------------

    def execute(self, actor: Principal, dev_ids: list[str], spec: list[dict[str, Any]], *, callback_url: str = "",
                notify: bool = True) -> list[CommandView]:
        """Queue the commands for each device (one row per device, one batch); notify the devices."""
        self.auth.require(actor, Permission.COMMANDS_EXECUTE, "command.execute", ",".join(dev_ids[:3]))
        build(spec)  # refuse a malformed request whole, before any row
        if callback_url:
            check_url(callback_url)
        wanted = list(dict.fromkeys(dev_ids))
        if not wanted or len(wanted) > MAX_DEVICES:
            raise ValueError(f"commands go to 1 to {MAX_DEVICES} devices")
        batch = secrets.token_hex(8)
        with self.store.tx() as s:
            known = set(s.scalars(select(DeviceRow.dev_id).where(DeviceRow.dev_id.in_(wanted))))
            if missing := [d for d in wanted if d not in known]:
                raise LookupError(f"no device {missing[0]}")
            rows = [CommandRow(dev_id=d, batch=batch, spec=spec, callback_url=callback_url, created_by=actor.name)
                    for d in wanted]
            s.add_all(rows)
            s.flush()
            views = [_view(r) for r in rows]
        self.auth.audit(actor, "command.execute", batch, detail={"devices": len(wanted), "ops": [c.get("op") for c in
                                                                                               spec][:10]})
        for v in views:
            self._queue(v.id, v.dev_id, spec)
        if notify:
            for dev_id in wanted:
                self._notify(dev_id)
        return views

    def _notify(self, dev_id: str, what: str = "queued commands") -> str | None:
        """Notify the device; None when it was, else why not (also kept with the device's events: what was
        queued waits for its next session)."""
        if self.server.push is None:
            return "the server has no notification transport"
        try:
            self.server.notify(dev_id)
        except (PushError, LookupError) as exc:
            self.store.log(dev_id, "notify", f"notification for {what} failed: {exc}")
            return str(exc)
        return None

    def _queue(self, command_id: int, dev_id: str, spec: list[dict[str, Any]]) -> None:
        probe = Task([Get([Item(target=DEVID_URI)])])
        task = Task(build(spec))
        probe.on_answer = lambda t: self._check_identity(command_id, dev_id, t, task)
        task.on_sent = lambda t: self._sent(command_id)
        task.on_answer = lambda t: self._answered(command_id, t)
        task.on_lost = lambda t, why: self._finish(command_id, "failed", error=f"the session ended before the "
                                                   f"device answered: {why}"[:512])
        self._tasks[command_id] = (probe, task)
        self.server.queue_tasks(dev_id, [probe, task])

    def _check_identity(self, command_id: int, dev_id: str, probe: Task, task: Task) -> None:
        found = [i.text for i in (probe.results[0] if probe.results else []) if i.source == DEVID_URI]
        if found == [dev_id]:
            return
        self.server.withdraw(dev_id, task)
        who = repr(found[0]) if found else "a device that did not give its DevId"
        error = f"expected device {dev_id}, answered by {who}: refused"
        self.store.log(dev_id, "refused", f"command {command_id}: {error}")
        self._finish(command_id, "refused", error=error)

    def _sent(self, command_id: int) -> None:
        with self.store.tx() as s:
            s.execute(update(CommandRow).where(CommandRow.id == command_id, CommandRow.state == "queued")
                      .values(state="sent", sent_at=time.time()))

    def _answered(self, command_id: int, task: Task) -> None:
        cmds = list(walk(task.commands))
        statuses: list[dict[str, Any]] = []
        failed = []
        for cmd, st in zip(cmds, task.statuses):
            entry = {**_label(cmd), "code": st.code if isinstance(st, Status) else None}
            statuses.append(entry)
            if entry["code"] is None or entry["code"] >= 300:
                failed.append(f"{entry['op']} {entry.get('target') or ''}".strip() + f": {entry['code']}")
        gets = [c for c in cmds if isinstance(c, Get)]
        results = [{"target": g.items[0].target, "items": [
            {"source": i.source, "format": i.meta.format if i.meta else None, "type": i.meta.type if i.meta else None,
             **({"data_b64": base64.b64encode(i.data).decode()} if isinstance(i.data, bytes) else {"data": i.text})}
            for i in items]} for g, items in zip(gets, task.results)]
        self._finish(command_id, "failed" if failed else "succeeded", statuses=statuses, results=results,
                     error="; ".join(failed)[:512])

    def _finish(self, command_id: int, state: str, *, statuses: list[dict[str, Any]] | None = None,
                results: list[dict[str, Any]] | None = None, error: str = "") -> None:
        self._tasks.pop(command_id, None)
        with self.store.tx() as s:
            row = s.get(CommandRow, command_id)
            if row is None or row.state in ("succeeded", "failed", "refused", "cancelled"):
                return
            row.state, row.error, row.finished_at = state, error, time.time()
            if statuses is not None:
                row.statuses = statuses
            if results is not None:
                row.results = results
            view = _view(row)
        if view.callback_url:
            self.webhooks.post(view.callback_url, {"event": "command.finished", "command": vars(view)},
                               self._delivered(view))

    def _delivered(self, view: CommandView) -> Callable[[str], None]:
        return lambda outcome: self.store.log(view.dev_id, "webhook", f"command {view.id} result to "
                                              f"{view.callback_url}: {outcome}")

    def update_device(self, actor: Principal, dev_id: str, version: str, *, delivery: str = "download",
                      notify: bool = True) -> UpdateJob:
        """An update job bringing one device to version (a chain if needed), and whether it was notified."""
        self.auth.require(actor, Permission.DEVICE_UPDATE, "device.update_firmware", dev_id)
        if delivery not in ("download", "inline"):
            raise ValueError("delivery is download or inline")
        with self.store.tx() as s:
            dev = s.get(DeviceRow, dev_id)
            if dev is None:
                raise LookupError(f"no device {dev_id}")
            if dev.status in ("quarantined", "unassigned"):
                raise Conflict(f"{dev_id} is {dev.status}: it gets no update")
        try:
            job = self.server.assign(dev_id, version, delivery=delivery)
        except ValueError as exc:  # no package (that the device may have and can install) takes it there
            raise Conflict(str(exc)) from None
        self.auth.audit(actor, "device.update_firmware", dev_id, detail={"version": version, "job": job.id})
        error = self._notify(dev_id, f"job {job.id}") if notify else None
        return UpdateJob(job.id, job.correlator, notify and error is None, error or "")

    # -- reading, cancel, retry --------------------------------------------------------------------

    def get(self, actor: Principal, command_id: int) -> CommandView:
        self.auth.require(actor, Permission.READ, "command.read", str(command_id))
        with self.store.tx() as s:
            row = s.get(CommandRow, command_id)
            if row is None:
                raise LookupError(f"no command {command_id}")
            return _view(row)

    def find(self, actor: Principal, *, dev_id: str | None = None, batch: str | None = None, state: str | None = None,
             after: int = 0, before: int | None = None, limit: int = 100) -> list[CommandView]:
        """Commands by id from after on, or (before) the newest ones below that id, newest first."""
        self.auth.require(actor, Permission.READ, "command.read")
        q = select(CommandRow).where(CommandRow.id > after)
        if before is not None:
            q = q.where(CommandRow.id < before)
        if dev_id:
            q = q.where(CommandRow.dev_id == dev_id)
        if batch:
            q = q.where(CommandRow.batch == batch)
        if state:
            q = q.where(CommandRow.state == state)
        with self.store.tx() as s:
            order = CommandRow.id.desc() if before is not None else CommandRow.id
            return [_view(r) for r in s.scalars(q.order_by(order).limit(max(1, min(limit, 1000))))]

    def cancel(self, actor: Principal, command_id: int) -> CommandView:
        """Cancel a command that has not gone out; ValueError once it has."""
        self.auth.require(actor, Permission.COMMANDS_EXECUTE, "command.cancel", str(command_id))
        view = self.get(actor, command_id)
        tasks = self._tasks.get(command_id)
        if view.state != "queued" or tasks is None or not self.server.withdraw(view.dev_id, tasks[1]):
            raise Conflict(f"command {command_id} is {view.state}: only a queued command can be cancelled")
        self.server.withdraw(view.dev_id, tasks[0])
        self._finish(command_id, "cancelled", error=f"cancelled by {actor.name}")
        self.auth.audit(actor, "command.cancel", str(command_id))
        return self.get(actor, command_id)

    def retry(self, actor: Principal, command_id: int, *, notify: bool = True) -> CommandView:
        """The same command again, as a new one, for a command that failed, was refused or cancelled."""
        self.auth.require(actor, Permission.COMMANDS_EXECUTE, "command.retry", str(command_id))
        old = self.get(actor, command_id)
        if old.state not in ("failed", "refused", "cancelled"):
            raise Conflict(f"command {command_id} is {old.state}: only a finished, unsuccessful command is retried")
        with self.store.tx() as s:
            row = CommandRow(dev_id=old.dev_id, batch=old.batch, spec=old.spec, callback_url=old.callback_url,
                             retry_of=old.id, created_by=actor.name)
            s.add(row)
            s.flush()
            view = _view(row)
        self.auth.audit(actor, "command.retry", str(command_id), detail={"new": view.id})
        self._queue(view.id, view.dev_id, view.spec)
        if notify:
            self._notify(view.dev_id)
        return view

    # -- upkeep ------------------------------------------------------------------------------------

    def restore(self) -> int:
        """After a restart: queue again the commands that were waiting or whose session was lost."""
        with self.store.tx() as s:
            rows = s.scalars(select(CommandRow).where(CommandRow.state.in_(("queued", "sent")))
                             .order_by(CommandRow.id)).all()
            for row in rows:
                row.state, row.sent_at = "queued", None
            waiting = [(r.id, r.dev_id, list(r.spec)) for r in rows]
        for command_id, dev_id, spec in waiting:
            self._queue(command_id, dev_id, spec)
        return len(waiting)

    def expire(self, now: float | None = None) -> int:
        """Fail the commands sent more than SENT_TIMEOUT ago without an answer."""
        limit = (now or time.time()) - SENT_TIMEOUT
        with self.store.tx() as s:
            ids = list(s.scalars(select(CommandRow.id).where(CommandRow.state == "sent", CommandRow.sent_at < limit)))
        for command_id in ids:
            self._finish(command_id, "failed", error="the session ended before the device answered")
        return len(ids)
