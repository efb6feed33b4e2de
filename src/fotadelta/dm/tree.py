"""The device's OMA DM 1.2 management tree: nodes, properties, ACLs and the server commands on them.

The DM client builds the tree with the device-side calls (``put``, ``on_exec``, ``on_replace``; no
ACL checks) and maps each server command to one method (``get``, ``add``, ``replace``, ``delete``,
``copy``, ``exec``), turning a raised ``TreeError`` into the command's Status code. Rules follow
OMA-TS-DM_TND 1.2:

* URIs are ``.`` (the root), ``./A/B`` or relative ``A/B``; ``..``, ``.`` inside a path, empty
  segments and a trailing ``/`` are malformed (400). Depth, total length (of the absolute form,
  without query) and segment length beyond the limits give 414; a limit of 0 means no limit, as in
  DevDetail/URI.
* Only Get takes a query (``?list=Struct``, ``?list=StructData``, ``?prop=ACL|Format|Type|Name``)
  and only Replace takes ``?prop=ACL``; any other query on Get/Replace is 406 (405 for the
  read-only properties and for a permanent node's Name), and any query on Add, Delete, Copy, Exec 405.
* A node's empty ACL means it inherits its parent's; the root's ACL is never empty and keeps
  ``Add=*``. Get/Replace/Delete/Exec need the right on the node, Add on the nearest existing
  ancestor, Copy Get on every copied node plus Add (new target) or Replace (existing target).
  An ACL is replaced by a server with Replace on the parent, or on the node itself for an interior
  node (TND 7.7.1.3).
* Existence is checked before permission (404 before 425), permission before the command's own
  rules (425 before 405/415).

Values of the text formats (chr, int, bool, float, date, time, xml) are stored as ``str``; bin and
b64 values are stored as given. An empty value is accepted for every leaf format."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from types import MappingProxyType
from dataclasses import dataclass, replace
from datetime import date, time

Value = str | bytes | None
ExecHandler = Callable[[str, Value, str | None], int]
ReplaceHandler = Callable[[str, Value], None]

ROOT = "."
DEFAULT_ROOT_ACL = "Add=*&Get=*&Replace=*"
ACL_COMMANDS = frozenset({"Add", "Delete", "Exec", "Get", "Replace"})
FORMATS = frozenset({"b64", "bin", "bool", "chr", "int", "node", "null", "xml", "date", "time", "float"})
_TEXT_FORMATS = frozenset({"chr", "int", "bool", "float", "date", "time", "xml"})
_READ_ONLY_PROPS = frozenset({"Format", "Type", "Size", "TStamp", "VerNo"})
_INT_RE = re.compile(r"[+-]?[0-9]+")
# Decimal or exponent notation only: Python's float() would also take "nan", "inf" and "1_0".
_FLOAT_RE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_SERVER_ID_FORBIDDEN = frozenset("=&*+")


class TreeError(Exception):
    """A tree operation failed; ``code`` is the DM status code to report."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class NodeData:
    """One node as returned by Get: ``format`` is "node" for interior nodes."""

    uri: str
    format: str
    type: str | None
    data: Value


@dataclass(frozen=True, slots=True)
class _Node:
    # Frozen so that a snapshot can share nodes with the live tree: every change swaps in a new one.
    format: str
    type: str | None
    value: Value
    acl: str  # "" inherits the parent's ACL
    permanent: bool
    children: tuple[str, ...] = ()

    @property
    def interior(self) -> bool:
        return self.format == "node"


@dataclass(frozen=True, slots=True)
class _Snapshot:
    nodes: dict[str, _Node]


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0]


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _as_text(data: Value) -> str:
    """Data as a string; bytes must be UTF-8."""
    if data is None:
        return ""
    if isinstance(data, bytes):
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise TreeError(415, "data is not UTF-8 text") from None
    return data


@lru_cache(maxsize=256)  # (every command's right check reads an ACL: a device holds a handful of distinct ones)
def _parse_acl(acl: str) -> Mapping[str, frozenset[str]]:
    """The ACL as command -> server ids ("*" for anyone), read-only (the cache shares it); 400 if it breaks the
    TND grammar."""
    rights: dict[str, frozenset[str]] = {}
    if acl == "":
        return MappingProxyType(rights)
    for entry in acl.split("&"):
        command, eq, ids = entry.partition("=")
        if not eq or command not in ACL_COMMANDS:
            raise TreeError(400, f"malformed ACL entry {entry!r}")
        servers = ids.split("+")
        for s in servers:
            if s != "*" and (not s or not s.isprintable() or any(c.isspace() or c in _SERVER_ID_FORBIDDEN for c in s)):
                raise TreeError(400, f"malformed server identifier {s!r} in ACL")
        rights[command] = rights.get(command, frozenset()) | frozenset(servers)
    return MappingProxyType(rights)


