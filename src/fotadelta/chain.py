"""Package repositories and daisy chains: bring a device from its version to the latest in one session.

A repository is a directory of packages with an `index.json` (fotadelta.farm builds both): per
package its file, make, model, from- and to-version and size, and per make/model the released
versions in order. The planner picks the cheapest way to the target by bytes to download (one
direct package or a chain of them, shortest path over versions); the runner installs the steps
one after the other, and after a power cut simply starts again from the device's current
version, the interrupted step resuming from its journal."""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from fotadelta import package
from fotadelta.agent import Device, FumoResult, Outcome, install
from fotadelta.files import write_atomic

INDEX = "index.json"


@dataclass(frozen=True)
class Entry:
    """One package of a repository."""

    file: str
    make: str
    model: str
    from_version: str
    to_version: str
    size: int


@dataclass(frozen=True)
class Index:
    entries: tuple[Entry, ...]
    releases: dict[str, list[str]]  # "make/model" -> versions, oldest first

    @classmethod
    def load(cls, repo: Path) -> Index:
        try:
            raw = json.loads((repo / INDEX).read_text())
            return cls(tuple(Entry(**e) for e in raw["packages"]), {k: list(v) for k, v in raw["releases"].items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{repo / INDEX} is not a valid package index: {exc}") from None

    def to_dict(self) -> dict[str, object]:
        return {"packages": [asdict(e) for e in self.entries], "releases": self.releases}

    def save(self, repo: Path) -> None:
        write_atomic(repo / INDEX, (json.dumps(self.to_dict(), indent=2) + "\n").encode())

    def latest(self, make: str, model: str) -> str:
        versions = self.releases.get(f"{make}/{model}")
        if not versions:
            raise ValueError(f"the repository has no releases of {make} {model}")
        return versions[-1]


def plan(index: Index, make: str, model: str, from_version: str, to_version: str | None = None) -> list[Entry]:
    """Cheapest sequence of packages (fewest bytes) from from_version to to_version (default latest).

    A full image (from-version ANY_VERSION) is a way to its version from every version."""
    target = to_version or index.latest(make, model)
    if from_version == target:
        return []
    edges: dict[str, list[Entry]] = {}
    for e in index.entries:
        if (e.make, e.model) == (make, model):
            edges.setdefault(e.from_version, []).append(e)
    best: dict[str, int] = {from_version: 0}
    via: dict[str, tuple[str, Entry]] = {}
    queue = [(0, from_version)]
    while queue:
        cost, version = heapq.heappop(queue)
        if version == target:
            break
        if cost > best.get(version, cost):
            continue
        for e in edges.get(version, []) + edges.get(package.ANY_VERSION, []):
            if cost + e.size < best.get(e.to_version, 1 << 62):
                best[e.to_version] = cost + e.size
                via[e.to_version] = (version, e)
                heapq.heappush(queue, (cost + e.size, e.to_version))
    if target not in via:
        raise ValueError(f"no package path from {make} {model} {from_version} to {target}")
    steps, at = [], target
    while at != from_version:
        at, step = via[at]
        steps.append(step)
    return steps[::-1]


def run(device: Device, repo: Path, to_version: str | None = None,
        report: Callable[[Entry, Outcome], None] | None = None) -> Outcome:
    """Install the cheapest chain to to_version (default latest); call it again after a power cut."""
    index = Index.load(repo)
    target = to_version or index.latest(device.make, device.model)
    last = Outcome(FumoResult.SUCCESSFUL, f"already at {target}")
    # Re-planned after each step from the version the device reached.
    while device.version != target:
        step = plan(index, device.make, device.model, device.version, target)[0]
        last = install(device, (repo / step.file).read_bytes())
        if report is not None:
            report(step, last)
        if not last.ok:
            return last
    return last
