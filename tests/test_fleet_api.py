"""The fleet REST API over real HTTP: every operation of the OpenAPI document, each role's limits,
hostile input. Each test says which operations it covers (`covers`), an autouse check makes sure it
really called them, and `test_every_operation_has_a_test` that together they cover the document."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from dm_fixtures import MAKE, MODEL
from fleet_fixtures import ADMIN_TOKEN, Api, api  # noqa: F401  (fixture)
from openapi_spec_validator import validate
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from fotadelta.server import serve_in_thread
from fotadelta.server.api import openapi
from fotadelta.server.auth import Role

F = TypeVar("F", bound=Callable[..., Any])
DECLARED: set[str] = set()
V1 = "/api/v1"


def covers(*operations: str) -> Callable[[F], F]:
    DECLARED.update(operations)
    return pytest.mark.covers(*operations)


@pytest.fixture(autouse=True)
def _called_what_it_covers(request: pytest.FixtureRequest) -> Iterator[None]:
    marker = request.node.get_closest_marker("covers")
    # (Asked for here, so that the api outlives this check.)
    used = request.getfixturevalue("api") if marker is not None else None
    yield
    if used is not None and marker is not None:
        assert set(marker.args) <= used.called, f"declared but not called: {set(marker.args) - used.called}"


def _wait(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _receiver() -> tuple[list[dict[str, Any]], Any]:
    got: list[dict[str, Any]] = []

    async def hook(request: Request) -> Response:
        got.append(await request.json())
        return PlainTextResponse("ok\n")
    return got, serve_in_thread(Starlette(routes=[Route("/hook", hook, methods=["POST"])]))


def _registered(api: Api, version: str = "1.0", **kw: Any) -> Any:
    """An emulated device that has opened its first session (factory credentials: status unknown)."""
    client = api.lab.device(version, **kw)
    client.run()
    return client


# -- the document ------------------------------------------------------------------------------------

def test_the_openapi_document_validates_and_is_served(api: Api) -> None:
    served = api.json("GET", "/openapi.json", None)
    validate(served)
    assert served == json.loads(json.dumps(openapi()))
    assert served["openapi"] == "3.1.0" and len(served["paths"]) >= 30


def test_every_operation_has_a_test() -> None:
    documented = {op["operationId"] for methods in openapi()["paths"].values() for op in methods.values()}
    assert documented == DECLARED, f"untested: {sorted(documented - DECLARED)}; unknown: {sorted(DECLARED - documented)}"


# -- users, tokens, audit ------------------------------------------------------------------------------

@covers("login", "whoami", "issueToken", "listTokens", "revokeToken")
def test_a_user_logs_in_for_a_token_and_manages_its_tokens(api: Api) -> None:
    issued = api.json("POST", f"{V1}/auth/token", None, json={"user": "carl", "password": "carl-password",
                                                               "name": "laptop"}, expect=201)
    assert issued["role"] == "customer_care" and issued["token"].startswith("fdt_")
    api.tokens["laptop"] = issued["token"]
    me = api.json("GET", f"{V1}/auth/whoami", "laptop")
    assert me["name"] == "carl" and "commands.execute" in me["permissions"] and "campaigns.manage" not in \
        me["permissions"]
    # A narrower token of one's own; never a wider one.
    narrow = api.json("POST", f"{V1}/tokens", "laptop", json={"name": "ro", "role": "read_only"}, expect=201)
    api.call("POST", f"{V1}/tokens", "laptop", json={"role": "admin"}, expect=403)
    names = {t["name"] for t in api.json("GET", f"{V1}/tokens", "laptop")}
    assert names == {"tests", "laptop", "ro"}
    api.call("DELETE", f"{V1}/tokens/{narrow['id']}", "laptop", expect=204)
    api.tokens["ro"] = narrow["token"]
    api.call("GET", f"{V1}/auth/whoami", "ro", expect=401)
    # Wrong passwords and unknown users get the same answer.
    for user, password in (("carl", "wrong-password"), ("nobody", "carl-password")):
        r = api.call("POST", f"{V1}/auth/token", None, json={"user": user, "password": password}, expect=401)
        assert r.json() == {"error": "wrong user name or password"}


@covers("listUsers", "createUser", "changeUser")
def test_administrators_manage_users_and_a_role_change_narrows_tokens(api: Api) -> None:
    created = api.json("POST", f"{V1}/users", json={"name": "eve", "password": "eve-password-1",
                                                     "role": "deployment_manager"}, expect=201)
    assert created["role"] == "deployment_manager" and "password" not in json.dumps(created)
    api.call("POST", f"{V1}/users", json={"name": "eve", "password": "eve-password-1", "role": "admin"}, expect=409)
    api.call("POST", f"{V1}/users", json={"name": "x", "password": "short", "role": "admin"}, expect=400)
    api.tokens["eve"] = api.json("POST", f"{V1}/auth/token", None, json={"user": "eve", "password": "eve-password-1"},
                                 expect=201)["token"]
    api.json("PATCH", f"{V1}/users/eve", json={"role": "read_only"})
    assert api.json("GET", f"{V1}/auth/whoami", "eve")["role"] == "read_only"
    api.json("PATCH", f"{V1}/users/eve", json={"disabled": True})
    api.call("GET", f"{V1}/auth/whoami", "eve", expect=401)
    assert {u["name"] for u in api.json("GET", f"{V1}/users")} >= {"ada", "dana", "carl", "rita", "eve"}
    for user in ("dana", "carl", "rita"):
        api.call("GET", f"{V1}/users", user, expect=403)


@covers("auditLog")
def test_the_audit_log_records_actions_and_refusals(api: Api) -> None:
    api.call("POST", f"{V1}/groups", "dana", json={"name": "north"}, expect=201)
    api.call("POST", f"{V1}/groups", "rita", json={"name": "south"}, expect=403)
    log = api.json("GET", f"{V1}/audit?limit=1000")
    assert any(e["actor"] == "dana" and e["action"] == "group.create" and e["outcome"] == "ok" for e in log)
    denied = [e for e in log if e["actor"] == "rita"]
    assert denied and denied[-1]["outcome"] == "denied" and denied[-1]["detail"] == {"needs": "devices.write"}
    only = api.json("GET", f"{V1}/audit?actor=dana&action=group.create")
    assert [e["target"] for e in only] == ["north"]
    api.call("GET", f"{V1}/audit", "dana", expect=403)


# -- devices, groups -----------------------------------------------------------------------------------

@covers("createDevice", "getDevice", "changeDevice", "listDevices", "countDevices", "deleteDevice")
def test_device_crud_filters_and_pages(api: Api) -> None:
    api.call("POST", f"{V1}/groups", json={"name": "north"}, expect=201)
    for i in range(5):
        api.json("POST", f"{V1}/devices", "dana", json={"dev_id": f"IMEI:1000{i}", "make": MAKE, "model": MODEL,
                                                       "version": "1.0", "msisdn": f"+4915100000{i}",
                                                       "tags": ["pilot"] if i < 2 else [],
                                                       "groups": ["north"] if i % 2 else []}, expect=201)
    dev = api.json("GET", f"{V1}/devices/IMEI:10001")
    assert dev["status"] == "unassigned" and dev["groups"] == ["north"] and dev["created_by"] == "dana"
    assert "password" not in json.dumps(dev) and "nonce" not in json.dumps(dev)
    api.call("POST", f"{V1}/devices", json={"dev_id": "IMEI:10001"}, expect=409)
    changed = api.json("PATCH", f"{V1}/devices/IMEI:10001", "dana", json={"timezone": "Asia/Tokyo", "tags": ["x"]})
    assert changed["timezone"] == "Asia/Tokyo" and changed["tags"] == ["x"] and changed["modified_by"] == "dana"
    api.call("PATCH", f"{V1}/devices/IMEI:10001", json={"timezone": "Mars/Olympus"}, expect=400)
    assert [d["dev_id"] for d in api.json("GET", f"{V1}/devices?tag=pilot")] == ["IMEI:10000"]
    assert [d["dev_id"] for d in api.json("GET", f"{V1}/devices?group=north")] == ["IMEI:10001", "IMEI:10003"]
    page1 = api.json("GET", f"{V1}/devices?limit=2")
    page2 = api.json("GET", f"{V1}/devices?limit=2&after={page1[-1]['dev_id']}")
    assert [d["dev_id"] for d in page1 + page2] == [f"IMEI:1000{i}" for i in range(4)]
    assert api.json("GET", f"{V1}/devices/counts")["unassigned"] == 5
    api.call("DELETE", f"{V1}/devices/IMEI:10004", "carl", expect=403)
    api.call("DELETE", f"{V1}/devices/IMEI:10004", "dana", expect=204)
    api.call("GET", f"{V1}/devices/IMEI:10004", expect=404)


@covers("setAccount", "adoptDevice", "quarantineDevice", "getDevice")
def test_the_status_lifecycle(api: Api) -> None:
    client = api.lab.device("1.0", listen=False)
    dev_id = client.config.dev_id
    api.json("POST", f"{V1}/devices", json={"dev_id": dev_id, "make": MAKE, "model": MODEL}, expect=201)
    # Unassigned: its factory credentials do not let it in (the registry gave it secrets nobody knows).
    client.config.retries = 0
    with pytest.raises(Exception, match="401"):
        client.run()
    assert api.json("GET", f"{V1}/devices/{dev_id}")["status"] == "unassigned"
    api.call("PUT", f"{V1}/devices/{dev_id}/account", json={"factory": True}, expect=200)
    assert api.json("GET", f"{V1}/devices/{dev_id}")["status"] == "assigned"
    client.run()
    dev = api.json("GET", f"{V1}/devices/{dev_id}")
    assert dev["status"] == "provisioned" and dev["version"] == "1.0"
    # needs_update is derived: 1.2 is released (published outside the lifecycle) and it runs 1.0.
    api.lab.publish_chain()
    assert api.json("GET", f"{V1}/devices/{dev_id}")["status"] == "needs_update"
    assert api.json("GET", f"{V1}/devices/counts")["needs_update"] == 1
    q = api.json("POST", f"{V1}/devices/{dev_id}/quarantine", "dana", json={"reason": "stolen"})
    assert q["status"] == "quarantined"
    api.call("POST", f"{V1}/devices/{dev_id}/update", json={"version": "1.1"}, expect=409)
    back = api.json("POST", f"{V1}/devices/{dev_id}/quarantine", json={"on": False})
    assert back["status"] == "needs_update"
    # A self-enrolled device is unknown until adopted.
    other = _registered(api)
    assert api.json("GET", f"{V1}/devices/{other.config.dev_id}")["status"] == "unknown"
    assert api.json("POST", f"{V1}/devices/{other.config.dev_id}/adopt")["status"] == "needs_update"
    api.call("POST", f"{V1}/devices/{other.config.dev_id}/adopt", expect=409)


@covers("bootstrapDevice")
def test_the_bootstrap_message_carries_the_dm_account_under_the_pins_mac(api: Api) -> None:
    import base64
    import hashlib
    import hmac
    from fotadelta.dm.codec import Encoding, decode
    from fotadelta.dm.model import Add
    api.call("POST", f"{V1}/devices", json={"dev_id": "IMEI:42"}, expect=201)
    api.call("POST", f"{V1}/devices/IMEI:42/bootstrap", json={"pin": "1234"}, expect=409)  # no credentials yet
    api.call("PUT", f"{V1}/devices/IMEI:42/account", json={"client_auth": "hmac", "client_password": "client-secret-1",
                                                          "server_password": "server-secret-1"}, expect=200)
    api.call("POST", f"{V1}/devices/IMEI:42/bootstrap", "carl", json={"pin": "1234"}, expect=403)
    api.call("POST", f"{V1}/devices/IMEI:42/bootstrap", json={"pin": "12"}, expect=400)
    got = api.json("POST", f"{V1}/devices/IMEI:42/bootstrap", "dana", json={"pin": "1234"})
    body = base64.b64decode(got["body_b64"])
    assert got["mac"] == hmac.new(b"1234", body, hashlib.sha1).hexdigest().upper() and got["sec"] == "1"
    assert got["content_type"] == f"application/vnd.syncml.dm+wbxml; SEC=1; MAC={got['mac']}"
    msg = decode(body, Encoding.WBXML)
    assert (msg.header.session_id, msg.header.msg_id, msg.header.target) == ("0", 1, "IMEI:42")
    add = msg.commands[0]
    assert isinstance(add, Add)
    values = {i.target: i.text for i in add.items}
    acc = "./DMAcc/fotadelta"
    assert values[f"{acc}/AppAddr/srv/Addr"] == f"{api.url}/dm" and values[f"{acc}/AAuthPref"] == "HMAC"
    assert values[f"{acc}/AppAuth/cl/AAuthSecret"] == "client-secret-1"
    assert values[f"{acc}/AppAuth/srv/AAuthSecret"] == "server-secret-1"
    assert any(e["action"] == "device.bootstrap" and e["actor"] == "dana"
               for e in api.json("GET", f"{V1}/audit?limit=1000"))


@covers("bootstrapDevice", "createDevice", "setAccount", "getDevice")
def test_a_pushed_bootstrap_gives_a_factory_fresh_device_its_account(api: Api) -> None:
    """The bootstrap sent through the notification transport (HTTP push) and taken by the emulated
    device: it checks the MAC with its user's PIN, takes the account, and its first session with the
    server provisions it. A wrong PIN changes nothing on the device."""
    from dm_fixtures import new_dev_id
    fresh = {}
    for pin in ("4321", "0000"):
        # Factory-fresh: it knows no server (nothing listens at its address) and no credentials.
        client = api.lab.device("1.0", dev_id=new_dev_id(), listen=False, server_url="http://127.0.0.1:9/dm")
        client.config.password = client.config.server_password = "factory-nothing"
        api.lab.fleet.add(client, pin=pin)
        fresh[pin] = client
        dev_id = client.config.dev_id
        api.call("POST", f"{V1}/devices", json={"dev_id": dev_id}, expect=201)
        api.call("PUT", f"{V1}/devices/{dev_id}/account", json={"client_auth": "md5"}, expect=200)
    good, wrong = fresh["4321"], fresh["0000"]
    api.call("POST", f"{V1}/devices/{good.config.dev_id}/bootstrap", json={"pin": "4321", "send": True}, expect=409)
    api.call("POST", f"{V1}/devices/{good.config.dev_id}/bootstrap", expect=409,
             json={"pin": "4321", "send": True, "push_url": "http://192.0.2.1/push"})  # outside the push policy
    for client in (good, wrong):
        sent = api.json("POST", f"{V1}/devices/{client.config.dev_id}/bootstrap", "dana",
                        json={"pin": "4321", "send": True, "push_url": api.lab.fleet.push_url(client.config.dev_id)})
        assert sent["sent_to"] == api.lab.fleet.push_url(client.config.dev_id)
    api.lab.fleet.wait()
    assert api.lab.fleet.errors(good.config.dev_id) == []
    assert good.config.server_url == f"{api.url}/dm" and good.tree.value("./DMAcc/fotadelta/AppAddr/srv/Addr") == \
        f"{api.url}/dm"
    assert api.json("GET", f"{V1}/devices/{good.config.dev_id}")["status"] == "provisioned"
    (error,) = api.lab.fleet.errors(wrong.config.dev_id)
    assert error == "BootstrapError: the bootstrap message's MAC does not match the PIN"
    assert wrong.config.server_url == "http://127.0.0.1:9/dm"
    assert api.json("GET", f"{V1}/devices/{wrong.config.dev_id}")["status"] == "assigned"


@covers("setAccount", "getAccount", "listAccounts", "deleteDevice")
def test_device_accounts_per_direction_behind_roles_and_never_shown_back(api: Api) -> None:
    """A third-party client's account: its own user name and scheme, the server's schemes and first nonce
    (empty), SNMP credentials. Made for a DevId the registry did not know; secrets never come back."""
    account = {"client_auth": "basic", "client_user": "funambol", "client_password": "funambol",
               "server_auth": ["md5", "basic"], "server_password": "srvpwd", "server_nonce": "",
               "snmp": {"community": "pub-1"}}
    api.call("PUT", f"{V1}/devices/351234567890123/account", "carl", json=account, expect=403)
    api.call("GET", f"{V1}/devices/351234567890123/account", "rita", expect=404)
    made = api.json("PUT", f"{V1}/devices/351234567890123/account", "dana", json=account)
    assert made["created"] is True and (made["client_auth"], made["client_user"]) == ("basic", "funambol")
    assert made["server_auth"] == "md5,basic" and made["snmp"] == "v2c"
    row = api.lab.dev_row("351234567890123")
    assert (row.password, row.server_password, row.server_nonce, row.status) == ("funambol", "srvpwd", "", "assigned")
    again = api.json("PUT", f"{V1}/devices/351234567890123/account", json={**account, "server_auth": ["hmac"]})
    assert again["created"] is False and again["server_auth"] == "hmac"
    assert api.lab.dev_row("351234567890123").server_nonce == ""  # (not given: kept)
    # Another device may not take the same SNMP community: it names one device.
    api.call("PUT", f"{V1}/devices/IMEI:1/account", json={"snmp": {"community": "pub-1"}}, expect=400)
    shown = api.call("GET", f"{V1}/devices/351234567890123/account", "rita", expect=200)
    pages = [api.json("GET", f"{V1}/accounts?limit=1", "rita"),
             api.json("GET", f"{V1}/accounts?limit=1&after=351234567890123", "rita")]
    assert [a["dev_id"] for page in pages for a in page] == ["351234567890123"]
    for text in (shown.text, json.dumps(pages)):
        assert not any(secret in text for secret in ("srvpwd", "pub-1", "nonce", "password"))
    audited = api.json("GET", f"{V1}/audit?action=device.account&limit=1000")
    assert [(e["actor"], e["outcome"]) for e in audited] == [("carl", "denied"), ("dana", "ok"), ("ada", "ok")]
    api.call("DELETE", f"{V1}/devices/351234567890123", "dana", expect=204)
    api.call("GET", f"{V1}/devices/351234567890123/account", expect=404)


@covers("listCapabilities", "getCapability", "setCapability", "removeCapability")
def test_capabilities_per_make_model_and_version_are_readable_and_writable(api: Api) -> None:
    base = f"{V1}/capabilities/{MAKE}/{MODEL}"
    defaults = api.json("GET", base, "rita")["in_force"]
    assert defaults["sequence"] is True and "fumo_uri" not in defaults
    api.call("PUT", base, "carl", json={"sequence": False}, expect=403)
    api.call("PUT", base, "rita", json={"sequence": False}, expect=403)
    model_wide = api.json("PUT", base, "dana", json={"fumo_uri": "./Vendor/X/Fumo", "sequence": False})
    assert model_wide["in_force"]["fumo_uri"] == "./Vendor/X/Fumo" and model_wide["in_force"]["sequence"] is False
    at_2 = api.json("PUT", f"{base}?fw_version=2.0", json={"sequence": True, "max_msg_size": 4096})
    assert at_2["fw_version"] == "2.0" and at_2["in_force"]["sequence"] is True
    assert api.json("GET", f"{base}?fw_version=1.0")["in_force"]["sequence"] is False  # (the model-wide record)
    records = api.json("GET", f"{V1}/capabilities", "rita")
    assert [(r["fw_version"], r["source"]) for r in records] == [("", "operator"), ("2.0", "operator")]
    api.call("PUT", base, json={"fumo_uri": "Vendor/X"}, expect=400)  # not an absolute node URI
    api.call("PUT", base, json={"colour": "red"}, expect=400)
    api.call("PUT", f"{V1}/capabilities/{'M' * 65}/{MODEL}", json={"sequence": False}, expect=400)
    api.call("DELETE", base, "carl", expect=403)
    gone = api.json("DELETE", base, "dana")
    assert "fumo_uri" not in gone["in_force"] and gone["in_force"]["sequence"] is True
    assert [r["fw_version"] for r in api.json("GET", f"{V1}/capabilities")] == ["2.0"]
    actions = [e["action"] for e in api.json("GET", f"{V1}/audit?limit=1000") if e["action"].startswith("capability.")]
    assert actions.count("capability.set") == 4 and actions.count("capability.remove") == 2  # (refusals included)


@covers("exportDevices", "importDevices")
def test_csv_import_and_export_round_trip_and_report_bad_lines(api: Api) -> None:
    api.call("POST", f"{V1}/groups", json={"name": "g1"}, expect=201)
    text = ("dev_id,msisdn,make,model,version,timezone,groups,tags\n"
            "IMEI:1,+4915112345678,Acme,S1,1.0,Europe/Berlin,g1,a;b\n"
            "IMEI:2,,=cmd(),S1,1.0,UTC,,\n"
            "IMEI:3,,Acme,S1,1.0,Nowhere/Land,,\n"
            "IMEI:4,,Acme,S1,1.0,UTC,nogroup,\n"
            "IMEI:5,,Acme,S1,1.0,UTC,,,extra\n")
    report = api.json("POST", f"{V1}/devices/import", "dana", content=text, headers={"content-type": "text/csv"})
    assert (report["created"], report["updated"]) == (2, 0)
    assert [e.split(":")[0] for e in report["errors"]] == ["line 4", "line 5", "line 6"]
    exported = api.call("GET", f"{V1}/devices/export", expect=200).text
    assert "IMEI:1,+4915112345678,Acme,S1,1.0,,Europe/Berlin,unassigned,g1,a;b" in exported
    assert "'=cmd()" in exported  # a formula is defused
    # Importing the export again changes nothing and creates nothing.
    again = api.json("POST", f"{V1}/devices/import", content=exported, headers={"content-type": "text/csv"})
    assert (again["created"], again["updated"], again["errors"]) == (0, 2, [])
    assert api.json("GET", f"{V1}/devices/IMEI:2")["make"] == "=cmd()"
    api.call("POST", f"{V1}/devices/import", content="serial,x\n1,2\n", expect=400)
    api.call("POST", f"{V1}/devices/import", content=b"dev_id\n\xff\xfe\n", expect=400)
    api.call("POST", f"{V1}/devices/import", "carl", content=text, expect=403)


@covers("listGroups", "createGroup", "groupMembers", "deleteGroup")
def test_groups_and_members(api: Api) -> None:
    for i in range(3):
        api.call("POST", f"{V1}/devices", json={"dev_id": f"IMEI:7{i}"}, expect=201)
    api.call("POST", f"{V1}/groups", json={"name": "testers", "description": "first"}, expect=201)
    api.call("POST", f"{V1}/groups", json={"name": "testers"}, expect=409)
    assert api.json("POST", f"{V1}/groups/testers/members", json={"add": ["IMEI:70", "IMEI:71"]})["count"] == 2
    api.call("POST", f"{V1}/groups/testers/members", json={"add": ["IMEI:nope"]}, expect=404)
    api.json("POST", f"{V1}/groups/testers/members", json={"remove": ["IMEI:70"]})
    assert api.json("GET", f"{V1}/groups") == [{"name": "testers", "description": "first", "members": 1,
                                                "created_at": pytest.approx(time.time(), abs=60),
                                                "created_by": "ada"}]
    api.call("DELETE", f"{V1}/groups/testers", expect=204)
    api.call("DELETE", f"{V1}/groups/testers", expect=404)
    assert api.json("GET", f"{V1}/devices/IMEI:71")["groups"] == []


# -- releases and single updates -----------------------------------------------------------------------

@covers("publishRelease", "listReleases", "getRelease", "moveRelease", "updateDevice", "deviceHistory")
def test_only_released_packages_reach_ordinary_devices_and_testers_get_tested_ones(api: Api) -> None:
    tester, ordinary = _registered(api), _registered(api)
    api.call("POST", f"{V1}/groups", json={"name": "testers"}, expect=201)
    api.call("POST", f"{V1}/groups/testers/members", json={"add": [tester.config.dev_id]}, expect=200)
    rel = api.json("POST", f"{V1}/releases", "dana", content=api.lab.release.p10_11, expect=201)
    assert rel["state"] == "created" and rel["to_version"] == "1.1"
    api.call("POST", f"{V1}/releases", content=b"not a package", expect=400)
    pid = rel["package_id"]
    # created: nobody gets it
    api.call("POST", f"{V1}/devices/{tester.config.dev_id}/update", json={"version": "1.1"}, expect=409)
    api.call("POST", f"{V1}/releases/{pid}/state", json={"state": "tested"}, expect=400)  # no tester group named
    moved = api.json("POST", f"{V1}/releases/{pid}/state", json={"state": "tested", "tester_group": "testers"})
    assert moved["state"] == "tested" and moved["tester_group"] == "testers"
    api.call("POST", f"{V1}/devices/{ordinary.config.dev_id}/update", json={"version": "1.1"}, expect=409)
    job = api.json("POST", f"{V1}/devices/{tester.config.dev_id}/update", "carl", json={"version": "1.1"},
                   expect=201)["job"]
    api.lab.fleet.wait()
    assert tester.device.version == "1.1" and api.lab.job(job).state == "succeeded"
    api.json("POST", f"{V1}/releases/{pid}/state", json={"state": "released"})
    api.call("POST", f"{V1}/releases/{pid}/state", json={"state": "tested", "tester_group": "testers"}, expect=409)
    api.json("POST", f"{V1}/devices/{ordinary.config.dev_id}/update", json={"version": "1.1"}, expect=201)
    api.lab.fleet.wait()
    assert ordinary.device.version == "1.1"
    assert [r["state"] for r in api.json("GET", f"{V1}/releases?state=released")] == ["released"]
    assert api.json("GET", f"{V1}/releases/{pid}")["changed_by"] == "ada"
    api.json("POST", f"{V1}/releases/{pid}/state", json={"state": "deactivated"})
    api.call("GET", f"{V1}/releases/999", expect=404)
    history = api.json("GET", f"{V1}/devices/{tester.config.dev_id}/history")
    assert [(j["state"], j["result_code"], j["result"]) for j in history["jobs"]] == [("succeeded", 200, "successful")]
    kinds = {e["kind"] for e in history["timeline"]}
    assert {"session", "job", "event"} <= kinds


def test_the_history_of_a_failed_update_has_its_result_and_step_trace(api: Api) -> None:
    from dm_fixtures import secured_sim
    api.lab.publish_chain()
    client = _registered(api, sim_card=secured_sim(b"other operator"))
    job = api.lab.update(client, "1.1")
    assert job.state == "failed"
    history = api.services.reports.device_history(api.principal("carl"), client.config.dev_id)
    failed = history.jobs[-1]
    assert (failed.result_code, failed.result) == (404, "package validation failed (signature or SIM)")
    assert any("FUMO result 404" in e.text for e in failed.trace)
    assert any("accepted the update" in e.text for e in failed.trace)


# -- commands ------------------------------------------------------------------------------------------

@covers("executeCommands", "getCommand", "listCommands")
def test_commands_run_on_the_device_and_answer_by_polling_and_webhook(api: Api) -> None:
    got, hook = _receiver()
    try:
        client = _registered(api)
        dev_id = client.config.dev_id
        cmds = [{"op": "Get", "target": "./DevInfo/Mod"},
                {"op": "Atomic", "commands": [{"op": "Replace", "target": "./FUMO/Firmware/PkgVersion", "data": "9"},
                                              {"op": "Replace", "target": "./FUMO/Firmware/PkgName", "data": "x"}]},
                {"op": "Delete", "target": "./DevInfo/Nope"}]
        queued = api.json("POST", f"{V1}/commands", "carl", json={"devices": [dev_id], "commands": cmds,
                                                                  "callback_url": f"http://127.0.0.1:{hook.port}/hook"},
                          expect=202)
        cid = queued[0]["id"]
        _wait(lambda: api.json("GET", f"{V1}/commands/{cid}")["state"] not in ("queued", "sent"))
        done = api.json("GET", f"{V1}/commands/{cid}")
        assert done["state"] == "failed" and "Delete ./DevInfo/Nope" in done["error"]
        assert [(s["op"], s["code"]) for s in done["statuses"]] == [
            ("Get", 200), ("Atomic", 200), ("Replace", 200), ("Replace", 200), ("Delete", 404)]
        assert done["results"] == [{"target": "./DevInfo/Mod", "items": [{"source": "./DevInfo/Mod", "format": "chr",
                                                                          "type": "text/plain", "data": MODEL}]}]
        assert (client.tree.value("./FUMO/Firmware/PkgVersion"), client.tree.value("./FUMO/Firmware/PkgName")) == \
            ("9", "x")
        api.services.webhooks.flush()
        assert [g["command"]["id"] for g in got] == [cid] and got[0]["event"] == "command.finished"
        assert [c["id"] for c in api.json("GET", f"{V1}/commands?dev_id={dev_id}")] == [cid]
        assert api.json("GET", f"{V1}/commands?state=succeeded") == []
    finally:
        hook.stop()


@covers("executeCommands", "cancelCommand", "retryCommand", "getCommand")
def test_a_queued_command_can_be_cancelled_and_retried(api: Api) -> None:
    client = _registered(api)
    dev_id = client.config.dev_id
    api.call("POST", f"{V1}/groups", json={"name": "g"}, expect=201)
    api.call("POST", f"{V1}/groups/g/members", json={"add": [dev_id]}, expect=200)
    queued = api.json("POST", f"{V1}/commands", json={"group": "g", "notify": False,
                                                      "commands": [{"op": "Get", "target": "./DevInfo/Man"}]},
                      expect=202)
    cid = queued[0]["id"]
    api.call("POST", f"{V1}/commands/{cid}/retry", expect=409)  # still queued
    cancelled = api.json("POST", f"{V1}/commands/{cid}/cancel", "carl")
    assert cancelled["state"] == "cancelled" and "carl" in cancelled["error"]
    api.call("POST", f"{V1}/commands/{cid}/cancel", expect=409)
    client.run()  # the next session carries nothing of the cancelled command
    assert api.json("GET", f"{V1}/commands/{cid}")["state"] == "cancelled"
    again = api.json("POST", f"{V1}/commands/{cid}/retry", expect=202)
    assert again["retry_of"] == cid and again["state"] == "queued"
    api.lab.fleet.wait()  # a retry notifies the device: its pushed session carries the command
    done = api.json("GET", f"{V1}/commands/{again['id']}")
    assert done["state"] == "succeeded" and done["results"][0]["items"][0]["data"] == MAKE


def test_a_command_answered_by_another_device_is_refused_and_recorded(api: Api) -> None:
    client = _registered(api)
    dev_id = client.config.dev_id
    # A clone: device A's DM account (credentials, LocURI) on hardware that says it is B.
    client.tree.put("./DevInfo/DevId", "IMEI:999999999999999")
    queued = api.json("POST", f"{V1}/commands", json={"devices": [dev_id], "notify": False,
                                                      "commands": [{"op": "Replace", "target":
                                                                    "./FUMO/Firmware/PkgName", "data": "planted"}]},
                      expect=202)
    client.run()
    cmd = api.json("GET", f"{V1}/commands/{queued[0]['id']}")
    assert cmd["state"] == "refused"
    assert cmd["error"] == f"expected device {dev_id}, answered by 'IMEI:999999999999999': refused"
    assert client.tree.value("./FUMO/Firmware/PkgName") == ""  # never executed
    assert any(e.startswith("refused: ") and "IMEI:999999999999999" in e for e in api.lab.events(dev_id))
    # The genuine device gets the same command through after a retry.
    client.tree.put("./DevInfo/DevId", dev_id)
    retry = api.json("POST", f"{V1}/commands/{queued[0]['id']}/retry", expect=202)
    api.lab.fleet.wait()  # a retry notifies the device: its pushed session carries the command
    assert api.json("GET", f"{V1}/commands/{retry['id']}")["state"] == "succeeded"
    assert client.tree.value("./FUMO/Firmware/PkgName") == "planted"


@pytest.mark.parametrize("body, status", [
    ({"devices": ["IMEI:x"], "commands": []}, 400),
    ({"devices": ["IMEI:x"], "commands": [{"op": "Format", "target": "./A"}]}, 400),
    ({"devices": ["IMEI:x"], "commands": [{"op": "Get", "target": "DevInfo"}]}, 400),
    ({"devices": ["IMEI:x"], "commands": [{"op": "Get", "target": "./A", "data": "x"}]}, 400),
    ({"devices": ["IMEI:x"], "commands": [{"op": "Replace", "target": "./A", "data_b64": "!!"}]}, 400),
    ({"devices": ["IMEI:x"], "commands": [{"op": "Replace", "target": "./A", "data": "x" * 70000}]}, 400),
    ({"devices": ["IMEI:x"], "commands": [{"op": "Atomic", "commands": [{"op": "Atomic", "commands": [
        {"op": "Atomic", "commands": [{"op": "Get", "target": "./A"}]}]}]}]}, 400),
    ({"devices": ["IMEI:x"], "commands": [{"op": "Get", "target": "./A"}], "callback_url": "file:///etc"}, 400),
    ({"devices": ["IMEI:x"], "commands": [{"op": "Get", "target": "./A", "bogus": 1}]}, 400),
    ({"devices": ["IMEI:x"], "group": "g", "commands": [{"op": "Get", "target": "./A"}]}, 400),
    ({"devices": ["IMEI:nobody"], "commands": [{"op": "Get", "target": "./A"}]}, 404),
])
def test_malformed_commands_are_refused_whole(api: Api, body: dict[str, Any], status: int) -> None:
    api.call("POST", f"{V1}/devices", json={"dev_id": "IMEI:x"}, expect=201)
    api.call("POST", f"{V1}/commands", json=body, expect=status)
    assert api.json("GET", f"{V1}/commands") == []


# -- campaigns -----------------------------------------------------------------------------------------

@covers("createCampaign", "startCampaign", "getCampaign", "listCampaigns", "pauseCampaign", "resumeCampaign",
        "retargetCampaign", "cancelCampaign", "campaignReport", "campaignReportCsv", "campaignProgress",
        "campaignProgressChart", "listAlerts")
def test_a_campaign_through_the_api(api: Api) -> None:
    from dm_fixtures import secured_sim
    api.lab.publish_chain()
    good = [_registered(api) for _ in range(3)]
    bad = _registered(api, sim_card=secured_sim(b"other operator"))
    spec = {"name": "to 1.1", "target_version": "1.1", "targets": {"make": MAKE, "model": MODEL},
            "waves": [{"count": 1, "success_threshold": 100}], "max_attempts": 1}
    c = api.json("POST", f"{V1}/campaigns", "dana", json=spec, expect=201)
    assert c["state"] == "draft" and c["spec"]["waves"][0]["count"] == 1
    api.call("POST", f"{V1}/campaigns", json={**spec, "waves": [{"cnt": 1}]}, expect=400)
    cid = c["id"]
    started = api.json("POST", f"{V1}/campaigns/{cid}/start", "dana")
    assert started["state"] == "running" and started["counts"]["queued"] == 4
    api.call("POST", f"{V1}/campaigns/{cid}/start", expect=409)
    paused = api.json("POST", f"{V1}/campaigns/{cid}/pause", json={"reason": "lunch"})
    assert paused["state"] == "paused" and paused["reason"] == "lunch"
    api.services.campaigns.tick()
    assert api.json("GET", f"{V1}/campaigns/{cid}")["counts"]["running"] == 0
    api.json("POST", f"{V1}/campaigns/{cid}/resume")
    deadline = time.monotonic() + 60
    while api.json("GET", f"{V1}/campaigns/{cid}")["state"] == "running":
        assert time.monotonic() < deadline
        api.services.campaigns.tick()
        time.sleep(0.05)
    done = api.json("GET", f"{V1}/campaigns/{cid}")
    assert done["state"] == "completed" and done["counts"]["succeeded"] == 3 and done["counts"]["failed"] == 1
    assert all(g.device.version == "1.1" for g in good) and bad.device.version == "1.0"
    report = api.json("GET", f"{V1}/campaigns/{cid}/report?state=failed")
    assert [d["dev_id"] for d in report["devices"]] == [bad.config.dev_id]
    assert report["devices"][0]["result"] == "package validation failed (signature or SIM)"
    assert "FUMO 404" in report["devices"][0]["reason"]
    by_version = {m["version"]: (m["succeeded"], m["failed"]) for m in report["by_model"]}
    assert by_version == {"1.1": (3, 0), "1.0": (0, 1)} and report["counts"]["failed"] == 1
    csv_text = api.call("GET", f"{V1}/campaigns/{cid}/report.csv", expect=200).text
    assert csv_text.startswith("dev_id,make,model,version,wave,state") and csv_text.count("\n") == 5
    points = api.json("GET", f"{V1}/campaigns/{cid}/progress")
    assert points[0]["counts"]["queued"] == 4 and points[-1]["counts"]["succeeded"] == 3
    svg = api.call("GET", f"{V1}/campaigns/{cid}/progress.svg", expect=200)
    assert svg.headers["content-type"] == "image/svg+xml" and svg.text.count("<polyline") == 5
    assert [c["id"] for c in api.json("GET", f"{V1}/campaigns?state=completed")] == [cid]
    alerts = api.json("GET", f"{V1}/alerts?campaign={cid}")
    assert [a["kind"] for a in alerts] == ["campaign.completed"]
    # Retarget: the failed device gets a new attempt (and fails again: its SIM is still wrong).
    assert api.json("POST", f"{V1}/campaigns/{cid}/retarget")["count"] == 1
    assert api.json("GET", f"{V1}/campaigns/{cid}")["state"] == "running"
    cancelled = api.json("POST", f"{V1}/campaigns/{cid}/cancel", json={"reason": "enough"})
    assert cancelled["state"] == "cancelled" and cancelled["counts"]["cancelled"] == 1
    api.call("POST", f"{V1}/campaigns/{cid}/resume", expect=409)
    api.call("GET", f"{V1}/campaigns/99/report", expect=404)


# -- roles and hostile requests ------------------------------------------------------------------------

def test_each_role_is_held_to_its_permissions(api: Api) -> None:
    api.lab.publish_chain()
    client = _registered(api)
    spec = {"name": "c", "target_version": "1.1", "targets": {"make": MAKE}}
    cmd = {"devices": [client.config.dev_id], "notify": False, "commands": [{"op": "Get", "target": "./DevInfo/Man"}]}
    # customer care: commands and single updates, no campaigns, no registry changes
    r = api.call("POST", f"{V1}/campaigns", "carl", json=spec, expect=403)
    assert "campaigns.manage" in r.json()["error"]
    api.call("POST", f"{V1}/commands", "carl", json=cmd, expect=202)
    api.call("POST", f"{V1}/devices", "carl", json={"dev_id": "IMEI:5"}, expect=403)
    # read-only: reads only
    r = api.call("POST", f"{V1}/commands", "rita", json=cmd, expect=403)
    assert "commands.execute" in r.json()["error"]
    api.call("POST", f"{V1}/devices/{client.config.dev_id}/update", "rita", json={"version": "1.1"}, expect=403)
    api.call("GET", f"{V1}/devices/{client.config.dev_id}", "rita", expect=200)
    api.call("GET", f"{V1}/campaigns", "rita", expect=200)
    # deployment manager: campaigns and releases, not users
    api.call("POST", f"{V1}/campaigns", "dana", json=spec, expect=201)
    api.call("POST", f"{V1}/users", "dana", json={"name": "z", "password": "zzzzzzzz", "role": "admin"}, expect=403)
    # the bootstrap admin token is an administrator
    api.call("POST", f"{V1}/users", "root", json={"name": "z", "password": "zzzzzzzz", "role": "read_only"},
             expect=201)
    # Refusals create nothing.
    assert len(api.json("GET", f"{V1}/campaigns")) == 1
    assert len(api.json("GET", f"{V1}/commands")) == 1


def test_requests_without_a_valid_token_or_with_bad_bodies_get_clear_errors(api: Api) -> None:
    api.call("GET", f"{V1}/devices", None, expect=401)
    r = api.call("GET", f"{V1}/devices", None, headers={"authorization": "Bearer fdt_forged"}, expect=401)
    assert r.json() == {"error": "invalid token"} and r.headers["www-authenticate"].startswith("Bearer")
    api.call("GET", f"{V1}/devices", None, headers={"authorization": "Basic YWRhOnBhc3M="}, expect=401)
    api.call("POST", f"{V1}/groups", content=b"{not json", expect=400)
    api.call("POST", f"{V1}/groups", json={"name": "a", "colour": "red"}, expect=400)
    api.call("POST", f"{V1}/groups", json={"name": "x" * 65}, expect=400)
    api.call("POST", f"{V1}/groups", content=b"[" * (2 << 20), expect=413)
    api.call("GET", f"{V1}/commands/abc", expect=404)
    api.call("GET", f"{V1}/devices?limit=lots", expect=400)
    r = api.call("POST", f"{V1}/campaigns", json={"name": "c", "target_version": "1", "windows": [
        {"days": [9], "start": "25:00", "end": "x"}]}, expect=400)
    assert "Traceback" not in r.text


@covers("publishRelease", "listJobs")
def test_publishing_released_at_once_and_the_jobs_listing(api: Api) -> None:
    """What `fotadelta publish` and `fotadelta jobs` call: a package released at once (for role tokens
    with releases.manage only), a package published again keeping its state, jobs in pages."""
    api.call("POST", f"{V1}/releases?state=released", "carl", content=api.lab.release.p10_11, expect=403)
    api.call("POST", f"{V1}/releases?state=shipped", content=api.lab.release.p10_11, expect=400)
    rel = api.json("POST", f"{V1}/releases?state=released", "dana", content=api.lab.release.p10_11, expect=201)
    assert rel["state"] == "released"
    # The same bytes again: the same package, still released (publishing never pulls a package back).
    again = api.json("POST", f"{V1}/releases", content=api.lab.release.p10_11, expect=201)
    assert (again["package_id"], again["state"]) == (rel["package_id"], "released")
    api.lab.server.publish(api.lab.release.p11_12)  # outside the lifecycle (serve --publish of old): released
    assert api.json("POST", f"{V1}/releases", content=api.lab.release.p11_12, expect=201)["state"] == "released"
    client = _registered(api)
    job = api.json("POST", f"{V1}/devices/{client.config.dev_id}/update", "carl", json={"version": "1.2"},
                   expect=201)
    assert job["notified"] is True and job["notify_error"] == ""
    api.lab.fleet.wait()
    jobs = api.json("GET", f"{V1}/jobs?device={client.config.dev_id}", "rita")
    assert [(j["from_version"], j["to_version"], j["goal"], j["state"], j["result"]) for j in jobs] == [
        ("1.0", "1.1", "1.2", "succeeded", "successful"), ("1.1", "1.2", "1.2", "succeeded", "successful")]
    assert api.json("GET", f"{V1}/jobs?after={jobs[0]['id']}&limit=1") == [jobs[1]]
    assert api.json("GET", f"{V1}/jobs?device=IMEI:1") == []


def test_a_local_program_without_a_token_is_the_operator_only_without_an_admin_token(
        tmp_path: Any, release: Any) -> None:
    """Like the operator API before it: a server without --admin-token takes programs on its own host
    (the CLI) without a token, as an administrator; never a browser (Origin, Sec-Fetch-*), and never
    once the server has an admin token (test_hostile row 2)."""
    import httpx
    from fotadelta.server import DmServer, ServerConfig, create_app
    server = DmServer(ServerConfig(tmp_path, "http://127.0.0.1:0"))
    running = serve_in_thread(create_app(server))
    url = f"http://127.0.0.1:{running.port}"
    try:
        me = httpx.get(f"{url}{V1}/auth/whoami").json()
        assert (me["name"], me["role"]) == ("loopback", "admin")
        r = httpx.post(f"{url}{V1}/releases?state=released", content=release.p10_11)
        assert r.status_code == 201 and r.json()["created_by"] == "loopback"
        for browser in ({"origin": url}, {"sec-fetch-site": "same-origin"}, {"sec-fetch-mode": "cors"}):
            assert httpx.get(f"{url}{V1}/devices", headers=browser).status_code == 401, browser
    finally:
        running.stop()


def test_strangers_at_the_api_and_the_token_login_write_nothing_and_are_throttled(tmp_path: Any) -> None:
    """Security's rule for the operator API: a caller that does not authenticate stores nothing (a failed
    login is counted in memory and logged, not audited), counts against the server's allowance for
    unauthenticated requests (429 past it), and password guesses are throttled per name (429)."""
    import httpx
    from argon2 import PasswordHasher
    from sqlalchemy import func, select
    from fotadelta.server import DmServer, ServerConfig, create_app
    from fotadelta.server.fleet import Fleet
    from fotadelta.server.limits import Limits
    from fotadelta.server.logins import PER_NAME
    from fotadelta.server.store import Base
    server = DmServer(ServerConfig(tmp_path, "http://127.0.0.1:0", admin_token="root-token",
                                   limits=Limits(unauthenticated_per_minute=10)))
    services = Fleet(server, password_hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    services.auth.create_user(services.auth.bootstrap_admin(), "ops", "ops-password", Role.ADMIN)
    running = serve_in_thread(create_app(server, services))
    url = f"http://127.0.0.1:{running.port}"

    def rows() -> dict[str, int]:
        with server.store.tx() as s:
            return {t.name: s.scalar(select(func.count()).select_from(t)) or 0 for t in Base.metadata.sorted_tables}
    try:
        before = rows()
        for _ in range(PER_NAME):
            r = httpx.post(f"{url}{V1}/auth/token", json={"user": "ops", "password": "guess-guess"})
            assert r.status_code == 401
        r = httpx.post(f"{url}{V1}/auth/token", json={"user": "ops", "password": "ops-password"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0  # even the right one, for now
        for token in ("", "Bearer fdt_guessed", "Bearer wrong"):
            assert httpx.get(f"{url}{V1}/devices", headers={"authorization": token}).status_code == 401
        assert rows() == before
        statuses = []  # (the failures above used part of the allowance already)
        while 429 not in statuses and len(statuses) < 25:
            statuses.append(httpx.get(f"{url}{V1}/devices", headers={"authorization": "Bearer x"}).status_code)
        assert statuses[-1] == 429 and set(statuses) == {401, 429}, statuses
        # An authenticated caller at the same address is still heard.
        assert httpx.get(f"{url}{V1}/devices", headers={"authorization": "Bearer root-token"}).status_code == 200
        assert rows() == before
    finally:
        running.stop()
        services.close()


def test_passwords_are_stored_as_argon2id_with_the_library_defaults(tmp_path: Any) -> None:
    from argon2 import PasswordHasher
    from fotadelta.server import DmServer, ServerConfig
    from fotadelta.server.fleet import Fleet
    from fotadelta.server.tables import UserRow
    services = Fleet(DmServer(ServerConfig(tmp_path, "http://127.0.0.1:0")))
    services.auth.create_user(services.auth.bootstrap_admin(), "ann", "correct horse", __import__(
        "fotadelta.server.auth", fromlist=["Role"]).Role.ADMIN)
    with services.server.store.tx() as s:
        stored = s.query(UserRow).one().password_hash
    default = PasswordHasher()
    assert stored.startswith(f"$argon2id$v=19$m={default.memory_cost},t={default.time_cost},p={default.parallelism}$")
    assert "correct horse" not in stored
    assert services.auth.login("ann", "correct horse").name == "ann"
    services.close()


def test_queued_commands_survive_a_server_restart(api: Api) -> None:
    from fotadelta.server import DmServer, ServerConfig, create_app
    from fotadelta.server.fleet import Fleet
    client = _registered(api)
    dev_id = client.config.dev_id
    queued = api.json("POST", f"{V1}/commands", json={"devices": [dev_id], "notify": False,
                                                      "commands": [{"op": "Get", "target": "./DevInfo/Lang"}]},
                      expect=202)
    api.lab.running.stop()
    api.services.close()
    # The same data directory, a new process's worth of objects: the command's row is its queue entry.
    server = DmServer(ServerConfig(api.lab.server.config.data_dir, "http://127.0.0.1:0", admin_token=ADMIN_TOKEN))
    services = Fleet(server)
    running = serve_in_thread(create_app(server, services))
    try:
        server.config.public_url = f"http://127.0.0.1:{running.port}"
        client.config.server_url = f"{server.config.public_url}/dm"
        client.run()
        done = services.commands.get(services.auth.bootstrap_admin(), queued[0]["id"])
        assert done.state == "succeeded" and done.results[0]["items"][0]["data"] == "en"
    finally:
        running.stop()
        services.close()
        api.lab.running = running  # (the fixture stops it again: harmless)
