"""What a kind of device can take, per make, model and (optionally) firmware version.

A DeviceCapability says where the device keeps its management objects (`node_uri("fumo")`, the
getNodeURI lookup), whether the server may wrap commands in Sequence or Atomic, which encodings,
message and object sizes and authentication schemes it takes, whether it answers structured Gets
(`?list=`), and which UI alerts it shows. Every field may be unknown (None).

Records come from two sources, kept apart so that neither overwrites the other: `discovered`
(learned from the devices themselves: what they send, what they refuse, the FUMO search below) and
`operator` (set through the CLI or the REST API). The capability in force for a device layers
them: model-wide discovered, version-specific discovered, model-wide operator, version-specific
operator; the last known value of each field wins.

`find_fumo` is the discovery of the FUMO object: a session script (it yields Gets and receives
the device's answers) that asks for the whole tree structure in one structured Get and picks the
interior node whose Type is the FUMO management object's, or, from a device that cannot list
(406), walks the tree level by level asking each node's Format and Type, within fixed bounds."""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Iterable
from dataclasses import dataclass, fields, replace
from typing import NamedTuple, Protocol

from sqlalchemy import Index, String, bindparam, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Session, mapped_column

from fotadelta.dm.model import Command, Get, Item
from fotadelta.server.store import Base, CacheVersionRow, Counted, Direct, table_of

FUMO_TYPES = ("urn:oma:mo:oma-fumo:1.0", "org.openmobilealliance/1.0/FirmwareUpdateManagementObject")
DEFAULT_FUMO = "./FUMO/Firmware"  # where fotadelta's own client keeps it, and the usual place
UI_ALERTS = (1100, 1101, 1102, 1103, 1104)
SOURCES = ("discovered", "operator")
# Standard objects that never hold FUMO: the walk does not descend into them.
_NOT_FUMO = frozenset({"./DevInfo", "./DevDetail", "./DMAcc", "./SyncML"})
MAX_WALK_NODES = 256  # nodes whose Format/Type the walk asks for, at most
MAX_WALK_DEPTH = 8
MIN_SIZE, MAX_SIZE = 256, 1 << 31  # MaxMsgSize/MaxObjSize a capability may hold


@dataclass(frozen=True)
class DeviceCapability:
    """What a make/model (at a firmware version, or any) can take; None: not known."""

    fumo_uri: str | None = None  # "": searched for, not found (the default place is used, and no search again)
    sequence: bool | None = None
    atomic: bool | None = None
    encodings: tuple[str, ...] | None = None  # "xml", "wbxml"
    max_msg_size: int | None = None
    max_obj_size: int | None = None
    auth_schemes: tuple[str, ...] | None = None  # "basic", "md5", "hmac"
    structured_get: bool | None = None
    ui_alerts: tuple[int, ...] | None = None
    protocol: str | None = None  # "1.2" or "1.1"

    def node_uri(self, mo: str) -> str | None:
        """getNodeURI: where the device keeps a management object ("fumo"), if known."""
        return {"fumo": self.fumo_uri or None}.get(mo)

    def over(self, base: DeviceCapability) -> DeviceCapability:
        """This record's known fields laid over base."""
        return replace(base, **{f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None})

    def known(self) -> dict[str, object]:
        """The known fields, JSON-ready."""
        return {f.name: (list(v) if isinstance(v, tuple) else v) for f in fields(self)
                if (v := getattr(self, f.name)) is not None}

    @classmethod
    def from_known(cls, values: dict[str, object]) -> DeviceCapability:
        """The record of known fields (as `known()` gives, or an operator's JSON); ValueError if malformed."""
        kinds = {f.name: f.type for f in fields(cls)}
        out: dict[str, object] = {}
        for name, value in values.items():
            kind = kinds.get(name)
            if kind is None:
                raise ValueError(f"unknown capability {name!r} (known: {', '.join(kinds)})")
            out[name] = _checked(name, str(kind), value)
        return cls(**out)  # type: ignore[arg-type]


def _checked(name: str, kind: str, value: object) -> object:
    if value is None:
        return None
    if "bool" in kind:
        if not isinstance(value, bool):
            raise ValueError(f"{name} is true or false")
        return value
    if "tuple[int" in kind:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and v in UI_ALERTS for v in value):
            raise ValueError(f"{name} is a list of UI alert codes ({', '.join(map(str, UI_ALERTS))})")
        return tuple(value)
    if "tuple[str" in kind:
        allowed = {"encodings": ("xml", "wbxml"), "auth_schemes": ("basic", "md5", "hmac")}[name]
        if not isinstance(value, (list, tuple)) or not all(v in allowed for v in value):
            raise ValueError(f"{name} is a list of {', '.join(allowed)}")
        return tuple(value)
    if "int" in kind:
        if not isinstance(value, int) or isinstance(value, bool) or not MIN_SIZE <= value <= MAX_SIZE:
            raise ValueError(f"{name} is a number of bytes ({MIN_SIZE} to {MAX_SIZE})")
        return value
    if name == "protocol":
        if value not in ("1.1", "1.2"):
            raise ValueError("protocol is 1.1 or 1.2")
        return value
    if value == "" and name == "fumo_uri":
        return value
    if not isinstance(value, str) or not value.startswith("./") or len(value) > 255 or "?" in value:
        raise ValueError(f"{name} is an absolute node URI (./...)")
    return value


