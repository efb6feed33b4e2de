"""The sdist as a newcomer gets it: built with `python -m build`, installed with pip into a fresh
virtualenv (the C core compiled from the sdist alone), then run from an empty directory.

It compiles the C core once (about a minute on one core); `pytest -m "not packaging"` leaves it
out while you work. CI runs it with the rest of the suite."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import fotadelta

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # Nothing of the development install may leak in: no PYTHONPATH, no active virtualenv.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{' '.join(map(str, args))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.packaging
def test_sdist_builds_installs_and_runs_in_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--sdist", "--outdir", dist, REPO)
    (sdist,) = dist.glob("fotadelta-*.tar.gz")
    with tarfile.open(sdist) as tar:
        shipped = {Path(*Path(name).parts[1:]).as_posix() for name in tar.getnames()}
    needed = {p.relative_to(REPO).as_posix() for p in (REPO / "csrc").glob("*.[ch]")}
    needed |= {"src/fotadelta/_core.pyx", "src/fotadelta/_core.pyi", "src/fotadelta/py.typed", "MANIFEST.in"}
    assert needed <= shipped, sorted(needed - shipped)
    assert not any(name.startswith(("build/", ".build/")) or name.endswith((".so", ".o")) for name in shipped)

    venv = tmp_path / "venv"
    # No pip inside: this interpreter's pip installs into it (no ensurepip needed, one bootstrap fewer).
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    _run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q",
         "--disable-pip-version-check", sdist)

    empty = tmp_path / "empty"
    empty.mkdir()
    exe = venv / "bin" / "fotadelta"
    assert _run(exe, "--version", cwd=empty).stdout.strip() == f"fotadelta {fotadelta.__version__}"
    where = _run(venv / "bin" / "python", "-c", "import fotadelta._core as c; print(c.__file__)", cwd=empty)
    assert where.stdout.strip().startswith(str(venv)), where.stdout  # the compiled core, from the sdist

    # The round trips cibuildwheel runs on each wheel: plain and in-place diff/apply.
    assert _run(venv / "bin" / "python", REPO / "tests" / "wheel_smoke.py", cwd=empty).stdout == "ok\n"
    # The main job from the installed package alone (offline: a generated release chain; the fetch of
    # the real releases is tested over loopback in test_samples.py), leaving the directory as it was.
    demo = _run(exe, "demo", "--offline", "--cache", tmp_path / "cache", cwd=empty)
    assert "What happened on each device" in demo.stdout and "FUMO result codes" in demo.stdout
    assert sorted(p.name for p in empty.iterdir()) == []
