"""Device capabilities: layering of discovered and operator records per make/model/version, their
storage, and the discovery of the FUMO object in a device's tree (structured Get or node walk),
driven here against a real DmTree answering as a device's client does."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from fotadelta.dm.model import Command, Get, Item, Meta
from fotadelta.dm.tree import DmTree, TreeError
from fotadelta.server import capabilities as caps
from fotadelta.server.capabilities import DeviceCapability
from fotadelta.server.store import Store


@dataclass
class TreeDevice:
    """Answers Gets from a DmTree as a DM client would (406 to ?list= when it cannot list)."""

    tree: DmTree
    structured: bool = True
    rounds: int = 0
    gets: int = 0
    _codes: dict[int, int] = field(default_factory=dict)
    _items: dict[int, list[Item]] = field(default_factory=dict)

    def answer(self, commands: list[Command]) -> TreeDevice:
        self.rounds += 1
        self._codes, self._items = {}, {}
        for cmd in commands:
            assert isinstance(cmd, Get)
            self.gets += 1
            target = cmd.items[0].target or ""
            try:
                if not self.structured and "?list=" in target:
                    raise TreeError(406, "no structured Get")
                nodes = self.tree.get(target, "fotadelta")
            except TreeError as exc:
                self._codes[id(cmd)] = exc.code
                continue
            self._codes[id(cmd)] = 200
            self._items[id(cmd)] = [Item(source=n.uri, meta=Meta(format=n.format, type=n.type), data=n.data)
                                    for n in nodes]
        return self

    def code(self, cmd: Command) -> int | None:
        return self._codes.get(id(cmd))

    def items(self, cmd: Command) -> list[Item]:
        return self._items.get(id(cmd), [])


def run(device: TreeDevice, structured: bool = True) -> caps.Found:
    script = caps.find_fumo(structured)
    try:
        commands = next(script)
        while True:
            commands = script.send(device.answer(commands))
    except StopIteration as stop:
        found: caps.Found = stop.value
        return found


def acme_tree(fumo_type: str = caps.FUMO_TYPES[0], *, typed_listing: bool = True) -> DmTree:
    t = DmTree()
    t.put("./DevInfo", interior=True, type="urn:oma:mo:oma-dm-devinfo:1.0")
    t.put("./DevInfo/DevId", "IMEI:1")
    t.put("./DevDetail/FwV", "1.0")
    t.put("./Vendor/Acme/Settings/Volume", "3", format="int")
    t.put("./Vendor/Acme/FwUpdate", interior=True, type=fumo_type)
    for leaf in ("PkgName", "PkgVersion", "DownloadAndUpdate/PkgURL", "State"):
        t.put(f"./Vendor/Acme/FwUpdate/{leaf}", "")
    t.put("./Vendor/Acme/FwUpdate/Update/PkgData", b"\0" * 100_000, format="bin")
    return t


@pytest.mark.parametrize("fumo_type", caps.FUMO_TYPES)
def test_a_structured_get_finds_fumo_by_its_type_in_one_round(fumo_type: str) -> None:
    device = TreeDevice(acme_tree(fumo_type))
    assert run(device) == caps.Found("./Vendor/Acme/FwUpdate", True)
    assert device.rounds == 1


def test_a_device_that_cannot_list_is_walked_by_format_and_type() -> None:
    device = TreeDevice(acme_tree(), structured=False)
    assert run(device) == caps.Found("./Vendor/Acme/FwUpdate", False)
    # 406, then (list + Format/Type) per level down to ./Vendor/Acme/FwUpdate: three levels.
    assert device.rounds == 1 + 2 * 3
    assert device.gets < 40


def test_the_walk_never_reads_leaf_values() -> None:
    # PkgData (100 KB here, a whole firmware on a device) must not be fetched to learn what it is.
    device = TreeDevice(acme_tree(), structured=False)
    asked: list[str] = []
    original = device.answer

    def spy(commands: list[Command]) -> TreeDevice:
        asked.extend(c.items[0].target or "" for c in commands)  # type: ignore[attr-defined]
        return original(commands)

    device.answer = spy  # type: ignore[method-assign]
    run(device, structured=False)
    assert not any(a.endswith("/PkgData") or a.endswith("/Volume") for a in asked)


def test_nothing_found_is_none_and_the_walk_is_bounded() -> None:
    t = DmTree(max_depth=0, max_total_len=0, max_segment_len=0)
    uri = "."
    for depth in range(20):  # a deep chain of interior nodes, none of them FUMO
        uri += f"/n{depth}"
        t.put(uri, interior=True)
    device = TreeDevice(t, structured=False)
    assert run(device, structured=False) == caps.Found(None, False)
    assert device.rounds <= 2 * caps.MAX_WALK_DEPTH + 1


def test_a_listing_without_types_asks_the_interior_nodes_types() -> None:
    class Untyped(TreeDevice):
        def items(self, cmd: Command) -> list[Item]:
            out = super().items(cmd)
            if "?list=" in (cmd.items[0].target or ""):  # type: ignore[attr-defined]
                return [Item(source=i.source, meta=Meta(format=i.meta.format if i.meta else None)) for i in out]
            return out

    device = Untyped(acme_tree())
    assert run(device) == caps.Found("./Vendor/Acme/FwUpdate", True)
    assert device.rounds == 2


def test_a_refused_structured_get_falls_back_to_the_walk() -> None:
    device = TreeDevice(acme_tree())
    original = device.answer

    def refuse_list(commands: list[Command]) -> TreeDevice:
        result = original(commands)
        for c in commands:
            if "?list=" in (c.items[0].target or ""):  # type: ignore[attr-defined]
                result._codes[id(c)] = 425
        return result

    device.answer = refuse_list  # type: ignore[method-assign]
    assert run(device) == caps.Found("./Vendor/Acme/FwUpdate", True)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    yield Store(f"sqlite:///{tmp_path / 'caps.db'}")


def test_layers_operator_over_discovered_version_over_model(store: Store) -> None:
    with store.tx() as s:
        caps.record(s, "Acme", "S1", "", "discovered", DeviceCapability(fumo_uri="./FUMO/A", sequence=False))
        caps.record(s, "Acme", "S1", "2.0", "discovered", DeviceCapability(fumo_uri="./FUMO/B"))
        caps.record(s, "Acme", "S1", "", "operator", DeviceCapability(sequence=True, max_msg_size=4096))
    with store.tx() as s:
        v1 = caps.lookup(s, "Acme", "S1", "1.0")
        v2 = caps.lookup(s, "Acme", "S1", "2.0")
        other = caps.lookup(s, "Acme", "S2", "1.0")
    assert (v1.node_uri("fumo"), v1.sequence, v1.max_msg_size) == ("./FUMO/A", True, 4096)
    assert v2.node_uri("fumo") == "./FUMO/B"
    assert other == caps.DEFAULTS and other.node_uri("fumo") is None


def test_record_merges_and_forget_removes(store: Store) -> None:
    with store.tx() as s:
        caps.record(s, "Acme", "S1", "", "discovered", DeviceCapability(fumo_uri="./X"))
        caps.record(s, "Acme", "S1", "", "discovered", DeviceCapability(sequence=False))
    with store.tx() as s:
        assert caps.listing(s) == [{"make": "Acme", "model": "S1", "fw_version": "", "source": "discovered",
                                    "capability": {"fumo_uri": "./X", "sequence": False}}]
        assert caps.forget(s, "Acme", "S1", "", "discovered") and not caps.forget(s, "Acme", "S1", "", "discovered")


@pytest.mark.parametrize("values", [{"fumo_uri": "FUMO"}, {"fumo_uri": "./a?prop=Type"}, {"sequence": "no"},
                                    {"encodings": ["json"]}, {"max_msg_size": 10}, {"max_msg_size": True},
                                    {"ui_alerts": [1201]}, {"protocol": "2.0"}, {"colour": "red"}])
def test_malformed_operator_values_are_refused(values: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DeviceCapability.from_known(values)


def _version(store: Store) -> int:
    with store.tx() as s:
        return s.scalars(select(caps.VERSION)).one()


def test_a_process_cache_reads_again_once_any_process_changed_a_record(tmp_path: Path) -> None:
    """Two server processes on one database (two Stores): what one records or forgets, the other's cache
    stops serving as soon as it reads the change count of a transaction that follows the write."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    mine, theirs, cache = Store(url), Store(url), caps.Cache()
    with theirs.tx() as s:
        caps.record(s, "Acme", "S1", "", "discovered", DeviceCapability(fumo_uri="./FUMO/A"))
    v1 = _version(mine)
    with mine.tx() as s:
        assert caps.in_force(cache.records(s.connection(), "Acme", "S1", v1)).node_uri("fumo") == "./FUMO/A"
        # (no records: cached as such)
        assert caps.in_force(cache.records(s.connection(), "Acme", "S2", v1)) == caps.DEFAULTS
    writes = [("record", "./FUMO/B"), ("operator", "./FUMO/C"), ("forget-operator", "./FUMO/B")]
    for what, expected in writes:
        before = _version(mine)
        with theirs.tx() as s:
            if what == "record":
                caps.record(s, "Acme", "S1", "", "discovered", DeviceCapability(fumo_uri="./FUMO/B"))
            elif what == "operator":
                caps.record(s, "Acme", "S1", "", "operator", DeviceCapability(fumo_uri="./FUMO/C"))
            else:
                assert caps.forget(s, "Acme", "S1", "", "operator")
        after = _version(mine)
        assert after == before + 1
        with mine.tx() as s:
            assert caps.in_force(cache.records(s.connection(), "Acme", "S1", after)).node_uri("fumo") == expected, what
    # Without a change count (None) nothing is taken from the copy or kept in it.
    with theirs.tx() as s:
        caps.record(s, "Acme", "S1", "", "discovered", DeviceCapability(fumo_uri="./FUMO/D"))
    with mine.tx() as s:
        assert caps.in_force(cache.records(s.connection(), "Acme", "S1", None)).node_uri("fumo") == "./FUMO/D"


