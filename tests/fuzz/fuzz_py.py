"""Atheris (libFuzzer for Python) targets for the parsers that read hostile input in Python.

    python tests/fuzz/fuzz_py.py TARGET [libFuzzer flags] [CORPUS_DIR ...]
    python tests/fuzz/fuzz_py.py --seeds DIR          # writes seed inputs for every target to DIR/TARGET/

Targets and the only exceptions each may raise (anything else is a finding, and so is a crash):

| target  | what runs                                                             | documented error |
|---------|-----------------------------------------------------------------------|------------------|
| xml     | `dm.codec.decode` (XML), limits as the server sets them               | CodecError       |
| wbxml   | `dm.codec.decode` (WBXML), likewise                                   | CodecError       |
| package | `package.parse`, `package.verify` and the update agent's `install`    | PackageError     |
| plain   | `delta.format.Patch.parse`, `delta.info`, `fotadelta.apply`           | PatchError       |
| inplace | `InplaceHeader.parse`, `inplace.info`, `inplace.apply` (C patcher)     | PatchError       |
| push    | `server.push.read_answer`: a device's answer to an HTTP push, in chunks | PushError        |

The in-place target applies each input twice: as it is, and resealed with the digests of the old
image it is given and of its own bytes, so that mutations reach the patcher's decoding and journal
instead of stopping at the digest checks.

tests/fuzz/run.sh runs each target for a while after the C targets."""

from __future__ import annotations

import dataclasses
import random
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["fotadelta"]):
    import fotadelta
    from fotadelta import agent, inplace, package, sim
    from fotadelta.delta.format import Patch
    from fotadelta.dm.codec import Encoding, decode, encode
    from fotadelta.dm.element import CodecError
    from fotadelta.dm.model import Alert, Item, Message, Meta, Replace, Status, SyncHdr
    from fotadelta.errors import PackageError, PatchError
    from fotadelta.inplace.format import InplaceHeader, digest
    from fotadelta.package import signing
    from fotadelta.server.push import PushError, read_answer

MAX_MSG, MAX_DECODED = 64 * 1024, 256 * 1024  # the server's defaults
MAX_OLD = 1 << 20  # the largest old image an in-place input may ask the harness to make
_KEY = signing.generate()
_TRUST = signing.TrustStore.of([_KEY.public_key()])
_rng = random.Random(1)
_OLD = _rng.randbytes(6000)
_NEW = bytearray(_OLD)
_NEW[1000:1000] = _rng.randbytes(300)
_NEW[4000:4016] = bytes(16)
# Every 16th word of the old image 0x1C4 higher: a delta whose differences are sums.
_MOVED = bytearray(_OLD)
for _at in range(0, len(_MOVED) - 3, 16):
    _MOVED[_at:_at + 4] = ((int.from_bytes(_MOVED[_at:_at + 4], "little") + 0x1C4) & 0xFFFFFFFF).to_bytes(4, "little")


def _xml(data: bytes) -> None:
    try:
        decode(data, Encoding.XML, max_size=MAX_MSG, max_decoded=MAX_DECODED)
    except CodecError:
        pass


def _wbxml(data: bytes) -> None:
    try:
        decode(data, Encoding.WBXML, max_size=MAX_MSG, max_decoded=MAX_DECODED)
    except CodecError:
        pass


def _package(data: bytes) -> None:
    try:
        package.parse(data)
    except PackageError:
        pass
    try:
        package.verify(data, _TRUST)
    except PackageError:
        pass
    device = agent.Device.with_image(_OLD, make="Acme", model="S1", version="1.0", trust=_TRUST,
                                     nvm=sim.handoff(sim.Sim()), block_size=1024)
    agent.install(device, data)  # (answers with a FUMO code; raises nothing)


def _plain(data: bytes) -> None:
    try:
        Patch.parse(data)
        fotadelta.delta.info(data)
    except PatchError:
        pass
    try:
        fotadelta.apply(_OLD, data)
    except PatchError:
        pass


def _inplace(data: bytes) -> None:
    try:
        h = InplaceHeader.parse(data)
        inplace.info(data)
    except PatchError:
        return
    if h.old_size > MAX_OLD:
        return
    old = (_OLD * (h.old_size // len(_OLD) + 1))[:h.old_size]
    resealed = dataclasses.replace(h, old_digest=digest(old)).seal(data[h.header_len:])
    for patch in (data, resealed):
        try:
            inplace.apply(old, patch)
        except PatchError:
            pass


def _push(data: bytes) -> None:
    # The first byte cuts the rest into chunks as a socket might deliver them (1-64 bytes each).
    step = data[0] % 64 + 1 if data else 1
    chunks = [data[i:i + step] for i in range(1, len(data), step)]
    chunks.reverse()
    try:
        read_answer(lambda _size: chunks.pop() if chunks else b"")
    except PushError:  # (_Unanswered, for no answer at all, is one)
        pass


TARGETS = {"xml": _xml, "wbxml": _wbxml, "package": _package, "plain": _plain, "inplace": _inplace,
           "push": _push}


def seeds(out: Path) -> None:
    """Valid inputs of every target, for the fuzzer to start from."""
    hdr = SyncHdr("1F", 1, "http://server/dm", "IMEI:490154203237518", source_name="IMEI:490154203237518",
                  meta=Meta(max_msg_size=16384))
    messages = [Message(hdr, [Alert(1201), Replace([Item(source="./DevInfo/Man", data="Acme"),
                                                    Item(source="./DevInfo/Ext/Bin", data=b"\x00\x01\xff",
                                                         meta=Meta(format="bin"))])]),
                Message(hdr, [Status(1, 0, "SyncHdr", 212), Alert(1226, [Item(source="./FUMO/x", data="200",
                                                                              meta=Meta(type="t", format="int"))],
                                                                   correlator="c")], final=False)]
    plain = fotadelta.diff(_OLD, bytes(_NEW))
    ip = inplace.diff(_OLD, bytes(_NEW), block_size=1024)
    ip_stored = inplace.diff(_OLD, bytes(_NEW), block_size=1024, codec="stored")
    made = {
        "xml": [encode(m, Encoding.XML) for m in messages],
        "wbxml": [encode(m, Encoding.WBXML) for m in messages],
        "plain": [plain, fotadelta.diff(b"", _OLD[:500]), fotadelta.diff(_OLD[:700], _OLD[:700]),
                  fotadelta.diff(_OLD, bytes(_MOVED))],
        "inplace": [ip, ip_stored],
        "push": [b"\x07HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n",
                 b"\x3fHTTP/1.1 404 Not Found\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n"
                 b"4\r\ngone\r\n0\r\n\r\n", b"\x00HTTP/1.0 204 No Content\r\n\r\n"],
        "package": [package.pack(_OLD, bytes(_NEW), _KEY, make="Acme", model="S1", from_version="1.0",
                                 to_version="1.1", in_place=True, block_size=1024, security_version=2),
                    package.pack(b"", _OLD[:900], _KEY, make="Acme", model="S1", from_version="*", to_version="1.2",
                                 full_image=True)],
    }
    for target, inputs in made.items():
        (out / target).mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(inputs):
            (out / target / f"seed-{i}").write_bytes(data)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        seeds(Path(sys.argv[2]))
        return
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer flags] [corpus ...] | --seeds DIR")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
