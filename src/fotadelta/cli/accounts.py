"""Device accounts and device capabilities on a running DM server, through its operator API.

`fotadelta account add|list|show|remove` and `fotadelta capability set|list|remove`; both talk to
`serve` over HTTP (`--server`, `--admin-token`), so what they change is in the server's database."""

import json
from typing import Annotated
from urllib.parse import quote

import typer

from fotadelta.cli.common import (DEFAULT_SERVER, UsageError, command, emit, group, operator_request,
                                  server_option, token_option)

account_app = group("account", "Device accounts (credentials per direction) on a running DM server.")
capability_app = group("capability", "What kinds of device can take (make/model/version), as discovered and as "
                       "overridden.")

Server = Annotated[str, server_option()]
Token = Annotated[str | None, token_option()]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")]
Json = Annotated[bool, typer.Option("--json", help="Print the server's answer as JSON.")]
SCHEMES = ("basic", "md5", "hmac")


def _url(server: str, path: str) -> str:
    return f"{server.rstrip('/')}/api/{path}"


@command("add", group=account_app, examples=[
    "fotadelta account add 351234567890123 --client-auth basic --client-user funambol --client-password funambol \\",
    "    --server-auth md5 --server-password srvpwd --server-nonce \"\"",
    "fotadelta account add IMEI:490154203237518 --client-user u --client-password p --server-password s \\",
    "    --snmp-community c0mmunity --server http://fota.example:8080 --admin-token \"$TOKEN\""])