def test_the_cache_keeps_a_bounded_number_of_kinds(store: Store) -> None:
    cache, version = caps.Cache(), _version(store)
    with store.tx() as s:
        for i in range(caps.MAX_CACHED + 5):
            cache.records(s.connection(), "Acme", f"M{i}", version)
    assert len(cache._rows) <= caps.MAX_CACHED


def test_searched_and_not_found_is_remembered_but_names_no_node(store: Store) -> None:
    with store.tx() as s:
        caps.record(s, "Acme", "S9", "", "discovered", DeviceCapability(fumo_uri=""))
        cap = caps.lookup(s, "Acme", "S9")
    assert cap.fumo_uri == "" and cap.node_uri("fumo") is None


def test_known_round_trips() -> None:
    cap = DeviceCapability(fumo_uri="./Vendor/Acme/FwUpdate", sequence=False, encodings=("wbxml",),
                           max_msg_size=8000, auth_schemes=("basic", "md5"), ui_alerts=(1100, 1101), protocol="1.1")
    assert DeviceCapability.from_known(cap.known()) == cap


_SEGMENT = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(place=st.lists(_SEGMENT, min_size=1, max_size=5), decoys=st.lists(st.lists(_SEGMENT, min_size=1, max_size=4),
                                                                          max_size=8),
       fumo_type=st.sampled_from(caps.FUMO_TYPES), structured=st.booleans())
