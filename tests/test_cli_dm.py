"""The DM commands as a user runs them: `serve`, `device`, `publish`, `assign`, as real processes."""

from __future__ import annotations

import json
import random
import re
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
                       "--model", "S1", "--from", "1.0", "--to", "1.1", "--in-place", "-o", tmp_path / "p.fdpkg"),
                   check=True, capture_output=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(cli("serve", "--data", tmp_path / "srv", "--port", str(port)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        yield url, tmp_path
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_registered(url: str, device: subprocess.Popen[str], imei: str) -> None:
    deadline = time.monotonic() + 60
    while not any(d["dev_id"] == f"IMEI:{imei}" and d["push_url"] for d in httpx.get(f"{url}/api/v1/devices").json()):
        assert device.poll() is None, device.communicate()
        assert time.monotonic() < deadline, "the device did not register"
        time.sleep(0.1)


def test_publish_then_a_listening_device_is_updated_on_assign(served: tuple[str, Path]) -> None:
    url, tmp = served
    done = subprocess.run(cli("publish", tmp / "p.fdpkg", "--server", url), capture_output=True, text=True)
    assert done.returncode == 0 and "package 1" in done.stdout, done.stderr
    # The device's defaults (make Acme, model S1) are the README's: no --make/--model needed.
    device = subprocess.Popen(cli("device", "--server", url, "--imei", "490154203237518", "--image", tmp / "v1",
                                  "--pubkey", tmp / "k.pub", "-o", tmp / "out"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_registered(url, device, "490154203237518")
        job = subprocess.run(cli("assign", "--imei", "490154203237518", "--to", "1.1", "--server", url, "--wait"),
                             capture_output=True, text=True)
        assert job.returncode == 0 and "notified" in job.stdout, job.stderr
        assert "IMEI:490154203237518: updated to 1.1 (job 1, FUMO 200)" in job.stdout, job.stdout
        listed = subprocess.run(cli("jobs", "--server", url), capture_output=True, text=True)
        assert listed.returncode == 0, listed.stderr
        assert re.search(r"1\s+IMEI:490154203237518\s+1\.0 -> 1\.1\s+1\.1\s+succeeded\s+200 successful",
                         listed.stdout), listed.stdout
        (one,) = json.loads(subprocess.run(cli("jobs", "--device", "490154203237518", "--json", "--server", url),
                                           capture_output=True, text=True).stdout)
        assert (one["state"], one["result_code"], one["result"], one["goal"]) == ("succeeded", 200, "successful",
                                                                                "1.1")
        fleet = subprocess.run(cli("fleet", "--server", url), capture_output=True, text=True)
        assert re.search(r"IMEI:490154203237518\s+Acme\s+S1\s+1\.1\s+in-place full", fleet.stdout), fleet.stdout
        (dev,) = json.loads(subprocess.run(cli("fleet", "--json", "--server", url), capture_output=True,
                                           text=True).stdout)
        assert dev["version"] == "1.1" and dev["last_seen"] and "password" not in json.dumps(dev)
    finally:
        device.terminate()  # SIGTERM: a clean stop that still writes -o
        out, err = device.communicate(timeout=30)
    assert device.returncode == 0, (out, err)
    assert "error" not in err and "Traceback" not in err, err
    assert "updated, now at 1.1: FUMO 200 (successful)" in out and out.rstrip().endswith("stopped at 1.1"), out
    assert (tmp / "out").read_bytes() == (tmp / "v2").read_bytes()


def test_device_asks_for_software_on_first_contact(served: tuple[str, Path]) -> None:
    # The server learns the device's version only in that first session; the device asks again then.
    url, tmp = served
    subprocess.run(cli("publish", tmp / "p.fdpkg", "--server", url), check=True, capture_output=True)
    done = subprocess.run(cli("device", "--server", url, "--imei", "356938035643809", "--image", tmp / "v1",
                              "--pubkey", tmp / "k.pub", "--once", "--request-software", "-o", tmp / "out"),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "updated, now at 1.1: FUMO 200 (successful)" in done.stdout and "at 1.1" in done.stdout, done.stdout
    assert (tmp / "out").read_bytes() == (tmp / "v2").read_bytes()


def test_unreachable_server_is_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run(cli("device", "--server", f"http://127.0.0.1:{free_port()}", "--imei", "356938035643809",
                              "--once"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("fotadelta: error: gave up after")


def test_admin_api_refuses_bad_requests(served: tuple[str, Path]) -> None:
    url, _ = served
    assert httpx.post(f"{url}/api/v1/releases", content=b"not a package").status_code == 400
    assert httpx.post(f"{url}/api/v1/devices/IMEI:9/update", json={"version": "1.1"}).status_code == 404
    assert httpx.post(f"{url}/api/v1/devices/IMEI:9/update", content=b"{").status_code == 400
    # The operator endpoints before the fleet API are gone: one way to do each thing.
    for method, path in (("POST", "/api/packages"), ("GET", "/api/fleet"), ("GET", "/api/jobs"),
                         ("GET", "/api/devices"), ("POST", "/api/devices/IMEI:9/update")):
        assert httpx.request(method, f"{url}{path}").status_code in (404, 405), path


def test_the_campaign_scenario_ends_with_every_device_accounted_for() -> None:
    """`fotadelta demo --campaign` at a CI-sized fleet: the failure threshold suspends, the resume
    finishes, every device is updated or failed with a reason (the 500-device run is in the README)."""
    import json
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "fotadelta", "demo", "--campaign", "--devices", "25", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["devices"] == 25 and result["lost"] == 0
    assert result["succeeded"] + result["failed"] == 25 and result["failed"] >= 1
    assert result["suspended"] is True and result["resumed"] is True
    assert "failure threshold reached" in done.stderr and "alert webhook: campaign.suspended" in done.stderr


@pytest.mark.parametrize("scheme", ["basic", "hmac"])
def test_device_auth_schemes_work_against_serve_defaults(served: tuple[str, Path], scheme: str) -> None:
    url, tmp = served
    subprocess.run(cli("publish", tmp / "p.fdpkg", "--server", url), check=True, capture_output=True)
    imei = {"basic": "356938035643801", "hmac": "356938035643802"}[scheme]
    for _ in range(2):  # the first contact enrols the device for its scheme; later sessions use it
        done = subprocess.run(cli("device", "--server", url, "--imei", imei, "--image", tmp / "v1", "--auth", scheme,
                                  "--once"), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert f"IMEI:{imei}: Acme S1 at 1.0" in done.stdout, done.stdout
    done = subprocess.run(cli("device", "--server", url, "--imei", imei, "--image", tmp / "v1", "--auth", scheme,
                              "--pubkey", tmp / "k.pub", "--once", "--request-software", "--json", "-o",
                              tmp / "out"), capture_output=True, text=True)
    assert done.returncode == 0, (done.stdout, done.stderr)
    events = [json.loads(line) for line in done.stdout.splitlines()]  # one JSON object per line
    assert [e["event"] for e in events] == ["result", "registered"]
    assert (events[0]["code"], events[0]["meaning"], events[0]["version"]) == (200, "successful", "1.1")
    assert (tmp / "out").read_bytes() == (tmp / "v2").read_bytes()


def test_a_plain_package_is_not_offered_to_a_single_slot_device(served: tuple[str, Path]) -> None:
    url, tmp = served
    subprocess.run(cli("pack", tmp / "v1", tmp / "v2", "--key", tmp / "k", "--make", "Acme", "--model", "S1",
                       "--from", "1.0", "--to", "1.1", "-o", tmp / "plain.fdpkg"), check=True, capture_output=True)
    subprocess.run(cli("publish", tmp / "plain.fdpkg", "--server", url), check=True, capture_output=True)
    imei = "356938035643803"
    first = subprocess.run(cli("device", "--server", url, "--imei", imei, "--image", tmp / "v1", "--pubkey",
                               tmp / "k.pub", "--once", "--request-software"), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "the server has no software for Acme S1 1.0" in first.stdout, first.stdout
    refused = subprocess.run(cli("assign", "--imei", imei, "--to", "1.1", "--server", url), capture_output=True,
                             text=True)
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1, refused
    assert "HTTP 409" in refused.stderr and "takes in-place patches and full images only" in refused.stderr
    assert json.loads(subprocess.run(cli("jobs", "--json", "--server", url), capture_output=True,
                                     text=True).stdout) == []
    # Once an installable package is published, the same request plans it.
    subprocess.run(cli("publish", tmp / "p.fdpkg", "--server", url), check=True, capture_output=True)
    job = subprocess.run(cli("assign", "--imei", imei, "--to", "1.1", "--no-notify", "--json", "--server", url),
                         capture_output=True, text=True)
    assert job.returncode == 0 and json.loads(job.stdout)["job"] == 1, job.stderr


def test_a_refused_update_is_printed_with_its_fumo_code(served: tuple[str, Path]) -> None:
    # Another operator's SIM: the package (unsecured here, secured by nobody) is refused before any write.
    url, tmp = served
    subprocess.run(cli("publish", tmp / "p.fdpkg", "--server", url), check=True, capture_output=True)
    done = subprocess.run(cli("device", "--server", url, "--imei", "356938035643804", "--image", tmp / "v1",
                              "--pubkey", tmp / "k.pub", "--validation-string", "b6" * 16, "--once",
                              "--request-software"), capture_output=True, text=True)
    assert done.returncode == 1, done
    line = "update failed: FUMO 404 (package validation failed (signature or SIM)): package does not carry this " \
           "SIM's validation string"
    assert f"IMEI:356938035643804: {line}" in done.stdout, done.stdout
    assert done.stderr.strip() == f"fotadelta: error: {line}", done.stderr
    (job,) = json.loads(subprocess.run(cli("jobs", "--json", "--server", url), capture_output=True, text=True).stdout)
    assert (job["state"], job["result_code"]) == ("failed", 404)


def test_serve_on_a_busy_port_is_one_line(served: tuple[str, Path]) -> None:
    url, tmp = served
    port = url.rsplit(":", 1)[1]
    again = subprocess.run(cli("serve", "--data", tmp / "other", "--port", port), capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 1 and again.stdout == "", again
    assert again.stderr == f"fotadelta: error: cannot listen on 127.0.0.1:{port}: the address is in use (is " \
                           "another server running? give another --port)\n"
    assert not (tmp / "other").exists()


def test_serve_says_where_the_console_and_the_fleet_api_are(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(cli("serve", "--data", tmp_path / "srv", "--port", str(port)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        said = [proc.stdout.readline(), proc.stdout.readline()]  # (serve prints them, then flushes, then serves)
    finally:
        proc.terminate()
        proc.wait(10)
    assert said[0].startswith(f"fotadelta DM server fotadelta at {url}/dm, fleet state in "), said
    assert said[1] == f"web console at {url}/console/, fleet API at {url}/api/v1 (OpenAPI at {url}/openapi.json)\n"


def test_serve_refuses_a_bad_limit_or_push_network_in_one_line(tmp_path: Path) -> None:
    for option in (["--limit", "max_items=many"], ["--limit", "no_such_limit=3"], ["--limit", "max_items=0"],
                   ["--push-network", "not-a-network"]):
        proc = subprocess.run(cli("serve", "--data", tmp_path / "srv", "--port", str(free_port()), *option),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (option, proc.stderr)  # bad arguments
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
    words = subprocess.run(cli("inspect", tmp_path / "p"), check=True, capture_output=True, text=True).stdout
    assert "security version  7; signed as an allowed downgrade" in words, words


def test_a_device_on_a_busy_push_port_is_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        done = subprocess.run(cli("device", "--server", "http://127.0.0.1:1", "--imei", "356938035643809",
                                  "--listen", str(port)), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == "", done
    assert done.stderr.splitlines()[-1].startswith(
        f"fotadelta: error: cannot listen for notifications on 127.0.0.1:{port}: "), done.stderr
