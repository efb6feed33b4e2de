"""What both ends of a DM session share.

An Endpoint numbers messages and commands, remembers what it sent so that Status and Results
can be matched to it, packs queued commands into messages no larger than the peer's MaxMsgSize
(a package spills over several messages when it must; an item too large for one message goes
out in MoreData chunks), and reassembles chunked items it receives."""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, replace
from typing import Iterator

from fotadelta.dm import codec
from fotadelta.dm.codec import Encoding
from fotadelta.dm.model import (DM_1_2, Add, Alert, Atomic, Command, Cred, Exec, Item, Message, Meta, Protocol, Results,
                                Status, SyncHdr, command_name)

DEFAULT_PEER_MAX_MSG = 16 * 1024  # until the peer tells its own
MIN_CHUNK = 64  # below this, start the chunk in the next message instead
SLACK = 32  # bytes kept free for the numbers that grow when a message is finished

ALERT_NEXT_MESSAGE = 1222
ALERT_SESSION_ABORT = 1223
ALERT_NO_END_OF_DATA = 1225


class ChunkError(Exception):
    """A chunked item went wrong: the status code to answer it with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def walk(commands: list[Command]) -> Iterator[Command]:
    """Every command, including those inside Atomic and Sequence, parents first."""
    for c in commands:
        yield c
        if isinstance(c, Atomic):
            yield from walk(c.commands)


def items_of(cmd: Command) -> list[Item]:
    if isinstance(cmd, Exec):
        return [cmd.item]
    if isinstance(cmd, (Add, Results, Alert, Status)):
        return cmd.items
    return []


def status_for(cmd: Command, msg_ref: int, code: int, *, items: list[Item] | None = None) -> Status:
    """The Status answering cmd, with its Target/Source references."""
    targets = [i.target for i in items_of(cmd) if i.target is not None]
    sources = [i.source for i in items_of(cmd) if i.source is not None]
    return Status(msg_ref, cmd.cmd_id, command_name(cmd), code, targets, sources, items=items or [])


@dataclass
class _Chunked:
    kind: type
    key: tuple[str | None, str | None]
    first: Item
    parts: list[bytes]


class Endpoint:
    """One side's view of a session's message flow."""

    def __init__(self, *, session_id: str, local: str, remote: str, encoding: Encoding, max_msg_size: int,
                 max_obj_size: int, local_name: str | None = None, protocol: Protocol = DM_1_2) -> None:
        self.session_id, self.local, self.remote, self.local_name = session_id, local, remote, local_name
        self.encoding, self.protocol = encoding, protocol
        self.resp_uri: str | None = None  # named in every message we send: where the peer's next one goes
        self.max_msg_size, self.max_obj_size = max_msg_size, max_obj_size
        self.peer_max_msg = DEFAULT_PEER_MAX_MSG
        self.peer_max_obj: int | None = None
        self.peer_declared_max_msg: int | None = None  # as the peer said it (peer_max_msg is at least 1024)
        self.msg_id = 0
        self.queue: deque[Command] = deque()
        self.sent: dict[tuple[int, int], Command] = {}
        self._chunk: _Chunked | None = None
        self._refused: tuple[type, tuple[str | None, str | None]] | None = None  # an object refused mid-way
        self._rest: Command | None = None  # the queued remainder of an item being sent in chunks
        # Chunk copies by id -> (the copy, kept alive so its id stays unique; the command queued by the
        # caller): the peer's Status and Results for any chunk answer the caller's command.
        self._origin: dict[int, tuple[Command, Command]] = {}

    def __getstate__(self) -> dict[str, object]:
        # (For a server keeping a session between messages, server/livestate.py: _origin is keyed by
        # id(), which a copy does not keep.)
        state = dict(self.__dict__)
        state["_origin"] = list(self._origin.values())
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        origin = state.pop("_origin")
        self.__dict__.update(state)
        self._origin = {id(copy): (copy, cmd) for copy, cmd in origin}  # type: ignore[attr-defined]

    # -- receiving -------------------------------------------------------------------------------

    def note_header(self, hdr: SyncHdr) -> None:
        """Take the peer's message limits and reply address from its header."""
        if hdr.meta is not None:
            if hdr.meta.max_msg_size:
                self.peer_max_msg = max(1024, hdr.meta.max_msg_size)
                self.peer_declared_max_msg = hdr.meta.max_msg_size
            if hdr.meta.max_obj_size:
                self.peer_max_obj = hdr.meta.max_obj_size
        if hdr.resp_uri:
            self.remote = hdr.resp_uri

    def answered(self, msg_ref: int, cmd_ref: int) -> Command | None:
        """The command of ours that a Status or Results refers to (once)."""
        return self.sent.pop((msg_ref, cmd_ref), None)

    def refused(self, cmd: Command | None, code: int) -> None:
        """The peer answered cmd with code: if that refuses an object we are sending in chunks (413, 424,
        ...), its remaining chunks are not sent."""
        rest = self._rest
        if code < 300 or cmd is None or rest is None or self._origin.get(id(rest), (rest, rest))[1] is not cmd:
            return
        for i, queued in enumerate(self.queue):
            if queued is rest:  # (by identity: an equal command queued later is another command)
                del self.queue[i]
                break
        self._origin.pop(id(rest), None)
        self._rest = None

    def take(self, cmd: Command, msg_id: int) -> tuple[Command | None, list[Status]]:
        """Run an incoming command through chunk reassembly.

        Returns the command to process (whole, or None while chunks are still coming) and the
        statuses to send now (213 per chunk, 424 size mismatch, 413 too large)."""
        items = items_of(cmd)
        chunk = self._chunk
        key = (items[0].target, items[0].source) if len(items) == 1 else None
        if self._refused is not None:
            if self._refused == (type(cmd), key):
                # The rest of an object we refused: refuse each chunk, or its tail would pass as an object.
                if not items[0].more_data:
                    self._refused = None
                return None, [status_for(cmd, msg_id, 413)]
            self._refused = None
        if chunk is not None and (key != chunk.key or type(cmd) is not chunk.kind):
            # A new item before the last chunk: the unfinished object is dropped.
            self._chunk = None
            self.queue.appendleft(Alert(ALERT_NO_END_OF_DATA, [Item(target=chunk.key[0], source=chunk.key[1])]))
            chunk = None
        if key is None or not isinstance(cmd, (Add, Results)) or (chunk is None and not items[0].more_data):
            return cmd, []
        item = items[0]
        data = _bytes(item.data)
        if chunk is None:
            declared = item.meta.size if item.meta else None
            if declared is not None and declared > self.max_obj_size:
                self._refused = (type(cmd), key) if item.more_data else None
                return None, [status_for(cmd, msg_id, 413)]
            chunk = self._chunk = _Chunked(type(cmd), key, item, [])
        chunk.parts.append(data)
        total = sum(map(len, chunk.parts))
        if total > self.max_obj_size:
            self._chunk = None
            self._refused = (type(cmd), key) if item.more_data else None
            return None, [status_for(cmd, msg_id, 413)]
        if item.more_data:
            return None, [status_for(cmd, msg_id, 213)]
        self._chunk = None
        declared = chunk.first.meta.size if chunk.first.meta else None
        if declared is not None and declared != total:
            return None, [status_for(cmd, msg_id, 424)]
        whole = replace(chunk.first, data=b"".join(chunk.parts), more_data=False)
        done = replace(cmd, items=[whole])
        return done, []

    # -- sending ---------------------------------------------------------------------------------

    def push(self, *commands: Command) -> None:
        self.queue.extend(commands)

    def compose(self, statuses: list[Status], *, cred: Cred | None = None, final: bool = True) -> tuple[Message, bytes]:
        """The next message: statuses first, then as many queued commands as fit.

        `final` is cleared when queued commands remain (the package continues in the next
        message). Returns the message and its encoding."""
        self.msg_id += 1
        hdr = SyncHdr(self.session_id, self.msg_id, self.remote, self.local, source_name=self.local_name, cred=cred,
                      meta=Meta(max_msg_size=self.max_msg_size, max_obj_size=self.max_obj_size), protocol=self.protocol,
                      resp_uri=self.resp_uri)
        ids = itertools.count(1)
        body: list[Command] = []
        for s in statuses:
            s.cmd_id = next(ids)
            body.append(s)
        if self.queue:
            # Most messages take every queued command: one encoding then measures the message and is the message
            # (every shorter message fits when the whole one does, so the loop below would take them all too).
            for cmd in self.queue:
                _number(cmd, ids)
            whole = Message(hdr, body + list(self.queue), final)
            data = codec.encode(whole, self.encoding)
            if len(data) + SLACK <= self.peer_max_msg:
                self.queue.clear()
                return self._sent(whole), data
            ids = itertools.count(len(body) + 1)
        sent_any = False
        while self.queue:
            cmd = self.queue[0]
            _number(cmd, ids)
            size = len(codec.encode(Message(hdr, body + [cmd], final=False), self.encoding))
            if size + SLACK <= self.peer_max_msg:
                body.append(cmd)
                self.queue.popleft()
                sent_any = True
                continue
            head = self._split_items(hdr, body, cmd) or self._split(hdr, body, cmd)
            if head is not None:
                body.append(head)
                sent_any = True
            elif not sent_any and self._chunk_size(hdr, [], cmd) is None and \
                    len(codec.encode(Message(hdr, [cmd], final=False), self.encoding)) + SLACK > self.peer_max_msg:
                # Cannot be split and will never fit, even alone: send it whole and let the peer refuse it.
                # (Anything that fits or splits in a message of its own waits for the next message.)
                body.append(self.queue.popleft())
            break
        msg = self._sent(Message(hdr, body, final and not self.queue))
        return msg, codec.encode(msg, self.encoding)

    def _sent(self, msg: Message) -> Message:
        """Remember the commands of msg, going out now, for the peer's answers to them."""
        for c in walk(msg.commands):
            if not isinstance(c, Status):
                copy_and_origin = self._origin.pop(id(c), None)
                self.sent[(self.msg_id, c.cmd_id)] = c if copy_and_origin is None else copy_and_origin[1]
        return msg

    def _chunk_size(self, hdr: SyncHdr, body: list[Command], cmd: Command) -> int | None:
        """How many bytes of cmd's single item fit as a first chunk after body; None if it cannot be split."""
        if not isinstance(cmd, (Add, Results)) or len(cmd.items) != 1 or cmd.items[0].data is None:
            return None
        item = cmd.items[0]
        probe = replace(cmd, items=[replace(item, data=b"", meta=self._chunk_meta(cmd), more_data=True)])
        room = self.peer_max_msg - SLACK - len(codec.encode(Message(hdr, body + [probe], final=False), self.encoding))
        # XML carries bytes as base64: 4 characters for every 3 bytes.
        n = room * 3 // 4 - 4 if self.encoding is Encoding.XML else room - 5
        return None if n < MIN_CHUNK or n >= len(_bytes(item.data)) else n

    def _chunk_meta(self, cmd: Add | Results) -> Meta:
        item = cmd.items[0]
        meta = replace(item.meta) if item.meta else Meta()
        if cmd is not self._rest:
            meta.size = len(_bytes(item.data))  # Size goes in the first chunk only
        return meta

    def _split_items(self, hdr: SyncHdr, body: list[Command], cmd: Command) -> Command | None:
        """Send as many of cmd's items as fit now, as a command of its own; keep the rest queued (a Results of a
        whole subtree, say). None if not even one item fits here."""
        if not isinstance(cmd, (Add, Results)) or len(cmd.items) < 2 or any(i.more_data for i in cmd.items):
            return None

        def fits(k: int) -> bool:
            probe = replace(cmd, items=cmd.items[:k])
            return len(codec.encode(Message(hdr, body + [probe], final=False), self.encoding)) + SLACK <= \
                self.peer_max_msg

        lo, hi = 0, len(cmd.items) - 1  # the most items that fit lie in [lo, hi]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        if lo == 0:
            return None
        head = replace(cmd, items=cmd.items[:lo])
        rest = replace(cmd, items=cmd.items[lo:], cmd_id=0)
        origin = self._origin.pop(id(cmd), (cmd, cmd))[1]
        self._origin[id(head)], self._origin[id(rest)] = (head, origin), (rest, origin)
        self.queue[0] = rest
        return head

    def _split(self, hdr: SyncHdr, body: list[Command], cmd: Command) -> Command | None:
        """Send the first chunk of cmd's single large item now, keep the rest queued."""
        n = self._chunk_size(hdr, body, cmd)
        if n is None:
            return None
        assert isinstance(cmd, (Add, Results))
        item, meta = cmd.items[0], self._chunk_meta(cmd)
        data = _bytes(item.data)
        head = replace(cmd, items=[replace(item, data=data[:n], meta=meta, more_data=True)])
        rest_meta = replace(meta, size=None) if meta else None
        rest = replace(cmd, items=[replace(item, data=data[n:], meta=rest_meta, more_data=False)],
                       cmd_id=0)
        origin = self._origin.pop(id(cmd), (cmd, cmd))[1]
        self._origin[id(head)], self._origin[id(rest)] = (head, origin), (rest, origin)
        self.queue[0] = self._rest = rest
        return head


def _bytes(data: str | bytes | None) -> bytes:
    return data.encode() if isinstance(data, str) else data or b""


def _number(cmd: Command, ids: Iterator[int]) -> None:
    for c in walk([cmd]):
        c.cmd_id = next(ids)
