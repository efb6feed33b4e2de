"""What hostile traffic of issue 11 costs a real `fotadelta serve`, and what it leaves behind.

Starts `fotadelta serve` as its own process on loopback (SQLite in a temporary directory), then
posts the WBXML amplification attack: a message within the server's 64 KiB limit whose string
table holds one 32 KiB string that the SyncHdr Source references again and again (before the
limits it decoded to about 500 MiB); `--parallel N` sends N at once, as the issue's "three at
once" did. Then `--strangers N` first messages from unknown DevIds (without credentials, with
a wrong nonce, with a guessed password, in turn). Reports the HTTP status and time of each
amplification answer, the statuses the strangers got, the server's resident memory before and its
peak (VmHWM) after, and whether the database changed (row counts and file size).

    python benchmarks/hostile.py [--parallel 3] [--refs 16000] [--strangers 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from fotadelta.dm import auth
from fotadelta.dm.codec import Encoding, decode, encode
from fotadelta.dm.model import Alert, Item, Message, Replace, Status, SyncHdr

WBXML = Encoding.WBXML.content_type


def attack(refs: int, string: int = 32 * 1024 - 1) -> bytes:
    """The SyncHdr Source as `refs` string-table references to one `string`-byte string."""
    body = encode(Message(SyncHdr("1", 1, "http://server/dm", "@@SOURCE@@"), [Alert(1201)]), Encoding.WBXML)
    header = bytes([0x02, 0xA4, 0x01, 0x6A])  # WBXML 1.2, SyncML 1.2, UTF-8
    assert body.startswith(header + b"\x00")
    marker = b"\x03@@SOURCE@@\x00"
    body = body.replace(marker, b"\x83\x00" * refs)  # STR_T 0, again and again
    table = b"A" * string + b"\0"
    return header + _mb(len(table)) + table + body[len(header) + 1:]


def stranger(i: int) -> bytes:
    """Package 1 of an unknown device: no credentials, a digest over a wrong nonce, or a guessed password."""
    dev_id = f"IMEI:{990000000000000 + i}"
    cred = None if i % 3 == 0 else auth.credential("md5", dev_id, "guess" if i % 3 == 2 else "x", b"wrong nonce")
    hdr = SyncHdr(f"{i & 0xFFFF:X}", 1, "http://server/dm", dev_id, source_name=dev_id, cred=cred)
    return encode(Message(hdr, [Alert(1201), Replace([Item(source="./DevInfo/Man", data="Evil")])]), Encoding.XML)


def _mb(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def _database(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("devices", "sessions", "jobs", "events", "packages")}
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))  # with -wal and -shm
    return {**counts, "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", type=int, default=16_000)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--strangers", type=int, default=0)
    args = parser.parse_args()
    message = attack(args.refs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fotadelta = Path(sys.executable).with_name("fotadelta")
    with tempfile.TemporaryDirectory(prefix="hostile-wbxml-") as tmp:
        server = subprocess.Popen([str(fotadelta), "serve", "--data", tmp, "--port", str(port)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            url = f"http://127.0.0.1:{port}/dm"
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/portal/none", timeout=1)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("the server did not start")
                    time.sleep(0.1)
            db = Path(tmp) / "fotadelta.db"
            before_db, before_mem = _database(db), _memory(server.pid)

            def one(_: int) -> tuple[int, float]:
                started = time.perf_counter()
                r = httpx.post(url, content=message, headers={"content-type": WBXML}, timeout=120)
                return r.status_code, time.perf_counter() - started

            with ThreadPoolExecutor(args.parallel) as pool:
                answers = list(pool.map(one, range(args.parallel)))
            strangers: dict[str, int] = {}
            with httpx.Client(timeout=30) as client:
                for i in range(args.strangers):
                    r = client.post(url, content=stranger(i), headers={"content-type": Encoding.XML.content_type})
                    key = str(r.status_code)
                    if r.status_code == 200:
                        reply = decode(r.content, Encoding.XML)
                        key += " SyncHdr " + str(next(c.code for c in reply.commands if isinstance(c, Status)))
                    strangers[key] = strangers.get(key, 0) + 1
            after_mem, after_db = _memory(server.pid), _database(db)
        finally:
            server.terminate()
            server.wait(10)
    print(json.dumps({
        "message_bytes": len(message), "string_table_refs": args.refs,
        "decoded_if_unbounded_mib": args.refs * (32 * 1024 - 1) / 2**20, "parallel": args.parallel,
        "answers": [{"status": code, "seconds": round(seconds, 4)} for code, seconds in answers],
        "strangers": args.strangers, "stranger_answers": strangers,
        "server_rss_before_mib": round(before_mem["VmRSS"] / 1024, 1),
        "server_peak_after_mib": round(after_mem["VmHWM"] / 1024, 1),
        "server_growth_mib": round((after_mem["VmHWM"] - before_mem["VmRSS"]) / 1024, 1),
        "database_before": before_db, "database_after": after_db,
        "database_unchanged": before_db == after_db,
    }, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
