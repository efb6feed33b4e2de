"""The chain planner's packages, kept per server process (server/planning.py): two servers on one database,
one changing packages and releases, the other planning. What the planner offers always follows the latest
change, whichever process made it; unchanged packages are not read again."""

from __future__ import annotations

from pathlib import Path

from dm_fixtures import MAKE, MODEL, Release, new_dev_id
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from fotadelta.server import DmServer, ServerConfig
from fotadelta.server.store import DeviceRow, PackageRow
from fotadelta.server.tables import GroupRow, MemberRow, ReleaseRow


def _server(tmp_path: Path, name: str) -> DmServer:
    return DmServer(ServerConfig(tmp_path / name, f"http://{name}", db_url=f"sqlite:///{tmp_path / 'fleet.db'}"))


def _package_reads(server: DmServer) -> list[str]:
    reads: list[str] = []

    @event.listens_for(server.store.engine, "before_cursor_execute")
    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "FROM packages LEFT OUTER JOIN releases" in statement:
            reads.append(statement)
    return reads


def test_a_change_made_by_one_process_is_planned_on_by_another(tmp_path: Path, release: Release) -> None:
    changer, planner = _server(tmp_path, "changer"), _server(tmp_path, "planner")
    reads = _package_reads(planner)
    dev_id = new_dev_id()
    changer.register(dev_id, password="p", server_password="s")
    with changer.store.tx() as s:
        dev = s.get(DeviceRow, dev_id)
        assert dev is not None
        dev.make, dev.model, dev.version = MAKE, MODEL, "1.0"

    def offered() -> list[str]:
        return [version for version, _ in planner.offers(dev_id)]

    assert offered() == []
    pkg = changer.publish(release.p10_11)  # outside the lifecycle: released
    assert offered() == ["1.1"]
    assert offered() == ["1.1"] and len(reads) == 2  # (the second time from the process's copy)

    with changer.store.tx() as s:
        s.add(ReleaseRow(package_id=pkg.id, state="deactivated"))
    assert offered() == [] and len(reads) == 3

    with changer.store.tx() as s:
        group = GroupRow(name="testers")
        s.add(group)
        s.flush()
        rel = s.get(ReleaseRow, pkg.id)
        assert rel is not None
        rel.state, rel.tester_group_id = "tested", group.id
        group_id = group.id
    assert offered() == []  # in test, and the device is no tester
    with changer.store.tx() as s:
        s.add(MemberRow(group_id=group_id, dev_id=dev_id))
    assert offered() == ["1.1"] and len(reads) == 4  # membership is read each time, packages were not again

    with changer.store.tx() as s:
        s.execute(select(MemberRow))  # (a transaction that changes nothing moves nothing)
    assert offered() == ["1.1"] and len(reads) == 4

    changer.publish(release.p11_12)
    assert offered() == ["1.1", "1.2"] and len(reads) == 5
    with changer.store.tx() as s:
        rel = s.get(ReleaseRow, pkg.id)
        assert rel is not None
        rel.state = "rejected"
    assert offered() == [] and len(reads) == 6  # (1.2 is reached only through 1.1)
    changer.close()
    planner.close()


def test_a_package_published_in_the_lifecycle_is_never_seen_without_its_release(tmp_path: Path,
                                                                                  release: Release) -> None:
    """A package published through the releases (state created) and its release row commit together: no
    committed state has the package alone, which every planner would take for one published outside the
    lifecycle, released to all."""
    from fotadelta.server.auth import SYSTEM
    from fotadelta.server.fleet import Fleet

    server = _server(tmp_path, "server")
    fleet = Fleet(server)
    bare: list[int] = []

    def look(_session: Session) -> None:
        with server.store.engine.connect() as conn:  # (another connection: what other processes see)
            bare.extend(conn.scalars(select(PackageRow.id).where(
                PackageRow.id.not_in(select(ReleaseRow.package_id)))))

    event.listen(Session, "after_commit", look)
    try:
        created = fleet.releases.publish(SYSTEM, release.p10_11)
        fleet.releases.publish(SYSTEM, release.p11_12, release=True)
    finally:
        event.remove(Session, "after_commit", look)
    assert created.state == "created" and bare == []
    server.close()
