"""`fotadelta trap`: send a device's software request to a DM server as an SNMP trap (the device's side)."""

from typing import Annotated

import typer

from fotadelta.cli.common import UsageError, command, emit


@command(examples=["fotadelta trap list --to 127.0.0.1:1162 --dev-id IMEI:490154203237518 --community c0mmunity",
                   "fotadelta trap fetch 1.2 --to 127.0.0.1:1162 --dev-id IMEI:490154203237518 --user dev7 \\",
                   "    --auth-key auth-pass-7 --priv-key priv-pass-7 --engine-id 80001f8880c0ffee07"])
def trap(
    action: Annotated[str, typer.Argument(metavar="list|fetch", help="Ask for the list of available software, or "
                                          "for one version.", show_default=False)],
    software: Annotated[str, typer.Argument(metavar="VERSION", help="The version to fetch.")] = "",
    to: Annotated[str, typer.Option("--to", metavar="HOST:PORT", help="The server's SNMP trap address.",
                                    show_default=False)] = "127.0.0.1:162",
    dev_id: Annotated[str, typer.Option("--dev-id", metavar="DEVID", help="The device's DevId, e.g. "
                                        "IMEI:490154203237518.", show_default=False)] = "",
    community: Annotated[str | None, typer.Option("--community", metavar="COMMUNITY", help="SNMPv2c community.",
                                                  show_default=False)] = None,
    user: Annotated[str | None, typer.Option("--user", metavar="USER", help="SNMPv3 user (with --auth-key, "
                                             "--priv-key, --engine-id).", show_default=False)] = None,
    auth_key: Annotated[str, typer.Option("--auth-key", metavar="PASSPHRASE",
                                          help="SNMPv3 HMAC-SHA passphrase.")] = "",
    priv_key: Annotated[str, typer.Option("--priv-key", metavar="PASSPHRASE",
                                          help="SNMPv3 AES-128 passphrase.")] = "",
    engine_id: Annotated[str, typer.Option("--engine-id", metavar="HEX",
                                           help="This device's SNMP engine id (hex).")] = "",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was sent as JSON.")] = False,
) -> None:
    """Ask a DM server for software by SNMP trap; the server answers with a DM session to the device."""
    from fotadelta.dm import snmp
    if action not in ("list", "fetch") or (action == "fetch") != bool(software):
        raise UsageError("give 'list', or 'fetch VERSION'")
    host, _, port = to.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError("--to takes HOST:PORT")
    if not dev_id or (community is None) == (user is None):
        raise UsageError("give --dev-id and either --community (v2c) or --user (v3)")
    creds: snmp.Credentials = snmp.V2c(community) if community is not None else \
        snmp.V3(user or "", auth_key, priv_key, engine_id)
    snmp.send_request(host.strip("[]"), int(port), creds, dev_id,
                      snmp.Action.LIST if action == "list" else snmp.Action.FETCH, software)
    emit(quiet, as_json, f"{dev_id}: {action} {software}".rstrip() + f" sent to {to}",
         {"dev_id": dev_id, "action": action, "software": software, "to": to,
          "version": "v2c" if community is not None else "v3"})
