"""The typed SyncML DM message model (OMA DM 1.2 and 1.1.2) and its mapping to the neutral element tree.

A Message is a SyncHdr, a list of commands and the Final flag; the header's Protocol says which
DM version it speaks (VerDTD, VerProto and the SyncML namespace go together). Commands are dataclasses, one per
SyncML command the DM profile uses. `to_element`/`from_element` convert to and from the element
tree that the XML and WBXML codecs serialise; `from_element` checks the structure the DTD asks
for (required children, numbers that are numbers) and raises CodecError otherwise, so the
session layers only ever see well-formed messages."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Union

from fotadelta.dm.element import METINF_NS, SYNCML11_NS, SYNCML_NS, CodecError, Element



@dataclass(frozen=True)
class Protocol:
    """One OMA DM version as its messages name it."""

    dtd: str  # VerDTD
    proto: str  # VerProto
    namespace: str  # of the SyncML elements

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        # (A pickled session state (server/livestate.py) gets the module's own object back, which `is DM_1_1`
        # tests rely on, not an equal copy.)
        return _protocol_named, (self.dtd, self.proto)


def _protocol_named(dtd: str, proto: str) -> Protocol:
    """The DM version with these VerDTD and VerProto."""
    return PROTOCOLS[(dtd, proto)]


DM_1_2 = Protocol("1.2", "DM/1.2", SYNCML_NS)
DM_1_1 = Protocol("1.1", "DM/1.1", SYNCML11_NS)  # OMA DM 1.1.2: SyncML 1.1 representation
PROTOCOLS = {(p.dtd, p.proto): p for p in (DM_1_2, DM_1_1)}
# Elements SyncML 1.1 does not have (they came with DM 1.2): a 1.1 message cannot carry them.
_NOT_IN_1_1 = frozenset({"Correlator", "SourceParent", "TargetParent"})


@dataclass
class Meta:
    """The MetInf fields the DM profile uses."""

    format: str | None = None
    type: str | None = None
    mark: str | None = None
    size: int | None = None
    next_nonce: str | None = None  # base64 text, as on the wire
    max_msg_size: int | None = None
    max_obj_size: int | None = None

    def empty(self) -> bool:
        return all(v is None for v in vars(self).values())


@dataclass
class Item:
    target: str | None = None
    source: str | None = None
    source_parent: str | None = None
    target_parent: str | None = None
    meta: Meta | None = None
    data: str | bytes | None = None
    more_data: bool = False

    @property
    def text(self) -> str:
        """The data as text: bytes decoded as UTF-8 (undecodable bytes replaced), "" for none."""
        if isinstance(self.data, bytes):
            return self.data.decode("utf-8", "replace")
        return self.data or ""


@dataclass
class Cred:
    data: str
    type: str = "syncml:auth-md5"
    format: str = "b64"


@dataclass
class SyncHdr:
    session_id: str
    msg_id: int
    target: str
    source: str
    source_name: str | None = None  # LocName: the user name for MD5 credentials
    target_name: str | None = None
    resp_uri: str | None = None
    no_resp: bool = False
    cred: Cred | None = None
    meta: Meta | None = None
    protocol: Protocol = DM_1_2


@dataclass
class Alert:
    data: int
    items: list[Item] = field(default_factory=list)
    correlator: str | None = None
    no_resp: bool = False
    cmd_id: int = 0


@dataclass
class Add:
    items: list[Item]
    meta: Meta | None = None
    no_resp: bool = False
    cmd_id: int = 0


@dataclass
class Replace(Add):
    pass


@dataclass
class Delete(Add):
    pass


@dataclass
class Copy(Add):
    pass


@dataclass
class Get(Add):
    pass


@dataclass
class Exec:
    item: Item
    meta: Meta | None = None
    correlator: str | None = None
    no_resp: bool = False
    cmd_id: int = 0


@dataclass
class Results:
    cmd_ref: int
    items: list[Item]
    msg_ref: int | None = None
    meta: Meta | None = None
    target_refs: list[str] = field(default_factory=list)
    source_refs: list[str] = field(default_factory=list)
    cmd_id: int = 0


@dataclass
class Chal:
    meta: Meta


@dataclass
class Status:
    msg_ref: int
    cmd_ref: int
    cmd: str
    code: int
    target_refs: list[str] = field(default_factory=list)
    source_refs: list[str] = field(default_factory=list)
    chal: Chal | None = None
    items: list[Item] = field(default_factory=list)
    cmd_id: int = 0


@dataclass
class Atomic:
    commands: list[Command]
    meta: Meta | None = None
    no_resp: bool = False
    cmd_id: int = 0


@dataclass
class Sequence(Atomic):
    pass


Command = Union[Alert, Add, Exec, Results, Status, Atomic]
ITEM_COMMANDS: dict[str, type[Add]] = {"Add": Add, "Replace": Replace, "Delete": Delete, "Copy": Copy, "Get": Get}


def command_name(cmd: Command) -> str:
    return type(cmd).__name__


@dataclass
class Message:
    header: SyncHdr
    commands: list[Command] = field(default_factory=list)
    final: bool = True


# -- to the element tree -------------------------------------------------------------------------

def _leaf(tag: str, content: str | bytes | int, ns: str | None = None) -> Element:
    value = str(content) if isinstance(content, int) else content
    return Element(tag, content=value) if ns is None else Element(tag, content=value, ns=ns)


def _meta_element(meta: Meta) -> Element:
    fields = (("Format", meta.format), ("Type", meta.type), ("Mark", meta.mark), ("Size", meta.size),
              ("NextNonce", meta.next_nonce), ("MaxMsgSize", meta.max_msg_size), ("MaxObjSize", meta.max_obj_size))
    return Element("Meta", [_leaf(tag, v, METINF_NS) for tag, v in fields if v is not None])


def _loc(tag: str, uri: str, name: str | None = None) -> Element:
    e = Element(tag, [_leaf("LocURI", uri)])
    if name is not None:
        e.children.append(_leaf("LocName", name))
    return e


def _item_element(item: Item, binary: bool) -> Element:
    e = Element("Item")
    for tag, uri in (("Target", item.target), ("Source", item.source), ("SourceParent", item.source_parent),
                     ("TargetParent", item.target_parent)):
        if uri is not None:
            e.children.append(_loc(tag, uri))
    meta, data = item.meta, item.data
    if isinstance(data, bytes) and not binary:
        # XML cannot carry raw bytes: send them base64-encoded and say so in the item's Meta.
        meta = Meta(**vars(meta)) if meta else Meta()
        meta.format = "b64"
        data = base64.b64encode(data).decode()
    elif isinstance(data, bytes) and (meta is None or meta.format in (None, "b64")):
        # Opaque data is raw bytes: say "bin", as the receiver of the XML form learns too (a "b64"
        # here would tell it to decode the bytes once more).
        meta = Meta(**vars(meta)) if meta else Meta()
        meta.format = "bin"
    if meta is not None and not meta.empty():
        e.children.append(_meta_element(meta))
    if data is not None:
        e.children.append(_leaf("Data", data))
    if item.more_data:
        e.children.append(Element("MoreData"))
    return e


def _command_element(cmd: Command, binary: bool) -> Element:
    e = Element(command_name(cmd), [_leaf("CmdID", cmd.cmd_id)])
    add = e.children.append
    if isinstance(cmd, Status):
        add(_leaf("MsgRef", cmd.msg_ref))
        add(_leaf("CmdRef", cmd.cmd_ref))
        add(_leaf("Cmd", cmd.cmd))
        e.children += [_leaf("TargetRef", r) for r in cmd.target_refs]
        e.children += [_leaf("SourceRef", r) for r in cmd.source_refs]
        if cmd.chal is not None:
            add(Element("Chal", [_meta_element(cmd.chal.meta)]))
        add(_leaf("Data", cmd.code))
        e.children += [_item_element(i, binary) for i in cmd.items]
        return e
    if isinstance(cmd, Results):
        if cmd.msg_ref is not None:
            add(_leaf("MsgRef", cmd.msg_ref))
        add(_leaf("CmdRef", cmd.cmd_ref))
        if cmd.meta is not None:
            add(_meta_element(cmd.meta))
        e.children += [_leaf("TargetRef", r) for r in cmd.target_refs]
        e.children += [_leaf("SourceRef", r) for r in cmd.source_refs]
        e.children += [_item_element(i, binary) for i in cmd.items]
        return e
    if cmd.no_resp:
        add(Element("NoResp"))
    if isinstance(cmd, Alert):
        add(_leaf("Data", cmd.data))
        if cmd.correlator is not None:
            add(_leaf("Correlator", cmd.correlator))
        e.children += [_item_element(i, binary) for i in cmd.items]
        return e
    if cmd.meta is not None:
        add(_meta_element(cmd.meta))
    if isinstance(cmd, Exec):
        if cmd.correlator is not None:
            add(_leaf("Correlator", cmd.correlator))
        add(_item_element(cmd.item, binary))
    elif isinstance(cmd, Atomic):
        e.children += [_command_element(c, binary) for c in cmd.commands]
    else:
        e.children += [_item_element(i, binary) for i in cmd.items]
    return e


def to_element(msg: Message, *, binary: bool) -> Element:
    """The element tree of msg; binary says whether the encoding carries bytes (WBXML) or not (XML)."""
    h = msg.header
    hdr = Element("SyncHdr", [_leaf("VerDTD", h.protocol.dtd), _leaf("VerProto", h.protocol.proto),
                              _leaf("SessionID", h.session_id),
                              _leaf("MsgID", h.msg_id), _loc("Target", h.target, h.target_name),
                              _loc("Source", h.source, h.source_name)])
    if h.resp_uri is not None:
        hdr.children.append(_leaf("RespURI", h.resp_uri))
    if h.no_resp:
        hdr.children.append(Element("NoResp"))
    if h.cred is not None:
        hdr.children.append(Element("Cred", [_meta_element(Meta(format=h.cred.format, type=h.cred.type)),
                                             _leaf("Data", h.cred.data)]))
    if h.meta is not None and not h.meta.empty():
        hdr.children.append(_meta_element(h.meta))
    body = Element("SyncBody", [_command_element(c, binary) for c in msg.commands])
    if msg.final:
        body.children.append(Element("Final"))
    root = Element("SyncML", [hdr, body])
    if h.protocol is not DM_1_2:
        _to_namespace(root, h.protocol)
    return root


def _to_namespace(e: Element, protocol: Protocol) -> None:
    """Move the SyncML elements of a tree built for 1.2 into protocol's namespace."""
    if e.tag in _NOT_IN_1_1 and protocol is DM_1_1:
        raise CodecError(f"<{e.tag}> is not part of SyncML 1.1 (OMA DM 1.1.2)")
    if e.ns == SYNCML_NS:
        e.ns = protocol.namespace
    for c in e.children:
        _to_namespace(c, protocol)


