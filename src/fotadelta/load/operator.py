"""What the load test does as the operator, through the fleet API (/api/v1) with a bearer token:
register the devices and their credentials, publish the releases, run the campaign, and read
back the server's records to check that nothing was lost."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx

OPEN_JOBS = ("pending", "sent", "accepted")
JOBS_PAGE = 1000


class ApiError(Exception):
    """The fleet API refused a call or could not be reached."""


class Operator:
    """Fleet API calls, each retried across a worker's restart (connection refused, reset, 5xx)."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, token: str | None, *, retries: int = 12) -> None:
        self.http, self.api, self.retries = http, f"{base_url.rstrip('/')}/api/v1", retries
        self.headers = {"authorization": f"Bearer {token}"} if token else {}

    async def call(self, method: str, path: str, *, json: Any = None, content: bytes | str | None = None,
                   content_type: str | None = None, params: dict[str, Any] | None = None) -> Any:
        headers = dict(self.headers)
        if content_type:
            headers["content-type"] = content_type
        delay = 0.25
        for attempt in range(self.retries + 1):
            try:
                response = await self.http.request(method, f"{self.api}{path}", json=json, content=content,
                                                   headers=headers, params=params)
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 300:
                    return response.json() if response.content else None
                if response.status_code < 500 and response.status_code != 429:
                    try:
                        why = response.json().get("error", response.text)
                    except ValueError:
                        why = response.text
                    raise ApiError(f"{method} {path}: HTTP {response.status_code}: {str(why)[:300]}")
                failure = f"HTTP {response.status_code}"
            if attempt == self.retries:
                raise ApiError(f"{method} {path}: {failure} (after {attempt + 1} attempts)")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    async def register(self, rows: list[tuple[str, str, str, str]], credentials: dict[str, tuple[str, str]],
                       concurrency: int) -> None:
        """Import the devices (dev_id, make, model, version) from CSV, then give each its DM account."""
        for start in range(0, len(rows), 5000):
            csv = "dev_id,make,model,version\n" + "".join(f"{d},{mk},{md},{v}\n" for d, mk, md, v in
                                                         rows[start:start + 5000])
            report = await self.call("POST", "/devices/import", content=csv, content_type="text/csv")
            if report["errors"]:
                raise ApiError(f"the device import refused rows: {report['errors'][:3]}")
        gate = asyncio.Semaphore(concurrency)

        async def one(dev_id: str, password: str, server_password: str) -> None:
            async with gate:
                await self.call("PUT", f"/devices/{dev_id}/account",
                                json={"client_auth": "md5", "client_password": password,
                                      "server_password": server_password})
        await asyncio.gather(*(one(d, *credentials[d]) for d, *_ in rows))

    async def publish(self, package: bytes) -> dict[str, Any]:
        release: dict[str, Any] = await self.call("POST", "/releases", content=package,
                                                  content_type="application/octet-stream",
                                                  params={"state": "released"})
        return release

    async def start_campaign(self, spec: dict[str, Any]) -> int:
        campaign = await self.call("POST", "/campaigns", json=spec)
        await self.call("POST", f"/campaigns/{campaign['id']}/start")
        return int(campaign["id"])

    async def campaign(self, campaign_id: int) -> dict[str, Any]:
        found: dict[str, Any] = await self.call("GET", f"/campaigns/{campaign_id}")
        return found

    async def records(self, campaign_id: int, devices: int) -> Records:
        """The server's campaign report for every device, and its update jobs still open."""
        report = await self.call("GET", f"/campaigns/{campaign_id}/report", params={"limit": devices})
        open_jobs: list[dict[str, Any]] = []
        after = 0
        while page := await self.call("GET", "/jobs", params={"after": after, "limit": JOBS_PAGE}):
            open_jobs += [j for j in page if j["state"] in OPEN_JOBS]
            after = page[-1]["id"]
        return Records(report["state"], report["target_version"], report["devices"], open_jobs)


@dataclass
class Records:
    campaign_state: str
    target: str
    devices: list[dict[str, Any]]  # CampaignDevice: dev_id, version, state, reason, ...
    open_jobs: list[dict[str, Any]] = field(default_factory=list)
