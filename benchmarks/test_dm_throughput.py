"""One complete FUMO update of one emulated device against the OMA DM server, as a pytest-benchmark.

Run with ``pytest benchmarks/test_dm_throughput.py --benchmark-only``. Each round takes a fresh,
already bootstrapped device (set up outside the timing) from 1.0 to 1.1: assign + notify, the
server-initiated session, download, in-place install on emulated flash, reboot and the report
session. Afterwards every job must have succeeded and every device must run the new image.
The harness is the one of dm_sessions.py (in-process server, SQLite in a temporary directory).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from bench_support import load_script  # on sys.path through conftest.py

ROUNDS = 10

dm = load_script("dm_sessions.py", "fotadelta_bench_dm_sessions")


@pytest.fixture(scope="module")
def harness() -> Iterator[Any]:
    h = dm.Harness(dm.load_firmware(None), steps=1)
    try:
        yield h
    finally:
        h.close()


@pytest.mark.benchmark(group="dm")
def test_fumo_session(benchmark: Any, harness: Any) -> None:
    devices: list[Any] = []
    before = harness.session_ids()

    def fresh_device() -> tuple[tuple[Any], dict[str, Any]]:
        (device,) = harness.new_devices(1)
        harness.bootstrap([device])
        devices.append(device)
        before.update(harness.session_ids({device.dev_id}))  # the bootstrap session is not part of the update
        return (device,), {}

    benchmark.pedantic(harness.update_one, setup=fresh_device, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    messages = harness.check_updates(devices, before)
    requests = sum(d.probe.requests["dm"] + d.probe.requests["download"] for d in devices)
    benchmark.extra_info.update(
        pair=harness.fw.name, package_bytes=len(harness.packages[0]), devices_updated=len(devices),
        dm_messages_per_update=messages / len(devices),
        http_requests_per_update=requests / len(devices) + 1,  # + the push
    )
    if benchmark.stats is not None:
        benchmark.extra_info["updates_per_s"] = round(1 / benchmark.stats.stats.mean, 2)
