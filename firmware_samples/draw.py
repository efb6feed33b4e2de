#!/usr/bin/env python3
"""Draw the catalogue's `drawn` set: firmware pairs picked at random, by a seed, not by hand.

Pairs picked by people flatter the engine they were picked for. This draw takes every build
the catalogue pins in two or more versions (a package and its Debian architecture or wheel
tag), picks two of its versions that follow each other at random, and then up to
--per-build files at random among those both archives hold under the same path that:

- are regular files of MIN_SIZE to MAX_SIZE bytes in both, and differ;
- are binary (a NUL byte in their first 8 KiB: text and scripts have none);
- are not documentation, translations, compressed streams, pictures or compiled Python
  (EXCLUDED_DIRS, EXCLUDED_MAGIC, EXCLUDED_SUFFIXES): a device is never updated with them;
- are no image of another set (by sha256), nor the same pair of images as another file
  (aliases: the first name is kept).

The draw is deterministic for a seed and a catalogue; archives come from the fetcher's cache
(downloaded and checked when missing). --update rewrites the catalogue's drawn block between
its markers; without it the entries are printed.
"""

from __future__ import annotations

import argparse
import functools
import random
import re
import struct
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

from fotadelta.samples import Fetcher, load
from fotadelta.samples.archives import Member, survey
from fotadelta.samples.catalogue import Catalogue, Source

HERE = Path(__file__).resolve().parent
CATALOGUE = HERE.parent / "src" / "fotadelta" / "samples" / "catalogue.toml"
BEGIN = "# ---- drawn set: written by firmware_samples/draw.py, do not edit by hand ----"
END = "# ---- end of the drawn set ----"
SEED = 20261207
PER_BUILD = 2
MIN_SIZE = 8 << 10
MAX_SIZE = 40 << 20
EXCLUDED_DIRS = ("usr/share/doc/", "usr/share/man/", "usr/share/locale/", "usr/share/lintian/")
EXCLUDED_MAGIC = (b"\x1f\x8b", b"\xfd7zXZ\x00", b"BZh", b"\x28\xb5\x2f\xfd", b"\x89PNG", b"\xff\xd8\xff")
EXCLUDED_SUFFIXES = (".pyc",)

ELF_MACHINES = {3: "x86-32", 8: "mips", 20: "powerpc", 21: "powerpc64", 22: "s390x", 40: "arm32", 62: "x86-64",
                94: "xtensa", 137: "videocore", 183: "aarch64", 243: "riscv", 258: "loongarch64"}
ELF_TYPES = {1: "elf-object", 2: "elf", 3: "elf"}
PE_MACHINES = {0x014C: "x86-32", 0x01C2: "arm32", 0x01C4: "arm32", 0x5064: "riscv64", 0x6264: "loongarch64",
               0x8664: "x86-64", 0xAA64: "aarch64"}


def debian_compare(a: str, b: str) -> int:
    """dpkg's order of two Debian versions ([epoch:]upstream[-revision]): -1, 0 or 1."""
    def split(v: str) -> tuple[int, str, str]:
        epoch, _, rest = v.partition(":") if ":" in v else ("0", "", v)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        return int(epoch), upstream, revision

    def order(c: str) -> int:  # '~' before the end, the end before letters, letters before the rest
        return -1 if c == "~" else (ord(c) if c.isalpha() else ord(c) + 256)

    def run(s: str, digits: bool) -> tuple[str, str]:  # the leading digits (or non-digits), the rest
        n = 0
        while n < len(s) and s[n].isdigit() == digits:
            n += 1
        return s[:n], s[n:]

    def part(x: str, y: str) -> int:
        while x or y:
            (xs, x), (ys, y) = run(x, False), run(y, False)
            for cx, cy in zip(xs.ljust(len(ys), "\0"), ys.ljust(len(xs), "\0")):
                ox, oy = (order(cx) if cx != "\0" else 0), (order(cy) if cy != "\0" else 0)
                if ox != oy:
                    return -1 if ox < oy else 1
            (xd, x), (yd, y) = run(x, True), run(y, True)
            if int(xd or 0) != int(yd or 0):
                return -1 if int(xd or 0) < int(yd or 0) else 1
        return 0

    (ea, ua, ra), (eb, ub, rb) = split(a), split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return part(ua, ub) or part(ra, rb)