def test_fumo_is_found_wherever_it_is_among_other_nodes(place: list[str], decoys: list[list[str]], fumo_type: str,
                                                        structured: bool) -> None:
    uri = "./" + "/".join(place)
    if uri in ("./DevInfo", "./DevDetail", "./DMAcc", "./SyncML") or place[0] in ("DevInfo", "DevDetail", "DMAcc",
                                                                                  "SyncML"):
        return  # (standard objects: never searched, never FUMO)
    t = DmTree()
    for d in decoys:  # other interior nodes and leaves, some around or below the FUMO path
        decoy = "./" + "/".join(d)
        if decoy != uri and not uri.startswith(decoy + "/") and not decoy.startswith(uri + "/"):
            try:
                t.put(decoy + "/leaf", "x")
            except TreeError:  # (under a leaf another decoy made)
                pass
    t.put(uri, interior=True, type=fumo_type)
    t.put(uri + "/State", "10", format="int")
    device = TreeDevice(t, structured=structured)
    assert run(device, structured) == caps.Found(uri, structured)
    assert device.rounds <= (1 if structured else 1 + 2 * len(place))


def test_what_a_device_says_cannot_poison_its_kinds_record(store: Store) -> None:
    # A listing whose FUMO node has a malformed URI is no find; sizes out of range cannot be stored.
    t = acme_tree()

    class Lying(TreeDevice):
        def items(self, cmd: Command) -> list[Item]:
            return [Item(source="FwUpdate?prop=ACL", meta=Meta(format="node", type=caps.FUMO_TYPES[0]))]

    assert run(Lying(t)).fumo_uri is None
    with store.tx() as s, pytest.raises(ValueError):
        caps.record(s, "Acme", "S1", "", "discovered", DeviceCapability(max_msg_size=10))
    with store.tx() as s:
        assert caps.lookup(s, "Acme", "S1") == caps.DEFAULTS
