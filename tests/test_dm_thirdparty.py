"""The fotadelta DM server with clients it did not make: conformance and the issue's targets.

Third-party clients (tests/dm_thirdparty.py) have their own fixed accounts and behaviours; the
server is configured for them only as an operator would (serve flags, `account add`, or the same
operator API in-process). Also here: fotadelta's own client speaking OMA DM 1.1.2, SNMP-trap
requests end to end over loopback UDP, Generic Alerts of any type, per-direction authentication
and its bounds."""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from dm_fixtures import MAKE, MODEL, Lab, Raw, Release, Wire, hdr_status, start_server
from dm_thirdparty import Profile, ThirdPartyClient, basic_cred, funambol
from sqlalchemy import select
from typer.testing import CliRunner

from fotadelta.cli import app
from fotadelta.dm import snmp
from fotadelta.dm.client import FUMO
from fotadelta.dm.model import DM_1_1, Alert, Item, Meta, Status
from fotadelta.emulator import Fleet
from fotadelta.server import capabilities
from fotadelta.server.accounts import Account
from fotadelta.server.capabilities import DeviceCapability
from fotadelta.server.engine import Inbound, ServerConfig
from fotadelta.server.store import DeviceRow, EventRow, JobRow

FUNAMBOL_PATH = "/funambol/dm"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _fotadelta(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fotadelta.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def funambol_server(tmp_path: Path) -> Iterator[str]:
    """`fotadelta serve` as its own process, configured only by its flags: the funambol client's path and id."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fotadelta.cli", "serve", "--data", str(tmp_path / "srv"),
                             "--port", str(port), "--dm-path", FUNAMBOL_PATH, "--server-id", "funambol",
                             "--no-enrol"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    # Reading a live server's output would wait for it to exit: stop it first.
                    proc.kill()
                    output = proc.communicate(timeout=30)[0]
                    raise AssertionError(f"serve did not start: {output}")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _sessions(url: str, dev_id: str) -> list[str]:
    """The device's sessions as its history in the fleet API tells them, oldest first."""
    history = httpx.get(f"{url}/api/v1/devices/{dev_id}/history").json()
    return [e["text"] for e in sorted(history["timeline"], key=lambda e: e["at"]) if e["kind"] == "session"]


def _session_states(url: str, dev_id: str) -> list[str]:
    return [m.group(1) for text in _sessions(url, dev_id) if (m := re.search(r"-initiated\): (\w+),", text))]


def _account_add(url: str, dev_id: str, *extra: str) -> None:
    done = _fotadelta("account", "add", dev_id, "--server", url, "--client-auth", "basic", "--client-user",
                      "funambol", "--client-password", "funambol", "--server-auth", "md5", "--server-password",
                      "srvpwd", "--server-nonce", "", *extra)
    assert done.returncode == 0 and "account created" in done.stdout, done.stderr


# -- targets -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("wbxml", [False, True], ids=["xml", "wbxml"])
def test_target_a_funambol_client_completes_a_session_in_at_most_8_exchanges(funambol_server: str,
                                                                            wbxml: bool) -> None:
    dev_id = "351234567890123"
    _account_add(funambol_server, dev_id)
    client = ThirdPartyClient(funambol(f"{funambol_server}{FUNAMBOL_PATH}", dev_id=dev_id, wbxml=wbxml))
    result = client.session()
    assert result.http_error is None and not result.aborted
    assert result.authenticated and result.server_accepted  # both directions, the server's with the empty nonce
    assert len(result.exchanges) <= 8, len(result.exchanges)
    # The session started at the client's own path and went on at the RespURI the server named below it.
    dm_url = f"{funambol_server}{FUNAMBOL_PATH}"
    resp_uris = {m.group(1) for x in result.exchanges if (m := re.search(r"<RespURI>(.*?)</RespURI>", x.response))}
    [resp_uri] = resp_uris
    assert resp_uri.startswith(f"{dm_url}/") and len(resp_uri) > len(dm_url) + 20
    assert [x.url for x in result.exchanges] == [dm_url] + [resp_uri] * (len(result.exchanges) - 1)
    # The second session uses the nonce the client gave in the first.
    again = client.session()
    assert again.server_accepted and len(again.exchanges) <= 8
    assert _session_states(funambol_server, dev_id) == ["completed", "completed"]


def test_target_a_client_that_never_accepts_the_server_is_cut_off_and_recorded(funambol_server: str) -> None:
    dev_id = "351234567890124"
    _account_add(funambol_server, dev_id)
    client = ThirdPartyClient(funambol(f"{funambol_server}{FUNAMBOL_PATH}", dev_id=dev_id,
                                       accept_server_creds=False))
    result = client.session()
    assert result.aborted and 2 * len(result.exchanges) <= 12
    # The last server message: Alert 1223. Anything more in that session is refused.
    assert "<Data>1223</Data>" in result.exchanges[-1].response
    last = result.exchanges[-1]
    assert last.url != f"{funambol_server}{FUNAMBOL_PATH}"  # (at the session's RespURI: the client authenticated)
    refused = httpx.post(last.url, content=last.request.encode(),
                         headers={"content-type": "application/vnd.syncml+xml"})
    assert refused.status_code == 403
    [session] = _sessions(funambol_server, dev_id)
    assert ": failed," in session and "refused the server's credentials 3 times" in session


def _third_party_lab(lab: Lab, profile: Profile, *, server_auth: tuple[str, ...] = ("md5",)) -> ThirdPartyClient:
    lab.server.config.server_id = profile.server_id
    lab.server.put_account(Account(profile.dev_id, profile.client_auth, profile.client_user, profile.client_password,
                                   server_auth, profile.server_password, profile.server_nonce))
    return ThirdPartyClient(profile)


def test_target_fumo_at_a_vendor_node_without_sequence_found_by_discovery(lab: Lab) -> None:
    url = lab.dm_url
    profile = funambol(url, dev_id="351234567890200", make=MAKE, model=MODEL, fumo_uri="./Vendor/Acme/FwUpdate",
                       sequence=False, structured_get=False)
    client = _third_party_lab(lab, profile)
    client.session()  # first contact: discovery (the device cannot list: node walk)
    assert lab.server.capability(MAKE, MODEL, "1.0").node_uri("fumo") == "./Vendor/Acme/FwUpdate"
    job = lab.server.assign(profile.dev_id, "1.1")
    result = client.session()
    sent = "".join(x.response for x in result.exchanges)
    assert "<Sequence>" in sent  # tried once; the device answered 406
    assert lab.server.capability(MAKE, MODEL).sequence is False
    assert client.shown and client.pending_exec == ("./Vendor/Acme/FwUpdate/DownloadAndUpdate", job.correlator)
    # The plain confirmation came alone, before the Replace/Exec.
    after_refusal = [x.response for x in result.exchanges if "<Sequence>" not in x.response]
    confirm_at = next(i for i, r in enumerate(after_refusal) if "<Data>1101</Data>" in r)
    exec_at = next(i for i, r in enumerate(after_refusal) if "<Exec>" in r)
    assert confirm_at < exec_at and "<Exec>" not in after_refusal[confirm_at]
    client.finish_update()
    assert client.downloaded == lab.release.p10_11
    client.session()  # reports the result in a Generic Alert
    assert lab.job(job.id).state == "succeeded" and lab.dev_row(profile.dev_id).version == "1.1"
    # A second device of that model gets no Sequence at all: the capability is known.
    other = _third_party_lab(lab, funambol(url, dev_id="351234567890201", make=MAKE, model=MODEL,
                                           fumo_uri="./Vendor/Acme/FwUpdate", sequence=False))
    other.session()
    lab.server.assign("351234567890201", "1.1")
    assert "<Sequence>" not in "".join(x.response for x in other.session().exchanges)
    assert other.pending_exec is not None


def test_target_a_dm_1_1_2_device_is_updated_end_to_end(lab: Lab) -> None:
    wire = Wire()
    client = lab.device(listen=True, wire=wire, protocol=DM_1_1)
    client.run()
    job = lab.update(client, "1.1")
    assert job.state == "succeeded" and job.result_code == 200
    assert client.device.version == "1.1" and client.device.image() == lab.release.images["1.1"]
    assert {x.request.header.protocol for x in wire.exchanges} == {DM_1_1}
    assert all(b"SYNCML:SYNCML1.1" in x.body_bytes and b"DM/1.1" in x.response_bytes for x in wire.exchanges)
    assert not wire.client_alerts(1226)  # no Generic Alert in DM 1.1.2: the server read the State
    states = [c for c in wire.received() if type(c).__name__ == "Get" and c.items[0].target == f"{FUMO}/State"]
    assert states
    assert any("FUMO State 100 read back" in e for e in lab.events(client.config.dev_id))


def test_a_third_party_dm_1_1_2_client_from_its_capture_is_updated(lab: Lab) -> None:
    profile = funambol(lab.dm_url, dev_id="356789012345678", make=MAKE, model=MODEL, protocol="1.1",
                       fumo_uri="./FwUpdate", content_type_family="dm", wbxml=True)
    client = _third_party_lab(lab, profile)
    client.session()
    job = lab.server.assign(profile.dev_id, "1.1")
    client.session()
    assert client.pending_exec == ("./FwUpdate/DownloadAndUpdate", None)  # no Correlator in SyncML 1.1
    client.finish_update()
    client.session()
    assert lab.job(job.id).state == "succeeded"


def test_target_an_snmp_trap_lists_the_software_then_installs_a_named_one(tmp_path: Path, release: Release,
                                                                          fleet: Fleet) -> None:
    lab = start_server(tmp_path, release, fleet, snmp_port=0)
    try:
        lab.publish_chain()
        client = lab.device()
        dev_id = client.config.dev_id
        community, v3 = snmp.V2c("c0mmunity-of-this-device"), snmp.V3("sensor7", "auth-pass-7", "priv-pass-7",
                                                                       "80001f8880c0ffee07")
        client.run()  # enrolled (factory credentials); the account below adds its trap credentials
        with lab.server.store.tx() as s:
            row = s.get(DeviceRow, dev_id)
            assert row is not None
            base = Account(dev_id, row.auth, row.user, row.password, (row.server_auth,), row.server_password)
        assert lab.server.traps is not None
        port = lab.server.traps.port
        lab.server.put_account(Account(**{**base.__dict__, "snmp": community}))
        snmp.send_request("127.0.0.1", port, community, dev_id, snmp.Action.LIST)
        _wait(lambda: any("software list delivered" in e for e in lab.events(dev_id)),
              lambda: (lab.events(dev_id), fleet.errors(dev_id)))
        fleet.wait()
        assert [v for v, _ in client.offers] == ["to:1.1", "to:1.2"]
        lab.server.put_account(Account(**{**base.__dict__, "snmp": v3}))  # now by SNMPv3
        snmp.send_request("127.0.0.1", port, v3, dev_id, snmp.Action.FETCH, "1.2")
        _wait(lambda: any(j.state == "succeeded" and j.goal_version == "1.2" for j in lab.jobs(dev_id))
              and lab.dev_row(dev_id).version == "1.2")
        fleet.wait()
        assert client.device.version == "1.2" and client.device.image() == release.images["1.2"]
        assert fleet.errors(dev_id) == []
        events = lab.events(dev_id)
        assert any("SNMP v2c trap" in e and ": list" in e for e in events)
        assert any("SNMP v3 trap" in e and "fetch 1.2" in e for e in events)
    finally:
        fleet.wait()
        lab.server.close()
        lab.running.stop()


def _wait(condition: Callable[[], bool], explain: Callable[[], object] = lambda: "", timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {explain()}")
        time.sleep(0.05)


# -- conformance: authentication per direction and its bounds ----------------------------------------

def test_the_server_follows_the_scheme_the_client_asks_for_where_the_account_allows_it(lab: Lab) -> None:
    profile = funambol(lab.dm_url, dev_id="351234567890300", server_auth="basic")
    client = _third_party_lab(lab, profile, server_auth=("md5", "basic"))
    result = client.session()
    assert result.server_accepted and not result.aborted
    creds = [m.group() for x in result.exchanges if (m := re.search(r"<Cred>.*?</Cred>", x.response, re.S))]
    assert "syncml:auth-md5" in creds[0]  # first the account's preferred scheme
    assert "syncml:auth-basic" in creds[1]  # then the one the client asked for


def test_a_scheme_the_account_does_not_allow_is_never_used(lab: Lab) -> None:
    profile = funambol(lab.dm_url, dev_id="351234567890301", server_auth="basic")
    client = _third_party_lab(lab, profile, server_auth=("md5",))
    result = client.session()
    assert result.aborted and not result.server_accepted
    server_creds = [re.search(r"<Cred>.*?</Cred>", x.response, re.S) for x in result.exchanges]
    assert server_creds and all(c is not None and "syncml:auth-md5" in c.group() for c in server_creds)
    [session] = lab.sessions(profile.dev_id)
    assert session.state == "failed" and "refused the server's credentials" in session.note


def test_a_client_that_keeps_failing_authentication_is_cut_off_without_a_trace_in_the_store(lab: Lab) -> None:
    profile = funambol(lab.dm_url, dev_id="351234567890302", client_password="wrong")
    client = _third_party_lab(lab, profile)
    client.p.client_password = "wrong"
    lab.server.put_account(Account(profile.dev_id, "basic", "funambol", "funambol", ("md5",), "srvpwd"))
    events_before = lab.events(profile.dev_id)
    result = client.session()
    assert result.aborted and len(result.exchanges) == 3  # 401, 401, then 401 with Alert 1223
    assert "<Data>1223</Data>" in result.exchanges[-1].response and "<Chal>" not in result.exchanges[-1].response
    # Then the session is refused; it never authenticated, so nothing of it is stored (it is logged only).
    again = httpx.post(lab.dm_url, content=result.exchanges[0].request.encode(),
                       headers={"content-type": profile.content_type})
    assert again.status_code == 403
    assert lab.sessions(profile.dev_id) == [] and lab.events(profile.dev_id) == events_before
    # With the right password, a new session of the device is not held against it.
    client.p.client_password = "funambol"
    ok = client.session()
    assert ok.authenticated and not ok.aborted
    assert [s.state for s in lab.sessions(profile.dev_id)] == ["completed"]


def test_a_stranger_failing_in_a_devices_name_does_not_cut_off_its_session(lab: Lab) -> None:
    # Failures before authentication count per caller address: elsewhere, the same DevId and SessionID
    # with wrong credentials do not end what the device itself sends.
    profile = funambol(lab.dm_url, dev_id="351234567890303")
    client = _third_party_lab(lab, profile)
    forged = client._package1("4242", 1, lab.dm_url, client._cred(False).replace(
        basic_cred("funambol", "funambol"), basic_cred("funambol", "guess")), 1201, "")
    for _ in range(5):
        reply = lab.server.handle(Inbound(forged.encode(), profile.content_type, peer="192.0.2.7", path="/dm"))
        assert reply.status in (200, 403)
    assert reply.status == 403  # the stranger's own attempt is cut off
    assert client.session(session_id="4242").authenticated  # the device, from its address, is not


@pytest.mark.parametrize("nonce", [b"", bytes(range(256)), b"\xff\xfe=+/"])
def test_nonces_empty_long_and_binary_work_both_ways(lab: Lab, nonce: bytes) -> None:
    profile = funambol(lab.dm_url, dev_id=f"35123456789{len(nonce):04d}", server_nonce=nonce, client_auth="md5")
    client = _third_party_lab(lab, profile)
    result = client.session()
    assert result.server_accepted and result.authenticated and not result.aborted


def test_a_generic_alert_of_any_type_is_answered_200_and_recorded(lab: Lab) -> None:
    raw = Raw.factory(lab.dm_url)
    cred = raw.md5(bytes(4))
    alert = Alert(1226, [Item(source="./Vendor/Acme/Battery", meta=Meta(type="com.acme.battery.low", format="int"),
                              data="7")], correlator="c-42")
    reply = raw.post([*raw.package1(), alert], cred=cred)
    assert hdr_status(reply).code == 212
    status = next(c for c in reply.commands if type(c).__name__ == "Status" and c.cmd == "Alert" and c.cmd_ref == 3)
    assert status.code == 200  # type: ignore[attr-defined]
    with lab.server.store.tx() as s:
        events = [e.text for e in s.scalars(select(EventRow).where(EventRow.dev_id == raw.dev_id,
                                                                  EventRow.kind == "alert"))]
    assert events == ["Generic Alert type='com.acme.battery.low' format='int' source='./Vendor/Acme/Battery' "
                      "correlator='c-42' data='7'"]


def test_every_dm_path_is_served_and_others_are_not(tmp_path: Path, release: Release, fleet: Fleet) -> None:
    lab = start_server(tmp_path, release, fleet, dm_paths=("/dm", "/oma/dm"))
    try:
        for path in ("/dm", "/oma/dm"):
            client = lab.device(listen=False, server_url=f"{lab.url}{path}")
            assert client.run().messages >= 1
        assert httpx.post(f"{lab.url}/other/dm", content=b"x").status_code == 404
        # A session is heard at its own RespURI only: not at the same token below another DM path.
        raw = Raw.factory(f"{lab.url}/oma/dm", client.config.dev_id, session_id="51")
        reply = raw.post(raw.package1(), cred=raw.md5(base64.b64decode(lab.dev_row(raw.dev_id).client_nonce)))
        assert hdr_status(reply).code == 212 and raw.url.startswith(f"{lab.url}/oma/dm/")
        raw.url = raw.url.replace("/oma/dm/", "/dm/")
        assert hdr_status(raw.post([Status(1, 0, "SyncHdr", 212)])).code == 506
    finally:
        lab.running.stop()


@pytest.mark.parametrize("paths", [("dm",), ("/dm/",), ("/dm/{token}",), ("/api/dm",), ("/portal",), ("/",)])
def test_unusable_dm_paths_are_refused(tmp_path: Path, paths: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="DM path"):
        ServerConfig(tmp_path, "http://127.0.0.1:1", dm_paths=paths)
    done = CliRunner().invoke(app, ["serve", "--data", str(tmp_path), "--port", "1",
                                    *[a for p in paths for a in ("--dm-path", p)]])
    assert done.exit_code == 2 and "DM path" in done.output
    with pytest.raises(ValueError, match="DM path"):
        ServerConfig(tmp_path, "http://127.0.0.1:1", dm_paths=())


# -- the operator's commands ------------------------------------------------------------------------

def test_account_and_capability_commands_through_a_running_server(lab: Lab) -> None:
    run = CliRunner().invoke
    add = run(app, ["account", "add", "351234567890400", "--server", lab.url, "--client-auth", "basic",
                    "--client-user", "u", "--client-password", "p4ss", "--server-auth", "md5,basic",
                    "--server-password", "s3cret", "--server-nonce", "00ff", "--snmp-community", "pub-400"])
    assert add.exit_code == 0, add.output
    listed = run(app, ["account", "list", "--server", lab.url])
    assert "351234567890400\tclient basic as u\tserver md5,basic" in listed.output
    shown = run(app, ["account", "show", "351234567890400", "--server", lab.url, "--json"])
    assert '"client_user": "u"' in shown.output and '"snmp": "v2c"' in shown.output
    assert "client_user: u" in run(app, ["account", "show", "351234567890400", "--server", lab.url]).output
    assert "p4ss" not in shown.output + listed.output and "s3cret" not in shown.output and "pub-400" not in shown.output
    assert "server_nonce" not in shown.output  # (nonces are not shown, as in the fleet)
    assert lab.dev_row("351234567890400").server_nonce == "AP8="  # the operator's 00ff, as base64
    bad = run(app, ["account", "add", "x", "--server", lab.url, "--client-auth", "rot13", "--client-user", "u",
                    "--client-password", "p", "--server-password", "s"])
    assert bad.exit_code == 2 and "schemes" in bad.output  # (a usage error)
    set_ = run(app, ["capability", "set", MAKE, MODEL, "--server", lab.url, "--fumo-uri", "./Vendor/X/Fumo",
                     "--no-sequence", "--ui-alerts", "1100"])
    assert set_.exit_code == 0, set_.output
    assert lab.server.capability(MAKE, MODEL).node_uri("fumo") == "./Vendor/X/Fumo"
    assert lab.server.capability(MAKE, MODEL).sequence is False
    assert "(operator)" in run(app, ["capability", "list", "--server", lab.url]).output
    assert '"source": "operator"' in run(app, ["capability", "list", "--server", lab.url, "--json"]).output
    assert run(app, ["capability", "remove", MAKE, MODEL, "--server", lab.url]).exit_code == 0
    assert lab.server.capability(MAKE, MODEL).node_uri("fumo") is None
    removed = run(app, ["account", "remove", "351234567890400", "--server", lab.url])
    assert removed.exit_code == 0 and lab.server.account("351234567890400") is None
    missing = run(app, ["account", "show", "351234567890400", "--server", lab.url])
    assert missing.exit_code == 1 and "404" in missing.output


def test_the_trap_command_reaches_a_listening_server(tmp_path: Path, release: Release, fleet: Fleet) -> None:
    lab = start_server(tmp_path, release, fleet, snmp_port=0)
    try:
        lab.server.put_account(Account("IMEI:1", "md5", "u", "p", ("md5",), "s", snmp=snmp.V2c("pub-1")))
        assert lab.server.traps is not None
        run = CliRunner().invoke
        sent = run(app, ["trap", "fetch", "1.1", "--to", f"127.0.0.1:{lab.server.traps.port}", "--dev-id", "IMEI:1",
                         "--community", "pub-1"])
        assert sent.exit_code == 0, sent.output
        _wait(lambda: any("fetch 1.1" in e for e in lab.events("IMEI:1")), lambda: lab.events("IMEI:1"))
        bad = run(app, ["trap", "fetch", "--dev-id", "IMEI:1", "--community", "pub-1"])
        assert bad.exit_code == 2 and "fetch VERSION" in bad.output
    finally:
        lab.server.close()
        lab.running.stop()


def test_a_removed_or_replaced_account_takes_its_snmp_credentials_with_it(tmp_path: Path, release: Release,
                                                                          fleet: Fleet) -> None:
    lab = start_server(tmp_path, release, fleet, snmp_port=0)
    try:
        assert lab.server.traps is not None
        traps, account = lab.server.traps, f"{lab.url}/api/v1/devices/IMEI:3/account"
        body = {"client_user": "u", "client_password": "p4ss", "server_password": "s3cret"}
        assert httpx.put(account, json={**body, "snmp": {"community": "pub-3"}}).status_code == 200
        # Replaced without SNMP credentials: the old community no longer speaks for the device.
        assert httpx.put(account, json=body).status_code == 200
        snmp.send_request("127.0.0.1", traps.port, snmp.V2c("pub-3"), "IMEI:3", snmp.Action.FETCH, "1.1")
        _wait(lambda: traps.dropped == 1, lambda: traps.dropped)
        assert httpx.put(account, json={**body, "snmp": {"community": "pub-4"}}).status_code == 200
        assert httpx.delete(f"{lab.url}/api/v1/devices/IMEI:3").status_code == 204
        snmp.send_request("127.0.0.1", traps.port, snmp.V2c("pub-4"), "IMEI:3", snmp.Action.FETCH, "1.1")
        _wait(lambda: traps.dropped == 2, lambda: traps.dropped)
        assert lab.events("IMEI:3") == []
    finally:
        lab.server.close()
        lab.running.stop()


def test_the_operator_api_refuses_malformed_accounts_and_capabilities(lab: Lab) -> None:
    account = f"{lab.url}/api/v1/devices/IMEI:x/account"
    for body in ({"client_auth": "rot13"}, {"client_user": "u", "client_password": "p", "server_password": "s",
                                            "server_nonce": "zz"}, {"snmp": {"community": "c", "user": "u"}},
                 {"client_password": "\n"}, {"unknown": 1}, [1, 2]):
        assert httpx.put(account, json=body).status_code == 400, body
    assert httpx.put(account, content=b"{not json").status_code == 400
    caps = f"{lab.url}/api/v1/capabilities"
    assert httpx.put(f"{caps}/{MAKE}/{MODEL}", json={"fumo_uri": "nope"}).status_code == 400
    assert httpx.put(f"{caps}/{MAKE}/{MODEL}", json={"colour": "red"}).status_code == 400
    assert httpx.put(f"{caps}/{'M' * 65}/{MODEL}", json={"sequence": False}).status_code == 400
    with lab.server.store.tx() as s:
        assert s.scalars(select(JobRow)).first() is None
        assert s.get(DeviceRow, "IMEI:x") is None
    assert lab.server.capabilities() == []


def test_an_operator_override_wins_over_discovery(lab: Lab) -> None:
    lab.server.set_capability(MAKE, MODEL, "", DeviceCapability(fumo_uri="./FUMO/Firmware"))
    wire = Wire()
    client = lab.device(wire=wire, listen=False)
    client.run()
    assert not any(c.items[0].target == ".?list=Struct" for c in wire.received() if type(c).__name__ == "Get")


def test_a_device_without_fumo_where_its_kind_keeps_it_is_searched_and_updated(lab: Lab) -> None:
    # Its model's discovered record says FUMO is elsewhere (another firmware version, say): the Exec's 404
    # makes the server search this device's own tree, once, and deliver there.
    with lab.server.store.tx() as s:
        capabilities.record(s, MAKE, MODEL, "", "discovered", DeviceCapability(fumo_uri="./Vendor/Elsewhere/Fumo"))
    client = lab.device()
    client.run()
    job = lab.update(client, "1.1")
    assert job.state == "succeeded" and client.device.version == "1.1"
    assert any(f"no FUMO at ./Vendor/Elsewhere/Fumo; found at {FUMO}" in e for e in lab.events(client.config.dev_id))
    assert lab.server.capability(MAKE, MODEL, "1.0").node_uri("fumo") == FUMO  # for that version
    assert lab.server.capability(MAKE, MODEL, "2.0").node_uri("fumo") == "./Vendor/Elsewhere/Fumo"


def test_repeated_traps_make_one_request_and_one_notification(tmp_path: Path, release: Release, fleet: Fleet) -> None:
    lab = start_server(tmp_path, release, fleet, snmp_port=0)
    try:
        notified: list[str] = []
        lab.server.push = lambda dev, pkg0: notified.append(dev.dev_id)
        lab.server.put_account(Account("IMEI:2", "md5", "u", "p", ("md5",), "s", snmp=snmp.V2c("pub-2")))
        assert lab.server.traps is not None
        for _ in range(5):
            snmp.send_request("127.0.0.1", lab.server.traps.port, snmp.V2c("pub-2"), "IMEI:2", snmp.Action.LIST)
        snmp.send_request("127.0.0.1", lab.server.traps.port, snmp.V2c("pub-2"), "IMEI:2", snmp.Action.FETCH, "1.1")
        _wait(lambda: any("fetch 1.1" in e for e in lab.events("IMEI:2")), lambda: lab.events("IMEI:2"))
        requests = [e for e in lab.events("IMEI:2") if "SNMP v2c trap" in e]
        assert len(requests) == 2  # the five lists are one request; the fetch replaced it
        assert 1 <= len(notified) <= 2
    finally:
        lab.server.close()
        lab.running.stop()