# -- from the element tree -----------------------------------------------------------------------
# (Each element's children are looked at once, into a dict of the first of each tag: the lookups the DTD's
# structure asks for are many, and both sides read every message of a session.)

def _kids(e: Element) -> dict[str, Element]:
    """e's children by tag: the first of each, as Element.child finds it."""
    kids: dict[str, Element] = {}
    for c in e.children:
        kids.setdefault(c.tag, c)
    return kids


def _str(e: Element | None) -> str | None:
    """The text of e (as Element.text reads it), None for no element."""
    if e is None:
        return None
    content = e.content
    if content is None:
        return ""
    if isinstance(content, bytes):
        try:
            return content.decode()
        except UnicodeDecodeError:
            raise CodecError(f"<{e.tag}> holds bytes that are not UTF-8 text") from None
    return content


def _need(kids: dict[str, Element], parent: str, tag: str) -> str:
    value = _str(kids.get(tag))
    if value is None:
        raise CodecError(f"<{parent}> lacks <{tag}>")
    return value.strip()


# ASCII digits only (str.isdigit also takes "²", which int() refuses), and few enough of them that
# int() never meets its digit limit: every number in a DM message fits in 64 bits.
_NUMBER = re.compile(r"-?[0-9]{1,19}")


def _int(text: str | None, what: str) -> int:
    # (int() takes less around a number than str.strip() removes, U+001F for one: convert what was checked.)
    digits = None if text is None else text.strip()
    if digits is None or not _NUMBER.fullmatch(digits):
        raise CodecError(f"{what} is not a number: {text!r}")
    return int(digits)


