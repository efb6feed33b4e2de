"""The web console in a real headless Chromium (Playwright) against a DM server on loopback with
real emulated devices: every page, each role's view and limits, the login with its throttle,
session cookie, CSRF and origin checks. Each page test saves a screenshot in its output folder."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from console_fixtures import Console, assert_labelled, console  # noqa: F401  (fixtures)
from console_fixtures import browser_context_args, browser_type_launch_args  # noqa: F401
from dm_fixtures import MAKE, MODEL, secured_sim
from playwright.sync_api import Browser, Page, expect

from fotadelta.server.logins import PER_NAME
from fotadelta.server.campaigns import CampaignSpec
from fotadelta.server.registry import DeviceFields, DeviceFilter


def _wait(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _csrf(page: Page) -> str:
    return page.locator("input[name=csrf]").first.input_value()


def _audit(console: Console, action: str, actor: str) -> list[str]:
    ada = console.api.principal("ada")
    return [e.outcome for e in console.api.services.auth.audit_log(ada, action=action, who=actor, limit=1000)]


# -- logging in ------------------------------------------------------------------------------------

def test_login_sets_a_strict_session_cookie_and_logout_ends_the_session(console: Console, page: Page,
                                                                        output_path: str) -> None:
    page.goto(f"{console.url}/fleet")  # not logged in: the login form, which returns here afterwards
    expect(page).to_have_url(re.compile(r"/console/login\?next=%2Fconsole%2Ffleet$"))
    assert_labelled(page)
    console.shot(page, "login", output_path)
    page.get_by_label("User name").fill("dana")
    page.get_by_label("Password").fill("not-her-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#login-error")).to_have_text("Wrong user name or password.")
    console.login(page, "dana")
    expect(page).to_have_url(f"{console.url}/fleet")
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "__Host-fd_console"]
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    headers = page.request.get(f"{console.url}/fleet").headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"] and headers["cache-control"] == "no-store"
    stolen = console.session_client(page)
    assert stolen.get("/console/fleet").status_code == 200
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    assert not [c for c in page.context.cookies() if c["name"] == "__Host-fd_console"]
    # The session is gone on the server: the copied cookie is worth nothing now.
    r = stolen.get("/console/fleet")
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
    assert _audit(console, "console.login", "dana") == ["ok"] and _audit(console, "console.logout", "dana") == ["ok"]
    assert _audit(console, "login", "dana") == []  # a failed login stores nothing (it is logged)


def test_failed_logins_are_throttled_per_name(console: Console, page: Page) -> None:
    root = console.api.services.auth.bootstrap_admin()
    console.api.services.auth.create_user(root, "tess", "tess-password", console.api.principal("rita").role)
    for _ in range(PER_NAME):
        page.goto(f"{console.url}/login")
        page.get_by_label("User name").fill("tess")
        page.get_by_label("Password").fill("guess-guess")
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#login-error")).to_have_text("Wrong user name or password.")
    # Past the allowance even the right password is refused, before it is checked.
    page.get_by_label("Password").fill("tess-password")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Log in").click()
    assert answer.value.status == 429 and int(answer.value.headers["retry-after"]) > 0
    expect(page.locator("#login-error")).to_contain_text("Too many failed logins")
    assert _audit(console, "login", "tess") == []  # failures are counted in memory and logged, not stored


def test_forms_need_the_session_csrf_token_and_this_origin(console: Console, page: Page) -> None:
    console.login(page, "dana")
    http = console.session_client(page)
    form = {"action": "quarantine", "reason": "csrf test"}
    dev_id = "IMEI:356938035643809"
    console.api.services.registry.create(console.api.principal("dana"), dev_id)
    url = f"/console/devices/{dev_id}"
    assert http.post(url, data=form).status_code == 403  # no token
    assert http.post(url, data={**form, "csrf": "x" * 43}).status_code == 403  # a wrong one
    token = _csrf(page)
    r = http.post(url, data={**form, "csrf": token}, headers={"origin": "https://evil.example"})
    assert r.status_code == 403 and "another site" in r.text
    assert console.api.services.registry.get(console.api.principal("dana"), dev_id).status == "unassigned"
    r = http.post(url, data={**form, "csrf": token}, headers={"origin": console.api.url})
    assert r.status_code == 303
    assert console.api.services.registry.get(console.api.principal("dana"), dev_id).status == "quarantined"
    # The login form has a token of its own (no session yet): a post without it is refused.
    r = httpx.post(f"{console.url}/login", data={"name": "dana", "password": "dana-password"})
    assert r.status_code == 403 and "expired" in r.text
    # A form over the size limit is refused before it is parsed.
    assert http.post(url, data={"csrf": token, "reason": "x" * 70_000}).status_code == 413


# -- the fleet ------------------------------------------------------------------------------------

def test_fleet_overview_counts_filters_searches_and_pages(console: Console, page: Page, output_path: str) -> None:
    s, dana = console.api.services, console.api.principal("dana")
    rows = ["dev_id,msisdn,make,model,version,status"]
    for i in range(130):
        model, version = ("S1", "1.0") if i % 3 else ("S2", "2.0")
        rows.append(f"IMEI:35000000000{i:04d},+4915100{i:04d},{MAKE},{model},{version},"
                    + ("quarantined" if i % 10 == 0 else ""))
    report = s.registry.import_csv(dana, "\n".join(rows) + "\n")
    assert report.created == 130 and not report.errors
    console.login(page, "rita")
    page.goto(f"{console.url}/fleet?q=35000000000")
    assert_labelled(page)
    tile = page.locator(".tiles a", has=page.locator(".badge", has_text=re.compile("^quarantined$")))
    expect(tile.locator(".n")).to_have_text("13")
    expect(page.locator(".tiles a", has=page.locator(".badge", has_text=re.compile("^unassigned$"))).locator(".n")
           ).to_have_text("117")
    models = page.get_by_role("table").nth(1)
    expect(models.get_by_role("row", name=re.compile(r"Acme S1 1\.0 86"))).to_be_visible()
    expect(models.get_by_role("row", name=re.compile(r"Acme S2 2\.0 44"))).to_be_visible()
    # Keyset pages of 50: forward to the end and back again, every device once.
    seen: list[str] = []
    for _ in range(3):
        seen += page.locator("table.list").first.locator("tbody tr td:first-child").all_inner_texts()
        if page.get_by_role("link", name="Next →").count() == 0:
            break
        with page.expect_navigation():  # rows read before the next page loads would be this page's
            page.get_by_role("link", name="Next →").click()
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == 130
    with page.expect_navigation():
        page.get_by_role("link", name="← Previous").click()
    first = page.locator("table.list").first.locator("tbody tr td:first-child").first.inner_text()
    assert first == seen[50]
    console.shot(page, "fleet", output_path, docs=True)
    # A filter: the S2 devices that are quarantined.
    page.goto(f"{console.url}/fleet")
    page.get_by_label("Status", exact=True).select_option("quarantined")
    page.get_by_label("Model", exact=True).fill("S2")
    with page.expect_navigation():
        page.get_by_role("button", name="Show").click()
    listed = page.locator("table.list").first.locator("tbody tr td:first-child").all_inner_texts()
    expected = [d.dev_id for d in s.registry.find(dana, DeviceFilter(status="quarantined", model="S2"), limit=1000)]
    assert listed == expected and len(expected) == 5
    # Searches: IMEI digits, a DevId's start, an MSISDN.
    for q, n in (("35000000000001", 10), ("IMEI:3500000000001", 30), ("+49151000077", 1)):
        page.goto(f"{console.url}/fleet")
        page.get_by_role("textbox", name="Search").fill(q)
        with page.expect_navigation():
            page.get_by_role("button", name="Show").click()
        got = page.locator("table.list").first.locator("tbody tr td:first-child").all_inner_texts()
        assert len(got) == min(n, 50), (q, got)
    expect(page.locator("table.list").first.locator("tbody tr")).to_have_text(re.compile("IMEI:350000000000077"))


def test_device_page_explores_the_dm_tree_and_runs_commands_for_customer_care(console: Console, page: Page,
                                                                               output_path: str) -> None:
    client = console.api.lab.device("1.0")
    client.run()  # its first session: the server knows it now
    dev_id = client.config.dev_id
    console.login(page, "carl")
    page.goto(f"{console.url}/fleet?q={dev_id}")
    page.get_by_role("link", name=dev_id).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(dev_id)
    assert_labelled(page)
    # Not carl's to do: the registry's actions are left out.
    expect(page.get_by_role("button", name="Quarantine")).to_have_count(0)
    # The explorer: a Get of .?list=Struct goes out in the device's next session; the page polls.
    page.get_by_role("button", name="List the tree").click()
    tree = page.locator("#tree ul.tree")
    expect(tree).to_be_visible(timeout=30_000)
    expect(tree.get_by_text("DevInfo", exact=True)).to_be_visible()
    expect(tree.get_by_text("FUMO", exact=True)).to_be_visible()
    page.get_by_role("button", name="Get ./DevInfo/Mod").click()
    result = page.locator("#console section.command")
    expect(result.locator("td.value")).to_have_text(MODEL, timeout=30_000)
    expect(tree).to_be_visible()  # (the listing stays on the page beside the command)
    # The command console: a Replace, checked on the device itself.
    page.get_by_label("Command", exact=True).select_option("Replace")
    page.get_by_label("Node").fill("./FUMO/Firmware/PkgName")
    page.get_by_label("Data (Replace, Add, Exec)").fill("from-the-console")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#console section.command .badge")).to_have_text("succeeded", timeout=30_000)
    assert client.tree.value("./FUMO/Firmware/PkgName") == "from-the-console"
    expect(page.locator("#console section.command")).to_contain_text("Replace")
    page.reload()
    console.shot(page, "device", output_path, docs=True)
    commands = console.api.services.commands.find(console.api.principal("carl"), dev_id=dev_id)
    assert [c.state for c in commands] == ["succeeded"] * 3 and {c.created_by for c in commands} == {"carl"}
    assert _audit(console, "command.execute", "carl") == ["ok"] * 3
    # A command's own page.
    page.get_by_role("link", name=str(commands[1].id), exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Command {commands[1].id}")
    expect(page.locator("td.value")).to_have_text(MODEL)
    console.shot(page, "command", output_path)


def test_read_only_sees_a_device_but_cannot_execute_a_command(console: Console, page: Page) -> None:
    client = console.api.lab.device("1.0")
    client.run()
    dev_id = client.config.dev_id
    console.login(page, "rita")
    page.goto(f"{console.url}/devices/{dev_id}")
    expect(page.get_by_role("heading", level=1)).to_contain_text(dev_id)
    for name in ("List the tree", "Send", "Update now", "Quarantine"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    expect(page.locator("#console")).to_contain_text("reads commands but does not send them")
    # Posting the form anyway: the command service refuses, and says so in the audit log.
    r = console.session_client(page).post(f"/console/devices/{dev_id}", data={
        "csrf": _csrf(page), "action": "command", "op": "Get", "target": "./DevInfo/Mod"})
    assert r.status_code == 403 and "needs commands.execute" in r.text
    assert console.api.services.commands.find(console.api.principal("ada"), dev_id=dev_id) == []
    assert _audit(console, "command.execute", "rita") == ["denied"]


# -- releases ---------------------------------------------------------------------------------------

def test_releases_move_through_their_lifecycle(console: Console, page: Page, output_path: str,
                                               tmp_path: Path) -> None:
    s, dana = console.api.services, console.api.principal("dana")
    s.registry.create_group(dana, "lab-testers")
    package = tmp_path / "update.pkg"
    package.write_bytes(console.api.lab.release.p10_11)
    console.login(page, "dana")
    page.get_by_role("link", name="Releases").click()
    assert_labelled(page)
    page.get_by_label("Signed package (.pkg)").set_input_files(str(package))
    page.get_by_label("Note").fill("first build")
    page.get_by_role("button", name="Publish").click()
    expect(page.locator(".flash.ok")).to_contain_text("is published: created")
    (rel,) = [r for r in s.releases.find(dana) if r.note == "first build"]
    row = page.get_by_role("row", name=re.compile(rf"^{rel.package_id} "))
    row.get_by_label(f"Tester group for package {rel.package_id}").select_option("lab-testers")
    row.get_by_role("button", name="Test").click()
    expect(page.locator(".flash.ok")).to_contain_text(f"Package {rel.package_id}")
    expect(row.locator(".badge")).to_have_text("tested")
    row.get_by_role("button", name="Release").click()
    expect(row.locator(".badge")).to_have_text("released")
    assert s.releases.get(dana, rel.package_id).state == "released"
    # A wrong move comes back as a message, not a crash.
    r = console.session_client(page).post(f"/console/releases/{rel.package_id}",
                                          data={"csrf": _csrf(page), "state": "tested", "tester_group": "lab-testers"},
                                          headers={"referer": f"{console.url}/releases"})
    assert r.status_code == 303
    page.goto(f"{console.url}/releases")
    expect(page.locator(".flash.error")).to_contain_text("is released: it cannot become tested")
    console.shot(page, "releases", output_path)
    # Garbage is not a package.
    package.write_bytes(b"not a package")
    page.get_by_label("Signed package (.pkg)").set_input_files(str(package))
    page.get_by_role("button", name="Publish").click()
    expect(page.locator(".flash.error")).to_be_visible()
    # Customer care reads releases; it moves none.
    page.get_by_role("button", name="Log out").click()
    console.login(page, "carl")
    page.goto(f"{console.url}/releases")
    expect(page.get_by_role("button", name="Deactivate")).to_have_count(0)
    expect(page.get_by_role("button", name="Publish")).to_have_count(0)
    r = console.session_client(page).post(f"/console/releases/{rel.package_id}",
                                          data={"csrf": _csrf(page), "state": "deactivated"})
    assert r.status_code == 403
    assert s.releases.get(dana, rel.package_id).state == "released"


# -- campaigns and reports ------------------------------------------------------------------------

def test_a_campaign_created_in_the_console_runs_with_live_progress_and_its_report(
        console: Console, page: Page, browser: Browser, output_path: str) -> None:
    s, dana = console.api.services, console.api.principal("dana")
    lab = console.api.lab
    # Four devices that take the update, and one on another operator's SIM that refuses it (FUMO 404).
    clients = [lab.device("1.0") for _ in range(4)] + [lab.device("1.0", sim_card=secured_sim(b"other operator"))]
    for c in clients:
        c.run()
        s.registry.update(dana, c.config.dev_id, DeviceFields(tags=["console-wave"]))
    s.registry.create_group(dana, "console-testers")
    s.registry.add_members(dana, "console-testers", [clients[0].config.dev_id])
    for data in (lab.release.p10_11, lab.release.p11_12):
        rel = s.releases.publish(dana, data)
        if rel.state == "created":  # (the releases test may have released one already)
            s.releases.move(dana, rel.package_id, "tested", tester_group="console-testers")
    console.login(page, "dana")
    page.get_by_role("link", name="Campaigns").click()
    assert_labelled(page)
    console.shot(page, "campaigns", output_path)
    page.get_by_label("Name").fill("Console rollout")
    page.get_by_label("Target version").fill("1.2")
    page.get_by_label("Tag").fill("console-wave")
    page.get_by_label("Tester group first").select_option("console-testers")
    page.get_by_label("Then waves of (% of devices)").fill("50")
    page.get_by_label("Success threshold to open the next wave (%)").fill("50")
    page.get_by_label("Attempts per device").fill("1")
    page.get_by_label("Release what the testers installed once their wave succeeds").check()
    page.get_by_role("button", name="Create the campaign").click()
    expect(page.locator(".flash.ok")).to_contain_text("is a draft")
    cid = int(page.url.rsplit("/", 1)[1])
    page.get_by_role("button", name="Start").click()
    expect(page.locator(".flash.ok")).to_contain_text("is running: 5 devices")
    # No reload from here on: the live region follows the campaign to its end.
    live = page.locator("#live")
    expect(live.locator(".badge").first).to_have_text("completed", timeout=90_000)
    expect(live.locator("td.s-succeeded")).to_have_text("4")
    expect(live.locator("td.s-failed")).to_have_text("1")
    expect(live.locator("svg polyline").first).to_be_attached()
    versions = sorted(d.version for d in s.registry.find(dana, DeviceFilter(tag="console-wave")))
    assert versions == ["1.0", "1.2", "1.2", "1.2", "1.2"]
    page.reload()
    console.shot(page, "campaign", output_path, docs=True)
    # The report, as a read-only user sees it.
    viewer = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        console.login(viewer, "rita")
        viewer.get_by_role("link", name="Reports").click()
        expect(viewer.get_by_role("row", name=re.compile(rf"^{cid} Console rollout"))).to_be_visible()
        console.shot(viewer, "reports", output_path)
        viewer.get_by_role("row", name=re.compile(rf"^{cid} Console rollout")).get_by_role("link", name="report").click()
        assert_labelled(viewer)
        expect(viewer.locator("table.counts td.s-succeeded")).to_have_text("4")
        failed = viewer.get_by_role("row", name=re.compile(clients[4].config.dev_id))
        expect(failed).to_contain_text("404")  # the FUMO code and the reason the device gave
        console.shot(viewer, "report", output_path, docs=True)
        expect(viewer.locator("figure.chart svg")).to_be_visible()
        expect(viewer.get_by_role("row", name=re.compile(r"^Acme S1 1\.2 0 0 4 0"))).to_be_visible()
        viewer.get_by_label("State", exact=True).select_option("succeeded")
        viewer.get_by_role("button", name="Show").click()
        expect(viewer.locator("table.list").last.locator("tbody tr")).to_have_count(4)
        with viewer.expect_download() as download:
            viewer.get_by_role("link", name="CSV").click()
        lines = Path(download.value.path()).read_text().splitlines()
        assert lines[0].startswith("dev_id,") and len(lines) == 1 + 4
        expect(viewer.get_by_role("button", name="Start")).to_have_count(0)
        viewer.goto(f"{console.url}/campaigns/{cid}")
        for name in ("Pause", "Resume", "Cancel", "Retry the failed devices"):
            expect(viewer.get_by_role("button", name=name)).to_have_count(0)
    finally:
        viewer.close()


def test_customer_care_cannot_create_or_steer_a_campaign(console: Console, page: Page) -> None:
    s, dana = console.api.services, console.api.principal("dana")
    draft = s.campaigns.create(dana, CampaignSpec(name="not for carl", target_version="1.2"))
    console.login(page, "carl")
    page.goto(f"{console.url}/campaigns")
    expect(page.get_by_role("heading", name="New campaign")).to_have_count(0)
    http = console.session_client(page)
    token = _csrf(page)
    before = len(s.campaigns.find(dana))
    r = http.post("/console/campaigns", data={"csrf": token, "name": "carl's", "target_version": "1.2"})
    assert r.status_code == 403 and "needs campaigns.manage" in r.text
    r = http.post(f"/console/campaigns/{draft.id}", data={"csrf": token, "action": "start"})
    assert r.status_code == 403
    assert len(s.campaigns.find(dana)) == before and s.campaigns.get(dana, draft.id).state == "draft"
    assert _audit(console, "campaign.create", "carl") == ["denied"]
    assert _audit(console, "campaign.start", "carl") == ["denied"]


# -- users, tokens, audit -----------------------------------------------------------------------------

def test_administrators_manage_users_tokens_and_read_the_audit_log(console: Console, page: Page,
                                                                    output_path: str) -> None:
    console.login(page, "ada")
    page.get_by_role("link", name="Users").click()
    assert_labelled(page)
    form = page.locator("form", has=page.get_by_role("button", name="Create"))
    form.get_by_label("Name").fill("olga")
    form.get_by_label("Password (8 or more characters)").fill("olga-password")
    form.get_by_label("Role").select_option("customer_care")
    form.get_by_role("button", name="Create").click()
    expect(page.locator(".flash.ok")).to_have_text("User olga (customer_care) is created.")
    row = page.get_by_role("row", name=re.compile("^olga "))
    row.get_by_label("Role of olga").select_option("deployment_manager")
    row.get_by_role("button", name="Set role").click()
    expect(page.get_by_role("row", name=re.compile("^olga deployment manager"))).to_be_visible()
    console.shot(page, "users", output_path)
    # A token for olga, shown once, that works on the REST API.
    page.get_by_role("row", name=re.compile("^olga ")).get_by_role("link", name="tokens").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("API tokens of olga")
    page.get_by_label("Name").fill("ci")
    page.get_by_label("Role (at most the user's)").select_option("read_only")
    page.get_by_role("button", name="Issue").click()
    text = page.locator("#issued code").inner_text()
    who = httpx.get(f"{console.api.url}/api/v1/auth/whoami", headers={"authorization": f"Bearer {text}"}).json()
    assert who["name"] == "olga" and who["role"] == "read_only"
    console.shot(page, "tokens", output_path)
    page.goto(page.url)  # shown once: the page itself does not show it again
    expect(page.locator("#issued")).to_have_count(0)
    page.once("dialog", lambda dialog: dialog.accept())  # (revoking asks first)
    page.get_by_role("button", name="Revoke").last.click()
    expect(page.locator(".flash.ok")).to_contain_text("is revoked")
    assert httpx.get(f"{console.api.url}/api/v1/auth/whoami",
                     headers={"authorization": f"Bearer {text}"}).status_code == 401
    # Disabled: olga's sessions end at once.
    olga = page.context.browser.new_page()  # type: ignore[union-attr]
    try:
        console.login(olga, "olga", "olga-password")
        page.goto(f"{console.url}/users")
        page.get_by_role("row", name=re.compile("^olga ")).get_by_role("button", name="Disable").click()
        olga.reload()
        expect(olga.get_by_role("button", name="Log in")).to_be_visible()
    finally:
        olga.close()
    page.get_by_role("link", name="Audit").click()
    assert_labelled(page)
    for action in ("user.create", "user.change", "token.issue", "token.revoke", "console.login"):
        expect(page.get_by_role("cell", name=action, exact=True).first).to_be_visible()
    page.get_by_label("Action").fill("user.create")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("table.list tbody tr")).to_have_count(1 + len(_audit(console, "user.create", "admin-token")))
    page.goto(f"{console.url}/audit")
    console.shot(page, "audit", output_path)


def test_only_administrators_see_users_and_the_audit_log(console: Console, page: Page) -> None:
    console.login(page, "dana")
    expect(page.get_by_role("link", name="Users")).to_have_count(0)
    expect(page.get_by_role("link", name="Audit")).to_have_count(0)
    for path in ("/users", "/audit"):
        page.goto(f"{console.url}{path}")
        expect(page.get_by_role("heading", level=1)).to_have_text("Not allowed")
    # Her own tokens she manages; a wider one she cannot issue.
    page.goto(f"{console.url}/tokens")
    page.get_by_label("Role (at most the user's)").select_option("admin")
    page.get_by_role("button", name="Issue").click()
    expect(page.locator(".flash.error")).to_contain_text("deployment_manager at most")
    expect(page.locator("#issued")).to_have_count(0)



# -- the console of a real `fotadelta serve` --------------------------------------------------------

def test_fotadelta_serve_serves_the_console(tmp_path: Path, page: Page) -> None:
    with socket.socket() as probe:  # a free port for the server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(Path(sys.executable).with_name("fotadelta")), "serve", "--data", str(tmp_path),
                             "--port", str(port), "--admin-token", "serve-admin-token"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait(lambda: proc.poll() is not None or _answers(f"{url}/openapi.json"))
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        r = httpx.post(f"{url}/api/v1/users", headers={"authorization": "Bearer serve-admin-token"},
                       json={"name": "ops", "password": "ops-password", "role": "admin"})
        assert r.status_code == 201, r.text
        page.goto(f"{url}/console/")
        page.get_by_label("User name").fill("ops")
        page.get_by_label("Password").fill("ops-password")
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", level=1, name="Fleet")).to_be_visible()
        # The style sheet and the script come from the installed package.
        expect(page.locator("header")).to_have_css("background-color", "rgb(36, 41, 47)")
        assert page.request.get(f"{url}/console/static/console.js").text().startswith("// fotadelta console")
        page.get_by_role("link", name="Audit").click()
        expect(page.get_by_role("cell", name="console.login", exact=True)).to_be_visible()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
