"""Device accounts and device capabilities on a running DM server, through its operator API.

`fotadelta account add|list|show|remove` and `fotadelta capability set|list|remove`; both talk to
`serve` over HTTP (`--server`, `--admin-token`), so what they change is in the server's database."""

import json
import sys
from typing import Annotated
from urllib.parse import quote

import typer

from fotadelta.cli.common import CliError, admin_request, app, command

account_app = typer.Typer(help="Device accounts (credentials per direction) on a running DM server.",
                          no_args_is_help=True)
capability_app = typer.Typer(help="What kinds of device can take (make/model/version), as discovered and as "
                             "overridden.", no_args_is_help=True)
app.add_typer(account_app, name="account")
app.add_typer(capability_app, name="capability")

Server = Annotated[str, typer.Option("--server", help="The DM server's base URL, e.g. http://127.0.0.1:8080.",
                                     show_default=False)]
Token = Annotated[str | None, typer.Option("--admin-token", envvar="FOTADELTA_ADMIN_TOKEN",
                                           help="The server's admin token.", show_default=False)]
SCHEMES = ("basic", "md5", "hmac")


def _api(server: str, path: str) -> str:
    return f"{server.rstrip('/')}/api/{path}"


def _print(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


@command("add", group=account_app)
def account_add(
    dev_id: Annotated[str, typer.Argument(metavar="DEVID", help="The device's DevId, as it sends it.",
                                          show_default=False)],
    server: Server,
    client_auth: Annotated[str, typer.Option("--client-auth", help="How the device authenticates: basic, md5 or "
                                             "hmac.")] = "md5",
    client_user: Annotated[str, typer.Option("--client-user", help="The device's user name.", show_default=False)]
    = "",
    client_password: Annotated[str, typer.Option("--client-password", help="The device's password.",
                                                  show_default=False)] = "",
    server_auth: Annotated[str, typer.Option("--server-auth", help="How the server authenticates to the device: "
                                             "basic, md5 or hmac; a comma list allows the others if the device "
                                             "asks for them.")] = "md5",
    server_password: Annotated[str, typer.Option("--server-password", help="The server's password for this "
                                                 "device (its user name is the server id).", show_default=False)]
    = "",
    server_nonce: Annotated[str | None, typer.Option("--server-nonce", help="The first nonce for the server's "
                                                     "credentials, hex; \"\" for an empty one (default: keep, or "
                                                     "four zero bytes for a new account).", show_default=False)]
    = None,
    snmp_community: Annotated[str | None, typer.Option("--snmp-community", help="SNMPv2c community of the "
                                                       "device's traps.", show_default=False)] = None,
    snmp_user: Annotated[str | None, typer.Option("--snmp-user", help="SNMPv3 user of the device's traps (with "
                                                  "--snmp-auth-key, --snmp-priv-key, --snmp-engine-id).",
                                                  show_default=False)] = None,
    snmp_auth_key: Annotated[str, typer.Option("--snmp-auth-key", help="SNMPv3 HMAC-SHA passphrase.",
                                               show_default=False)] = "",
    snmp_priv_key: Annotated[str, typer.Option("--snmp-priv-key", help="SNMPv3 AES-128 passphrase.",
                                               show_default=False)] = "",
    snmp_engine_id: Annotated[str, typer.Option("--snmp-engine-id", help="The device's SNMP engine id (hex).",
                                                show_default=False)] = "",
    token: Token = None,
) -> None:
    """Create (or replace) a device account on a running DM server."""
    if not client_user or not client_password or not server_password:
        raise CliError("--client-user, --client-password and --server-password are required")
    if client_auth not in SCHEMES or any(s not in SCHEMES for s in server_auth.split(",")):
        raise CliError(f"authentication schemes are {', '.join(SCHEMES)}")
    try:
        bytes.fromhex(server_nonce or "")
    except ValueError:
        raise CliError("--server-nonce takes hex digits (or nothing)") from None
    spec: dict[str, object] = {"dev_id": dev_id, "client_auth": client_auth, "client_user": client_user,
                               "client_password": client_password, "server_auth": server_auth,
                               "server_password": server_password}
    if server_nonce is not None:
        spec["server_nonce"] = server_nonce
    if snmp_community is not None and snmp_user is not None:
        raise CliError("give --snmp-community (v2c) or --snmp-user (v3), not both")
    if snmp_community is not None:
        spec["snmp"] = {"community": snmp_community}
    elif snmp_user is not None:
        spec["snmp"] = {"user": snmp_user, "auth_key": snmp_auth_key, "priv_key": snmp_priv_key,
                        "engine_id": snmp_engine_id}
    answer = admin_request("POST", _api(server, "accounts"), token, json=spec)
    created = isinstance(answer, dict) and answer.get("created")
    sys.stdout.write(f"{dev_id}: account {'created' if created else 'replaced'}\n")


@command("list", group=account_app)
def account_list(server: Server, token: Token = None) -> None:
    """List the device accounts (no secrets)."""
    answer = admin_request("GET", _api(server, "accounts"), token)
    for a in answer["accounts"] if isinstance(answer, dict) else []:
        sys.stdout.write(f"{a['dev_id']}\tclient {a['client_auth']} as {a['client_user']}\tserver {a['server_auth']}"
                         f"\t{a['make']} {a['model']} {a['version']}".rstrip() + "\n")


@command("show", group=account_app)
def account_show(dev_id: Annotated[str, typer.Argument(metavar="DEVID", show_default=False)], server: Server,
                 token: Token = None) -> None:
    """Show one device account (no secrets) as JSON."""
    _print(admin_request("GET", _api(server, f"accounts/{quote(dev_id, safe='')}"), token))


@command("remove", group=account_app)
def account_remove(dev_id: Annotated[str, typer.Argument(metavar="DEVID", show_default=False)], server: Server,
                   token: Token = None) -> None:
    """Remove a device account and its jobs (its sessions and events stay as history)."""
    admin_request("DELETE", _api(server, f"accounts/{quote(dev_id, safe='')}"), token)
    sys.stdout.write(f"{dev_id}: account removed\n")


@command("set", group=capability_app)
def capability_set(
    make: Annotated[str, typer.Argument(show_default=False)],
    model: Annotated[str, typer.Argument(show_default=False)],
    server: Server,
    fw_version: Annotated[str, typer.Option("--fw-version", help="Only for this firmware version (default: every "
                                            "version).")] = "",
    fumo_uri: Annotated[str | None, typer.Option("--fumo-uri", help="Where the device keeps FUMO, e.g. "
                                                 "./Vendor/Acme/FwUpdate.", show_default=False)] = None,
    sequence: Annotated[bool | None, typer.Option("--sequence/--no-sequence", help="Whether Sequence may be used.",
                                                  show_default=False)] = None,
    atomic: Annotated[bool | None, typer.Option("--atomic/--no-atomic", help="Whether Atomic may be used.",
                                                show_default=False)] = None,
    structured_get: Annotated[bool | None, typer.Option("--structured-get/--no-structured-get",
                                                        help="Whether Get ?list= is answered.",
                                                        show_default=False)] = None,
    encodings: Annotated[str | None, typer.Option("--encodings", help="Comma list of xml, wbxml.",
                                                  show_default=False)] = None,
    auth_schemes: Annotated[str | None, typer.Option("--auth-schemes", help="Comma list of basic, md5, hmac.",
                                                     show_default=False)] = None,
    ui_alerts: Annotated[str | None, typer.Option("--ui-alerts", help="Comma list of UI alert codes shown "
                                                  "(1100-1104).", show_default=False)] = None,
    max_msg_size: Annotated[int | None, typer.Option("--max-msg-size", show_default=False)] = None,
    max_obj_size: Annotated[int | None, typer.Option("--max-obj-size", show_default=False)] = None,
    protocol: Annotated[str | None, typer.Option("--protocol", help="1.2 or 1.1 (OMA DM 1.1.2).",
                                                 show_default=False)] = None,
    token: Token = None,
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
        raise CliError("--ui-alerts takes alert codes such as 1100,1101") from None
    known = {k: v for k, v in values.items() if v is not None}
    if not known:
        raise CliError("nothing to set: give at least one capability option")
    url = _api(server, f"capabilities/{quote(make, safe='')}/{quote(model, safe='')}")
    _print(admin_request("PUT", url, token, json=known, params={"fw_version": fw_version}))


@command("list", group=capability_app)
def capability_list(server: Server, token: Token = None) -> None:
    """Every stored capability record (discovered and operator's) as JSON."""
    _print(admin_request("GET", _api(server, "capabilities"), token))


@command("remove", group=capability_app)
def capability_remove(make: Annotated[str, typer.Argument(show_default=False)],
                      model: Annotated[str, typer.Argument(show_default=False)], server: Server,
                      fw_version: Annotated[str, typer.Option("--fw-version")] = "", token: Token = None) -> None:
    """Remove the operator's override (what was discovered stays)."""
    url = _api(server, f"capabilities/{quote(make, safe='')}/{quote(model, safe='')}")
    admin_request("DELETE", url, token, params={"fw_version": fw_version})
    sys.stdout.write(f"{make} {model}{' ' + fw_version if fw_version else ''}: override removed\n")
