"""Package releases: the lifecycle of a published package and who may receive it.

created -> tested (handed to a tester group, whose devices may install it) -> released (every
device may), or rejected from created or tested; a released package can be deactivated (no new
jobs plan through it). The chain planner sees, per device, only what `server.planning` admits; a
quarantined device sees nothing. Packages published outside the lifecycle (no release row: the
engine's `publish`, the legacy operator endpoint, `serve --publish`) count as released."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from fotadelta.server.auth import Auth, Conflict, Permission, Principal
from fotadelta.server.engine import DmServer
from fotadelta.server.store import DeviceRow, PackageRow
from fotadelta.server.tables import GroupRow, MemberRow, ReleaseRow

STATES = ("created", "tested", "released", "rejected", "deactivated")
_MOVES = {"tested": ("created", "tested"), "released": ("created", "tested"), "rejected": ("created", "tested"),
          "deactivated": ("released",)}


@dataclass(frozen=True)
class Release:
    package_id: int
    name: str
    make: str
    model: str
    from_version: str
    to_version: str
    size: int
    sha256: str
    state: str
    tester_group: str | None
    note: str
    created_at: float
    created_by: str
    changed_at: float
    changed_by: str


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order versions as people do: 1.9 < 1.10, numbers before words in the same place."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.findall(r"\d+|[A-Za-z]+", version))


def released_versions(s: Session) -> dict[tuple[str, str], str]:
    """The newest released version per (make, model)."""
    managed = select(ReleaseRow.package_id).where(ReleaseRow.state != "released")
    latest: dict[tuple[str, str], str] = {}
    for make, model, version in s.execute(select(PackageRow.make, PackageRow.model, PackageRow.to_version)
                                          .where(PackageRow.id.not_in(managed))).all():
        known = latest.get((make, model))
        if known is None or version_key(version) > version_key(known):
            latest[(make, model)] = version
    return latest


def _release(pkg: PackageRow, rel: ReleaseRow | None, group: str | None) -> Release:
    if rel is None:
        return Release(pkg.id, pkg.name, pkg.make, pkg.model, pkg.from_version, pkg.to_version, pkg.size, pkg.sha256,
                       "released", None, "published outside the lifecycle", 0.0, "", 0.0, "")
    return Release(pkg.id, pkg.name, pkg.make, pkg.model, pkg.from_version, pkg.to_version, pkg.size, pkg.sha256,
                   rel.state, group, rel.note, rel.created_at, rel.created_by, rel.changed_at, rel.changed_by)


class Releases:
    """Publishing packages into the lifecycle and moving them through it."""

    def __init__(self, server: DmServer, auth: Auth) -> None:
        self.server, self.store, self.auth = server, server.store, auth

    def publish(self, actor: Principal, data: bytes, note: str = "", *, release: bool = False) -> Release:
        """Store a signed package (PackageError if it is not one) in state created, or with release in
        state released at once. A package published before keeps its state (one published outside the
        lifecycle stays released); release moves a created or tested one on to released."""
        self.auth.require(actor, Permission.RELEASES_MANAGE, "release.publish")
        with self.store.tx() as s:
            pkg, existed = self.server.store_package(s, data)
            rel = s.get(ReleaseRow, pkg.id)
            if rel is None:
                rel = ReleaseRow(package_id=pkg.id, note=note[:512], created_by=actor.name, changed_by=actor.name,
                                 state="released" if release or existed else "created")
                s.add(rel)
            elif release and rel.state in _MOVES["released"]:
                rel.state, rel.changed_by, rel.changed_at = "released", actor.name, time.time()
            elif release and rel.state != "released":
                raise Conflict(f"package {pkg.id} is {rel.state}: it cannot become released")
            s.flush()
            out = _release(pkg, rel, self._group_name(s, rel.tester_group_id))
        self.auth.audit(actor, "release.publish", pkg.name, detail={"package": pkg.id, "sha256": pkg.sha256,
                                                                     "state": out.state})
        return out

    def get(self, actor: Principal, package_id: int) -> Release:
        self.auth.require(actor, Permission.READ, "release.read")
        with self.store.tx() as s:
            pkg = s.get(PackageRow, package_id)
            if pkg is None:
                raise LookupError(f"no package {package_id}")
            rel = s.get(ReleaseRow, package_id)
            return _release(pkg, rel, self._group_name(s, rel.tester_group_id if rel else None))

    def find(self, actor: Principal, *, state: str | None = None, make: str | None = None,
             model: str | None = None) -> list[Release]:
        self.auth.require(actor, Permission.READ, "release.read")
        q = select(PackageRow, ReleaseRow, GroupRow.name).outerjoin(
            ReleaseRow, ReleaseRow.package_id == PackageRow.id).outerjoin(
            GroupRow, GroupRow.id == ReleaseRow.tester_group_id)
        if make:
            q = q.where(PackageRow.make == make)
        if model:
            q = q.where(PackageRow.model == model)
        if state == "released":
            q = q.where(or_(ReleaseRow.state.is_(None), ReleaseRow.state == "released"))
        elif state:
            q = q.where(ReleaseRow.state == state)
        with self.store.tx() as s:
            return [_release(p, r, g) for p, r, g in s.execute(q.order_by(PackageRow.id)).all()]

    def move(self, actor: Principal, package_id: int, state: str, *, tester_group: str | None = None,
             note: str = "") -> Release:
        """Move a package to state (tested needs a tester group); ValueError for a move the lifecycle forbids."""
        self.auth.require(actor, Permission.RELEASES_MANAGE, f"release.{state}", str(package_id))
        if state not in _MOVES:
            raise ValueError(f"a package moves to tested, released, rejected or deactivated, not {state!r}")
        with self.store.tx() as s:
            pkg = s.get(PackageRow, package_id)
            if pkg is None:
                raise LookupError(f"no package {package_id}")
            rel = s.get(ReleaseRow, package_id)
            if rel is None:
                # Published outside the lifecycle: it is released, and only deactivation applies.
                rel = ReleaseRow(package_id=package_id, state="released", created_by=actor.name)
                s.add(rel)
            if rel.state not in _MOVES[state]:
                raise Conflict(f"package {package_id} is {rel.state}: it cannot become {state}")
            if state == "tested":
                if not tester_group:
                    raise ValueError("a package is tested by a tester group: name one")
                gid = s.scalars(select(GroupRow.id).where(GroupRow.name == tester_group)).first()
                if gid is None:
                    raise LookupError(f"no group {tester_group}")
                rel.tester_group_id = gid
            rel.state, rel.changed_by = state, actor.name
            rel.changed_at = time.time()
            if note:
                rel.note = note[:512]
            s.flush()
            out = _release(pkg, rel, self._group_name(s, rel.tester_group_id))
        self.auth.audit(actor, f"release.{state}", pkg.name, detail={"package": package_id,
                                                                      "tester_group": tester_group})
        return out

    @staticmethod
    def _group_name(s: Session, group_id: int | None) -> str | None:
        return None if group_id is None else s.get(GroupRow, group_id).name  # type: ignore[union-attr]