def _node_type(fmt: str, type: str | None) -> str | None:
    # A leaf without Meta/Type is text/plain (the SyncML default); an interior node's Type is its
    # optional DDF name.
    return "text/plain" if type is None and fmt != "node" else type


def _check_value(fmt: str, data: Value) -> Value:
    """The value to store for ``data`` in format ``fmt``; 415 if it does not fit."""
    if fmt not in FORMATS:
        raise TreeError(415, f"unsupported format {fmt!r}")
    empty = data is None or len(data) == 0
    if fmt in ("node", "null"):
        if not empty:
            raise TreeError(415, f"a node of format {fmt} holds no data")
        return None
    if fmt not in _TEXT_FORMATS or empty:
        return data
    text = _as_text(data)
    if fmt == "int":
        if not _INT_RE.fullmatch(text) or not -(2**31) <= int(text) < 2**31:
            raise TreeError(415, f"{text!r} is not a 32-bit integer")
    elif fmt == "bool":
        if text not in ("true", "false"):
            raise TreeError(415, f"{text!r} is not true or false")
    elif fmt == "float":
        if not _FLOAT_RE.fullmatch(text):
            raise TreeError(415, f"{text!r} is not a float")
    elif fmt in ("date", "time"):
        try:
            (date if fmt == "date" else time).fromisoformat(text)
        except ValueError:
            raise TreeError(415, f"{text!r} is not an ISO 8601 {fmt}") from None
    return text