def build(source: Source) -> tuple[str, str, str]:
    """The build a source archive is a version of: its index, package and flavour (a .deb's
    architecture, a wheel's tags, or sdist)."""
    name = source.filename
    if name.endswith(".deb"):
        flavour = name.rsplit("_", 1)[-1].removesuffix(".deb")
    elif name.endswith(".whl"):
        flavour = "-".join(name.removesuffix(".whl").split("-")[2:])
    else:
        flavour = "sdist"
    return ("pypi" if source.archive == "pypi" else "debian"), source.package, flavour


def in_order(sources: list[Source]) -> list[Source]:
    """A build's versions, oldest first."""
    if sources[0].archive == "pypi":
        return sorted(sources, key=lambda s: Version(s.version))

    def compare(a: Source, b: Source) -> int:
        return debian_compare(a.version, b.version)

    return sorted(sources, key=functools.cmp_to_key(compare))


def same_file(name: str, source: Source) -> str:
    """What a member is called across versions: /lib, /bin and /sbin under /usr (Debian's
    merged /usr moved them), the (upstream) version in its path left out (a wheel's .data
    directory, firmware filed by version), a vendored library without auditwheel's hash."""
    if name.startswith(("lib/", "bin/", "sbin/")):
        name = "usr/" + name
    version = source.version
    if source.archive != "pypi":  # [epoch:]upstream[-revision]: the upstream version
        version = version.partition(":")[2] if ":" in version else version
        version = version.rpartition("-")[0] if "-" in version else version
    if "." in version:
        name = name.replace(version, "{version}")
    if source.archive == "pypi":
        name = re.sub(r"-[0-9a-f]{8}(\.so(\.|$))", r"\1", name)
    return name


def eligible(name: str, old: Member, new: Member, known: set[str]) -> bool:
    """Whether a file both versions hold may be drawn (see the module's docstring)."""
    return (old.sha256 != new.sha256 and b"\0" in old.head and b"\0" in new.head
            and not name.startswith(EXCLUDED_DIRS) and not name.endswith(EXCLUDED_SUFFIXES)
            and not old.head.startswith(EXCLUDED_MAGIC) and not new.head.startswith(EXCLUDED_MAGIC)
            and old.sha256 not in known and new.sha256 not in known)


def category(head: bytes) -> tuple[str, str]:
    """Architecture and format read from an image's headers: ELF and PE name their machine;
    anything else is a raw image of an undisclosed architecture."""
    if head[:4] == b"\x7fELF" and len(head) >= 20:
        order = "<" if head[5] == 1 else ">"
        kind, machine = struct.unpack_from(order + "HH", head, 16)
        arch = ELF_MACHINES.get(machine, f"elf-machine-{machine}")
        if arch == "riscv":
            arch += "64" if head[4] == 2 else "32"
        return arch, ELF_TYPES.get(kind, "elf")
    if head[:2] == b"MZ" and len(head) >= 0x40:
        (pe,) = struct.unpack_from("<I", head, 0x3C)
        if pe + 6 <= len(head) and head[pe:pe + 4] == b"PE\0\0":
            (machine,) = struct.unpack_from("<H", head, pe + 4)
            return PE_MACHINES.get(machine, f"pe-machine-{machine:x}"), "pe"
    return "undisclosed", "bin"


@dataclass(frozen=True)
class Drawn:
    """A drawn pair: its name, the two archives, the file's name in each and what survey() saw."""

    name: str
    old_source: Source
    new_source: Source
    old_member: str
    new_member: str
    old: Member
    new: Member