DEFAULTS = DeviceCapability(fumo_uri=None, sequence=True, atomic=True, encodings=("xml", "wbxml"),
                            structured_get=True, ui_alerts=UI_ALERTS, protocol="1.2")


class CapabilityRow(Base):
    __tablename__ = "capabilities"
    # (One record per make, model, version and source: see migration 0005.)
    __table_args__ = (Index("ix_capabilities_record", "make", "model", "fw_version", "source", unique=True),)
    id: Mapped[int] = mapped_column(primary_key=True)
    make: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(String(64))
    fw_version: Mapped[str] = mapped_column(String(64), default="")  # "" for every version
    source: Mapped[str] = mapped_column(String(16))  # discovered | operator
    values: Mapped[str] = mapped_column(String(2048), default="{}")  # DeviceCapability.known() as JSON
    updated: Mapped[float] = mapped_column(default=time.time)


class Record(NamedTuple):
    """A stored record as in_force and stored_in read it (its values parsed once, when read: a process's Cache
    serves the same records to many messages)."""

    source: str
    fw_version: str
    cap: DeviceCapability


# (Built once: every session reads its device's records. Read as plain rows, not ORM objects: a session only
# reads them, and loading objects cost it several times more.)
_KIND = (CapabilityRow.make == bindparam("make")) & (CapabilityRow.model == bindparam("model"))
_RECORDS = Direct(select(CapabilityRow.source, CapabilityRow.fw_version, CapabilityRow.values).where(_KIND))
_RECORD_ROWS = select(CapabilityRow).where(_KIND)


# How often the records have changed (the cache_versions row every write below adds one to): read, as a column,
# in the statement that locks a DM message's device, so that checking a process's Cache costs no statement.
_VERSIONS = table_of(CacheVersionRow)
VERSION = select(_VERSIONS.c.version).where(_VERSIONS.c.name == "capabilities").scalar_subquery()
_CHANGED = Direct(update(_VERSIONS).where(_VERSIONS.c.name == "capabilities").values(version=_VERSIONS.c.version + 1))


MAX_CACHED = 1024  # kinds of device a process keeps the records of (it forgets them all beyond that)


class Cache(Counted[list[Record]]):
    """One server process's copy of the records of each make and model (store.Counted, by VERSION)."""

    def __init__(self) -> None:
        super().__init__(MAX_CACHED)

    def records(self, conn: Connection, make: str, model: str, version: int | None) -> list[Record]:
        """`records`, from the copy if it was read at version (None: unknown, read from the database)."""
        found = self.get((make, model), version)
        if found is None:
            found = records(conn, make, model)
            self.keep((make, model), version, found)
        return found


def records(conn: Connection, make: str, model: str) -> list[Record]:
    """Every stored record of a make and model (what in_force and stored_in read), in conn's transaction."""
    return [Record(r["source"], r["fw_version"], DeviceCapability.from_known(json.loads(r["values"])))
            for r in _RECORDS.run(conn, {"make": make, "model": model})]


def lookup(s: Session, make: str, model: str, fw_version: str = "") -> DeviceCapability:
    """The capability in force for a device of this make, model and firmware version (DEFAULTS beneath)."""
    return in_force(records(s.connection(), make, model), fw_version)


def in_force(rows: list[Record], fw_version: str = "") -> DeviceCapability:
    """lookup, on the records of one make and model."""
    layers = {(r.source, r.fw_version): r for r in rows}
    out = DEFAULTS
    for source in SOURCES:
        for version in ("", fw_version) if fw_version else ("",):
            row = layers.get((source, version))
            if row is not None:
                out = row.cap.over(out)
    return out


def stored(s: Session, make: str, model: str, fw_version: str, source: str) -> DeviceCapability:
    """One stored record as it is (every field unknown if there is none)."""
    return stored_in(records(s.connection(), make, model), fw_version, source)


def stored_in(rows: list[Record], fw_version: str, source: str) -> DeviceCapability:
    """stored, on the records of one make and model."""
    row = next((r for r in rows if r.source == source and r.fw_version == fw_version), None)
    return DeviceCapability() if row is None else row.cap


def record(s: Session, make: str, model: str, fw_version: str, source: str, cap: DeviceCapability) -> None:
    """Lay cap's known fields over the stored record of this source (creating it)."""
    if source not in SOURCES:
        raise ValueError(f"source is one of {SOURCES}")
    row = next((r for r in s.scalars(_RECORD_ROWS, {"make": make, "model": model})
                if r.source == source and r.fw_version == fw_version), None)
    if row is None:
        row = CapabilityRow(make=make, model=model, fw_version=fw_version, source=source)
        s.add(row)
        old = DeviceCapability()
    else:
        old = DeviceCapability.from_known(json.loads(row.values))
    merged = cap.over(old)
    DeviceCapability.from_known(merged.known())  # ValueError before anything malformed is stored
    row.values, row.updated = json.dumps(merged.known(), sort_keys=True), time.time()
    s.flush()  # (a lookup later in the caller's transaction reads it, autoflush or not)
    _CHANGED.run(s.connection(), {})


