"""Where `fotadelta demo` takes its firmware from, from any install and any directory.

In order: a directory given on the command line; the repository's corpora when run from a
checkout (firmware_samples/pairs, ../shared/corpus); the demo set in the per-user cache;
the demo set fetched into that cache (pinned, sha256-checked, with a progress bar); and,
offline or when the fetch fails, a release chain generated here from a fixed seed, which is
said plainly in the output since it is not real firmware.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from fotadelta.samples.catalogue import Catalogue, load
from fotadelta.samples.fetch import Fetcher, default_cache

PACKAGE_REPO = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Firmware:
    """Where the demo's releases come from: pair directories, or generated images."""

    origin: str  # "given", "repository", "cache", "fetched" or "generated"
    note: str  # one line for the output: what was used and why
    roots: tuple[Path, ...] = ()
    generated: tuple[bytes, ...] = ()


def checkouts() -> list[Path]:
    """Where a fotadelta checkout may be: the one holding this package (editable installs) and
    the current directory."""
    return [PACKAGE_REPO, Path.cwd().resolve()]


def repository_roots(repos: list[Path]) -> list[Path]:
    """The corpora with pairs in those of ``repos`` that are fotadelta checkouts."""
    found: list[Path] = []
    for repo in dict.fromkeys(repos):
        if not (repo / "firmware_samples").is_dir():
            continue
        for root in (repo / "firmware_samples" / "pairs", repo.parent / "shared" / "corpus"):
            if root.is_dir() and any((d / "old").is_file() and (d / "new").is_file() for d in root.iterdir()):
                found.append(root)
    return found


def needs(catalogue: Catalogue, cache: Path, mirrors: dict[str, str] | None = None) -> list[str]:
    """What a fetch of the demo set would download: one line per archive not yet cached."""
    fetcher = Fetcher(catalogue, cache, mirrors=mirrors, progress=False)
    pairs = fetcher.missing(catalogue.select("demo"), cache / "pairs")
    lines = []
    for source in fetcher.needed_sources(pairs):
        cached = fetcher.downloads / source.filename
        if not (cached.is_file() and cached.stat().st_size == source.size):
            lines.append(f"{fetcher.url(source)} ({source.size:,} bytes, sha256 {source.sha256[:16]}…)")
    return lines


def locate(given: Path | None = None, *, offline: bool = False, cache: Path | None = None,
           catalogue: Catalogue | None = None, mirrors: dict[str, str] | None = None,
           console: Console | None = None, repos: list[Path] | None = None) -> Firmware:
    """Find or fetch the demo's firmware (see the module docstring for the order)."""
    if given is not None:
        return Firmware("given", f"from {given}", roots=(given,))
    roots = repository_roots(checkouts() if repos is None else repos)
    if roots:
        return Firmware("repository", f"from the repository: {', '.join(map(str, roots))}", roots=tuple(roots))
    catalogue = catalogue or load()
    cache = cache or default_cache()
    pairs_dir = cache / "pairs"
    demo_set = catalogue.select("demo")
    fetcher = Fetcher(catalogue, cache, mirrors=mirrors, console=console or Console(stderr=True))
    if not fetcher.missing(demo_set, pairs_dir):
        return Firmware("cache", f"from the cache {pairs_dir}", roots=(pairs_dir,))
    if offline:
        missing = needs(catalogue, cache, mirrors)
        note = ("offline: the real firmware would need " + (
            f"{len(missing)} download(s) into {cache}:\n  " + "\n  ".join(missing) if missing else
            f"its images extracted into {pairs_dir}") + "\nusing a generated release chain instead")
        return Firmware("generated", note, generated=generated_chain())
    fetcher.console.print(f"fetching the demo's firmware ({len(demo_set)} pairs) into {cache}")
    outcomes = fetcher.fetch(demo_set, pairs_dir)
    failed = [o for o in outcomes if o.error is not None]
    if not failed:
        return Firmware("fetched", f"real releases fetched into {pairs_dir}", roots=(pairs_dir,))
    first = failed[0].error or ""
    return Firmware("generated", f"could not fetch the real firmware ({failed[0].pair.name}: "
                                 f"{first.splitlines()[0]}); using a generated release chain instead",
                    generated=generated_chain())


def generated_chain(releases: int = 5, size: int = 48 * 1024, seed: int = 2024) -> tuple[bytes, ...]:
    """A deterministic chain of firmware-like images: 32-bit code words from a small
    vocabulary, literal pools of addresses, strings and 0xFF padding; each release changes
    instructions, moves addresses and inserts and removes code, as a rebuild would."""
    rng = random.Random(seed)
    vocabulary = [rng.getrandbits(32) for _ in range(64)]
    image = bytearray()
    while len(image) < size:
        roll = rng.random()
        if roll < 0.65:
            image += b"".join(struct.pack("<I", rng.choice(vocabulary) ^ (rng.randrange(16) << 8))
                              for _ in range(rng.randrange(8, 96)))
        elif roll < 0.85:
            image += b"".join(struct.pack("<I", 0x0800_0000 + 4 * rng.randrange(size // 4))
                              for _ in range(rng.randrange(2, 16)))
        elif roll < 0.95:
            image += b"boot\0update\0flash ok\0version\0"[: rng.randrange(8, 30)]
        else:
            image += b"\xff" * rng.randrange(16, 256)
    chain = [bytes(image[:size])]
    for _ in range(releases - 1):
        new = bytearray(chain[-1])
        for _ in range(40):
            at = rng.randrange(0, len(new) - 4) & ~3
            roll = rng.random()
            if roll < 0.6:
                struct.pack_into("<I", new, at, (struct.unpack_from("<I", new, at)[0] + 4 * rng.randrange(1, 64))
                                 & 0xFFFFFFFF)
            elif roll < 0.8:
                new[at:at] = b"".join(struct.pack("<I", rng.choice(vocabulary)) for _ in range(rng.randrange(1, 24)))
            else:
                del new[at:at + 4 * rng.randrange(1, 24)]
        chain.append(bytes(new))
    return tuple(chain)