def _opt_int(e: Element | None) -> int | None:
    return None if e is None else _int(_str(e), f"<{e.tag}>")


def _meta(e: Element | None) -> Meta | None:
    if e is None:
        return None
    # Some clients put MetInf elements in the SyncML namespace; the tags are unambiguous, so accept them.
    # (Most fields are absent: they are looked up inline rather than through a call each.)
    get = _kids(e).get
    fmt, typ, mark, size, nonce, max_msg, max_obj = (get("Format"), get("Type"), get("Mark"), get("Size"),
                                                     get("NextNonce"), get("MaxMsgSize"), get("MaxObjSize"))
    return Meta(None if fmt is None else _str(fmt), None if typ is None else _str(typ),
                None if mark is None else _str(mark), None if size is None else _opt_int(size),
                None if nonce is None else _nonce(nonce), None if max_msg is None else _opt_int(max_msg),
                None if max_obj is None else _opt_int(max_obj))


def _nonce(e: Element | None) -> str | None:
    """NextNonce as base64 text. WBXML peers send it as opaque: the base64 text, or (libwbxml and
    handsets) the raw nonce bytes, which are then base64-encoded here."""
    if e is None:
        return None
    if not isinstance(e.content, bytes):
        return e.content or ""
    try:
        text = e.content.decode("ascii")
        base64.b64decode(text, validate=True)
        return text
    except (UnicodeDecodeError, binascii.Error, ValueError):
        return base64.b64encode(e.content).decode()