class DmTree:
    """An in-memory DM tree. Limits of 0 mean "no limit"."""

    def __init__(self, *, max_depth: int = 16, max_total_len: int = 256, max_segment_len: int = 64,
                 root_acl: str = DEFAULT_ROOT_ACL) -> None:
        self.max_depth = max_depth
        self.max_total_len = max_total_len
        self.max_segment_len = max_segment_len
        if not _parse_acl(root_acl):
            raise TreeError(400, "the root ACL must not be empty")
        self._nodes: dict[str, _Node] = {ROOT: _Node("node", None, None, root_acl, True)}
        self._exec_handlers: dict[str, ExecHandler] = {}
        self._replace_handlers: dict[str, ReplaceHandler] = {}

    # ---- URIs -------------------------------------------------------------------------------

    def _split(self, uri: str) -> tuple[str, str | None]:
        """(absolute path, query or None); 400 if malformed, 414 beyond the limits."""
        raw, sep, query = uri.partition("?")
        if raw == ROOT:
            return ROOT, (query if sep else None)
        rest = raw.removeprefix("./")
        segments = rest.split("/")
        if any(s in ("", ".", "..") for s in segments):
            raise TreeError(400, f"malformed URI {uri!r}")
        path = "./" + rest
        if self.max_depth and len(segments) > self.max_depth:
            raise TreeError(414, f"URI deeper than {self.max_depth} levels")
        if self.max_segment_len and max(len(s) for s in segments) > self.max_segment_len:
            raise TreeError(414, f"URI segment longer than {self.max_segment_len}")
        if self.max_total_len and len(path) > self.max_total_len:
            raise TreeError(414, f"URI longer than {self.max_total_len}")
        return path, (query if sep else None)

    def _path(self, uri: str, query_code: int) -> str:
        """The absolute path of a URI that must not carry a query (else ``query_code``)."""
        path, query = self._split(uri)
        if query is not None:
            raise TreeError(query_code, f"no query allowed here: {uri!r}")
        return path

    # ---- internals --------------------------------------------------------------------------

    def _node(self, path: str) -> _Node:
        node = self._nodes.get(path)
        if node is None:
            raise TreeError(404, f"{path} not found")
        return node

    def _granted(self, command: str, path: str, server_id: str) -> bool:
        node = self._nodes[path]
        while not node.acl:  # the root's ACL is never empty, so this ends
            path = _parent(path)
            node = self._nodes[path]
        servers = _parse_acl(node.acl).get(command, frozenset())
        return "*" in servers or server_id in servers

    def _require(self, command: str, path: str, server_id: str) -> None:
        if not self._granted(command, path, server_id):
            raise TreeError(425, f"{server_id!r} has no {command} right on {path}")

    def _subtree(self, path: str) -> list[str]:
        """``path`` and its descendants, depth first, children in insertion order."""
        out: list[str] = []
        stack = [path]
        while stack:
            p = stack.pop()
            out.append(p)
            stack.extend(f"{p}/{c}" for c in reversed(self._nodes[p].children))
        return out

    def _anchor(self, path: str) -> str:
        """The nearest existing ancestor of a missing node; 405 if it is a leaf."""
        anchor = _parent(path)
        while anchor not in self._nodes:
            anchor = _parent(anchor)
        if not self._nodes[anchor].interior:
            raise TreeError(405, f"{anchor} is a leaf and cannot have children")
        return anchor

    def _insert(self, path: str, node: _Node) -> None:
        """Store a new node, first creating its missing ancestors (interior, inheriting, as permanent as it)."""
        parent = _parent(path)
        if parent not in self._nodes:
            self._insert(parent, _Node("node", None, None, "", node.permanent))
        p = self._nodes[parent]
        self._nodes[parent] = replace(p, children=(*p.children, _name(path)))
        self._nodes[path] = node

    def _set_leaf(self, path: str, node: _Node) -> None:
        """Store a server-written leaf, undone if its replace handler refuses."""
        old = self._nodes[path]
        self._nodes[path] = node
        handler = self._replace_handlers.get(path)
        if handler is not None:
            try:
                handler(path, node.value)
            except BaseException:
                # Any failure, not only a TreeError: the tree must not keep a value its owner did not take.
                self._nodes[path] = old
                raise

    # ---- device side ------------------------------------------------------------------------

    def put(self, uri: str, data: Value = None, *, format: str = "chr", type: str | None = None,
            acl: str | None = None, interior: bool = False, permanent: bool = True) -> None:
        """Create or overwrite a node, creating missing parents; ``acl=None`` keeps the current ACL
        (a new node inherits). ``type=None`` is text/plain for a leaf."""
        path = self._path(uri, 400)
        if path == ROOT:
            raise TreeError(405, "the root is made by the tree; pass root_acl to DmTree")
        if acl:
            _parse_acl(acl)
        fmt = "node" if interior else format
        value = _check_value(fmt, data)
        old = self._nodes.get(path)
        if old is None:
            self._anchor(path)
            self._insert(path, _Node(fmt, _node_type(fmt, type), value, acl or "", permanent))
            return
        if old.children and not interior:
            raise TreeError(405, f"{path} has children and cannot become a leaf")
        self._nodes[path] = _Node(fmt, _node_type(fmt, type), value, old.acl if acl is None else acl,
                                  permanent, old.children)

    def value(self, uri: str) -> Value:
        """A node's value (None for an interior node)."""
        return self._node(self._path(uri, 400)).value

    def exists(self, uri: str) -> bool:
        return self._path(uri, 400) in self._nodes

    def children(self, uri: str) -> list[str]:
        """Child names in insertion order."""
        return list(self._node(self._path(uri, 400)).children)

    def on_exec(self, uri: str, handler: ExecHandler) -> None:
        """Make a node executable: Exec calls ``handler(uri, data, correlator)`` and reports its code."""
        self._exec_handlers[self._path(uri, 400)] = handler

    def on_replace(self, uri: str, handler: ReplaceHandler) -> None:
        """Call ``handler(uri, value)`` after a server Replace (or Copy onto) that leaf; a TreeError
        from it refuses the command and the old value is kept."""
        self._replace_handlers[self._path(uri, 400)] = handler

    # ---- server commands --------------------------------------------------------------------

    def get(self, target: str, server_id: str) -> list[NodeData]:
        """Get: one NodeData (value, child list or property), or the subtree for ``?list=``."""
        path, query = self._split(target)
        prop = query[5:] if query is not None and query.startswith("prop=") else None
        if query not in (None, "list=Struct", "list=StructData") and prop not in ("ACL", "Format", "Type", "Name"):
            raise TreeError(406, f"unsupported query {query!r}")
        node = self._node(path)
        self._require("Get", path, server_id)
        if prop is not None:
            values = {"ACL": node.acl, "Format": node.format, "Type": node.type or "", "Name": _name(path)}
            return [NodeData(f"{path}?{query}", "chr", "text/plain", values[prop])]
        if query is None:
            data = "/".join(node.children) if node.interior else node.value
            return [NodeData(path, node.format, node.type, data)]
        # A listing leaves out the nodes this server may not Get.
        with_data = query == "list=StructData"
        listing = []
        for p in self._subtree(path):
            if self._granted("Get", p, server_id):
                n = self._nodes[p]
                listing.append(NodeData(p, n.format, n.type, n.value if with_data else None))
        return listing

    def add(self, uri: str, data: Value, format: str, type: str | None, server_id: str) -> None:
        """Add a dynamic (deletable) node, creating missing interior parents."""
        path = self._path(uri, 405)
        if path in self._nodes:
            raise TreeError(418, f"{path} already exists")
        self._require("Add", self._anchor(path), server_id)
        value = _check_value(format, data)
        self._insert(path, _Node(format, _node_type(format, type), value, "", False))

    def replace(self, uri: str, data: Value, format: str | None, type: str | None, server_id: str) -> None:
        """Replace a leaf's value (``format``/``type`` None keep the node's), or ``?prop=ACL``."""
        path, query = self._split(uri)
        if query == "prop=ACL":
            self._replace_acl(path, data, server_id)
            return
        if query is not None:
            prop = query[5:] if query.startswith("prop=") else None
            if prop in _READ_ONLY_PROPS or (prop == "Name" and self._node(path).permanent):
                raise TreeError(405, f"{query} cannot be replaced")
            raise TreeError(406, f"unsupported query {query!r}")
        node = self._node(path)
        self._require("Replace", path, server_id)
        fmt = node.format if format is None else format
        if node.interior or fmt == "node":
            raise TreeError(405, f"{path}: an interior node has no value and a leaf cannot become one")
        value = _check_value(fmt, data)
        self._set_leaf(path, replace(node, format=fmt, type=node.type if type is None else type, value=value))

    def _replace_acl(self, path: str, data: Value, server_id: str) -> None:
        node = self._node(path)
        by_parent = path != ROOT and self._granted("Replace", _parent(path), server_id)
        if not by_parent and not (node.interior and self._granted("Replace", path, server_id)):
            raise TreeError(425, f"{server_id!r} may not change the ACL of {path}")
        acl = _as_text(data)
        rights = _parse_acl(acl)
        # TND 7.7.1.2: any server must always be able to extend the tree.
        if path == ROOT and "*" not in rights.get("Add", frozenset()):
            raise TreeError(405, "the root ACL must keep Add=*")
        self._nodes[path] = replace(node, acl=acl)

    def delete(self, uri: str, server_id: str) -> None:
        """Delete a node and its subtree; nothing is deleted if the subtree holds a permanent node."""
        path = self._path(uri, 405)
        self._node(path)
        self._require("Delete", path, server_id)
        doomed = self._subtree(path)
        if any(self._nodes[p].permanent for p in doomed):
            raise TreeError(405, f"{path} is or contains a permanent node")
        for p in doomed:
            del self._nodes[p]
        parent = self._nodes[_parent(path)]
        name = _name(path)
        self._nodes[_parent(path)] = replace(parent, children=tuple(c for c in parent.children if c != name))

    def copy(self, target: str, source: str, server_id: str) -> None:
        """Copy a leaf onto a leaf (a Replace of the target), or a node with its subtree to a new target.

        The copies are dynamic and inherit their ACL: a source's ACL is not carried over."""
        dst = self._path(target, 405)
        src = self._path(source, 405)
        src_node = self._node(src)
        sources = self._subtree(src)
        # Every copied node must be readable, or copying a parent would leak a protected child.
        for p in sources:
            self._require("Get", p, server_id)
        old = self._nodes.get(dst)
        if old is not None:
            if old.interior or src_node.interior:
                raise TreeError(405, "Copy onto an existing node needs a leaf source and a leaf target")
            self._require("Replace", dst, server_id)
            self._set_leaf(dst, replace(old, format=src_node.format, type=src_node.type, value=src_node.value))
            return
        self._require("Add", self._anchor(dst), server_id)
        # Read the sources before inserting: the target may lie inside the source's subtree.
        copies = [(dst + p[len(src):], self._nodes[p]) for p in sources]
        for p, n in copies:
            self._insert(p, replace(n, acl="", permanent=False, children=()))

    def exec(self, uri: str, data: Value, correlator: str | None, server_id: str) -> int:
        """Run a node's exec handler and return its status code."""
        path = self._path(uri, 405)
        self._node(path)
        self._require("Exec", path, server_id)
        handler = self._exec_handlers.get(path)
        if handler is None:
            raise TreeError(405, f"{path} is not executable")
        return handler(path, data, correlator)

    # ---- Atomic -----------------------------------------------------------------------------

    def snapshot(self) -> object:
        """An opaque copy of nodes, values and ACLs (handlers are not part of it)."""
        return _Snapshot(dict(self._nodes))  # nodes are immutable, so a shallow copy is enough

    def restore(self, snap: object) -> None:
        """Put the tree back as it was at ``snapshot()``."""
        if not isinstance(snap, _Snapshot):
            raise TypeError("not a DmTree snapshot")
        self._nodes = dict(snap.nodes)
