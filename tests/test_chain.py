"""Package repositories and daisy chains: planning by bytes, one-session chains, resume after power cuts."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
from support import firmware_like, mutate

from fotadelta import chain, farm
from fotadelta.agent import Device
from fotadelta.flash import PowerLoss
from fotadelta.package import signing
from fotadelta.sim import Sim, handoff

BLOCK = 1024
KEY = signing.generate()
TRUST = signing.TrustStore.of([KEY.public_key()])


def _releases() -> list[tuple[str, bytes]]:
    r = random.Random(41)
    images = [firmware_like(r, 16_000)]
    for _ in range(3):
        images.append(mutate(r, images[-1], 10))
    return [(f"1.{i}", image) for i, image in enumerate(images)]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("repo")
    calls: list[tuple[int, int]] = []
    index = farm.build_repo(_releases(), d, KEY, make="Acme", model="S1", block_size=BLOCK,
                            progress=lambda done, total: calls.append((done, total))).index
    assert len(index.entries) == 6 and calls == [(n, 6) for n in range(7)]
    return d


@pytest.fixture()
def chain_only(repo: Path, tmp_path: Path) -> Path:
    """The same repository without the packages that skip a release: only a chain leads to 1.3."""
    index = chain.Index.load(repo)
    steps = [e for e in index.entries if int(e.to_version[2:]) == int(e.from_version[2:]) + 1]
    for e in steps:
        (tmp_path / e.file).write_bytes((repo / e.file).read_bytes())
    replace(index, entries=tuple(steps)).save(tmp_path)
    return tmp_path


def _device(version: str = "1.0") -> Device:
    image = dict(_releases())[version]
    return Device.with_image(image, make="Acme", model="S1", version=version, trust=TRUST,
                                     nvm=handoff(Sim()), block_size=BLOCK, park_blocks=8, slot_size=32 * BLOCK)


def test_plan_is_cheapest_by_bytes(repo: Path) -> None:
    index = chain.Index.load(repo)
    steps = chain.plan(index, "Acme", "S1", "1.0")
    assert steps[0].from_version == "1.0" and steps[-1].to_version == "1.3"
    cost = sum(e.size for e in steps)
    direct = next(e for e in index.entries if (e.from_version, e.to_version) == ("1.0", "1.3"))
    chained = sum(e.size for e in index.entries if (e.from_version, e.to_version) in
                  {("1.0", "1.1"), ("1.1", "1.2"), ("1.2", "1.3")})
    assert cost == min(cost, direct.size, chained)
    assert chain.plan(index, "Acme", "S1", "1.3") == []
    with pytest.raises(ValueError, match="no releases"):
        chain.plan(index, "Acme", "S9", "1.0")


def test_three_step_chain_in_one_session(chain_only: Path) -> None:
    device = _device()
    done: list[str] = []
    outcome = chain.run(device, chain_only, report=lambda step, o: done.append(f"{step.to_version}:{o.code}"))
    assert outcome.ok and done == ["1.1:200", "1.2:200", "1.3:200"]
    assert device.version == "1.3" and device.image() == dict(_releases())["1.3"]


@pytest.mark.parametrize("cut_after", [1, 12, 40, 75, 110, 150])
def test_chain_resumes_after_power_cuts(chain_only: Path, cut_after: int) -> None:
    """Cuts land within steps and between them; each boot runs the chain again until done."""
    device = _device()
    device.flash.arm(cut_after, seed=cut_after)
    with pytest.raises(PowerLoss):
        chain.run(device, chain_only)
    device.flash.arm(cut_after // 2 + 3, seed=cut_after + 1)  # and once more during recovery
    try:
        chain.run(device, chain_only)
    except PowerLoss:
        pass
    device.flash.arm(None)
    assert chain.run(device, chain_only).ok
    assert device.version == "1.3" and device.image() == dict(_releases())["1.3"]


def test_cli_build_repo_and_chain(tmp_path: Path) -> None:
    from test_cli import run
    releases = _releases()
    for version, image in releases:
        (tmp_path / version).write_bytes(image)
    assert run("keygen", "-o", tmp_path / "k").returncode == 0
    built = run("build-repo", *(f"{v}={tmp_path / v}" for v, _ in releases), "--key", tmp_path / "k", "--make",
                "Acme", "--model", "S1", "--block-size", str(BLOCK), "-q", "-o", tmp_path / "repo",
                "--cache", tmp_path / "cache")
    assert built.returncode == 0, built.stderr
    applied = run("chain", "--repo", tmp_path / "repo", "--make", "Acme", "--model", "S1", "--from", "1.0",
                  "--image", tmp_path / "1.0", "--pubkey", tmp_path / "k.pub", "-o", tmp_path / "out")
    assert applied.returncode == 0, applied.stderr
    assert "plan: 1.0 ->" in applied.stdout
    assert (tmp_path / "out").read_bytes() == releases[-1][1]


@pytest.fixture
def releases() -> list[tuple[str, bytes]]:
    """The consecutive uflash releases of firmware_samples (five micro:bit firmware versions);
    `make test` fetches them first."""
    from support import SAMPLE_PAIRS
    steps = sorted(SAMPLE_PAIRS.glob("uflash-microbit-release-*")) if SAMPLE_PAIRS.is_dir() else []
    if len(steps) < 3:
        pytest.skip("the micro:bit releases are not fetched: run `python firmware_samples/fetch.py --set demo`")
    releases = [(steps[0].name.split("-")[-2], (steps[0] / "old").read_bytes())]
    releases += [(d.name.split("-")[-1], (d / "new").read_bytes()) for d in steps]
    return releases


def test_real_firmware_chain_with_power_cuts(releases: list[tuple[str, bytes]], tmp_path: Path) -> None:
    everything = tmp_path / "all"
    index = farm.build_repo(releases, everything, KEY, make="BBC", model="micro:bit", block_size=BLOCK).index
    steps = [e for e in index.entries
             if [v for v, _ in releases].index(e.to_version) == [v for v, _ in releases].index(e.from_version) + 1]
    repo = tmp_path / "steps"
    repo.mkdir()
    for e in steps:
        (repo / e.file).write_bytes((everything / e.file).read_bytes())
    replace(index, entries=tuple(steps)).save(repo)
    first, last = releases[0], releases[-1]
    assert len(chain.plan(chain.Index.load(repo), "BBC", "micro:bit", first[0])) == len(releases) - 1 >= 3

    def device() -> Device:
        return Device.with_image(first[1], make="BBC", model="micro:bit", version=first[0], trust=TRUST,
                                 nvm=handoff(Sim()), block_size=BLOCK, park_blocks=32, slot_size=256 * BLOCK)

    whole = device()
    assert chain.run(whole, repo).ok and whole.image() == last[1]
    total = whole.flash.operations
    for cut_after in (total // 7, total // 3, total // 2 + 1, total - 5):
        d = device()
        d.flash.arm(cut_after, seed=cut_after)
        with pytest.raises(PowerLoss):
            chain.run(d, repo)
        d.flash.arm(None)
        assert chain.run(d, repo).ok
        assert d.version == last[0] and d.image() == last[1]


@pytest.fixture(scope="module")
def full_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Releases where the last one is rewritten from scratch: deltas to it cost more than its full image."""
    d = tmp_path_factory.mktemp("full-repo")
    releases = _releases()[:3]
    releases.append(("2.0", random.Random(77).randbytes(12_000)))
    index = farm.build_repo(releases, d, KEY, make="Acme", model="S1", block_size=BLOCK, full_images=True).index
    assert sum(e.from_version == "*" for e in index.entries) == 3
    return d


