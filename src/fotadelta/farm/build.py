"""Build a package repository: every older release against every newer one, deltas in parallel.

The deltas (the expensive part) come from the cache when it holds them and verify, else from
the executor's workers; each is then signed into a package on this machine, which is cheap,
so make, model, versions and keys can change without computing a delta again. Nothing is
trusted on the way in: a cached or computed delta is used only once it rebuilds the new image
from the old one with the requested block size and RAM. Packages and then the index are
written atomically, so a crash leaves the previous repository readable."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fotadelta import inplace, package
from fotadelta.chain import Entry, Index
from fotadelta.errors import PatchError
from fotadelta.farm.cache import CorruptEntry, DeltaCache
from fotadelta.farm.executor import Executor, FarmError, LocalPool, default_workers
from fotadelta.farm.task import KIND_IN_PLACE, Computed, DeltaOptions, compute_delta, engine_id
from fotadelta.files import write_atomic
from fotadelta.inplace.format import InplaceHeader
from fotadelta.package.signing import PrivateKey

KIND_FULL = "full"


@dataclass(frozen=True)
class PackageRecord:
    """One package of a build, as the manifest reports it."""

    file: str
    from_version: str
    to_version: str
    kind: str  # KIND_IN_PLACE or KIND_FULL
    key: str | None  # the delta's cache key (hex); None for a full image
    payload_bytes: int
    package_bytes: int
    # "miss": computed; "hit": from the cache (or computed earlier in this build for identical
    # images); "corrupt": the cache entry was refused and the delta computed again; None: a full image.
    cache: str | None
    seconds: float  # computing the delta on its worker; 0 if it was not computed in this build
    worker: str | None  # host:pid of the worker that computed it
    note: str | None = None  # why a cache entry was refused, or why the delta could not be cached


@dataclass(frozen=True)
class Build:
    """What build_repo made: the index and a manifest of every package."""

    index: Index
    packages: tuple[PackageRecord, ...]
    executor: str | None  # None: every delta came from the cache
    cache_dir: str | None
    options: DeltaOptions
    wall_seconds: float

    def manifest(self) -> dict[str, Any]:
        """The JSON manifest: per package its key, sizes, cache status, time and worker; totals."""
        deltas = [b for b in self.packages if b.kind == KIND_IN_PLACE]
        computed = [b for b in deltas if b.cache in ("miss", "corrupt")]
        return {
            "releases": self.index.releases,
            "executor": self.executor,
            "cache": self.cache_dir,
            "engine": engine_id(),
            "options": asdict(self.options),
            "packages": [asdict(b) for b in self.packages],
            "totals": {
                "packages": len(self.packages),
                "deltas": len(deltas),
                "computed": len(computed),
                "from_cache": sum(b.cache == "hit" for b in deltas),
                "corrupt_entries": sum(b.cache == "corrupt" for b in deltas),
                "compute_seconds": round(sum(b.seconds for b in computed), 3),
                "wall_seconds": round(self.wall_seconds, 3),
                "package_bytes": sum(b.package_bytes for b in self.packages),
            },
        }


def build_repo(releases: Sequence[tuple[str, bytes]], repo: Path, key: PrivateKey, *, make: str, model: str,
               block_size: int = inplace.DEFAULT_BLOCK, ram: int | None = None, executor: Executor | None = None,
               cache: DeltaCache | None = None, progress: Callable[[int, int], None] | None = None,
               full_images: bool = False) -> Build:
    """Package every older release against every newer one (in-place patches) into repo.

    Deltas missing from the cache run on executor (by default a pool of local processes, one
    per core, started only if something is to be computed). full_images adds a full-image
    package of every release but the first, installable from any version: the planner takes it
    when it is cheaper than any chain of deltas. Packages are staged beside the repository's
    files and put in place only once all are made, the index last; if anything fails, the
    repository is left as it was. Each package carries its target release's place in the list (1
    for the oldest) as its security version, so a device refuses any package that would take it
    back to an older release."""
    started = time.perf_counter()
    versions = [v for v, _ in releases]
    if len(set(versions)) != len(versions):
        raise ValueError(f"a version appears twice among the releases: {', '.join(versions)}")
    options = DeltaOptions(block_size, ram)
    created = not repo.exists()
    repo.mkdir(parents=True, exist_ok=True)
    out = _Packager(releases, repo, key, make, model, options, progress, full_images)
    try:
        description = _make_packages(out, executor, cache)
        records = out.commit()
        index = Index(tuple(Entry(r.file, make, model, r.from_version, r.to_version, r.package_bytes)
                            for r in records), {f"{make}/{model}": versions})
        index.save(repo)  # last: it names only packages already in place
    except BaseException:
        out.discard()
        if created:
            with suppress(OSError):
                repo.rmdir()
        raise
    return Build(index, records, description, None if cache is None else str(cache.root.resolve()), options,
                 time.perf_counter() - started)


def _make_packages(out: _Packager, executor: Executor | None, cache: DeltaCache | None) -> str | None:
    """Every package of the build, deltas from the cache or computed; the executor's description,
    None if nothing was computed."""
    releases, options = out.releases, out.options
    for _, j in out.fulls:
        out.full_image(j)
    # Each distinct delta once (releases may repeat an image): out.pairs_of[k][0] owns key k.
    missing: list[tuple[bytes, str | None]] = []  # key, why a cache entry was refused
    for k, (owner, *_) in out.pairs_of.items():
        found, note = _cached(cache, k, releases[owner[0]][1], releases[owner[1]][1], options)
        if found is None:
            missing.append((k, note))
        else:
            out.delta(k, found, "hit")
    if not missing:
        return None
    pool = LocalPool(default_workers()) if executor is None else executor
    try:
        handles: dict[int, Any] = {}

        def shared(i: int) -> Any:
            if i not in handles:
                handles[i] = pool.share(releases[i][1])
            return handles[i]

        owners = [out.pairs_of[k][0] for k, _ in missing]
        for n, computed in pool.run(compute_delta, [(shared(i), shared(j), options) for i, j in owners]):
            k, refused = missing[n]
            payload = _accept(computed, releases[owners[n][0]], releases[owners[n][1]], options)
            unstored = _store(cache, k, payload)
            out.delta(k, payload, "miss" if refused is None else "corrupt", computed.seconds, computed.worker,
                      "; ".join(why for why in (refused, unstored) if why) or None)
    finally:
        if executor is None:
            pool.close()
    return pool.description


class _Packager:
    """Signs deltas and full images into packages, writes them atomically and keeps their records."""

    def __init__(self, releases: Sequence[tuple[str, bytes]], repo: Path, key: PrivateKey, make: str, model: str,
                 options: DeltaOptions, progress: Callable[[int, int], None] | None, full_images: bool) -> None:
        self.releases, self.repo, self.key, self.make, self.model = releases, repo, key, make, model
        self.options, self.progress = options, progress
        hashes = [hashlib.sha256(image).digest() for _, image in releases]
        self.pairs = [(i, j) for j in range(len(releases)) for i in range(j)]
        self.fulls = [(-1, j) for j in range(1, len(releases))] if full_images else []
        self.pairs_of: dict[bytes, list[tuple[int, int]]] = {}  # delta key -> the pairs with those images
        for i, j in self.pairs:
            self.pairs_of.setdefault(options.key(hashes[i], hashes[j]), []).append((i, j))
        self.done: dict[tuple[int, int], PackageRecord] = {}
        if progress is not None:
            progress(0, len(self.pairs) + len(self.fulls))

    def delta(self, k: bytes, payload: bytes, cache: str, seconds: float = 0.0, worker: str | None = None,
              note: str | None = None) -> None:
        """Sign the delta of key k into the package of every pair with those images: the first
        gets the delta's story, the others took it from this build ("hit")."""
        for n, (i, j) in enumerate(self.pairs_of[k]):
            (v1, old), (v2, new) = self.releases[i], self.releases[j]
            data = package.pack(old, new, self.key, make=self.make, model=self.model, from_version=v1, to_version=v2,
                                in_place=True, block_size=self.options.block_size, ram=self.options.ram,
                                patch=payload, security_version=j + 1)
            story = (cache, seconds, worker, note) if n == 0 else ("hit", 0.0, None, None)
            self._write((i, j), data, PackageRecord(self._file(v1, v2), v1, v2, KIND_IN_PLACE, k.hex(),
                                                    len(payload), len(data), *story))

    def full_image(self, j: int) -> None:
        v2, new = self.releases[j]
        data = package.pack(b"", new, self.key, make=self.make, model=self.model, from_version=package.ANY_VERSION,
                            to_version=v2, full_image=True, security_version=j + 1)
        self._write((-1, j), data, PackageRecord(self._file(package.ANY_VERSION, v2), package.ANY_VERSION, v2,
                                                 KIND_FULL, None, len(new), len(data), None, 0.0, None))

    def commit(self) -> tuple[PackageRecord, ...]:
        """Put every staged package in place; returns them, deltas first (by target, then source),
        then full images."""
        records = tuple(self.done[p] for p in self.pairs + self.fulls)
        for record in records:
            os.replace(self._staged(record.file), self.repo / record.file)
        self.done.clear()
        return records

    def discard(self) -> None:
        """Remove the packages staged so far."""
        for record in self.done.values():
            self._staged(record.file).unlink(missing_ok=True)

    def _write(self, pair: tuple[int, int], data: bytes, record: PackageRecord) -> None:
        write_atomic(self._staged(record.file), data)
        self.done[pair] = record
        if self.progress is not None:
            self.progress(len(self.done), len(self.pairs) + len(self.fulls))

    def _staged(self, file: str) -> Path:
        return self.repo / f".{file}.staged"

    def _file(self, from_version: str, to_version: str) -> str:
        stem = f"full-{to_version}" if from_version == package.ANY_VERSION else f"{from_version}-to-{to_version}"
        return f"{self.make}-{self.model}-{stem}.fdpkg".replace("/", "_").replace(" ", "_")


