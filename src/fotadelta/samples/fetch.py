"""Fetch catalogued pairs: download pinned archives (cached), check them, extract the images.

Every archive is checked against its pinned size while it streams in and against its sha256
before it enters the cache; every extracted image against its own sha256 before it is
written (to a temporary name, then renamed). A pair whose archive is missing or wrong fails
with a message naming it; the other pairs are still fetched. Re-runs are cheap: images
already in place with the right hash are left alone, archives come from the cache.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from fotadelta.files import atomic_writer, write_atomic
from fotadelta.samples.archives import ArchiveError, normalise, read_members
from fotadelta.samples.catalogue import BASES, MAX_IMAGE, Catalogue, Image, PairSpec, Source
from fotadelta.samples.images import ImageError, extract

CACHE_ENV = "FOTADELTA_CACHE"
MANIFEST_COLUMNS = ("pair", "class", "file", "source_old", "source_new", "size_old", "size_new",
                    "sha256_old", "sha256_new", "category")
CHUNK = 1 << 16


class FetchError(Exception):
    """A download failed, or an archive or image does not match its pin."""


def default_cache() -> Path:
    """The per-user cache: $FOTADELTA_CACHE, else $XDG_CACHE_HOME/fotadelta, else ~/.cache/fotadelta."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fotadelta"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def size_class(size: int) -> str:
    """The shared corpus' size classes."""
    return "tiny" if size < 256 << 10 else "mid" if size < 2 << 20 else "large"


@dataclass(frozen=True)
class Outcome:
    """What became of one pair."""

    pair: PairSpec
    error: str | None = None  # None: both images are in place and verified
    fetched: bool = False  # False: it was already there


