"""What the chain planner may give a device: the published packages of its make and model that the release
lifecycle (server/releases.py) lets it have, kept per server process.

A package without a release row was published outside the lifecycle and counts as released; a released one
is for every device; a tested one only for the members of its tester group; created, rejected and deactivated
ones for none. (A quarantined device is given nothing: the planner asks nothing for it.)

Planning an update reads every package of a make and model: with a long release history that had become the
costliest read of an update (a model with 500 releases: about a fifth of the server's CPU per update). A
process keeps those rows per make and model, good while the packages' change count (the cache_versions row
"packages") is the one they were read at. Any ORM flush that adds or changes a package or a release adds one to
it in the same transaction (a listener on every Session: whatever code path makes the change, and packages and
releases are written only through the ORM), so no process plans on rows older than the count it read in the
planning transaction. Group membership is not kept: a device's groups are read when its model has packages in test."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, event, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from fotadelta import chain
from fotadelta.server.store import CacheVersionRow, Counted, Direct, PackageRow, table_of
from fotadelta.server.tables import MemberRow, ReleaseRow

_VERSIONS = table_of(CacheVersionRow)
_COUNT = select(_VERSIONS.c.version).where(_VERSIONS.c.name == "packages").scalar_subquery()
_CHANGED = Direct(update(_VERSIONS).where(_VERSIONS.c.name == "packages").values(version=_VERSIONS.c.version + 1))
_PACKAGES = table_of(PackageRow)
_RELEASES = table_of(ReleaseRow)
# The count, beside the packages when they are read: the rows and the count they were read at are one snapshot.
_ROWS = Direct(select(_PACKAGES.c.id, _PACKAGES.c.from_version, _PACKAGES.c.to_version, _PACKAGES.c.size,
                      _PACKAGES.c.content_type, _PACKAGES.c.kind, _RELEASES.c.state, _RELEASES.c.tester_group_id,
                      _COUNT.label("count"))
               .select_from(_PACKAGES.outerjoin(_RELEASES, _RELEASES.c.package_id == _PACKAGES.c.id))
               .where(_PACKAGES.c.make == bindparam("make"), _PACKAGES.c.model == bindparam("model"))
               .order_by(_PACKAGES.c.id))
_COUNT_ONLY = Direct(select(_COUNT.label("count")))
_MEMBERS = table_of(MemberRow)
_GROUPS = Direct(select(_MEMBERS.c.group_id).where(_MEMBERS.c.dev_id == bindparam("dev_id")))


@dataclass(frozen=True)
class Package:
    """A published package as the planner sees it: its chain step (entry's file: the package id), what it
    holds, and tester_group: None for every device (released, or published outside the lifecycle), else the
    only group whose members may have it."""

    entry: chain.Entry
    content_type: str
    kind: str | None
    tester_group: int | None


@event.listens_for(Session, "before_flush")
def _count_changes(session: Session, _context: object, _instances: object) -> None:
    if any(isinstance(o, (PackageRow, ReleaseRow)) for o in itertools.chain(session.new, session.dirty, session.deleted)):
        _CHANGED.run(session.connection(), {})


def _planned(make: str, model: str, rows: list[dict[str, Any]]) -> tuple[Package, ...]:
    """The rows a device may be given at all, lifecycle-wise (tested ones keep their group)."""
    return tuple(Package(chain.Entry(str(r["id"]), make, model, r["from_version"], r["to_version"], r["size"]),
                         r["content_type"], r["kind"], r["tester_group_id"] if r["state"] == "tested" else None)
                 for r in rows if r["state"] in (None, "released")
                 or (r["state"] == "tested" and r["tester_group_id"] is not None))


class Planning:
    """One server process's copy of the planner's packages of each make and model (see the module docstring)."""

    def __init__(self) -> None:
        self._kept: Counted[tuple[Package, ...]] = Counted()

    def packages(self, conn: Connection, make: str, model: str, dev_id: str) -> list[Package]:
        """The packages of make and model that device dev_id may be given, read in conn's transaction."""
        count = _COUNT_ONLY.first(conn, {})
        now = None if count is None else count["count"]
        found = self._kept.get((make, model), now)
        if found is None:
            rows = _ROWS.run(conn, {"make": make, "model": model})
            found = _planned(make, model, rows)
            # (No rows: no count read with them; the one read just before is as good, in this transaction.)
            self._kept.keep((make, model), rows[0]["count"] if rows else now, found)
        groups: set[int] = set()
        if any(p.tester_group is not None for p in found):
            groups = {r["group_id"] for r in _GROUPS.run(conn, {"dev_id": dev_id})}
        return [p for p in found if p.tester_group is None or p.tester_group in groups]
