"""Package downloads from memory (server/downloads.py): ranges, HEAD, the size a device learns from its GET."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from dm_fixtures import Lab
from fotadelta.server.app import INSTANCE_HEADER
from fotadelta.server.downloads import CONTENT_TYPE, PackageCache, package_response
from fotadelta.server.store import SessionRow

DATA = bytes(range(256)) * 40  # 10,240 bytes


@pytest.mark.parametrize(("header", "status", "first", "last"), [
    (None, 200, 0, 10_239),
    ("bytes=0-", 206, 0, 10_239),
    ("bytes=2500-", 206, 2500, 10_239),
    ("bytes=100-199", 206, 100, 199),
    ("bytes=100-999999", 206, 100, 10_239),  # (a last beyond the end is the end)
    ("bytes=10239-", 206, 10_239, 10_239),
    ("bytes=200-100", 200, 0, 10_239),  # invalid: ignored
    ("bytes=0-1,5-9", 200, 0, 10_239),  # several ranges: ignored, the whole package
    ("items=0-5", 200, 0, 10_239),
    ("bytes=-500", 200, 0, 10_239),  # (suffix ranges are not served: ignored)
    ("bytes=" + "9" * 40 + "-", 200, 0, 10_239),  # (digits beyond any size: not a range this reads)
])
def test_a_range_is_served_or_ignored(header: str | None, status: int, first: int, last: int) -> None:
    r = package_response(DATA, "GET", header)
    assert r.status == status and r.body == DATA[first:last + 1]
    assert r.headers["content-length"] == str(last + 1 - first) and r.headers["accept-ranges"] == "bytes"
    assert r.headers.get("content-range") == (f"bytes {first}-{last}/{len(DATA)}" if status == 206 else None)


def test_a_range_beyond_the_end_is_416_with_the_size() -> None:
    r = package_response(DATA, "GET", "bytes=10240-")
    assert r.status == 416 and r.headers["content-range"] == "bytes */10240" and not r.body


def test_head_has_the_headers_of_get_and_no_body() -> None:
    r = package_response(DATA, "HEAD", None)
    assert r.status == 200 and r.body == b"" and r.headers["content-length"] == "10240"


def test_the_cache_keeps_at_most_its_budget_least_recently_served_out_first(tmp_path: Path) -> None:
    files = []
    for i in range(4):
        files.append(tmp_path / f"{i}.fdpkg")
        files[-1].write_bytes(bytes([i]) * 400)
    cache = PackageCache(budget=1000)
    for i in (0, 1):
        assert cache.load(i, files[i]) == bytes([i]) * 400
    assert cache.get(0) is not None  # 0 is now the most recently served
    cache.load(2, files[2])
    assert cache.get(1) is None and cache.get(0) is not None and cache.get(2) is not None
    big = tmp_path / "big.fdpkg"
    big.write_bytes(bytes(1001))
    assert cache.load(9, big) == bytes(1001) and cache.get(9) is None  # over the budget: served, not kept
    with pytest.raises(FileNotFoundError):
        cache.load(5, tmp_path / "missing")


def test_over_http_the_devices_requests_and_what_the_router_answers_instead(lab: Lab) -> None:
    """The app takes DM messages and downloads before Starlette's router (server/app.py): over real HTTP a
    download, its HEAD and range, a DM path's wrong method (405), an id that is no number (404) and a
    message that is no SyncML (415, before any session) answer as the routes did."""
    package = lab.release.p10_11
    with httpx.Client(base_url=lab.url) as http:
        got = http.get("/packages/1")
        assert got.status_code == 200 and got.content == package
        assert got.headers["content-type"] == CONTENT_TYPE and got.headers["accept-ranges"] == "bytes"
        head = http.head("/packages/1")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(package))
        part = http.get("/packages/1", headers={"range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == package[10:20]
        assert http.get("/packages/999").status_code == 404
        assert http.get("/packages/x1").status_code == 404  # (not {id:int}: the router's 404)
        assert http.post("/packages/1").status_code == 405
        assert http.get("/dm").status_code == 405 and http.get("/dm/sometoken").status_code == 405
        refused = http.post("/dm", content=b"<SyncML/>", headers={"content-type": "text/plain"})
        assert refused.status_code == 415 and INSTANCE_HEADER in refused.headers
    with lab.server.store.tx() as s:
        assert s.scalar(select(func.count()).select_from(SessionRow)) == 0