def _cached(cache: DeltaCache | None, key: bytes, old: bytes, new: bytes,
            options: DeltaOptions) -> tuple[bytes | None, str | None]:
    """The cached delta if there is one and it verifies; else None and why an entry was refused."""
    if cache is None:
        return None, None
    try:
        payload = cache.get(key, _payload_limit(new))
        if payload is None:
            return None, None
        _verify(payload, old, new, options)
        return payload, None
    except (CorruptEntry, PatchError) as exc:
        return None, str(exc)


def _store(cache: DeltaCache | None, key: bytes, payload: bytes) -> str | None:
    """Keep a computed delta; a cache that cannot take it (full disk, a directory planted
    where the entry goes) costs only the next build's time, so the reason goes to the manifest."""
    if cache is None:
        return None
    try:
        cache.put(key, payload)
    except OSError as exc:
        return f"not cached: {exc.strerror or exc}"
    return None


def _accept(computed: Computed, old: tuple[str, bytes], new: tuple[str, bytes], options: DeltaOptions) -> bytes:
    """A worker's delta, once it comes from this engine and verifies."""
    if computed.engine != engine_id():
        raise FarmError(f"worker {computed.worker} runs another fotadelta engine ({computed.engine}; here "
                        f"{engine_id()}): install the same build on every worker")
    if len(computed.payload) > _payload_limit(new[1]):
        raise FarmError(f"worker {computed.worker} returned an oversized delta {old[0]} -> {new[0]}")
    try:
        _verify(computed.payload, old[1], new[1], options)
    except PatchError as exc:
        raise FarmError(f"worker {computed.worker} returned a bad delta {old[0]} -> {new[0]}: {exc}") from None
    return computed.payload


def _verify(payload: bytes, old: bytes, new: bytes, options: DeltaOptions) -> None:
    """PatchError unless payload is an in-place patch for these options that turns old into new
    (applied as a device would, on emulated flash: a few percent of the time the diff took)."""
    header = InplaceHeader.parse(payload)
    if header.block_size != options.block_size or header.work_need > options.work_ram:
        raise PatchError("delta was made for another block size or more RAM")
    if inplace.apply(old, payload) != inplace.flash_image(new).data:
        raise PatchError("delta does not rebuild the new image")


def _payload_limit(new: bytes) -> int:
    """More than any in-place patch of new can be (payloads over the raw lanes are stored raw)."""
    return 4 * len(new) + (1 << 20)
