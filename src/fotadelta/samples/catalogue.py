"""The catalogue of real firmware pairs: pinned archives and the images taken from them.

`catalogue.toml` (package data) lists every source archive (where it lives in the Debian
archive or on PyPI, its size and sha256) and every pair: two successive releases of one
firmware image, each side naming its archive, the member inside it, how the image is
extracted and the extracted image's sha256 and size. Pairs belong to sets: `bench` (the broad
benchmark corpus), `demo` (the demo's small release chain), `shared` (the public part of
the project's shared corpus, for those without it), `heldout` (pairs the engine is measured
on but never tuned on, kept apart from the benchmark's default corpora) and `drawn` (pairs drawn
at random from the other sets' archives by `firmware_samples/draw.py`, kept apart as well).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePosixPath
from typing import Any

SETS = ("bench", "demo", "shared", "heldout", "drawn")
EXTRACTORS = ("raw", "intel-hex", "uflash-hex", "uflash-bin", "esptool-stub")
# Where each archive kind is downloaded from; a mirror replaces the base.
BASES = {
    "debian": "http://deb.debian.org/debian",
    "debian-security": "http://deb.debian.org/debian-security",
    "pypi": "https://files.pythonhosted.org",
}
MAX_IMAGE = 64 << 20  # no catalogued image is larger; a bound for every extraction
MAX_ARCHIVE = 256 << 20


FAMILIES = (("cortex-m", "Cortex-M"), ("xtensa", "Xtensa"), ("riscv", "RISC-V"), ("aarch64", "AArch64"),
            ("arm7", "Arm (32-bit)"), ("armv", "Arm (32-bit)"), ("cortex-a", "Arm (32-bit)"),
            ("x86-64", "x86-64"), ("x86-16", "x86 16/32-bit"), ("x86-32", "x86 16/32-bit"), ("videocore", "VideoCore"),
            ("powerpc", "PowerPC"), ("sparc", "SPARC"), ("avr", "AVR"), ("undisclosed", "undisclosed (blob)"))


def arch_family(arch: str) -> str:
    """The architecture family a pair's arch belongs to, e.g. ``cortex-m4`` -> ``Cortex-M``."""
    return next((family for prefix, family in FAMILIES if arch.startswith(prefix)), arch)


class CatalogueError(ValueError):
    """The catalogue is malformed."""


@dataclass(frozen=True)
class Source:
    """One pinned archive: a .deb, a wheel or an sdist."""

    id: str
    archive: str  # a key of BASES
    path: str  # below the base URL
    size: int
    sha256: str
    package: str
    version: str
    origin: str  # the suite or index it was found in, e.g. "bookworm-security", "pypi"

    @property
    def filename(self) -> str:
        return PurePosixPath(self.path).name

    def label(self) -> str:
        """Where it comes from, e.g. ``debian:ovmf=2022.11-6+deb12u1 (bookworm-security)``."""
        kind = "pypi" if self.archive == "pypi" else "debian"
        sep = "==" if kind == "pypi" else "="
        suite = "" if kind == "pypi" else f" ({self.origin})"
        return f"{kind}:{self.package}{sep}{self.version}{suite}"


@dataclass(frozen=True)
class Image:
    """One side of a pair: a member of a source archive and how it becomes the image."""

    source: str
    member: str
    extract: str
    sha256: str
    size: int
    region: tuple[int, int] | None = None  # address range of a flattened Intel HEX image


@dataclass(frozen=True)
class PairSpec:
    """Two successive releases of the same firmware."""

    name: str
    sets: tuple[str, ...]
    arch: str
    format: str
    kind: str
    description: str
    old: Image
    new: Image

    @property
    def category(self) -> str:
        return f"{self.arch}/{self.format}/{self.kind}"


@dataclass(frozen=True)
class Catalogue:
    sources: dict[str, Source]
    pairs: tuple[PairSpec, ...]
    # Categories of pairs known by name that are not fetched from here (the shared corpus').
    known: dict[str, str]

    def categories(self) -> dict[str, str]:
        """Pair name -> category, for every pair this catalogue knows."""
        return {**self.known, **{p.name: p.category for p in self.pairs}}

    def select(self, which: str) -> list[PairSpec]:
        """The pairs of one set, or of every set for ``all``."""
        if which != "all" and which not in SETS:
            raise CatalogueError(f"unknown set {which!r}; choose from {', '.join((*SETS, 'all'))}")
        return [p for p in self.pairs if which == "all" or which in p.sets]

    def by_name(self) -> dict[str, PairSpec]:
        return {p.name: p for p in self.pairs}