def account_add(
    dev_id: Annotated[str, typer.Argument(metavar="DEVID", help="The device's DevId, as it sends it.",
                                          show_default=False)],
    server: Server = DEFAULT_SERVER,
    client_auth: Annotated[str, typer.Option("--client-auth", metavar="SCHEME",
                                             help="How the device authenticates: basic, md5 or hmac.")] = "md5",
    client_user: Annotated[str, typer.Option("--client-user", metavar="USER", help="The device's user name.",
                                             show_default=False)] = "",
    client_password: Annotated[str, typer.Option("--client-password", metavar="PASSWORD",
                                                 help="The device's password.", show_default=False)] = "",
    server_auth: Annotated[str, typer.Option("--server-auth", metavar="SCHEME[,SCHEME...]",
                                             help="How the server authenticates to the device: basic, md5 or hmac; "
                                             "a comma list allows the others if the device asks for them.")] = "md5",
    server_password: Annotated[str, typer.Option("--server-password", metavar="PASSWORD",
                                                 help="The server's password for this device (its user name is the "
                                                 "server id).", show_default=False)] = "",
    server_nonce: Annotated[str | None, typer.Option("--server-nonce", metavar="HEX",
                                                     help="The first nonce for the server's credentials, in hex: \"\" "
                                                     "for an empty one (default: keep, or four zero bytes for a new "
                                                     "account).", show_default=False)] = None,
    snmp_community: Annotated[str | None, typer.Option("--snmp-community", metavar="COMMUNITY",
                                                       help="SNMPv2c community of the device's traps.",
                                                       show_default=False)] = None,
    snmp_user: Annotated[str | None, typer.Option("--snmp-user", metavar="USER",
                                                  help="SNMPv3 user of the device's traps (with --snmp-auth-key, "
                                                  "--snmp-priv-key, --snmp-engine-id).", show_default=False)] = None,
    snmp_auth_key: Annotated[str, typer.Option("--snmp-auth-key", metavar="PASSPHRASE",
                                               help="SNMPv3 HMAC-SHA passphrase.", show_default=False)] = "",
    snmp_priv_key: Annotated[str, typer.Option("--snmp-priv-key", metavar="PASSPHRASE",
                                               help="SNMPv3 AES-128 passphrase.", show_default=False)] = "",
    snmp_engine_id: Annotated[str, typer.Option("--snmp-engine-id", metavar="HEX",
                                                help="The device's SNMP engine id (hex).", show_default=False)] = "",
    token: Token = None,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Create (or replace) a device account on a running DM server."""
    if not client_user or not client_password or not server_password:
        raise UsageError("--client-user, --client-password and --server-password are required")
    if client_auth not in SCHEMES or any(s not in SCHEMES for s in server_auth.split(",")):
        raise UsageError(f"authentication schemes are {', '.join(SCHEMES)}")
    try:
        bytes.fromhex(server_nonce or "")
    except ValueError:
        raise UsageError("--server-nonce takes hex digits (or nothing)") from None
    spec: dict[str, object] = {"dev_id": dev_id, "client_auth": client_auth, "client_user": client_user,
                               "client_password": client_password, "server_auth": server_auth,
                               "server_password": server_password}
    if server_nonce is not None:
        spec["server_nonce"] = server_nonce
    if snmp_community is not None and snmp_user is not None:
        raise UsageError("give --snmp-community (v2c) or --snmp-user (v3), not both")
    if snmp_community is not None:
        spec["snmp"] = {"community": snmp_community}
    elif snmp_user is not None:
        spec["snmp"] = {"user": snmp_user, "auth_key": snmp_auth_key, "priv_key": snmp_priv_key,
                        "engine_id": snmp_engine_id}
    answer = operator_request("POST", _url(server, "accounts"), token, json=spec)
    emit(quiet, as_json, f"{dev_id}: account {'created' if answer.get('created') else 'replaced'}", answer)


@command("list", group=account_app, examples=["fotadelta account list", "fotadelta account list --json"])
def account_list(server: Server = DEFAULT_SERVER, token: Token = None, as_json: Json = False) -> None:
    """List the device accounts (no secrets)."""
    accounts = operator_request("GET", _url(server, "accounts"), token)["accounts"]
    emit(False, as_json, "\n".join(f"{a['dev_id']}\tclient {a['client_auth']} as {a['client_user']}\tserver "
                                   f"{a['server_auth']}\t{a['make']} {a['model']} {a['version']}".rstrip()
                                   for a in accounts), accounts)


@command("show", group=account_app, examples=["fotadelta account show 351234567890123 --json"])
def account_show(dev_id: Annotated[str, typer.Argument(metavar="DEVID", show_default=False)],
                 server: Server = DEFAULT_SERVER, token: Token = None, as_json: Json = False) -> None:
    """Show one device account (no secrets)."""
    account = operator_request("GET", _url(server, f"accounts/{quote(dev_id, safe='')}"), token)
    emit(False, as_json, "\n".join(f"{k}: {v}" for k, v in account.items()), account)


@command("remove", group=account_app, examples=["fotadelta account remove 351234567890123"])
def account_remove(dev_id: Annotated[str, typer.Argument(metavar="DEVID", show_default=False)],
                   server: Server = DEFAULT_SERVER, token: Token = None, quiet: Quiet = False,
                   as_json: Json = False) -> None:
    """Remove a device account and its jobs (its sessions and events stay as history)."""
    answer = operator_request("DELETE", _url(server, f"accounts/{quote(dev_id, safe='')}"), token)
    emit(quiet, as_json, f"{dev_id}: account removed", answer)


@command("set", group=capability_app, examples=[
    "fotadelta capability set Acme S1 --fumo-uri ./Vendor/Acme/FwUpdate --no-sequence",
    "fotadelta capability set Acme S1 --fw-version 2.0 --no-structured-get"])
def capability_set(
    make: Annotated[str, typer.Argument(show_default=False)],
    model: Annotated[str, typer.Argument(show_default=False)],
    server: Server = DEFAULT_SERVER,
    fw_version: Annotated[str, typer.Option("--fw-version", metavar="VERSION",
                                            help="Only for this firmware version (default: every version).")] = "",
    fumo_uri: Annotated[str | None, typer.Option("--fumo-uri", metavar="URI", help="Where the device keeps FUMO, e.g. "
                                                 "./Vendor/Acme/FwUpdate.", show_default=False)] = None,
    sequence: Annotated[bool | None, typer.Option("--sequence/--no-sequence", help="Whether Sequence may be used.",
                                                  show_default=False)] = None,
    atomic: Annotated[bool | None, typer.Option("--atomic/--no-atomic", help="Whether Atomic may be used.",
                                                show_default=False)] = None,
    structured_get: Annotated[bool | None, typer.Option("--structured-get/--no-structured-get",
                                                        help="Whether Get ?list= is answered.",
                                                        show_default=False)] = None,
    encodings: Annotated[str | None, typer.Option("--encodings", metavar="LIST", help="Comma list of xml, wbxml.",
                                                  show_default=False)] = None,
    auth_schemes: Annotated[str | None, typer.Option("--auth-schemes", metavar="LIST",
                                                     help="Comma list of basic, md5, hmac.",
                                                     show_default=False)] = None,
    ui_alerts: Annotated[str | None, typer.Option("--ui-alerts", metavar="CODES",
                                                  help="Comma list of UI alert codes shown (1100-1104).",
                                                  show_default=False)] = None,
    max_msg_size: Annotated[int | None, typer.Option("--max-msg-size", metavar="BYTES", help="The largest "
                                                     "message it takes.", show_default=False)] = None,
    max_obj_size: Annotated[int | None, typer.Option("--max-obj-size", metavar="BYTES", help="The largest object "
                                                     "it takes.", show_default=False)] = None,
    protocol: Annotated[str | None, typer.Option("--protocol", metavar="VERSION", help="1.2 or 1.1 (OMA DM 1.1.2).",
                                                 show_default=False)] = None,
    token: Token = None,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Override what a make/model (at a version) can take; what is not given stays as discovered."""
    values: dict[str, object] = {"fumo_uri": fumo_uri, "sequence": sequence, "atomic": atomic,
                                 "structured_get": structured_get, "max_msg_size": max_msg_size,
                                 "max_obj_size": max_obj_size, "protocol": protocol,
                                 "encodings": encodings.split(",") if encodings else None,
                                 "auth_schemes": auth_schemes.split(",") if auth_schemes else None}
    try:
        values["ui_alerts"] = [int(a) for a in ui_alerts.split(",")] if ui_alerts else None
    except ValueError:
        raise UsageError("--ui-alerts takes alert codes such as 1100,1101") from None
    known = {k: v for k, v in values.items() if v is not None}
    if not known:
        raise UsageError("nothing to set: give at least one capability option")
    url = _url(server, f"capabilities/{quote(make, safe='')}/{quote(model, safe='')}")
    answer = operator_request("PUT", url, token, json=known, params={"fw_version": fw_version})
    emit(quiet, as_json, f"{make} {model} {fw_version}".rstrip() + f": now {json.dumps(answer['in_force'])}", answer)


@command("list", group=capability_app, examples=["fotadelta capability list", "fotadelta capability list --json"])
def capability_list(server: Server = DEFAULT_SERVER, token: Token = None, as_json: Json = False) -> None:
    """Every stored capability record, discovered and the operator's."""
    records = operator_request("GET", _url(server, "capabilities"), token)["capabilities"]
    emit(False, as_json, "\n".join(f"{r['make']} {r['model']} {r['fw_version'] or '*'} ({r['source']}): "
                                   f"{json.dumps(r['capability'])}" for r in records), records)


@command("remove", group=capability_app, examples=["fotadelta capability remove Acme S1"])
def capability_remove(make: Annotated[str, typer.Argument(show_default=False)],
                      model: Annotated[str, typer.Argument(show_default=False)], server: Server = DEFAULT_SERVER,
                      fw_version: Annotated[str, typer.Option("--fw-version", metavar="VERSION",
                                                              help="The version's override only.")] = "",
                      token: Token = None, quiet: Quiet = False, as_json: Json = False) -> None:
    """Remove the operator's override (what was discovered stays)."""
    url = _url(server, f"capabilities/{quote(make, safe='')}/{quote(model, safe='')}")
    answer = operator_request("DELETE", url, token, params={"fw_version": fw_version})
    emit(quiet, as_json, f"{make} {model} {fw_version}".rstrip() + ": override removed", answer)