def forget(s: Session, make: str, model: str, fw_version: str, source: str) -> bool:
    """Remove a stored record; whether there was one."""
    for r in s.scalars(_RECORD_ROWS, {"make": make, "model": model}):
        if r.source == source and r.fw_version == fw_version:
            s.delete(r)
            _CHANGED.run(s.connection(), {})
            return True
    return False


def listing(s: Session) -> list[dict[str, object]]:
    """Every stored record, for the operator."""
    rows = s.scalars(select(CapabilityRow).order_by(CapabilityRow.make, CapabilityRow.model, CapabilityRow.fw_version,
                                                    CapabilityRow.source))
    return [{"make": r.make, "model": r.model, "fw_version": r.fw_version, "source": r.source,
             "capability": json.loads(r.values)} for r in rows]


# -- discovery of the FUMO object ----------------------------------------------------------------

class Answers(Protocol):
    """A device's answers to the commands of one package."""

    def code(self, cmd: Command) -> int | None: ...
    def items(self, cmd: Command) -> list[Item]: ...


@dataclass(frozen=True)
class Found:
    fumo_uri: str | None
    structured_get: bool


Discovery = Generator[list[Command], Answers, Found]


def _is_fumo(type_: str | None) -> bool:
    return type_ is not None and type_.strip() in FUMO_TYPES


def valid_uri(uri: str | None) -> bool:
    """Whether a node URI from a device can be kept as a capability (absolute, no query, bounded)."""
    try:
        return uri is not None and _checked("fumo_uri", "str", uri) == uri and uri != ""
    except ValueError:
        return False


def find_fumo(structured: bool = True) -> Discovery:
    """Search the device's tree for its FUMO object; see the module docstring."""
    if structured:
        get = Get([Item(target=".?list=Struct")])
        answers = yield [get]
        code = answers.code(get)
        if code == 200:
            listed = answers.items(get)
            for item in listed:
                if item.meta is not None and item.meta.format == "node" and _is_fumo(item.meta.type) \
                        and valid_uri(item.source):
                    return Found(item.source, True)
            # A listing without types: ask the interior nodes' Type, all at once.
            interior = [i.source for i in listed if i.source is not None and valid_uri(i.source)
                        and i.meta is not None and i.meta.format == "node" and not _skipped(i.source)][:MAX_WALK_NODES]
            return Found((yield from _typed(interior)), True)
        if code != 406:
            return Found((yield from _walk()), True)
    return Found((yield from _walk()), False)


def _skipped(uri: str) -> bool:
    return any(uri == n or uri.startswith(n + "/") for n in _NOT_FUMO)


def _typed(uris: list[str]) -> Generator[list[Command], Answers, str | None]:
    if not uris:
        return None
    gets = [Get([Item(target=f"{u}?prop=Type")]) for u in uris]
    answers = yield list(gets)
    for uri, get in zip(uris, gets):
        if any(_is_fumo(i.text) for i in answers.items(get)):
            return uri
    return None


def _walk() -> Generator[list[Command], Answers, str | None]:
    """Level by level: list each interior node's children, then ask every child's Format and Type."""
    interior, asked, depth = ["."], 0, 0
    while interior and depth < MAX_WALK_DEPTH:
        depth += 1
        lists = [Get([Item(target=u)]) for u in interior]
        answers = yield list(lists)
        children = [f"{u}/{name}" for u, get in zip(interior, lists)
                    for item in answers.items(get) if item.meta is not None and item.meta.format == "node"
                    for name in item.text.split("/") if name]
        children = [c for c in children if valid_uri(c) and not _skipped(c)][:max(0, MAX_WALK_NODES - asked)]
        asked += len(children)
        if not children:
            return None
        formats = [Get([Item(target=f"{c}?prop=Format")]) for c in children]
        types = [Get([Item(target=f"{c}?prop=Type")]) for c in children]
        answers = yield [*formats, *types]
        interior = []
        for child, fmt, typ in zip(children, formats, types):
            if any(i.text == "node" for i in answers.items(fmt)):
                if any(_is_fumo(i.text) for i in answers.items(typ)):
                    return child
                interior.append(child)
    return None


def union(base: tuple[str, ...] | None, more: Iterable[str]) -> tuple[str, ...]:
    """base with more added (order kept): a kind of device seen using more schemes or encodings."""
    out = list(base or ())
    out += [m for m in more if m not in out]
    return tuple(out)


__all__ = ["Answers", "CapabilityRow", "DEFAULTS", "DEFAULT_FUMO", "DeviceCapability", "FUMO_TYPES", "Found",
           "find_fumo", "forget", "listing", "lookup", "record", "stored", "union"]