def draw(catalogue: Catalogue, archive_of: Callable[[Source], Path], seed: int = SEED, per_build: int = PER_BUILD,
         log: Callable[[str], None] = lambda _m: None) -> list[Drawn]:
    """The drawn pairs, in build order (see the module's docstring)."""
    known = {i.sha256 for p in catalogue.pairs if "drawn" not in p.sets for i in (p.old, p.new)}
    builds: dict[tuple[str, str, str], list[Source]] = defaultdict(list)
    for source in catalogue.sources.values():
        builds[build(source)].append(source)
    rng = random.Random(seed)
    drawn: list[Drawn] = []
    names: set[str] = set()
    for key in sorted(k for k, v in builds.items() if len(v) >= 2):
        versions = in_order(builds[key])
        at = rng.randrange(len(versions) - 1)
        old_source, new_source = versions[at], versions[at + 1]
        olds, news = ({same_file(name, source): (name, member)
                       for name, member in survey(archive_of(source), MIN_SIZE, MAX_SIZE).items()}
                      for source in (old_source, new_source))
        # One file per content: the same image under two names (a firmware and its alias) is one pair.
        by_content = {(olds[k][1].sha256, news[k][1].sha256): k
                      for k in sorted(olds.keys() & news.keys(), reverse=True)
                      if eligible(k, olds[k][1], news[k][1], known)}
        candidates = sorted(by_content.values())
        picked = sorted(rng.sample(candidates, min(per_build, len(candidates))))
        log(f"{'/'.join(key)}: {old_source.version} -> {new_source.version}, {len(picked)} of "
            f"{len(candidates)} files")
        for k in picked:
            base = re.sub(r"[^A-Za-z0-9.]+", "-", f"drawn-{key[1]}-{Path(k).name}")[:72].strip("-")
            name, n = base, 2
            while name in names:
                name, n = f"{base}-{n}", n + 1
            names.add(name)
            (old_member, old), (new_member, new) = olds[k], news[k]
            known.update((old.sha256, new.sha256))
            drawn.append(Drawn(name, old_source, new_source, old_member, new_member, old, new))
    return drawn


def toml_entries(drawn: list[Drawn], seed: int) -> str:
    """The [[pairs]] entries of set drawn."""
    out = []
    for d in drawn:
        arch, fmt = category(d.new.head)
        out.append("\n".join([
            "[[pairs]]",
            f'name = "{d.name}"',
            'sets = ["drawn"]',
            f'arch = "{arch}"',
            f'format = "{fmt}"',
            'kind = "drawn"',
            f'description = "{d.new_member} of {d.old_source.package}: {d.old_source.version} -> '
            f'{d.new_source.version} (drawn with seed {seed})"',
            f'old = {{ source = "{d.old_source.id}", member = "{d.old_member}", size = {d.old.size}, '
            f'sha256 = "{d.old.sha256}" }}',
            f'new = {{ source = "{d.new_source.id}", member = "{d.new_member}", size = {d.new.size}, '
            f'sha256 = "{d.new.sha256}" }}',
        ]))
    return "\n\n".join(out) + "\n"


def replace_block(text: str, block: str) -> str:
    """The catalogue with its drawn block (between BEGIN and END) replaced, or appended."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return text.rstrip("\n") + f"\n\n{BEGIN}\n\n{block}\n{END}\n"
    return text[:start] + f"{BEGIN}\n\n{block}\n{END}" + text[end + len(END):]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=SEED, help="the draw's seed (default: %(default)s)")
    ap.add_argument("--per-build", type=int, default=PER_BUILD, help="files per build, at most (default: %(default)s)")
    ap.add_argument("--cache", type=Path, default=HERE / ".cache", help="downloaded archives (default: %(default)s)")
    ap.add_argument("--update", action="store_true", help="rewrite the catalogue's drawn block")
    args = ap.parse_args(argv)
    catalogue = load()
    fetcher = Fetcher(catalogue, args.cache, progress=False)
    drawn = draw(catalogue, fetcher.archive, args.seed, args.per_build, lambda m: print(m, file=sys.stderr))
    block = toml_entries(drawn, args.seed)
    if args.update:
        CATALOGUE.write_text(replace_block(CATALOGUE.read_text("utf-8"), block), "utf-8")
        print(f"{len(drawn)} pairs written to {CATALOGUE}", file=sys.stderr)
    else:
        sys.stdout.write(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
