"""The DM commands as a user runs them: `serve`, `device`, `publish`, `assign`, as real processes."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import firmware_like, mutate


def cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "fotadelta.cli", *map(str, args)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    r = random.Random(3)
    v1 = firmware_like(r, 30_000)
    (tmp_path / "v1").write_bytes(v1)
    (tmp_path / "v2").write_bytes(mutate(r, v1, 10))
    subprocess.run(cli("keygen", "-o", tmp_path / "k"), check=True, capture_output=True)
    subprocess.run(cli("pack", tmp_path / "v1", tmp_path / "v2", "--key", tmp_path / "k", "--make", "Acme",
                       "--model", "Sensor", "--from", "1.0", "--to", "1.1", "--in-place", "-o", tmp_path / "p.fdpkg"),
                   check=True, capture_output=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(cli("serve", "--data", tmp_path / "srv", "--port", str(port)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/api/fleet", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        yield url, tmp_path
    finally:
        proc.terminate()
        proc.wait(10)


def test_publish_then_a_listening_device_is_updated_on_assign(served: tuple[str, Path]) -> None:
    url, tmp = served
    done = subprocess.run(cli("publish", tmp / "p.fdpkg", "--server", url), capture_output=True, text=True)
    assert done.returncode == 0 and "package 1" in done.stdout, done.stderr
    device = subprocess.Popen(cli("device", "--server", url, "--imei", "490154203237518", "--image", tmp / "v1",
                                  "--pubkey", tmp / "k.pub", "-o", tmp / "out"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while "490154203237518" not in httpx.get(f"{url}/api/fleet").text or \
                not httpx.get(f"{url}/api/fleet").json()["devices"][0]["push_url"]:
            assert device.poll() is None, device.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        job = subprocess.run(cli("assign", "--imei", "490154203237518", "--to", "1.1", "--server", url),
                             capture_output=True, text=True)
        assert job.returncode == 0 and "notified" in job.stdout, job.stderr
        while httpx.get(f"{url}/api/fleet").json()["jobs"][0]["state"] != "succeeded":
            assert time.monotonic() < deadline, httpx.get(f"{url}/api/fleet").json()["jobs"]
            time.sleep(0.1)
    finally:
        device.terminate()
        out, err = device.communicate(timeout=10)
    assert "stopped at 1.1" in out, (out, err)
    assert (tmp / "out").read_bytes() == (tmp / "v2").read_bytes()


def test_device_asks_for_software_once(served: tuple[str, Path]) -> None:
    url, tmp = served
    subprocess.run(cli("publish", tmp / "p.fdpkg", "--server", url), check=True, capture_output=True)
    first = subprocess.run(cli("device", "--server", url, "--imei", "1", "--image", tmp / "v1", "--pubkey",
                               tmp / "k.pub", "--once"), capture_output=True, text=True)
    assert first.returncode == 0 and "at 1.0" in first.stdout, first.stderr
    again = subprocess.run(cli("device", "--server", url, "--imei", "1", "--image", tmp / "v1", "--pubkey",
                               tmp / "k.pub", "--once", "--request-software", "-o", tmp / "out"),
                           capture_output=True, text=True)
    assert again.returncode == 0 and "at 1.1" in again.stdout, again.stderr
    assert (tmp / "out").read_bytes() == (tmp / "v2").read_bytes()


def test_unreachable_server_is_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run(cli("device", "--server", f"http://127.0.0.1:{free_port()}", "--imei", "1", "--once"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("fotadelta: error: gave up after")


def test_admin_api_refuses_bad_requests(served: tuple[str, Path]) -> None:
    url, _ = served
    assert httpx.post(f"{url}/api/packages", content=b"not a package").status_code == 400
    assert httpx.post(f"{url}/api/devices/IMEI:9/update", json={"version": "1.1"}).status_code == 404
    assert httpx.post(f"{url}/api/devices/IMEI:9/update", content=b"{").status_code == 400


def test_serve_refuses_a_bad_limit_or_push_network_in_one_line(tmp_path: Path) -> None:
    for option in (["--limit", "max_items=many"], ["--limit", "no_such_limit=3"], ["--limit", "max_items=0"],
                   ["--push-network", "not-a-network"]):
        proc = subprocess.run(cli("serve", "--data", tmp_path / "srv", "--port", str(free_port()), *option),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, (option, proc.stderr)
        assert proc.stderr.startswith("fotadelta: error: ") and proc.stderr.count("\n") == 1, proc.stderr


def test_pack_signs_a_security_version_that_inspect_shows(tmp_path: Path) -> None:
    import json
    (tmp_path / "v").write_bytes(b"firmware image")
    subprocess.run(cli("keygen", "-o", tmp_path / "k"), check=True, capture_output=True)
    subprocess.run(cli("pack", "-", tmp_path / "v", "--full", "--from", "*", "--to", "2.0", "--key", tmp_path / "k",
                       "--make", "Acme", "--model", "S1", "--security-version", "7", "--allow-downgrade",
                       "-o", tmp_path / "p"), check=True, capture_output=True)
    shown = json.loads(subprocess.run(cli("inspect", tmp_path / "p", "--json"), check=True, capture_output=True,
                                      text=True).stdout)
    assert (shown["security_version"], shown["allow_downgrade"]) == (7, True)