def _loc_uri(e: Element | None) -> str | None:
    if e is None:
        return None
    for c in e.children:
        if c.tag == "LocURI":
            return (_str(c) or "").strip()
    raise CodecError(f"<{e.tag}> lacks <LocURI>")


def _item(e: Element) -> Item:
    k = _kids(e)
    get = k.get
    meta = _meta(get("Meta"))
    data_el = get("Data")
    data: str | bytes | None = None
    if data_el is not None:
        if data_el.children:
            raise CodecError("structured <Data> is not used in OMA DM")
        data = data_el.content if data_el.content is not None else ""
    if meta is not None and meta.format == "b64" and data is not None:
        # Base64 text, inline or (as libwbxml sends every Add/Replace Data) opaque ASCII.
        try:
            text = data.decode("ascii") if isinstance(data, bytes) else data
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise CodecError("an item's b64 data is not base64") from None
        meta.format = "bin"  # the data is raw bytes from here on
    target, source = get("Target"), get("Source")
    source_parent, target_parent = get("SourceParent"), get("TargetParent")
    return Item(None if target is None else _loc_uri(target), None if source is None else _loc_uri(source),
                None if source_parent is None else _loc_uri(source_parent),
                None if target_parent is None else _loc_uri(target_parent), meta, data, "MoreData" in k)


def _items(e: Element) -> list[Item]:
    return [_item(i) for i in e.children if i.tag == "Item"]


