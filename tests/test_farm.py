"""Build farms: deltas computed by local worker processes or a Dask cluster of worker processes,
through a content-addressed cache that is checked like any other input."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from distributed import Client, LocalCluster
from support import REPO, firmware_like, load_script, mutate
from test_cli import assert_one_line_error, run

from fotadelta import chain, farm, package
from fotadelta.agent import Device
from fotadelta.farm.task import Computed, engine_id
from fotadelta.package import signing
from fotadelta.samples.catalogue import EXTRACTORS
from fotadelta.sim import Sim, handoff

T = TypeVar("T")
BLOCK = 1024
KEY = signing.generate()
TRUST = signing.TrustStore.of([KEY.public_key()])


def _releases(n: int, seed: int = 5) -> list[tuple[str, bytes]]:
    r = random.Random(seed)
    images = [firmware_like(r, 12_000)]
    for _ in range(n - 1):
        images.append(mutate(r, images[-1], 8))
    return [(f"2.{i}", image) for i, image in enumerate(images)]


@pytest.fixture(scope="module")
def pool() -> Iterator[farm.LocalPool]:
    with farm.LocalPool(2) as p:
        yield p


def _build(releases: Sequence[tuple[str, bytes]], repo: Path, cache: farm.DeltaCache | None,
           executor: farm.Executor, **kw: Any) -> farm.Build:
    options: dict[str, Any] = {"make": "Acme", "model": "S1", "block_size": BLOCK, **kw}
    return farm.build_repo(releases, repo, KEY, executor=executor, cache=cache, **options)


def _files(repo: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(repo.iterdir())}


def _cached(built: farm.Build) -> list[str | None]:
    return [b.cache for b in built.packages]


def test_second_build_computes_nothing(tmp_path: Path, pool: farm.LocalPool) -> None:
    releases = _releases(4)
    cache = farm.DeltaCache(tmp_path / "cache")
    first = _build(releases, tmp_path / "a", cache, pool)
    totals = first.manifest()["totals"]
    assert totals["deltas"] == totals["computed"] == 6 and totals["from_cache"] == 0
    assert all(b.worker and b.worker.split(":")[1] != str(os.getpid()) for b in first.packages)
    assert all(b.seconds > 0 for b in first.packages)
    second = _build(releases, tmp_path / "b", cache, pool)
    totals = second.manifest()["totals"]
    assert totals["computed"] == 0 and totals["from_cache"] == 6 and second.executor is None
    assert all(b.seconds == 0 and b.worker is None for b in second.packages)
    # Ed25519 signs deterministically: the repositories are the same bytes.
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert [b.key for b in first.packages] == [b.key for b in second.packages]


def test_rebuild_computes_only_what_changed(tmp_path: Path, pool: farm.LocalPool) -> None:
    releases = _releases(4)
    cache = farm.DeltaCache(tmp_path / "cache")
    _build(releases[:3], tmp_path / "repo", cache, pool)
    grown = _build(releases, tmp_path / "repo", cache, pool)
    computed = {(b.from_version, b.to_version) for b in grown.packages if b.cache == "miss"}
    assert computed == {("2.0", "2.3"), ("2.1", "2.3"), ("2.2", "2.3")}
    # What a device sees changes the package, not the delta: re-signed, nothing computed.
    other = _build(releases, tmp_path / "other", cache, pool, make="Other", model="S2")
    assert other.manifest()["totals"]["computed"] == 0
    assert package.parse((tmp_path / "other" / other.packages[0].file).read_bytes()).manifest.make == "Other"
    # The block size changes the delta: everything is computed again, under other keys.
    coarse = _build(releases, tmp_path / "coarse", cache, pool, block_size=2 * BLOCK)
    assert set(_cached(coarse)) == {"miss"}
    assert not {b.key for b in coarse.packages} & {b.key for b in grown.packages}
    tight = _build(releases, tmp_path / "tight", cache, pool, ram=BLOCK + 3500)
    assert set(_cached(tight)) == {"miss"}


def test_key_covers_images_options_and_engine() -> None:
    old, new = bytes(32), bytes([1]) * 32
    base = farm.DeltaOptions(BLOCK).key(old, new)
    assert farm.DeltaOptions(BLOCK, BLOCK + 4096).key(old, new) == base  # the default RAM, spelt out
    others = [farm.DeltaOptions(2 * BLOCK).key(old, new), farm.DeltaOptions(BLOCK, BLOCK + 8192).key(old, new),
              farm.DeltaOptions(BLOCK).key(new, old), farm.DeltaOptions(BLOCK).key(old, old)]
    assert len({base, *others}) == 5
    assert len(base) == 32 and len(engine_id()) == 16


@pytest.mark.parametrize("options, message", [
    ({"block_size": 1000}, "power of two"), ({"block_size": 1 << 20}, "power of two"),
    ({"ram": BLOCK + 100}, "work RAM"),
])
def test_impossible_options_are_refused_before_any_work(tmp_path: Path, options: dict[str, int],
                                                         message: str) -> None:
    with pytest.raises(ValueError, match=message):
        farm.build_repo(_releases(2), tmp_path / "repo", KEY, make="A", model="B", **options)
    assert not (tmp_path / "repo").exists()


def test_repository_installs_and_chains(tmp_path: Path, pool: farm.LocalPool) -> None:
    releases = _releases(4)
    built = _build(releases, tmp_path / "repo", farm.DeltaCache(tmp_path / "cache"), pool)
    assert chain.Index.load(tmp_path / "repo") == built.index
    device = Device.with_image(releases[0][1], make="Acme", model="S1", version="2.0", trust=TRUST,
                               nvm=handoff(Sim()), block_size=BLOCK, park_blocks=8, slot_size=32 * BLOCK)
    assert chain.run(device, tmp_path / "repo").ok and device.image() == releases[-1][1]


def _entry(cache: farm.DeltaCache, built: farm.Build, n: int = 0) -> Path:
    key = built.packages[n].key
    assert key is not None
    return cache.path(bytes.fromhex(key))


def _damage_payload(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, reason", [
    (_damage_payload, "hash mismatch"),
    (lambda p: p.write_bytes(p.read_bytes()[:-1]), "length"),
    (lambda p: p.write_bytes(p.read_bytes()[:20]), "truncated header"),
    (lambda p: p.write_bytes(b"\x00" * 200), "not a fotadelta cache entry"),
    (lambda p: (p.unlink(), os.mkfifo(p)), "not a regular file"),
])
def test_corrupt_entry_is_recomputed(tmp_path: Path, pool: farm.LocalPool, damage: Callable[[Path], None],
                                     reason: str) -> None:
    releases = _releases(3)
    cache = farm.DeltaCache(tmp_path / "cache")
    good = _build(releases, tmp_path / "a", cache, pool)
    damage(_entry(cache, good))
    again = _build(releases, tmp_path / "b", cache, pool)
    assert _cached(again) == ["corrupt", "hit", "hit"]
    assert again.packages[0].note is not None and reason in again.packages[0].note
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    # The recomputed delta replaced the bad entry.
    assert _cached(_build(releases, tmp_path / "c", cache, pool)) == ["hit", "hit", "hit"]


def test_unwritable_entry_costs_only_time(tmp_path: Path, pool: farm.LocalPool) -> None:
    """A directory where an entry belongs can neither be read nor replaced: the delta is computed
    every time, the build succeeds and the manifest says why it was not cached."""
    releases = _releases(2)
    cache = farm.DeltaCache(tmp_path / "cache")
    entry = _entry(cache, _build(releases, tmp_path / "a", cache, pool))
    entry.unlink()
    entry.mkdir()
    for attempt in ("b", "c"):
        again = _build(releases, tmp_path / attempt, cache, pool)
        assert _cached(again) == ["corrupt"]
        assert "not a regular file" in str(again.packages[0].note) and "not cached" in str(again.packages[0].note)
    assert _files(tmp_path / "a") == _files(tmp_path / "c")


def test_well_formed_entries_with_the_wrong_delta_are_refused(tmp_path: Path, pool: farm.LocalPool) -> None:
    """Entries with a right header, hash and key that hold another pair's delta: only applying
    them shows it, and they are not used. An entry copied under another name keeps its own key."""
    releases = _releases(3)  # packages: 2.0->2.1, 2.0->2.2, 2.1->2.2
    cache = farm.DeltaCache(tmp_path / "cache")
    good = _build(releases, tmp_path / "a", cache, pool)
    keys = [bytes.fromhex(str(b.key)) for b in good.packages]
    payloads = [cache.get(k, 1 << 20) for k in keys]
    files = [cache.path(k).read_bytes() for k in keys]
    assert all(payloads)
    cache.put(keys[0], payloads[1] or b"")  # the right source, another target
    cache.put(keys[1], payloads[2] or b"")  # another source
    cache.path(keys[2]).write_bytes(files[0])
    again = _build(releases, tmp_path / "b", cache, pool)
    assert _cached(again) == ["corrupt"] * 3
    notes = [str(b.note) for b in again.packages]
    assert "does not rebuild the new image" in notes[0]
    assert "source image" in notes[1]
    assert "another key" in notes[2]
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_oversized_entry_is_not_read(tmp_path: Path) -> None:
    cache = farm.DeltaCache(tmp_path)
    key = bytes(range(32))
    cache.put(key, b"x" * 5000)
    assert cache.get(key, 5000) == b"x" * 5000
    with pytest.raises(farm.cache.CorruptEntry, match="limit"):
        cache.get(key, 4999)
    assert cache.get(bytes(32), 10) is None


def test_identical_images_share_one_delta(tmp_path: Path, pool: farm.LocalPool) -> None:
    """Two versions with the same image (a re-tagged release): its deltas are computed once."""
    r = _releases(3)
    releases = [r[0], r[1], ("2.1b", r[1][1]), r[2]]
    built = _build(releases, tmp_path / "repo", farm.DeltaCache(tmp_path / "cache"), pool)
    by_pair = {(b.from_version, b.to_version): b for b in built.packages}
    assert by_pair[("2.0", "2.1")].key == by_pair[("2.0", "2.1b")].key
    assert {by_pair[("2.0", "2.1")].cache, by_pair[("2.0", "2.1b")].cache} == {"miss", "hit"}
    # 2.0->2.1 = 2.0->2.1b, 2.1->2.2 = 2.1b->2.2, 2.0->2.2 and 2.1->2.1b: four deltas for six packages.
    assert built.manifest()["totals"]["computed"] == 4


class _Hostile(farm.LocalPool):
    """Workers that run the real task, then change its result on the way back."""

    def __init__(self, tamper: Callable[[Computed], Computed]) -> None:
        super().__init__(1, processes=False)
        self.tamper = tamper

    def run(self, fn: Callable[..., T], calls: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, T]]:
        for i, result in super().run(fn, calls):
            assert isinstance(result, Computed)
            yield i, self.tamper(result)  # type: ignore[misc]


@pytest.mark.parametrize("tamper, message", [
    (lambda c: replace(c, engine="0123456789abcdef"), "another fotadelta engine"),
    (lambda c: replace(c, payload=c.payload[:-1] + bytes([c.payload[-1] ^ 1])), "bad delta"),
])
def test_bad_worker_results_fail_the_build_and_keep_the_old_repository(
        tmp_path: Path, pool: farm.LocalPool, tamper: Callable[[Computed], Computed], message: str) -> None:
    releases = _releases(3)
    _build(releases[:2], tmp_path / "repo", None, pool)
    before = _files(tmp_path / "repo")
    cache = farm.DeltaCache(tmp_path / "cache")
    with _Hostile(tamper) as hostile, pytest.raises(farm.FarmError, match=message):
        _build(releases, tmp_path / "repo", cache, hostile)
    assert chain.Index.load(tmp_path / "repo").releases == {"Acme/S1": ["2.0", "2.1"]}
    assert _files(tmp_path / "repo") == before  # nothing staged is left, nothing replaced
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_a_failed_build_into_a_new_directory_leaves_nothing(tmp_path: Path) -> None:
    with _Hostile(lambda c: replace(c, engine="0123456789abcdef")) as hostile, pytest.raises(farm.FarmError):
        _build(_releases(3), tmp_path / "new" / "repo", None, hostile, full_images=True)
    assert list((tmp_path / "new").iterdir()) == []


def test_a_version_given_twice_is_refused(tmp_path: Path) -> None:
    r = _releases(2)
    with pytest.raises(ValueError, match="appears twice"):
        farm.build_repo([r[0], ("2.0", r[1][1])], tmp_path / "repo", KEY, make="A", model="B")
    assert not (tmp_path / "repo").exists()


def test_a_dying_worker_process_is_one_clear_error() -> None:
    with farm.LocalPool(1) as dying, pytest.raises(farm.FarmError, match="worker process died"):
        list(dying.run(os._exit, [(3,)]))


def test_threads_and_processes_build_the_same(tmp_path: Path, pool: farm.LocalPool) -> None:
    releases = _releases(3)
    with farm.LocalPool(2, processes=False) as threads:
        _build(releases, tmp_path / "t", None, threads)
    _build(releases, tmp_path / "p", None, pool)
    assert _files(tmp_path / "t") == _files(tmp_path / "p")


# --- Dask --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A real Dask cluster on loopback: a scheduler and two single-threaded worker processes (its HTTP
    server on any free port: 8787 may be taken by another cluster on the machine)."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as c:
        yield c


def _worker_pids(cluster: LocalCluster) -> set[int]:
    with Client(cluster) as client:
        return set(client.run(os.getpid).values())


def test_dask_cluster_builds_what_local_processes_build(tmp_path: Path, cluster: LocalCluster,
                                                        pool: farm.LocalPool) -> None:
    releases = _releases(5)
    pids = _worker_pids(cluster)
    assert len(pids) == 2 and os.getpid() not in pids
    with farm.DaskCluster(cluster.scheduler_address) as dask:
        assert dask.description.endswith(": 2 workers")
        remote = _build(releases, tmp_path / "dask", farm.DeltaCache(tmp_path / "cache"), dask, full_images=True)
    assert remote.executor is not None and remote.executor.startswith("Dask cluster at tcp://127.0.0.1:")
    deltas = [b for b in remote.packages if b.kind == "in-place"]
    assert len(deltas) == 10 and all(b.cache == "miss" for b in deltas)
    assert {int(str(b.worker).rsplit(":", 1)[1]) for b in deltas} <= pids
    _build(releases, tmp_path / "local", None, pool, full_images=True)
    local_files = _files(tmp_path / "local")
    dask_files = _files(tmp_path / "dask")
    assert local_files == dask_files and len(dask_files) == 10 + 4 + 1


def test_cli_on_a_dask_cluster_then_from_the_cache(tmp_path: Path, cluster: LocalCluster) -> None:
    releases = _releases(4, seed=9)
    for version, image in releases:
        (tmp_path / version).write_bytes(image)
    (tmp_path / "k").write_bytes(signing.private_pem(KEY))
    args = [*(f"{v}={tmp_path / v}" for v, _ in releases), "--key", tmp_path / "k", "--make", "Acme", "--model",
            "S1", "--block-size", str(BLOCK), "--cache", tmp_path / "cache"]
    first = run("build-repo", *args, "-o", tmp_path / "repo", "--scheduler", cluster.scheduler_address)
    assert first.returncode == 0, first.stderr
    assert "6 deltas computed (Dask cluster at tcp://127.0.0.1:" in first.stdout
    manifest = json.loads((tmp_path / "repo" / "build-manifest.json").read_text())
    assert manifest["totals"]["computed"] == 6 and manifest["executor"].endswith("2 workers")
    assert {p["worker"].rsplit(":", 1)[1] for p in manifest["packages"]} <= {str(p) for p in _worker_pids(cluster)}
    second = run("build-repo", *args, "-o", tmp_path / "again", "--workers", "1",
                 "--manifest", tmp_path / "again.json")
    assert second.returncode == 0, second.stderr
    assert "0 deltas computed (none), 6 from the cache" in second.stdout
    again = json.loads((tmp_path / "again.json").read_text())
    assert [p["key"] for p in again["packages"]] == [p["key"] for p in manifest["packages"]]
    assert all(p["cache"] == "hit" for p in again["packages"])
    assert _files(tmp_path / "again") == {k: v for k, v in _files(tmp_path / "repo").items()
                                          if k != "build-manifest.json"}


def test_unreachable_scheduler_is_one_clear_error() -> None:
    with pytest.raises(farm.FarmError, match="cannot reach the Dask scheduler"):
        farm.DaskCluster("tcp://127.0.0.1:9", timeout=1)


def test_cli_refuses_workers_with_a_scheduler(tmp_path: Path) -> None:
    proc = run("build-repo", "1=a", "2=b", "--key", "k", "--make", "A", "--model", "B", "-o", tmp_path,
               "--scheduler", "tcp://127.0.0.1:9", "--workers", "2")
    assert_one_line_error(proc, "--workers", status=2)
    proc = run("build-repo", "1=a", "2=b", "--key", "k", "--make", "A", "--model", "B", "-o", tmp_path,
               "--workers", "0")
    assert_one_line_error(proc, "--workers", status=2)


def test_the_farm_benchmark_pins_ten_fetchable_releases() -> None:
    """benchmarks/build_farm.py loads, and its manifest names ten sdists with what the package's
    fetcher needs (path, size, sha256) and images its extractors make (no download here)."""
    path = REPO / "benchmarks" / "build_farm.py"
    module = load_script(path, "fotadelta_build_farm_under_test")
    releases = module.pinned_releases(path.parent / "farm_releases.toml")
    assert len(releases) == 10
    assert [v for v, _, _ in releases] == sorted((v for v, _, _ in releases), key=lambda v: tuple(map(int, v.split("."))))
    for version, source, image in releases:
        assert source.path.endswith(f"/uflash-{version}.tar.gz") and source.size > 0 and len(source.sha256) == 64
        assert image.extract in EXTRACTORS and image.region == (0, 0x40000)