def _need(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = table.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise CatalogueError(f"{where}: '{key}' must be a {kind.__name__}")
    return value


def _hex256(value: str, where: str) -> str:
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise CatalogueError(f"{where}: not a lowercase hex sha256: {value!r}")
    return value


def _member(value: str, where: str) -> str:
    """A member path inside an archive: relative, without '..' (it is only ever looked up by
    name, never used as a path on disk, but a catalogue should not even suggest it)."""
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or not value:
        raise CatalogueError(f"{where}: member {value!r} must be a relative path without '..'")
    return value


def _image(table: Any, sources: dict[str, Source], where: str) -> Image:
    if not isinstance(table, dict):
        raise CatalogueError(f"{where}: must be a table")
    source = _need(table, "source", str, where)
    if source not in sources:
        raise CatalogueError(f"{where}: unknown source {source!r}")
    extract = table.get("extract", "raw")
    if extract not in EXTRACTORS:
        raise CatalogueError(f"{where}: unknown extractor {extract!r}")
    region = table.get("region")
    if region is not None:
        if not (isinstance(region, list) and len(region) == 2 and all(isinstance(a, int) for a in region)
                and 0 <= region[0] < region[1] and region[1] - region[0] <= MAX_IMAGE):
            raise CatalogueError(f"{where}: region must be [start, end) within {MAX_IMAGE} bytes")
        region = (region[0], region[1])
    elif extract in ("intel-hex", "uflash-bin"):
        raise CatalogueError(f"{where}: extractor {extract!r} needs a region")
    size = _need(table, "size", int, where)
    if not 0 < size <= MAX_IMAGE:
        raise CatalogueError(f"{where}: size out of range")
    return Image(source, _member(_need(table, "member", str, where), where), extract,
                 _hex256(_need(table, "sha256", str, where), where), size, region)


def parse(text: str) -> Catalogue:
    """Parse and check a catalogue."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"catalogue: {exc}") from None
    sources: dict[str, Source] = {}
    for sid, table in _need(data, "sources", dict, "catalogue").items():
        where = f"sources.{sid}"
        archive = _need(table, "archive", str, where)
        if archive not in BASES:
            raise CatalogueError(f"{where}: archive must be one of {', '.join(BASES)}")
        size = _need(table, "size", int, where)
        if not 0 < size <= MAX_ARCHIVE:
            raise CatalogueError(f"{where}: size out of range")
        sources[sid] = Source(sid, archive, _member(_need(table, "path", str, where), where), size,
                              _hex256(_need(table, "sha256", str, where), where),
                              _need(table, "package", str, where), _need(table, "version", str, where),
                              _need(table, "origin", str, where))
    pairs: list[PairSpec] = []
    names: set[str] = set()
    for i, table in enumerate(_need(data, "pairs", list, "catalogue")):
        where = f"pairs[{i}]"
        name = _need(table, "name", str, where)
        if name in names or not name or "/" in name or name.startswith("."):
            raise CatalogueError(f"{where}: duplicate or unusable name {name!r}")
        names.add(name)
        sets = tuple(_need(table, "sets", list, where))
        if not sets or any(s not in SETS for s in sets):
            raise CatalogueError(f"{where}: sets must be a non-empty subset of {', '.join(SETS)}")
        arch, fmt, kind = (_need(table, key, str, where) for key in ("arch", "format", "kind"))
        if any(not part or "/" in part or part.strip() != part for part in (arch, fmt, kind)):
            raise CatalogueError(f"{where}: arch, format and kind must be single words without '/'")
        pairs.append(PairSpec(name, sets, arch, fmt, kind, _need(table, "description", str, where),
                              _image(table.get("old"), sources, f"{where}.old"),
                              _image(table.get("new"), sources, f"{where}.new")))
    known = data.get("categories", {})
    if not isinstance(known, dict) or not all(isinstance(v, str) and v.count("/") == 2 for v in known.values()):
        raise CatalogueError("categories: each value must be 'arch/format/kind'")
    return Catalogue(sources, tuple(pairs), dict(known))


def load() -> Catalogue:
    """The catalogue shipped with the package."""
    return parse(resources.files("fotadelta.samples").joinpath("catalogue.toml").read_text("utf-8"))
