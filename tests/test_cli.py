"""The command line, run as a separate process like a user would."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from support import firmware_like, mutate

import fotadelta
from fotadelta.cli import common as cli_common
from fotadelta.cli import DiffProgress


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fotadelta.cli", *map(str, args)], cwd=cwd,
                          check=False, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str, status: int = 1) -> None:
    """Exit status 1 (failure) or 2 (bad arguments), one line on stderr naming what was wrong."""
    assert proc.returncode == status, proc
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fotadelta: error: ")
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    r = random.Random(17)
    old = firmware_like(r, 120_000)
    (d / "old.bin").write_bytes(old)
    (d / "new.bin").write_bytes(mutate(r, old, 30))
    (d / "other.bin").write_bytes(mutate(r, old, 30))
    (d / "random.bin").write_bytes(r.randbytes(20_000))
    (d / "unrelated.bin").write_bytes(r.randbytes(20_000))
    return d


def test_diff_apply_info_roundtrip(images: Path, tmp_path: Path) -> None:
    diff = run("diff", images / "old.bin", images / "new.bin", "-o", tmp_path / "u.fdp")
    assert diff.returncode == 0, diff.stderr
    assert "delta" in diff.stdout and "u.fdp" in diff.stdout
    assert len(diff.stdout.splitlines()) == 1

    apply = run("apply", images / "old.bin", tmp_path / "u.fdp", "-o", tmp_path / "out.bin")
    assert apply.returncode == 0, apply.stderr
    assert (tmp_path / "out.bin").read_bytes() == (images / "new.bin").read_bytes()

    info = run("info", tmp_path / "u.fdp", "--json")
    assert info.returncode == 0, info.stderr
    described = json.loads(info.stdout)
    patch = (tmp_path / "u.fdp").read_bytes()
    assert described == fotadelta.info(patch).to_dict()
    assert described["kind"] == "delta"
    assert described["patch_bytes"] == len(patch)
    assert described["new_size"] == len((images / "new.bin").read_bytes())

    human = run("info", tmp_path / "u.fdp")
    assert human.returncode == 0, human.stderr
    assert "delta" in human.stdout
    assert all(stream["name"] in human.stdout for stream in described["streams"])


def test_threads_do_not_change_the_patch(tmp_path: Path) -> None:
    """--threads N: ranges of 512 KiB are scanned by N threads, the patch is the same."""
    r = random.Random(23)
    old = firmware_like(r, 1 << 20) * 2
    (tmp_path / "old.bin").write_bytes(old)
    (tmp_path / "new.bin").write_bytes(mutate(r, old, 200))
    for threads in ("1", "3"):
        diff = run("diff", "-q", "--threads", threads, tmp_path / "old.bin", tmp_path / "new.bin",
                   "-o", tmp_path / f"{threads}.fdp")
        assert diff.returncode == 0, diff.stderr
    assert (tmp_path / "1.fdp").read_bytes() == (tmp_path / "3.fdp").read_bytes()
    refused = run("diff", "--threads", "0", tmp_path / "old.bin", tmp_path / "new.bin", "-o", tmp_path / "0.fdp")
    assert refused.returncode == 2 and "--threads" in refused.stderr and "Traceback" not in refused.stderr


def test_quiet(images: Path, tmp_path: Path) -> None:
    diff = run("diff", "--quiet", images / "old.bin", images / "new.bin", "-o", tmp_path / "u.fdp")
    apply = run("apply", "-q", images / "old.bin", tmp_path / "u.fdp", "-o", tmp_path / "out.bin")
    assert (diff.returncode, diff.stdout, diff.stderr) == (0, "", "")
    assert (apply.returncode, apply.stdout, apply.stderr) == (0, "", "")
    assert (tmp_path / "out.bin").read_bytes() == (images / "new.bin").read_bytes()


def test_full_image_patch(images: Path, tmp_path: Path) -> None:
    # Two random images: nothing to copy, so the full image is the smaller patch whatever the
    # thresholds (the firmware-like new.bin from random.bin came within bytes of it either way).
    diff = run("diff", images / "random.bin", images / "unrelated.bin", "-o", tmp_path / "full.fdp")
    assert diff.returncode == 0, diff.stderr
    assert "full" in diff.stdout
    human = run("info", tmp_path / "full.fdp")
    assert human.returncode == 0
    assert "FULL IMAGE" in human.stdout and "full new image" in human.stdout
    described = json.loads(run("info", "--json", tmp_path / "full.fdp").stdout)
    assert described["kind"] == "full"
    assert [s["name"] for s in described["streams"]] == ["image"]
    apply = run("apply", images / "random.bin", tmp_path / "full.fdp", "-o", tmp_path / "out.bin")
    assert apply.returncode == 0, apply.stderr
    assert (tmp_path / "out.bin").read_bytes() == (images / "unrelated.bin").read_bytes()


def test_corrupt_patch(images: Path, tmp_path: Path) -> None:
    patch = fotadelta.diff((images / "old.bin").read_bytes(), (images / "new.bin").read_bytes())
    broken = bytearray(patch)
    broken[len(broken) // 2] ^= 0xFF
    (tmp_path / "broken.fdp").write_bytes(broken)
    (tmp_path / "short.fdp").write_bytes(patch[:-3])
    for name in ("broken.fdp", "short.fdp"):
        proc = run("apply", images / "old.bin", tmp_path / name, "-o", tmp_path / "out.bin")
        assert_one_line_error(proc)
        assert not (tmp_path / "out.bin").exists()
    assert_one_line_error(run("info", tmp_path / "short.fdp"))
    (tmp_path / "garbage.fdp").write_bytes(b"definitely not a patch")
    assert_one_line_error(run("info", "--json", tmp_path / "garbage.fdp"), "not a fotadelta patch")


def test_missing_files(images: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.bin"
    assert_one_line_error(run("diff", missing, images / "new.bin", "-o", tmp_path / "u.fdp"), "missing.bin")
    assert_one_line_error(run("diff", images / "old.bin", missing, "-o", tmp_path / "u.fdp"), "missing.bin")
    assert_one_line_error(run("apply", images / "old.bin", missing, "-o", tmp_path / "o.bin"), "missing.bin")
    assert_one_line_error(run("apply", missing, images / "new.bin", "-o", tmp_path / "o.bin"), "missing.bin")
    assert_one_line_error(run("info", missing), "missing.bin")
    assert_one_line_error(run("info", tmp_path), "Is a directory")
    unwritable = tmp_path / "no" / "such" / "dir" / "u.fdp"
    assert_one_line_error(run("diff", images / "old.bin", images / "new.bin", "-o", unwritable))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_wrong_source(images: Path, tmp_path: Path) -> None:
    assert run("diff", "-q", images / "old.bin", images / "new.bin", "-o", tmp_path / "u.fdp").returncode == 0
    proc = run("apply", images / "other.bin", tmp_path / "u.fdp", "-o", tmp_path / "out.bin")
    assert_one_line_error(proc, "source")
    proc = run("apply", images / "random.bin", tmp_path / "u.fdp", "-o", tmp_path / "out.bin")
    assert_one_line_error(proc, "source")
    assert not (tmp_path / "out.bin").exists()


def test_usage_and_help() -> None:
    top = run("--help")
    assert top.returncode == 0
    for name in ("diff", "apply", "info"):
        assert name in top.stdout
    version = run("--version")
    assert version.returncode == 0 and fotadelta.__version__ in version.stdout
    usage = run("diff", "only-one-arg")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


def _terminal() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=100), buf


def test_progress_shown_at_once_for_large_images() -> None:
    console, buf = _terminal()
    with DiffProgress(8 << 20, console=console) as progress:
        progress(1 << 20, 8 << 20)
        progress(8 << 20, 8 << 20)
    assert "compressing" in buf.getvalue() or "matching" in buf.getvalue()


def test_progress_delayed_for_small_images(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_common, "PROGRESS_DELAY_S", 0.05)
    console, buf = _terminal()
    with DiffProgress(1000, console=console) as progress:
        progress(10, 1000)
        assert buf.getvalue() == ""  # not yet: small images get no bar at first
        for _ in range(200):  # the bar appears from a timer thread
            if "matching" in buf.getvalue():
                break
            time.sleep(0.025)
    assert "matching" in buf.getvalue()


def test_progress_quiet_or_not_a_terminal() -> None:
    buf = io.StringIO()
    for console, enabled in ((Console(file=buf, force_terminal=True), False), (Console(file=buf), True)):
        with DiffProgress(8 << 20, enabled=enabled, console=console) as progress:
            progress(8 << 20, 8 << 20)
    assert buf.getvalue() == ""


def test_in_place_diff_info_apply(images: Path, tmp_path: Path) -> None:
    patch, out = tmp_path / "u.fdip", tmp_path / "new.bin"
    made = run("diff", "--in-place", "--block-size", "4096", "--ram", "8192", images / "old.bin",
               images / "new.bin", "-o", patch)
    assert made.returncode == 0, made.stderr
    assert "in place" in made.stdout
    described = json.loads(run("info", "--json", patch).stdout)
    assert described["kind"] == "in-place" and described["work_ram"] <= 8192
    assert described["penalty"] is None  # the plain patch is made only when asked for
    compared = json.loads(run("info", "--json", patch, "--old", images / "old.bin", "--new", images / "new.bin").stdout)
    assert compared["plain_patch_bytes"] == len(fotadelta.diff((images / "old.bin").read_bytes(),
                                                               (images / "new.bin").read_bytes()))
    assert compared["penalty"] == pytest.approx(compared["patch_bytes"] / compared["plain_patch_bytes"])
    applied = run("apply", images / "old.bin", patch, "-o", out)
    assert applied.returncode == 0, applied.stderr
    assert out.read_bytes() == (images / "new.bin").read_bytes()


def test_in_place_ram_budget_refused(images: Path, tmp_path: Path) -> None:
    proc = run("diff", "--in-place", "--block-size", "4096", "--ram", "4096", images / "old.bin",
               images / "new.bin", "-o", tmp_path / "u.fdip")
    assert_one_line_error(proc, "work RAM")
    assert not (tmp_path / "u.fdip").exists()


def test_powercut_reports_json(tmp_path: Path) -> None:
    r = random.Random(5)
    old = firmware_like(r, 8000)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(mutate(r, old, 8))
    proc = run("powercut", tmp_path / "old", tmp_path / "new", "--block-size", "1024", "--every", "2", "-q")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["failed"] == 0 and summary["cuts"] > 0
    assert summary["recovered"] == len(range(0, summary["operations"], 2))


def test_powercut_needs_new_or_patch(images: Path) -> None:
    assert_one_line_error(run("powercut", images / "old.bin"), "NEW or --patch", status=2)


def test_demo_runs_over_dm_on_a_release_chain(tmp_path: Path) -> None:
    r = random.Random(9)
    images = [firmware_like(r, 40_000)]
    for _ in range(2):
        images.append(mutate(r, images[-1], 20))
    for i, (old, new) in enumerate(zip(images, images[1:])):
        pair = tmp_path / "pairs" / f"generated-{i}"
        pair.mkdir(parents=True)
        (pair / "old").write_bytes(old)
        (pair / "new").write_bytes(new)
    proc = run("demo", "--pairs", tmp_path / "pairs")
    assert proc.returncode == 0, proc.stderr
    for story in ("chain of updates", "other operator's SIM", "power cut mid-install", "asks for software",
                  "web portal pick"):
        assert story in proc.stdout
    assert "1.0 > 1.1 > 1.2" in proc.stdout  # the chain device went through every release
    assert "404" in proc.stdout and "refused the package before any flash write (0 flash operations" in proc.stdout
    assert "fotadelta demo: over-the-air updates across 3 firmware releases, 1.0 to 1.2" in proc.stdout
    legend = proc.stdout.split("FUMO result codes, as each device reported its updates:\n")[1].splitlines()
    assert legend[:2] == ["  200  successful", "  404  package validation failed (signature or SIM)"]
