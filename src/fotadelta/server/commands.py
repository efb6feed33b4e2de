"""DM commands of the application API: Get, Replace, Add, Delete, Exec, Atomic and Sequence on one
device or many, asynchronous, results by polling or webhook, cancel and retry.

A command is a row (`dm_commands`); the queued rows of a device are its queue, which the engine
takes in its next session, whichever server process hears it (engine.DmServer._script). Each
command goes out behind an identity probe: the session first answers a Get of `./DevInfo/DevId`,
and only if that is the device the command is for does the command follow in the next package. A
command for device A answered by device B (cloned credentials, a swapped module) is refused,
recorded on the command and in A's events, and never executed.

A command whose session ends before the device answers it (the device went silent, or opened a new
session) fails with the session's reason; one sent longer than SENT_TIMEOUT ago without either is
failed by `expire`."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, select, update

from fotadelta.server.auth import AUDIT, Auth, Conflict, Permission, Principal, audit_entry
from fotadelta.server.command_spec import build
from fotadelta.server.engine import DmServer
from fotadelta.server.push import PushError
from fotadelta.server.store import DeviceRow
from fotadelta.server.tables import CommandRow
from fotadelta.server.webhooks import Webhooks, check_url

MAX_DEVICES = 10_000  # per request
SENT_TIMEOUT = 600.0  # a command sent this long ago with no answer has failed


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


class Commands:
    """Execute DM commands on devices and keep their outcome."""

    def __init__(self, server: DmServer, auth: Auth, webhooks: Webhooks) -> None:
        self.server, self.store, self.auth, self.webhooks = server, server.store, auth, webhooks
        server.on_command_finished = self._finished

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

    def _push(self, dev: DeviceRow, pkg0: bytes | None, what: str) -> str | None:
        """Push a notification made in a committed transaction (None: there is no transport), as _notify."""
        if self.server.push is None or pkg0 is None:
            return "the server has no notification transport"
        try:
            self.server.push(dev, pkg0)
        except PushError as exc:
            self.store.log(dev.dev_id, "notify", f"notification for {what} failed: {exc}")
            return str(exc)
        return None

    def _finish(self, command_id: int, state: str, *, error: str = "") -> None:
        """End a command that has not ended (cancelled, or expired unanswered)."""
        with self.store.tx() as s:
            done = cast(CursorResult[Any], s.execute(update(CommandRow).where(CommandRow.id == command_id, CommandRow.state.in_(
                ("queued", "sent"))).values(state=state, error=error, finished_at=time.time()))).rowcount
        if done:
            self._finished(command_id)

    def _finished(self, command_id: int) -> None:
        """A command has ended (here, or in a DM session): its webhook, if it has one."""
        with self.store.tx() as s:
            row = s.get(CommandRow, command_id)
            view = None if row is None else _view(row)
        if view is not None and view.callback_url:
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
        # One transaction: the checks, the job, then its audit entry, the notified session and the event in one write
        # (device_tx's); the push after it.
        with self.server.device_tx(dev_id) as (s, dev, rows):
            if dev.status in ("quarantined", "unassigned"):
                raise Conflict(f"{dev_id} is {dev.status}: it gets no update")
            try:
                job = self.server.plan_update(s, dev, version, delivery, events=rows)
            except ValueError as exc:  # no package (that the device may have and can install) takes it there
                raise Conflict(str(exc)) from None
            rows.append(AUDIT, audit_entry(actor, "device.update_firmware", dev_id,
                                           detail={"version": version, "job": job.id}))
            pkg0 = self.server.notification_in(s, dev, rows) if notify and self.server.push is not None else None
        error = self._push(dev, pkg0, f"job {job.id}") if notify else None
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
        with self.store.tx() as s:  # (one statement: a session that takes the command meanwhile wins)
            cancelled = cast(CursorResult[Any], s.execute(update(CommandRow).where(CommandRow.id == command_id, CommandRow.state == "queued")
                                  .values(state="cancelled", error=f"cancelled by {actor.name}",
                                          finished_at=time.time()))).rowcount
        if not cancelled:
            raise Conflict(f"command {command_id} is {view.state}: only a queued command can be cancelled")
        self._finished(command_id)
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
        if notify:
            self._notify(view.dev_id)
        return view

    # -- upkeep ------------------------------------------------------------------------------------

    def expire(self, now: float | None = None) -> int:
        """Fail the commands sent more than SENT_TIMEOUT ago without an answer."""
        limit = (now or time.time()) - SENT_TIMEOUT
        with self.store.tx() as s:
            ids = list(s.scalars(select(CommandRow.id).where(CommandRow.state == "sent", CommandRow.sent_at < limit)))
        for command_id in ids:
            self._finish(command_id, "failed", error="the session ended before the device answered")
        return len(ids)
