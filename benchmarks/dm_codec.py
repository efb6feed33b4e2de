#!/usr/bin/env python3
"""CPU time of the SyncML DM XML codec per message, over the messages of real DM sessions.

    python benchmarks/dm_codec.py --capture DIR     # run dm_sessions.py in process, keep every XML message it reads
    python benchmarks/dm_codec.py DIR               # decode each message, encode each decoded message: CPU us each

Times are process CPU time, the best of --repeat rounds over all messages (wall time is useless on a loaded
machine). For instruction counts, run the measuring form under `valgrind --tool=callgrind` with --repeat 3 and
with --repeat 0, and divide the difference by 3 x the number of messages."""

from __future__ import annotations

import argparse
import runpy
import sys
import time
from pathlib import Path

from fotadelta.dm import codec, xml
from fotadelta.dm.codec import Encoding
from fotadelta.dm.element import Element

HERE = Path(__file__).resolve().parent
SESSIONS = ["--devices", "4", "--updates-per-device", "3", "--bootstrap-rounds", "1", "--min-samples", "0"]


def capture(out: Path) -> None:
    """Every XML message decoded (by the server or by a device) during a dm_sessions.py run, once each."""
    seen: set[bytes] = set()
    decode = xml.decode

    def keep(data: bytes, *, max_size: int = 1 << 20, max_decoded: int | None = None) -> Element:
        seen.add(bytes(data))
        return decode(data, max_size=max_size, max_decoded=max_decoded)

    xml.decode = keep  # (codec.decode reaches it through the module)
    sys.argv = ["dm_sessions.py", *SESSIONS, "--out", str(out / "sessions")]
    sys.path.insert(0, str(HERE))
    try:
        runpy.run_path(str(HERE / "dm_sessions.py"), run_name="__main__")
    except SystemExit as exc:
        if exc.code:
            raise
    finally:
        xml.decode = decode
    messages = out / "messages"
    messages.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(sorted(seen)):
        (messages / f"{i:04d}.xml").write_bytes(data)
    print(f"{len(seen)} messages in {messages}")


def measure(directory: Path, repeat: int) -> None:
    messages = [p.read_bytes() for p in sorted((directory / "messages").glob("*.xml"))]
    if not messages:
        raise SystemExit(f"no messages in {directory / 'messages'}: run with --capture first")
    models = [codec.decode(m, Encoding.XML) for m in messages]

    def decode_all() -> None:
        for m in messages:
            codec.decode(m, Encoding.XML)

    def encode_all() -> None:
        for msg in models:
            codec.encode(msg, Encoding.XML)

    line = [f"{len(messages)} messages, mean {sum(map(len, messages)) // len(messages)} bytes"]
    for name, run in (("decode", decode_all), ("encode", encode_all)):
        best = float("inf")
        for _ in range(repeat):
            start = time.process_time()
            run()
            best = min(best, time.process_time() - start)
        if repeat:
            line.append(f"{name} {best / len(messages) * 1e6:.1f} us CPU/message")
    print("; ".join(line))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path, help="where the captured messages are (DIR/messages)")
    ap.add_argument("--capture", action="store_true", help="capture the messages of a dm_sessions.py run into DIR")
    ap.add_argument("--repeat", type=int, default=20, help="rounds over all messages; the best counts (default 20)")
    args = ap.parse_args()
    if args.capture:
        capture(args.dir)
    else:
        measure(args.dir, args.repeat)


if __name__ == "__main__":
    main()