def test_plan_takes_a_full_image_when_it_is_cheapest(full_repo: Path) -> None:
    index = chain.Index.load(full_repo)
    steps = chain.plan(index, "Acme", "S1", "1.0", "2.0")
    assert [(s.from_version, s.to_version) for s in steps] == [("*", "2.0")]
    deltas = [e for e in index.entries if e.to_version == "2.0" and e.from_version != "*"]
    assert all(e.size > steps[0].size for e in deltas)
    # Where deltas are small, they still win.
    assert all(s.from_version != "*" for s in chain.plan(index, "Acme", "S1", "1.0", "1.2"))


@pytest.mark.parametrize("cut_after", [3, 9])
def test_full_image_install_survives_a_power_cut(full_repo: Path, cut_after: int) -> None:
    device = _device("1.0")
    device.flash.arm(cut_after)
    with pytest.raises(PowerLoss):
        chain.run(device, full_repo, "2.0")
    device.flash.arm(None)
    outcome = chain.run(device, full_repo, "2.0")  # the reboot: the same package is written again
    assert outcome.ok and device.version == "2.0"
    assert device.image() == random.Random(77).randbytes(12_000)


def test_any_version_is_only_for_full_images() -> None:
    from fotadelta import package
    with pytest.raises(ValueError, match="full image"):
        package.pack(b"a" * 100, b"b" * 100, KEY, make="A", model="B", from_version="*", to_version="2")
    full = package.pack(b"", b"b" * 100, KEY, make="A", model="B", from_version="*", to_version="2", full_image=True)
    m = package.parse(full).manifest
    assert (m.from_version, m.patch_kind, m.source_size) == ("*", package.PatchKind.FULL, 0)


def test_cli_full_image_package_from_any_version(tmp_path: Path) -> None:
    import subprocess
    import sys
    (tmp_path / "new").write_bytes(bytes(range(256)) * 40)
    signing_key = tmp_path / "k"
    signing_key.write_bytes(signing.private_pem(KEY))
    made = subprocess.run([sys.executable, "-m", "fotadelta.cli", "pack", "-", tmp_path / "new", "--key", signing_key,
                           "--make", "Acme", "--model", "S1", "--from", "*", "--to", "9.0", "--full",
                           "-o", tmp_path / "p"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    device = _device("1.1")
    from fotadelta.agent import install
    outcome = install(device, (tmp_path / "p").read_bytes())
    assert outcome.ok and device.version == "9.0" and device.image() == (tmp_path / "new").read_bytes()
