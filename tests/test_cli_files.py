"""Every command that writes a file, on a full disk: one line of error, nothing partial left behind,
an existing output untouched (every writer goes through fotadelta.files).

The disk is a 64 KiB tmpfs filled to the last byte when this runs as root and may mount one;
otherwise each command runs with RLIMIT_FSIZE at 64 bytes (SIGXFSZ ignored, so a write past it
fails with EFBIG), which fails the same writes the same way."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import firmware_like, mutate
from test_cli import assert_one_line_error

from fotadelta.files import atomic_writer, write_atomic

LIMIT = 64  # smaller than anything a command writes, keys included


@dataclass
class Disk:
    root: Path  # where outputs go
    mode: str  # "tmpfs" or "rlimit"

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        preexec: Callable[[], None] | None = None
        if self.mode == "rlimit":
            def preexec() -> None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (inherited through exec)
                resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))
        return subprocess.run([sys.executable, "-m", "fotadelta.cli", *map(str, args)], capture_output=True,
                              text=True, timeout=300, stdin=subprocess.DEVNULL, preexec_fn=preexec)

    def fill(self) -> None:
        """Take the disk's last free byte (tmpfs); the rlimit disk is full for every command already."""
        if self.mode == "tmpfs":
            fd = os.open(self.root / ".filler", os.O_WRONLY | os.O_CREAT)
            try:
                for chunk in (b"\0" * 4096, b"\0"):
                    with contextlib.suppress(OSError):
                        while True:
                            os.write(fd, chunk)
            finally:
                os.close(fd)

    def files(self) -> set[str]:
        return {str(p.relative_to(self.root)) for p in self.root.rglob("*")} - {".filler"}


def _mount_tmpfs(where: Path) -> bool:
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def disk() -> Iterator[Disk]:
    with tempfile.TemporaryDirectory(prefix="fotadelta-full-") as tmp:
        root = Path(tmp)
        mounted = _mount_tmpfs(root)
        try:
            yield Disk(root, "tmpfs" if mounted else "rlimit")
        finally:
            if mounted:
                subprocess.run(["umount", "-l", str(root)], check=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    r = random.Random(31)
    v1 = firmware_like(r, 60_000)
    v2 = mutate(r, v1, 40)
    (d / "v1").write_bytes(v1)
    (d / "v2").write_bytes(v2)
    (d / "v3").write_bytes(mutate(r, v2, 40))
    run = Disk(d, "none").run
    assert run("keygen", "-o", d / "k").returncode == 0
    assert run("diff", "-q", d / "v1", d / "v2", "-o", d / "plain.fdp").returncode == 0
    assert run("diff", "-q", "--in-place", d / "v1", d / "v2", "-o", d / "ip.fdip").returncode == 0
    assert run("build-repo", "-q", "1.0=" + str(d / "v1"), "1.1=" + str(d / "v2"), "--key", d / "k", "--make", "A",
               "--model", "M", "-o", d / "repo").returncode == 0
    return d


def _writers(i: Path, out: Path) -> dict[str, list[str | Path]]:
    pack = ["pack", i / "v1", i / "v2", "--key", i / "k", "--make", "A", "--model", "M", "--from", "1.0", "--to",
            "1.1", "-o", out]
    return {
        "diff": ["diff", "-q", i / "v1", i / "v2", "-o", out],
        "diff --in-place": ["diff", "-q", "--in-place", i / "v1", i / "v2", "-o", out],
        "apply": ["apply", "-q", i / "v1", i / "plain.fdp", "-o", out],
        "apply in place": ["apply", "-q", i / "v1", i / "ip.fdip", "-o", out],
        "pack": pack,
        "pack --in-place": [*pack, "--in-place"],
        "chain": ["chain", "-q", "--repo", i / "repo", "--make", "A", "--model", "M", "--from", "1.0", "--image",
                  i / "v1", "--pubkey", i / "k.pub", "-o", out],
        "keygen": ["keygen", "-q", "--force", "-o", out],
    }


WRITERS = list(_writers(Path(), Path()))


@pytest.mark.parametrize("name", WRITERS)
def test_writer_on_a_full_disk_leaves_nothing_partial(name: str, inputs: Path, disk: Disk) -> None:
    out = disk.root / "out"
    before = b"the previous output, which must survive\n" * 4
    out.write_bytes(before)
    if name == "keygen":
        (disk.root / "out.pub").write_bytes(before)
    disk.fill()
    proc = disk.run(*_writers(inputs, out)[name])
    assert_one_line_error(proc, str(out))
    assert any(text in proc.stderr for text in ("No space left on device", "File too large")), proc.stderr
    assert out.read_bytes() == before
    assert disk.files() <= {"out", "out.pub"}, disk.files()


def test_build_repo_on_a_full_disk_removes_what_it_wrote(inputs: Path, disk: Disk) -> None:
    disk.fill()
    proc = disk.run("build-repo", "-q", "1.0=" + str(inputs / "v1"), "1.1=" + str(inputs / "v2"),
                    "1.2=" + str(inputs / "v3"), "--key", inputs / "k", "--make", "A", "--model", "M",
                    "-o", disk.root / "repo")
    assert_one_line_error(proc)
    assert disk.files() == set(), disk.files()


def test_atomic_writer_keeps_the_old_file_when_the_producer_fails(tmp_path: Path) -> None:
    target = tmp_path / "image.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_writer(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("the producer failed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["image.bin"]
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    write_atomic(tmp_path / "secret", b"k", mode=0o600)
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600


def test_atomic_writer_names_the_target_when_its_directory_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        write_atomic(tmp_path / "no" / "such" / "file", b"x")
    assert caught.value.filename == str(tmp_path / "no" / "such" / "file")
