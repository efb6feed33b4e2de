"""DM commands of the application API in their JSON form (`spec`): checking and building them, and
their outcome as JSON. The engine sends them (behind an identity probe, see server/commands.py)."""

from __future__ import annotations

import base64
from typing import Any

from fotadelta.dm.model import Add, Atomic, Command, Delete, Exec, Get, Item, Meta, Replace, Sequence, Status
from fotadelta.dm.session import walk

DEVID_URI = "./DevInfo/DevId"
MAX_COMMANDS = 64  # per request, nested ones included
MAX_DEPTH = 3
MAX_DATA = 64 * 1024
OPS = ("Get", "Replace", "Add", "Delete", "Exec", "Atomic", "Sequence")
FORMATS = ("chr", "int", "bool", "b64", "bin", "xml", "node", "float", "date", "time", "null")


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


def label(cmd: Command) -> dict[str, Any]:
    name = type(cmd).__name__
    if isinstance(cmd, Exec):
        return {"op": name, "target": cmd.item.target}
    if isinstance(cmd, (Atomic, Sequence)):
        return {"op": name}
    return {"op": name, "target": cmd.items[0].target if getattr(cmd, "items", None) else None}


def outcome(commands: list[Command], statuses: list[Status | None], results: list[list[Item]]
            ) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]], str]:
    """What the device answered to commands (statuses in `walk` order, results per Get): the command's
    state (succeeded, or failed when any status is missing or 300 and over), statuses and results as
    JSON, and the error text."""
    cmds = list(walk(commands))
    out: list[dict[str, Any]] = []
    failed = []
    for cmd, st in zip(cmds, statuses):
        entry = {**label(cmd), "code": st.code if isinstance(st, Status) else None}
        out.append(entry)
        if entry["code"] is None or entry["code"] >= 300:
            failed.append(f"{entry['op']} {entry.get('target') or ''}".strip() + f": {entry['code']}")
    gets = [c for c in cmds if isinstance(c, Get)]
    found = [{"target": g.items[0].target, "items": [
        {"source": i.source, "format": i.meta.format if i.meta else None, "type": i.meta.type if i.meta else None,
         **({"data_b64": base64.b64encode(i.data).decode()} if isinstance(i.data, bytes) else {"data": i.text})}
        for i in items]} for g, items in zip(gets, results)]
    return "failed" if failed else "succeeded", out, found, "; ".join(failed)[:512]


__all__ = ["DEVID_URI", "FORMATS", "MAX_COMMANDS", "build", "label", "outcome"]
