"""Shared parts of the web console tests: a headless Chromium driven by Playwright, a DM server
with its fleet services, REST API and console on loopback (real HTTP, SQLite, one user per role),
logging in through the login form, and screenshots of each page.

Chromium: Debian's package (`apt-get install chromium`, which `make install` does as root) when it
is there, else Playwright's own download (`playwright install chromium`); FOTADELTA_CHROMIUM names
another binary. Screenshots go to the test's output folder (`test-results/`); with
FOTADELTA_DOCS_IMAGES=docs/images the fleet, device, campaign and report pages are written there
too (the pictures in the docs come from this run)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from dm_fixtures import Release
from fleet_fixtures import Api, start_api
from playwright.sync_api import Page, expect

from fotadelta.emulator import Fleet as Devices

DEBIAN_CHROMIUM = "/usr/lib/chromium/chromium"  # (the binary itself: /usr/bin/chromium is a shell wrapper)
PASSWORDS = {name: f"{name}-password" for name in ("ada", "dana", "carl", "rita")}
VIEWPORT = {"width": 1280, "height": 800}
DOCS_HEIGHT = 1200


def chromium() -> str | None:
    """The Chromium to drive: FOTADELTA_CHROMIUM, Debian's, or None for Playwright's own."""
    chosen = os.environ.get("FOTADELTA_CHROMIUM") or (DEBIAN_CHROMIUM if os.path.exists(DEBIAN_CHROMIUM) else None)
    return chosen or shutil.which("chromium")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    path = chromium()
    return {**browser_type_launch_args, **({"executable_path": path} if path else {})}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, "viewport": VIEWPORT, "locale": "en-GB", "timezone_id": "UTC"}


@dataclass
class Console:
    """The server under test and what the tests do with it in a browser."""

    api: Api
    shots: Path

    @property
    def url(self) -> str:
        return f"{self.api.url}/console"

    def login(self, page: Page, user: str, password: str | None = None) -> None:
        page.goto(f"{self.url}/login")
        page.get_by_label("User name").fill(user)
        page.get_by_label("Password").fill(password or PASSWORDS[user])
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", level=1, name="Fleet")).to_be_visible()

    def shot(self, page: Page, name: str, output_path: str | Path | None = None, *, docs: bool = False) -> Path:
        """A screenshot of the whole page into the test's output folder (and docs/images if asked)."""
        target = Path(output_path or self.shots) / f"{name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target), full_page=True)
        images = os.environ.get("FOTADELTA_DOCS_IMAGES")
        if docs and images:  # (at most DOCS_HEIGHT pixels of the page: the pictures stay small)
            Path(images).mkdir(parents=True, exist_ok=True)
            height = min(DOCS_HEIGHT, int(page.evaluate("document.documentElement.scrollHeight")))
            page.screenshot(path=str(Path(images) / f"console-{name}.png"), full_page=True,
                            clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": height})
        return target

    def session_client(self, page: Page) -> httpx.Client:
        """An HTTP client holding the browser's cookies (for requests a browser would not make)."""
        jar = httpx.Cookies()
        for c in page.context.cookies():
            jar.set(c["name"], c["value"])
        return httpx.Client(base_url=self.api.url, cookies=jar, timeout=30, follow_redirects=False)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, release: Release, fleet: Devices) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("console")
    api, running = start_api(tmp, release, fleet)
    api.services.run(interval=0.2)  # the campaign scheduler, as `fotadelta serve` runs it (close stops it)
    try:
        yield Console(api, tmp / "shots")
    finally:
        fleet.wait()
        running.stop()
        api.services.close()


def assert_labelled(page: Page) -> None:
    """Every form control on the page has an accessible name (a label, or aria-label)."""
    unnamed = page.eval_on_selector_all(
        "input:not([type=hidden]), select, textarea",
        "els => els.filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.outerHTML)")
    assert unnamed == [], f"controls without a label: {unnamed}"


__all__ = ["Console", "PASSWORDS", "assert_labelled", "browser_context_args", "browser_type_launch_args", "console"]