class Fetcher:
    """Downloads into ``cache``/downloads and writes pairs as ``dest``/<pair>/{old,new}."""

    def __init__(self, catalogue: Catalogue, cache: Path, *, mirrors: Mapping[str, str] | None = None,
                 console: Console | None = None, progress: bool = True, timeout: float = 60.0) -> None:
        self.catalogue = catalogue
        self.downloads = cache / "downloads"
        self.bases = {**BASES, **(mirrors or {})}
        self.console = console or Console(stderr=True)
        self.progress = progress
        self.timeout = timeout

    def url(self, source: Source) -> str:
        return f"{self.bases[source.archive].rstrip('/')}/{source.path}"

    # ---------------------------------------------------------------- archives

    def archive(self, source: Source, bar: Progress | None = None) -> Path:
        """The verified archive, from the cache or downloaded into it."""
        path = self.downloads / source.filename
        if path.is_file() and path.stat().st_size == source.size and sha256_file(path) == source.sha256:
            return path
        self.downloads.mkdir(parents=True, exist_ok=True)
        url = self.url(source)
        task = bar.add_task(source.filename, total=source.size) if bar is not None else None
        try:
            digest, received = hashlib.sha256(), 0
            # The archive appears only once it is whole and verified (every check below is inside).
            with atomic_writer(path) as out, httpx.stream("GET", url, timeout=self.timeout,
                                                          follow_redirects=True) as response:
                if response.status_code == 404:
                    raise FetchError(f"{url} is gone (404): the archive no longer lists "
                                     f"{source.package} {source.version}; pin a version a suite still has")
                if response.status_code != 200:
                    raise FetchError(f"{url}: HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) != source.size:
                    raise FetchError(f"{url}: {int(declared):,} bytes offered, {source.size:,} pinned")
                for chunk in response.iter_bytes(CHUNK):
                    received += len(chunk)
                    if received > source.size:
                        raise FetchError(f"{url}: more than the pinned {source.size:,} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                    if bar is not None and task is not None:
                        bar.update(task, completed=received)
                if received != source.size:
                    raise FetchError(f"{url}: {received:,} bytes received, {source.size:,} pinned")
                if digest.hexdigest() != source.sha256:
                    raise FetchError(f"{url}: sha256 mismatch, refused\n  expected {source.sha256}\n"
                                     f"  got      {digest.hexdigest()}")
            return path
        except httpx.HTTPError as exc:
            raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from None
        finally:
            if bar is not None and task is not None:
                bar.remove_task(task)

    # ---------------------------------------------------------------- pairs

    def missing(self, pairs: Iterable[PairSpec], dest: Path) -> list[PairSpec]:
        """The pairs whose images are not in ``dest`` with their pinned hashes."""
        return [p for p in pairs if not all(_present(dest / p.name / side, image)
                                            for side, image in (("old", p.old), ("new", p.new)))]

    def needed_sources(self, pairs: Iterable[PairSpec]) -> list[Source]:
        ids = dict.fromkeys(i.source for p in pairs for i in (p.old, p.new))
        return [self.catalogue.sources[s] for s in ids]

    def fetch(self, pairs: list[PairSpec], dest: Path) -> list[Outcome]:
        """Make every pair present under ``dest``; writes ``dest``/MANIFEST.tsv."""
        todo = self.missing(pairs, dest)
        outcomes = {p.name: Outcome(p) for p in pairs if p not in todo}
        by_source: dict[str, list[tuple[PairSpec, str, Image]]] = {}
        for p in todo:
            for side, image in (("old", p.old), ("new", p.new)):
                by_source.setdefault(image.source, []).append((p, side, image))
        failed: dict[str, str] = {}
        bar = Progress(TextColumn("{task.description:<44.44}"), BarColumn(), DownloadColumn(),
                       TransferSpeedColumn(), TimeRemainingColumn(), console=self.console,
                       disable=not self.progress, transient=True)
        overall = Progress(TextColumn("pairs"), BarColumn(), MofNCompleteColumn(), console=self.console,
                           disable=not self.progress)
        with _Group(overall, bar) as live:
            task = overall.add_task("pairs", total=len(todo))
            left = {p.name: 2 for p in todo}
            ready: dict[str, dict[str, bytes]] = {}
            for source_id, uses in by_source.items():
                source = self.catalogue.sources[source_id]
                try:
                    archive = self.archive(source, bar)
                    members = read_members(archive, [image.member for _, _, image in uses], MAX_IMAGE)
                except (FetchError, ArchiveError, OSError) as exc:
                    for p, _, _ in uses:
                        failed.setdefault(p.name, f"{source.label()}: {exc}")
                    members = {}
                for p, side, image in uses:
                    if p.name not in failed:
                        try:
                            ready.setdefault(p.name, {})[side] = self._image(image, members, p.name)
                        except (FetchError, ImageError) as exc:
                            failed[p.name] = str(exc)
                    left[p.name] -= 1
                    if left[p.name] == 0:
                        outcomes[p.name] = self._finish(p, ready.pop(p.name, {}), failed.get(p.name), dest)
                        overall.advance(task)
                        if outcomes[p.name].error is not None:
                            live.log(f"[red]FAILED[/red] {p.name}: {outcomes[p.name].error}")
        ordered = [outcomes[p.name] for p in pairs]
        write_manifest(dest, self.catalogue, [o.pair for o in ordered if o.error is None])
        return ordered

    @staticmethod
    def _image(image: Image, members: dict[str, bytes], pair: str) -> bytes:
        data = extract(image, members[normalise(image.member)])
        actual = hashlib.sha256(data).hexdigest()
        if actual != image.sha256:
            raise FetchError(f"{pair}: image {image.member} has sha256 {actual}, {image.sha256} pinned; "
                             "nothing written")
        return data

    @staticmethod
    def _finish(pair: PairSpec, images: dict[str, bytes], error: str | None, dest: Path) -> Outcome:
        """Write a pair once both of its images are verified, never half of one."""
        if error is None:
            try:
                (dest / pair.name).mkdir(parents=True, exist_ok=True)
                for side, data in images.items():
                    write_atomic(dest / pair.name / side, data)
            except OSError as exc:
                error = f"{dest / pair.name}: {exc}"
        return Outcome(pair, error, fetched=True)


def _present(path: Path, image: Image) -> bool:
    return path.is_file() and path.stat().st_size == image.size and sha256_file(path) == image.sha256


class _Group:
    """Two rich progress displays stacked in one live region."""

    def __init__(self, *parts: Progress) -> None:
        from rich.console import Group
        from rich.live import Live

        self._live = Live(Group(*parts), console=parts[0].console, transient=False,
                          refresh_per_second=8) if not parts[0].disable else None

    def __enter__(self) -> _Group:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            if not self._live.console.is_terminal:
                self._live.console.line()

    def log(self, message: str) -> None:
        if self._live is not None:
            self._live.console.print(message)


def manifest_rows(catalogue: Catalogue, pairs: Iterable[PairSpec]) -> list[list[str]]:
    """MANIFEST.tsv rows: the shared corpus' columns, plus the category."""
    src = catalogue.sources
    return [[p.name, size_class(p.new.size), p.description, _label(src[p.old.source], p.old),
             _label(src[p.new.source], p.new), str(p.old.size), str(p.new.size), p.old.sha256,
             p.new.sha256, p.category] for p in pairs]


def _label(source: Source, image: Image) -> str:
    extract_note = "" if image.extract == "raw" else f" [{image.extract}]"
    return f"{source.label()}:{image.member}{extract_note}"


def write_manifest(dest: Path, catalogue: Catalogue, pairs: list[PairSpec]) -> None:
    """Write ``dest``/MANIFEST.tsv, keeping rows of pairs fetched earlier by another set."""
    path = dest / "MANIFEST.tsv"
    rows = {r[0]: r for r in manifest_rows(catalogue, pairs)}
    if path.is_file():
        for line in path.read_text("utf-8").splitlines()[1:]:
            cells = line.split("\t")
            if cells[0] not in rows and (dest / cells[0] / "new").is_file():
                rows[cells[0]] = cells
    order = {p.name: i for i, p in enumerate(catalogue.pairs)}
    lines = ["\t".join(MANIFEST_COLUMNS)]
    lines += ["\t".join(r) for _, r in sorted(rows.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, ("\n".join(lines) + "\n").encode())
