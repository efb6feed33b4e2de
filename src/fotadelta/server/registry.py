"""The device registry: devices and their lifecycle, groups, tags, CSV import and export.

Status lifecycle (stored in `devices.status`):

- `unknown`: the device enrolled itself with factory credentials; no operator has registered it;
- `unassigned`: registered, no DM credentials yet (it cannot authenticate);
- `assigned`: credentials set (explicit or derived from the factory secret), no session yet;
- `provisioned`: it has authenticated a DM session since (the engine moves it there);
- `quarantined`: set by an operator; the planner gives it no package and campaigns skip it.

`needs_update` is derived, not stored: a provisioned device whose version is not the newest
released one of its make and model. Credentials and nonces are never part of a device's view."""

from __future__ import annotations

import csv
import io
import secrets
import time
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import ConfigDict

from sqlalchemy import ColumnElement, and_, delete, false, func, or_, select
from sqlalchemy.orm import Session

from fotadelta.dm import snmp as snmp_creds
from fotadelta.dm.provisioning import derive
from fotadelta.server import accounts
from fotadelta.server.accounts import Account, AccountView
from fotadelta.server.auth import Auth, Conflict, Permission, Principal
from fotadelta.server.bootstrap import BootstrapMessage, plain_profile
from fotadelta.server.engine import DmServer
from fotadelta.server.push import HttpPush, PushError
from fotadelta.server.releases import released_versions
from fotadelta.server.store import DeviceRow, EventRow, JobRow, SessionRow
from fotadelta.server.tables import CampaignDeviceRow, CommandRow, GroupRow, MemberRow, TagRow

STORED_STATUSES = ("unknown", "unassigned", "assigned", "provisioned", "quarantined")
STATUSES = (*STORED_STATUSES, "needs_update")
CSV_COLUMNS = ("dev_id", "msisdn", "make", "model", "version", "lang", "timezone", "status", "groups", "tags")
MAX_CSV_BYTES = 16 << 20
MAX_PAGE = 1000
_FIELD_LIMITS = {"dev_id": 128, "msisdn": 32, "make": 64, "model": 64, "version": 64, "lang": 16, "timezone": 64}


@dataclass(frozen=True)
class LatestJob:
    """A device's most recent update job, in short."""

    id: int
    state: str
    result_code: int | None


@dataclass(frozen=True)
class Device:
    """A device as operators see it (no credentials, no nonces)."""

    dev_id: str
    status: str
    make: str
    model: str
    version: str
    msisdn: str
    lang: str
    timezone: str
    auth: str
    push_url: str
    large_objects: bool
    last_seen: float
    created_at: float
    created_by: str
    modified_at: float
    modified_by: str
    groups: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    update_kinds: tuple[str, ...] = ()  # the firmware package kinds it reported it installs; empty: not reported
    latest_job: LatestJob | None = None

    @property
    def imei(self) -> str | None:
        return self.dev_id[5:] if self.dev_id.startswith("IMEI:") else None


@dataclass(frozen=True)
class DeviceFilter:
    """Which devices: every given field must match (groups and tags: membership)."""

    status: str | None = None
    make: str | None = None
    model: str | None = None
    version: str | None = None
    group: str | None = None
    tag: str | None = None
    dev_ids: tuple[str, ...] | None = None
    dev_id_prefix: str | None = None  # DevIds starting with this (an index range, not a scan)
    msisdn: str | None = None


