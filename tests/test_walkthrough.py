"""The walkthrough in the README and docs/quickstart.md, run exactly as written.

The commands are taken from the ```sh blocks between `<!-- walkthrough:start -->` and
`<!-- walkthrough:end -->`, so the documents and this test cannot drift apart. They run in an empty
directory as a user would type them, with three rules a person follows by reading:

- a command marked `# terminal N: keeps running` runs in the background; the next command waits
  until it says "(Ctrl-C to stop)";
- `# press Ctrl-C in terminal N` interrupts that command, which must then exit with status 0;
- every other line runs in `sh` and must exit with status 0.

The one change: the server's port, 8080 in the documents, becomes a free port here (a test must
not depend on 8080 being free)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "README.md", REPO / "docs" / "quickstart.md")
BACKGROUND = re.compile(r"#\s*terminal (\d+): keeps running")
INTERRUPT = re.compile(r"^#\s*press Ctrl-C in terminal (\d+)\s*$")
READY = "(Ctrl-C to stop)"


def walkthrough(doc: Path) -> list[str]:
    """The command lines of doc's walkthrough, in order (continuation lines joined)."""
    text = doc.read_text()
    section = text.split("<!-- walkthrough:start -->", 1)[1].split("<!-- walkthrough:end -->", 1)[0]
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and (not line.startswith("#") or INTERRUPT.match(line)):
                lines.append(line)
    return lines


def test_readme_and_quickstart_give_the_same_walkthrough() -> None:
    readme, quickstart = (walkthrough(doc) for doc in DOCS)
    assert quickstart, "docs/quickstart.md has no walkthrough"
    assert readme == quickstart
    assert readme[0].startswith("fotadelta keygen") and any(line.startswith("fotadelta assign") for line in readme)


@dataclass
class Terminal:
    """A command that keeps running, and what it printed so far."""

    proc: subprocess.Popen[str]
    out: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out.append(line)

    def text(self) -> str:
        return "".join(self.out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_walkthrough_runs_verbatim(tmp_path: Path) -> None:
    commands = walkthrough(DOCS[1])
    port = str(_free_port())
    assert all(c.count("8080") <= 1 for c in commands) and any("8080" in c for c in commands)
    # `fotadelta` as installed beside this interpreter, as the user's shell finds it.
    env = {**os.environ, "PATH": f"{sysconfig.get_path('scripts')}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("FOTADELTA_SERVER", None)
    env.pop("FOTADELTA_ADMIN_TOKEN", None)
    terminals: dict[str, Terminal] = {}
    transcript: list[str] = []
    try:
        for command in commands:
            line = command.replace("8080", port)
            if (stop := INTERRUPT.match(line)) is not None:
                term = terminals[stop.group(1)]
                term.proc.send_signal(signal.SIGINT)
                assert term.proc.wait(60) == 0, (line, term.text(), term.proc.stderr.read() if term.proc.stderr
                                                 else "")
                transcript.append(f"$ {line}\n{term.text()}")
                continue
            if (bg := BACKGROUND.search(line)) is not None:
                proc = subprocess.Popen(shlex.split(line, comments=True), cwd=tmp_path, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
                term = terminals[bg.group(1)] = Terminal(proc)
                deadline = time.monotonic() + 120
                while READY not in term.text():
                    assert proc.poll() is None, (line, term.text(), proc.communicate())
                    assert time.monotonic() < deadline, (line, term.text())
                    time.sleep(0.1)
                continue
            done = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=300, stdin=subprocess.DEVNULL)
            transcript.append(f"$ {line}\n{done.stdout}{done.stderr}")
            assert done.returncode == 0, "\n".join(transcript)
    finally:
        for term in terminals.values():
            if term.proc.poll() is None:
                term.proc.kill()
                term.proc.wait()
    said = "\n".join(transcript)
    assert "IMEI:490154203237518: updated to 1.1 (job 1, FUMO 200)" in said, said
    assert "the device runs release 1.1" in said, said
    assert "updated, now at 1.1: FUMO 200 (successful): firmware updated 1.0 -> 1.1" in terminals["3"].text()
    assert (tmp_path / "device.bin").read_bytes() == (tmp_path / "v2.bin").read_bytes()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_walkthrough_markers_are_well_formed(doc: Path) -> None:
    text = doc.read_text()
    assert text.count("<!-- walkthrough:start -->") == 1 and text.count("<!-- walkthrough:end -->") == 1
    started = {m.group(1) for line in walkthrough(doc) if (m := BACKGROUND.search(line))}
    stopped = {m.group(1) for line in walkthrough(doc) if (m := INTERRUPT.match(line))}
    assert started == stopped == {"2", "3"}