def _refs(e: Element, tag: str) -> list[str]:
    return [_str(r) or "" for r in e.children if r.tag == tag]


def _command(e: Element) -> Command:
    k = _kids(e)
    get = k.get
    cmd_id = _int(_str(get("CmdID")), f"<{e.tag}> CmdID")
    no_resp = "NoResp" in k
    meta = _meta(get("Meta"))
    if e.tag == "Status":
        chal = get("Chal")
        return Status(_int(_str(get("MsgRef")), "Status MsgRef"), _int(_str(get("CmdRef")), "Status CmdRef"),
                      _need(k, e.tag, "Cmd"), _int(_str(get("Data")), "Status code"),
                      _refs(e, "TargetRef"), _refs(e, "SourceRef"),
                      Chal(_meta(chal.child("Meta")) or Meta()) if chal is not None else None, _items(e), cmd_id)
    if e.tag == "Results":
        return Results(_int(_str(get("CmdRef")), "Results CmdRef"), _items(e), _opt_int(get("MsgRef")), meta,
                       _refs(e, "TargetRef"), _refs(e, "SourceRef"), cmd_id)
    if e.tag == "Alert":
        return Alert(_int(_str(get("Data")), "Alert code"), _items(e), _str(get("Correlator")), no_resp, cmd_id)
    if e.tag == "Exec":
        items = _items(e)
        if len(items) != 1:
            raise CodecError("<Exec> takes exactly one <Item>")
        return Exec(items[0], meta, _str(get("Correlator")), no_resp, cmd_id)
    if e.tag in ("Atomic", "Sequence"):
        inner = [_command(c) for c in e.children if c.tag not in ("CmdID", "NoResp", "Meta")]
        if not inner:
            raise CodecError(f"<{e.tag}> holds no commands")
        return (Atomic if e.tag == "Atomic" else Sequence)(inner, meta, no_resp, cmd_id)
    kind = ITEM_COMMANDS.get(e.tag)
    if kind is None:
        raise CodecError(f"<{e.tag}> is not an OMA DM command")
    items = _items(e)
    if not items:
        raise CodecError(f"<{e.tag}> holds no <Item>")
    return kind(items, meta, no_resp, cmd_id)


def from_element(root: Element) -> Message:
    """The message an element tree holds; CodecError if it is not SyncML DM."""
    if root.tag != "SyncML":
        raise CodecError(f"the root element is <{root.tag}>, not <SyncML>")
    hdr, body = root.child("SyncHdr"), root.child("SyncBody")
    if hdr is None or body is None:
        raise CodecError("<SyncML> needs <SyncHdr> and <SyncBody>")
    k = _kids(hdr)
    get = k.get
    protocol = PROTOCOLS.get((_need(k, "SyncHdr", "VerDTD"), _need(k, "SyncHdr", "VerProto")))
    if protocol is None:
        raise CodecError(f"unsupported protocol {_str(get('VerProto'))!r} / DTD {_str(get('VerDTD'))!r}")
    target, source = get("Target"), get("Source")
    if target is None or source is None:
        raise CodecError("<SyncHdr> needs <Target> and <Source>")
    cred_el = get("Cred")
    cred = None
    if cred_el is not None:
        cmeta = _meta(cred_el.child("Meta")) or Meta()
        cred = Cred(_need(_kids(cred_el), "Cred", "Data"), cmeta.type or "syncml:auth-basic", cmeta.format or "b64")
    header = SyncHdr(_need(k, "SyncHdr", "SessionID"), _int(_str(get("MsgID")), "MsgID"), _loc_uri(target) or "",
                     _loc_uri(source) or "", source.text("LocName"), target.text("LocName"), _str(get("RespURI")),
                     "NoResp" in k, cred, _meta(get("Meta")), protocol)
    commands = [_command(c) for c in body.children if c.tag != "Final"]
    return Message(header, commands, body.child("Final") is not None)