@dataclass
class DeviceFields:
    """What an operator sets on a device; None leaves a field as it is."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    msisdn: str | None = None
    make: str | None = None
    model: str | None = None
    version: str | None = None
    lang: str | None = None
    timezone: str | None = None
    groups: list[str] | None = None
    tags: list[str] | None = None


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    errors: list[str] = field(default_factory=list)  # "line N: why"


@dataclass(frozen=True)
class Group:
    name: str
    description: str
    members: int
    created_at: float
    created_by: str


class Registry:
    """Devices, groups and tags."""

    def __init__(self, server: DmServer, auth: Auth) -> None:
        self.server, self.store, self.auth = server, server.store, auth

    # -- reading -----------------------------------------------------------------------------------

    def get(self, actor: Principal, dev_id: str) -> Device:
        self.auth.require(actor, Permission.READ, "device.read", dev_id)
        with self.store.tx() as s:
            row = s.get(DeviceRow, dev_id)
            if row is None:
                raise LookupError(f"no device {dev_id}")
            return self._views(s, [row])[0]

    def find(self, actor: Principal, where: DeviceFilter = DeviceFilter(), *, after: str = "",
             before: str | None = None, limit: int = 100) -> list[Device]:
        """Devices matching where, ordered by DevId, from after on, or the page that ends just before
        before (keyset pages of at most MAX_PAGE: each an index range, whatever the fleet's size)."""
        self.auth.require(actor, Permission.READ, "device.read")
        with self.store.tx() as s:
            q = select(DeviceRow).where(self.condition(s, where))
            if before is not None:
                q = q.where(DeviceRow.dev_id < before).order_by(DeviceRow.dev_id.desc())
            else:
                q = q.where(DeviceRow.dev_id > after).order_by(DeviceRow.dev_id)
            rows = list(s.scalars(q.limit(max(1, min(limit, MAX_PAGE)))).all())
            return self._views(s, rows[::-1] if before is not None else rows)

    def count(self, actor: Principal, where: DeviceFilter = DeviceFilter()) -> dict[str, int]:
        """How many devices match, by status."""
        self.auth.require(actor, Permission.READ, "device.read")
        with self.store.tx() as s:
            out = {status: 0 for status in STATUSES}
            for status, n in s.execute(select(DeviceRow.status, func.count()).where(self.condition(s, where))
                                       .group_by(DeviceRow.status)).all():
                out[status] = n
            out["needs_update"] = s.scalar(select(func.count()).select_from(DeviceRow).where(
                self.condition(s, where), self._needs_update(s))) or 0
            return out

    def models(self, actor: Principal, where: DeviceFilter = DeviceFilter()) -> list[tuple[str, str, str, int]]:
        """How many devices match, by (make, model, version), most numerous first."""
        self.auth.require(actor, Permission.READ, "device.read")
        n = func.count().label("n")
        with self.store.tx() as s:
            return [(mk, md, v, c) for mk, md, v, c in s.execute(
                select(DeviceRow.make, DeviceRow.model, DeviceRow.version, n).where(self.condition(s, where))
                .group_by(DeviceRow.make, DeviceRow.model, DeviceRow.version)
                .order_by(n.desc(), DeviceRow.make, DeviceRow.model, DeviceRow.version).limit(MAX_PAGE)).all()]

    def condition(self, s: Session, where: DeviceFilter) -> ColumnElement[bool]:
        """The filter as a condition on DeviceRow (campaign targeting uses it too)."""
        terms: list[ColumnElement[bool]] = []
        if where.status == "needs_update":
            terms.append(self._needs_update(s))
        elif where.status:
            terms.append(DeviceRow.status == where.status)
        for column, value in ((DeviceRow.make, where.make), (DeviceRow.model, where.model),
                              (DeviceRow.version, where.version)):
            if value:
                terms.append(column == value)
        if where.group:
            terms.append(DeviceRow.dev_id.in_(select(MemberRow.dev_id).join(GroupRow, GroupRow.id == MemberRow.group_id)
                                              .where(GroupRow.name == where.group)))
        if where.tag:
            terms.append(DeviceRow.dev_id.in_(select(TagRow.dev_id).where(TagRow.tag == where.tag)))
        if where.dev_ids is not None:
            terms.append(DeviceRow.dev_id.in_(where.dev_ids))
        if where.dev_id_prefix:
            p = where.dev_id_prefix
            terms.append(DeviceRow.dev_id.startswith(p, autoescape=True))
            if s.get_bind().dialect.name != "postgresql":
                # SQLite: the range finds the rows through the primary key's index (and makes its LIKE,
                # which ignores ASCII case, exact). PostgreSQL plans LIKE 'p%' as a range of its pattern
                # index itself (migration 0002); a range in a linguistic collation would miss rows
                # ("IMEI:1" sorts after "IMEI;" in en-US, whose first level ignores punctuation).
                terms.append(DeviceRow.dev_id >= p)
                if ord(p[-1]) < 0x10FFFF:
                    terms.append(DeviceRow.dev_id < p[:-1] + chr(ord(p[-1]) + 1))
        if where.msisdn:
            terms.append(DeviceRow.msisdn == where.msisdn)
        return and_(*terms) if terms else DeviceRow.dev_id.is_not(None)

    @staticmethod
    def _needs_update(s: Session) -> ColumnElement[bool]:
        behind = [and_(DeviceRow.make == make, DeviceRow.model == model, DeviceRow.version != version)
                  for (make, model), version in released_versions(s).items()]
        return and_(DeviceRow.status == "provisioned", or_(*behind)) if behind else false()

    def _views(self, s: Session, rows: list[DeviceRow]) -> list[Device]:
        ids = [r.dev_id for r in rows]
        groups: dict[str, list[str]] = {}
        for dev_id, name in s.execute(select(MemberRow.dev_id, GroupRow.name).join(GroupRow, GroupRow.id ==
                                                                                    MemberRow.group_id)
                                      .where(MemberRow.dev_id.in_(ids)).order_by(GroupRow.name)).all():
            groups.setdefault(dev_id, []).append(name)
        tags: dict[str, list[str]] = {}
        for dev_id, tag in s.execute(select(TagRow.dev_id, TagRow.tag).where(TagRow.dev_id.in_(ids))
                                     .order_by(TagRow.tag)).all():
            tags.setdefault(dev_id, []).append(tag)
        latest = released_versions(s) if any(r.status == "provisioned" for r in rows) else {}
        newest = select(func.max(JobRow.id)).where(JobRow.dev_id.in_(ids)).group_by(JobRow.dev_id)
        jobs = {j.dev_id: LatestJob(j.id, j.state, j.result_code) for j in s.scalars(
            select(JobRow).where(JobRow.id.in_(newest)))}
        out = []
        for r in rows:
            status = r.status
            wanted = latest.get((r.make, r.model))
            if status == "provisioned" and wanted is not None and wanted != r.version:
                status = "needs_update"
            out.append(Device(r.dev_id, status, r.make, r.model, r.version, r.msisdn, r.lang, r.timezone, r.auth,
                              r.push_url, r.large_objects, r.last_seen, r.created_at, r.created_by, r.modified_at,
                              r.modified_by, tuple(groups.get(r.dev_id, ())), tuple(tags.get(r.dev_id, ())),
                              tuple(r.update_kinds.split()), jobs.get(r.dev_id)))
        return out

    # -- changing ----------------------------------------------------------------------------------

    def create(self, actor: Principal, dev_id: str, fields: DeviceFields | None = None) -> Device:
        """Register a device (unassigned: it has no credentials until `set_account`)."""
        self.auth.require(actor, Permission.DEVICES_WRITE, "device.create", dev_id)
        _check_dev_id(dev_id)
        with self.store.tx() as s:
            if s.get(DeviceRow, dev_id) is not None:
                raise Conflict(f"device {dev_id} exists")
            row = _unassigned(dev_id, actor.name)
            s.add(row)
            self._apply(s, row, fields or DeviceFields(), actor)
            s.flush()
            view = self._views(s, [row])[0]
        self.auth.audit(actor, "device.create", dev_id)
        return view

    def update(self, actor: Principal, dev_id: str, fields: DeviceFields) -> Device:
        self.auth.require(actor, Permission.DEVICES_WRITE, "device.update", dev_id)
        with self.store.tx() as s:
            row = s.get(DeviceRow, dev_id)
            if row is None:
                raise LookupError(f"no device {dev_id}")
            self._apply(s, row, fields, actor)
            s.flush()
            view = self._views(s, [row])[0]
        self.auth.audit(actor, "device.update", dev_id, detail={k: v for k, v in vars(fields).items() if v is not None})
        return view

    def _apply(self, s: Session, row: DeviceRow, fields: DeviceFields, actor: Principal) -> None:
        for name in ("msisdn", "make", "model", "version", "lang", "timezone"):
            value = getattr(fields, name)
            if value is not None:
                _check_field(name, value)
                setattr(row, name, value)
        if fields.groups is not None:
            s.execute(delete(MemberRow).where(MemberRow.dev_id == row.dev_id))
            for gid in self._group_ids(s, fields.groups):
                s.add(MemberRow(group_id=gid, dev_id=row.dev_id))
        if fields.tags is not None:
            s.execute(delete(TagRow).where(TagRow.dev_id == row.dev_id))
            for tag in sorted(set(fields.tags)):
                _check_name("tag", tag)
                s.add(TagRow(dev_id=row.dev_id, tag=tag))
        row.modified_at, row.modified_by = time.time(), actor.name

    def set_account(self, actor: Principal, dev_id: str, *, client_auth: str = "md5", client_user: str | None = None,
                    password: str | None = None, server_auth: tuple[str, ...] | None = None,
                    server_password: str | None = None, server_nonce: bytes | None = None,
                    snmp: snmp_creds.Credentials | None = None, factory: bool = False) -> tuple[bool, str, str]:
        """Create or replace a device's DM account (status assigned): the credentials each way (the given
        ones, the factory-derived ones, or new random ones), the first nonce of the server's credentials
        (None: keep it), and the SNMP credentials of its traps. The client's user name defaults to the
        DevId and the server's schemes to the client's. Returns (created, password, server_password): the
        passwords once, for the bootstrap; they are never shown again."""
        self.auth.require(actor, Permission.DEVICES_WRITE, "device.account", dev_id)
        if factory:
            secret = self.server.config.factory_secret
            if not secret:
                raise ValueError("this server has no factory secret")
            creds = derive(secret, dev_id, self.server.config.server_id)
            password, server_password = creds.password, creds.server_password
        password = password or secrets.token_urlsafe(18)
        server_password = server_password or secrets.token_urlsafe(18)
        account = Account(dev_id, client_auth, client_user or dev_id, password, server_auth or (client_auth,),
                          server_password, server_nonce, snmp)  # (AccountError, a ValueError, if unusable)
        created = self.server.put_account(account)
        now = time.time()
        with self.store.tx() as s:
            row = s.get(DeviceRow, dev_id)
            if row is None:
                raise LookupError(f"no device {dev_id}")  # (removed meanwhile)
            # New credentials start a new history of the nonces the server expects.
            row.client_nonce = "AAAAAA=="
            if row.status in ("unknown", "unassigned", "provisioned"):
                row.status = "assigned"
            if created:
                row.created_at, row.created_by = now, actor.name
            row.modified_at, row.modified_by = now, actor.name
        self.auth.audit(actor, "device.account", dev_id, detail={
            "client_auth": client_auth, "server_auth": ",".join(account.server_auth), "factory": factory,
            "snmp": snmp is not None, "created": created})
        return created, password, server_password

    def account(self, actor: Principal, dev_id: str) -> AccountView:
        """A device's account without its secrets (schemes, client user name, SNMP version)."""
        self.auth.require(actor, Permission.READ, "device.read", dev_id)
        found = self.server.account(dev_id)
        if found is None:
            raise LookupError(f"no device {dev_id}")
        return found

    def accounts(self, actor: Principal, *, after: str = "", limit: int = 100) -> list[AccountView]:
        """Accounts by DevId, in pages, without their secrets."""
        self.auth.require(actor, Permission.READ, "device.read")
        with self.store.tx() as s:
            rows = s.scalars(select(DeviceRow).where(DeviceRow.dev_id > after).order_by(DeviceRow.dev_id)
                             .limit(max(1, min(limit, MAX_PAGE))))
            return [accounts.describe(r) for r in rows]

    def bootstrap(self, actor: Principal, dev_id: str, pin: str, *, send: bool = False,
                  push_url: str | None = None) -> tuple[BootstrapMessage, str]:
        """The plain-profile bootstrap message carrying the device's DM account (it must have credentials),
        and with send, where it was pushed: push_url, else the device's push address, through the
        server's HTTP push (and its push policy). Returns (message, where it went or "")."""
        self.auth.require(actor, Permission.DEVICES_WRITE, "device.bootstrap", dev_id)
        with self.store.tx() as s:
            row = s.get(DeviceRow, dev_id)
            if row is None:
                raise LookupError(f"no device {dev_id}")
            if row.status in ("unassigned", "quarantined"):
                raise Conflict(f"{dev_id} is {row.status}: set its account first" if row.status == "unassigned"
                               else f"{dev_id} is quarantined")
            cfg = self.server.config
            message = plain_profile(dev_id=dev_id, server_id=cfg.server_id,
                                    server_url=f"{cfg.public_url}{cfg.dm_paths[0]}", user=row.user,
                                    password=row.password, server_password=row.server_password, auth=row.auth, pin=pin)
            to = (push_url or row.push_url) if send else ""
        if send:
            transport = self.server.push
            if not isinstance(transport, HttpPush):
                raise Conflict("this server's notification transport does not carry bootstrap messages (HTTP push "
                               "does)")
            try:
                transport.post(dev_id, to, message.body, message.content_type)
            except PushError as exc:
                self.auth.audit(actor, "device.bootstrap", dev_id, outcome="error", detail={"to": to[:256]})
                raise Conflict(str(exc)) from None
        self.auth.audit(actor, "device.bootstrap", dev_id, detail={"profile": "plain", "sent_to": to[:256]})
        return message, to

    def adopt(self, actor: Principal, dev_id: str) -> Device:
        """Take a self-enrolled (unknown) device into the registry: it is provisioned, having authenticated."""
        self.auth.require(actor, Permission.DEVICES_WRITE, "device.adopt", dev_id)
        with self.store.tx() as s:
            row = s.get(DeviceRow, dev_id)
            if row is None:
                raise LookupError(f"no device {dev_id}")
            if row.status != "unknown":
                raise Conflict(f"{dev_id} is {row.status}, not unknown")
            row.status, row.modified_at, row.modified_by = "provisioned", time.time(), actor.name
            view = self._views(s, [row])[0]
        self.auth.audit(actor, "device.adopt", dev_id)
        return view

    def quarantine(self, actor: Principal, dev_id: str, on: bool, reason: str = "") -> Device:
        """Quarantine a device (no packages, no campaigns), or let it out (back to provisioned, or to
        assigned if it never authenticated)."""
        self.auth.require(actor, Permission.DEVICES_WRITE, "device.quarantine", dev_id)
        with self.store.tx() as s:
            row = s.get(DeviceRow, dev_id)
            if row is None:
                raise LookupError(f"no device {dev_id}")
            if on:
                row.status = "quarantined"
            elif row.status == "quarantined":
                row.status = "provisioned" if row.last_seen else "assigned"
            row.modified_at, row.modified_by = time.time(), actor.name
            view = self._views(s, [row])[0]
        self.auth.audit(actor, "device.quarantine" if on else "device.release", dev_id, detail={"reason": reason})
        self.store.log(dev_id, "registry", f"{'quarantined' if on else 'out of quarantine'} by {actor.name}"
                       + (f": {reason}" if reason else ""))
        return view

    def delete(self, actor: Principal, dev_id: str) -> None:
        """Remove a device and everything recorded about it (its jobs, sessions, events, commands)."""
        self.auth.require(actor, Permission.DEVICES_WRITE, "device.delete", dev_id)
        with self.store.tx() as s:
            if s.get(DeviceRow, dev_id) is None:
                raise LookupError(f"no device {dev_id}")
            for table in (JobRow, SessionRow, EventRow, CommandRow, CampaignDeviceRow, MemberRow, TagRow):
                s.execute(delete(table).where(table.dev_id == dev_id))
            s.execute(delete(DeviceRow).where(DeviceRow.dev_id == dev_id))
        if self.server.traps is not None:
            self.server.traps.remove_device(dev_id)  # (its SNMP credentials go with its account)
        self.auth.audit(actor, "device.delete", dev_id)

    # -- groups ------------------------------------------------------------------------------------

    def create_group(self, actor: Principal, name: str, description: str = "") -> Group:
        self.auth.require(actor, Permission.DEVICES_WRITE, "group.create", name)
        _check_name("group", name)
        with self.store.tx() as s:
            if s.scalars(select(GroupRow.id).where(GroupRow.name == name)).first() is not None:
                raise Conflict(f"group {name} exists")
            row = GroupRow(name=name, description=description[:256], created_by=actor.name)
            s.add(row)
            s.flush()
            group = Group(row.name, row.description, 0, row.created_at, row.created_by)
        self.auth.audit(actor, "group.create", name)
        return group

    def groups(self, actor: Principal) -> list[Group]:
        self.auth.require(actor, Permission.READ, "group.read")
        with self.store.tx() as s:
            counts = dict(s.execute(select(MemberRow.group_id, func.count()).group_by(MemberRow.group_id)).all())
            return [Group(g.name, g.description, counts.get(g.id, 0), g.created_at, g.created_by)
                    for g in s.scalars(select(GroupRow).order_by(GroupRow.name))]

    def delete_group(self, actor: Principal, name: str) -> None:
        self.auth.require(actor, Permission.DEVICES_WRITE, "group.delete", name)
        with self.store.tx() as s:
            gid = self._group_ids(s, [name])[0]
            s.execute(delete(MemberRow).where(MemberRow.group_id == gid))
            s.execute(delete(GroupRow).where(GroupRow.id == gid))
        self.auth.audit(actor, "group.delete", name)

    def add_members(self, actor: Principal, name: str, dev_ids: Iterable[str]) -> int:
        """Put devices in a group; returns how many were not in it already."""
        self.auth.require(actor, Permission.DEVICES_WRITE, "group.members", name)
        wanted = set(dev_ids)
        with self.store.tx() as s:
            gid = self._group_ids(s, [name])[0]
            known = set(s.scalars(select(DeviceRow.dev_id).where(DeviceRow.dev_id.in_(wanted))))
            if missing := wanted - known:
                raise LookupError(f"no device {sorted(missing)[0]}" + (f" (and {len(missing) - 1} more)"
                                                                        if len(missing) > 1 else ""))
            there = set(s.scalars(select(MemberRow.dev_id).where(MemberRow.group_id == gid,
                                                                 MemberRow.dev_id.in_(wanted))))
            s.add_all(MemberRow(group_id=gid, dev_id=d) for d in sorted(wanted - there))
        self.auth.audit(actor, "group.members", name, detail={"added": len(wanted - there)})
        return len(wanted - there)

    def remove_members(self, actor: Principal, name: str, dev_ids: Iterable[str]) -> None:
        self.auth.require(actor, Permission.DEVICES_WRITE, "group.members", name)
        gone = list(dev_ids)
        with self.store.tx() as s:
            gid = self._group_ids(s, [name])[0]
            s.execute(delete(MemberRow).where(MemberRow.group_id == gid, MemberRow.dev_id.in_(gone)))
        self.auth.audit(actor, "group.members", name, detail={"removed": len(gone)})

    @staticmethod
    def _group_ids(s: Session, names: list[str]) -> list[int]:
        found = dict(s.execute(select(GroupRow.name, GroupRow.id).where(GroupRow.name.in_(names))).all())
        for name in names:
            if name not in found:
                raise LookupError(f"no group {name}")
        return [found[n] for n in names]

    # -- CSV ---------------------------------------------------------------------------------------

    def export_csv(self, actor: Principal, where: DeviceFilter = DeviceFilter()) -> str:
        self.auth.require(actor, Permission.READ, "device.export")
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        after = ""
        while page := self.find(actor, where, after=after, limit=MAX_PAGE):
            for d in page:
                writer.writerow([_cell(v) for v in (d.dev_id, d.msisdn, d.make, d.model, d.version, d.lang, d.timezone,
                                                    d.status, ";".join(d.groups), ";".join(d.tags))])
            after = page[-1].dev_id
        return out.getvalue()

    def import_csv(self, actor: Principal, text: str) -> ImportReport:
        """Create or update devices from CSV with a header of CSV_COLUMNS (dev_id required, the rest
        optional; `status` is read only as `quarantined`). Bad lines are reported and skipped."""
        self.auth.require(actor, Permission.DEVICES_WRITE, "device.import")
        if len(text) > MAX_CSV_BYTES:
            raise ValueError(f"the CSV is over {MAX_CSV_BYTES >> 20} MiB")
        reader = csv.DictReader(io.StringIO(text))
        header = reader.fieldnames or []
        if "dev_id" not in header or (unknown := set(header) - set(CSV_COLUMNS)):
            raise ValueError(f"the CSV header needs dev_id and may have {', '.join(CSV_COLUMNS)}"
                             + (f" (unknown: {', '.join(sorted(unknown))})" if "dev_id" in header else ""))
        report = ImportReport()
        with self.store.tx() as s:
            groups = dict(s.execute(select(GroupRow.name, GroupRow.id)).all())
            for line, rec in enumerate(reader, 2):
                try:
                    created = self._import_row(s, rec, groups, actor)
                except (ValueError, LookupError) as exc:
                    report.errors.append(f"line {line}: {exc}")
                    continue
                if created:
                    report.created += 1
                else:
                    report.updated += 1
        self.auth.audit(actor, "device.import", detail={"created": report.created, "updated": report.updated,
                                                        "errors": len(report.errors)})
        return report

    def _import_row(self, s: Session, rec: dict[str, str | None], groups: dict[str, int], actor: Principal) -> bool:
        if None in rec:
            raise ValueError("more cells than columns")
        dev_id = (rec.get("dev_id") or "").strip()
        _check_dev_id(dev_id)
        fields = DeviceFields()
        for name in ("msisdn", "make", "model", "version", "lang", "timezone"):
            if rec.get(name):
                setattr(fields, name, _uncell(rec[name] or ""))
        for name in ("groups", "tags"):
            if rec.get(name) is not None:
                setattr(fields, name, [v for v in _uncell(rec[name] or "").split(";") if v])
        for g in fields.groups or []:
            if g not in groups:
                raise LookupError(f"no group {g}")
        status = (rec.get("status") or "").strip()
        row = s.get(DeviceRow, dev_id)
        created = row is None
        with s.begin_nested():  # one bad row leaves nothing behind
            if row is None:
                row = _unassigned(dev_id, actor.name)
                s.add(row)
            self._apply(s, row, fields, actor)
            if status == "quarantined":
                row.status = "quarantined"
            s.flush()
        return created


def _unassigned(dev_id: str, who: str) -> DeviceRow:
    # Random secrets nobody knows: an unassigned device cannot authenticate, and never by factory enrolment.
    return DeviceRow(dev_id=dev_id, user=dev_id, password=secrets.token_urlsafe(24),
                     server_password=secrets.token_urlsafe(24), status="unassigned", created_by=who, modified_by=who)


def _check_dev_id(dev_id: str) -> None:
    if not dev_id or len(dev_id) > 128 or not dev_id.isprintable() or dev_id != dev_id.strip():
        raise ValueError(f"a DevId is 1 to 128 printable characters: {dev_id[:40]!r}")


def _check_field(name: str, value: str) -> None:
    if len(value) > _FIELD_LIMITS[name] or not value.isprintable():
        raise ValueError(f"{name} is at most {_FIELD_LIMITS[name]} printable characters")
    if name == "timezone":
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None


def _check_name(kind: str, name: str) -> None:
    if not name or len(name) > 64 or not name.isprintable() or ";" in name:
        raise ValueError(f"a {kind} name is 1 to 64 printable characters without ';'")


def _cell(value: str) -> str:
    # A cell a spreadsheet would run as a formula gets a leading apostrophe (import takes it off again);
    # a phone number such as +4915... is left alone.
    formula = value[:1] in ("=", "@") or (value[:1] in ("+", "-") and not value[1:].isdigit())
    return "'" + value if formula else value


def _uncell(value: str) -> str:
    return value[1:] if value[:1] == "'" and _cell(value[1:]) == value else value
