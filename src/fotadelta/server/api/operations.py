"""The REST API's operations: each one a line of the table, calling one service method."""

from __future__ import annotations

import base64
from dataclasses import fields, replace
from typing import Any

from fotadelta.server.accounts import AccountView
from fotadelta.server.auth import PERMISSIONS, AuditEntry, Permission, Token, User
from fotadelta.server.campaigns import Alert, Campaign, CampaignSpec
from fotadelta.server.commands import CommandView, UpdateJob
from fotadelta.server.fleet import Fleet
from fotadelta.server.kinds import CapabilityRecord, InForce
from fotadelta.server.registry import Device, DeviceFields, DeviceFilter, Group, ImportReport
from fotadelta.server.releases import Release
from fotadelta.server.reports import CampaignReport, DeviceHistory, Job, Point
from fotadelta.server.api.routing import BINARY, CSV, SVG, Call, Op, Param
from fotadelta.server.api.schemas import (AccountSpec, Bootstrap, BootstrapRequest, Changed,
                                          CommandRequest, IssuedToken, Members, NewDevice, NewGroup, NewToken,
                                          NewUser, Quarantine, Reason, ReleaseMove, TokenLogin, UpdateRequest,
                                          UserChange, Whoami)

V1 = "/api/v1"
P = Permission
DEV = Param("dev_id", "path", description="the device's DevId, e.g. IMEI:490154203237518")
CID = Param("id", "path", int, "the campaign's id")
FILTER = (Param("status", description="a status, or needs_update"), Param("make"), Param("model"), Param("version"),
          Param("group"), Param("tag"))


def _filter(q: dict[str, str | None]) -> DeviceFilter:
    return DeviceFilter(status=q["status"], make=q["make"], model=q["model"], version=q["version"], group=q["group"],
                        tag=q["tag"])


# -- users, tokens, audit ------------------------------------------------------------------------------

def token_login(f: Fleet, c: Call) -> IssuedToken:
    b: TokenLogin = c.body
    actor = f.auth.login(b.user, b.password, c.peer)
    text, tok = f.auth.issue_token(actor, name=b.name, role=b.role, ttl=b.ttl)
    return IssuedToken(text, tok.id, tok.user, tok.role, tok.expires_at)


def whoami(f: Fleet, c: Call) -> Whoami:
    return Whoami(c.actor.name, c.actor.role, sorted(p.value for p in PERMISSIONS[c.actor.role]))


def issue_token(f: Fleet, c: Call) -> IssuedToken:
    b: NewToken = c.body
    text, tok = f.auth.issue_token(c.actor, name=b.name, role=b.role, user=b.user, ttl=b.ttl)
    return IssuedToken(text, tok.id, tok.user, tok.role, tok.expires_at)


def list_tokens(f: Fleet, c: Call) -> list[Token]:
    return f.auth.tokens(c.actor, c.query["user"])


def revoke_token(f: Fleet, c: Call) -> None:
    f.auth.revoke_token(c.actor, c.path["id"])


def create_user(f: Fleet, c: Call) -> User:
    b: NewUser = c.body
    return f.auth.create_user(c.actor, b.name, b.password, b.role)


def change_user(f: Fleet, c: Call) -> User:
    b: UserChange = c.body
    return f.auth.set_user(c.actor, c.path["name"], role=b.role, disabled=b.disabled, password=b.password)


def audit(f: Fleet, c: Call) -> list[AuditEntry]:
    q = c.query
    return f.auth.audit_log(c.actor, since_id=q["after"] or 0, limit=q["limit"] or 100, action=q["action"],
                            who=q["actor"])


# -- devices and groups --------------------------------------------------------------------------------

def list_devices(f: Fleet, c: Call) -> list[Device]:
    return f.registry.find(c.actor, _filter(c.query), after=c.query["after"] or "", limit=c.query["limit"] or 100)


def create_device(f: Fleet, c: Call) -> Device:
    b: NewDevice = c.body
    return f.registry.create(c.actor, b.dev_id, DeviceFields(**{x.name: getattr(b, x.name)
                                                                 for x in fields(DeviceFields)}))


def set_account(f: Fleet, c: Call) -> AccountView:
    b: AccountSpec = c.body
    dev_id = c.path["dev_id"]
    created, _, _ = f.registry.set_account(
        c.actor, dev_id, client_auth=b.client_auth, client_user=b.client_user, password=b.client_password,
        server_auth=tuple(b.server_auth) if b.server_auth else None, server_password=b.server_password,
        server_nonce=b.nonce(), snmp=b.snmp.credentials() if b.snmp is not None else None, factory=b.factory)
    return replace(f.registry.account(c.actor, dev_id), created=created)


def quarantine(f: Fleet, c: Call) -> Device:
    b: Quarantine = c.body
    return f.registry.quarantine(c.actor, c.path["dev_id"], b.on, b.reason)


def bootstrap(f: Fleet, c: Call) -> Bootstrap:
    b: BootstrapRequest = c.body
    m, to = f.registry.bootstrap(c.actor, c.path["dev_id"], b.pin, send=b.send, push_url=b.push_url)
    return Bootstrap(m.content_type, m.sec, m.mac, base64.b64encode(m.body).decode(), to)


def update_device(f: Fleet, c: Call) -> UpdateJob:
    b: UpdateRequest = c.body
    return f.commands.update_device(c.actor, c.path["dev_id"], b.version, delivery=b.delivery, notify=b.notify)


def members(f: Fleet, c: Call) -> Changed:
    b: Members = c.body
    added = f.registry.add_members(c.actor, c.path["name"], b.add) if b.add else 0
    if b.remove:
        f.registry.remove_members(c.actor, c.path["name"], b.remove)
    return Changed(added)


def _publish_state(state: str | None) -> bool:
    if state not in (None, "created", "released"):
        raise ValueError("a package is published in state created or released")
    return state == "released"


# -- commands ------------------------------------------------------------------------------------------

def execute(f: Fleet, c: Call) -> list[CommandView]:
    b: CommandRequest = c.body
    chosen = [x for x in (b.devices, b.group, b.tag) if x]
    if len(chosen) != 1:
        raise ValueError("name the devices by one of devices, group or tag")
    dev_ids = b.devices or [d.dev_id for d in _all(f, c, DeviceFilter(group=b.group, tag=b.tag))]
    if not dev_ids:
        raise LookupError("no device in that group or with that tag")
    return f.commands.execute(c.actor, dev_ids, [x.as_spec() for x in b.commands], callback_url=b.callback_url,
                              notify=b.notify)


def _all(f: Fleet, c: Call, where: DeviceFilter) -> list[Device]:
    out: list[Device] = []
    while page := f.registry.find(c.actor, where, after=out[-1].dev_id if out else "", limit=1000):
        out += page
    return out


# -- campaigns -----------------------------------------------------------------------------------------

def campaign_report(f: Fleet, c: Call) -> CampaignReport:
    q = c.query
    return f.reports.campaign(c.actor, c.path["id"], state=q["state"], make=q["make"], model=q["model"],
                              version=q["version"], limit=q["limit"] or 1000)


def campaign_csv(f: Fleet, c: Call) -> str:
    q = c.query
    return f.reports.campaign_csv(c.actor, c.path["id"], state=q["state"], make=q["make"], model=q["model"],
                                  version=q["version"])


_REPORT_FILTER = (Param("state", description="queued, running, succeeded, failed or cancelled"), Param("make"),
                  Param("model"), Param("version"))
_PAGE = (Param("after", description="the last DevId of the previous page"), Param("limit", kind=int))
_KIND = (Param("make", "path"), Param("model", "path"),
         Param("fw_version", description="a firmware version (default: every version)"))


def operations() -> list[Op]:
    """Every operation of the REST API, in the order the document lists them."""
    return [
        # users, tokens, audit
        Op("POST", f"{V1}/auth/token", "login", "A new API token for a user's name and password", token_login, None,
           body=TokenLogin, response=IssuedToken, status=201, tags=("auth",)),
        Op("GET", f"{V1}/auth/whoami", "whoami", "Who the token stands for and what it may do", whoami, P.READ,
           response=Whoami, tags=("auth",)),
        Op("GET", f"{V1}/tokens", "listTokens", "The caller's tokens (or a user's, for administrators)", list_tokens,
           P.READ, params=(Param("user"),), response=list[Token], tags=("auth",)),
        Op("POST", f"{V1}/tokens", "issueToken", "A new token, scoped to a role no higher than the caller's",
           issue_token, P.READ, body=NewToken, response=IssuedToken, status=201, tags=("auth",)),
        Op("DELETE", f"{V1}/tokens/{{id}}", "revokeToken", "Revoke a token", revoke_token, P.READ,
           params=(Param("id", "path", int),), tags=("auth",)),
        Op("GET", f"{V1}/users", "listUsers", "Users", lambda f, c: f.auth.users(c.actor), P.USERS_MANAGE,
           response=list[User], tags=("auth",)),
        Op("POST", f"{V1}/users", "createUser", "Create a user (password hashed with argon2id)", create_user,
           P.USERS_MANAGE, body=NewUser, response=User, status=201, tags=("auth",)),
        Op("PATCH", f"{V1}/users/{{name}}", "changeUser", "Change a user's role, password or disabled flag",
           change_user, P.USERS_MANAGE, params=(Param("name", "path"),), body=UserChange, response=User,
           tags=("auth",)),
        Op("GET", f"{V1}/audit", "auditLog", "The audit log of operator actions, oldest first", audit, P.AUDIT_READ,
           params=(Param("after", kind=int, description="the last id seen"), Param("limit", kind=int),
                   Param("action"), Param("actor")), response=list[AuditEntry], tags=("auth",)),
        # devices
        Op("GET", f"{V1}/devices", "listDevices", "Devices matching a filter, by DevId, in pages", list_devices,
           P.READ, params=(*FILTER, *_PAGE), response=list[Device], tags=("devices",)),
        Op("POST", f"{V1}/devices", "createDevice", "Register a device (unassigned until it has credentials)",
           create_device, P.DEVICES_WRITE, body=NewDevice, response=Device, status=201, tags=("devices",)),
        Op("GET", f"{V1}/devices/counts", "countDevices", "How many devices match, by status",
           lambda f, c: f.registry.count(c.actor, _filter(c.query)), P.READ, params=FILTER,
           response=dict[str, int], tags=("devices",)),
        Op("GET", f"{V1}/devices/export", "exportDevices", "Devices matching a filter as CSV",
           lambda f, c: f.registry.export_csv(c.actor, _filter(c.query)), P.READ, params=FILTER, response=CSV,
           tags=("devices",)),
        Op("POST", f"{V1}/devices/import", "importDevices", "Create or update devices from CSV",
           lambda f, c: f.registry.import_csv(c.actor, c.body), P.DEVICES_WRITE, body=CSV, response=ImportReport,
           tags=("devices",)),
        Op("GET", f"{V1}/devices/{{dev_id}}", "getDevice", "One device", lambda f, c: f.registry.get(
            c.actor, c.path["dev_id"]), P.READ, params=(DEV,), response=Device, tags=("devices",)),
        Op("PATCH", f"{V1}/devices/{{dev_id}}", "changeDevice", "Change a device's fields, groups or tags",
           lambda f, c: f.registry.update(c.actor, c.path["dev_id"], c.body), P.DEVICES_WRITE, params=(DEV,),
           body=DeviceFields, response=Device, tags=("devices",)),
        Op("DELETE", f"{V1}/devices/{{dev_id}}", "deleteDevice", "Remove a device and its records",
           lambda f, c: f.registry.delete(c.actor, c.path["dev_id"]), P.DEVICES_WRITE, params=(DEV,),
           tags=("devices",)),
        Op("PUT", f"{V1}/devices/{{dev_id}}/account", "setAccount",
           "Create or replace a device's DM account: credentials per direction, the first nonce, SNMP "
           "credentials (status assigned); secrets are never shown back", set_account, P.DEVICES_WRITE,
           params=(DEV,), body=AccountSpec, response=AccountView, tags=("devices",)),
        Op("GET", f"{V1}/devices/{{dev_id}}/account", "getAccount", "A device's DM account, without its secrets",
           lambda f, c: f.registry.account(c.actor, c.path["dev_id"]), P.READ, params=(DEV,), response=AccountView,
           tags=("devices",)),
        Op("GET", f"{V1}/accounts", "listAccounts", "Device accounts by DevId, in pages, without their secrets",
           lambda f, c: f.registry.accounts(c.actor, after=c.query["after"] or "", limit=c.query["limit"] or 100),
           P.READ, params=_PAGE, response=list[AccountView], tags=("devices",)),
        Op("POST", f"{V1}/devices/{{dev_id}}/adopt", "adoptDevice", "Take a self-enrolled device into the registry",
           lambda f, c: f.registry.adopt(c.actor, c.path["dev_id"]), P.DEVICES_WRITE, params=(DEV,),
           response=Device, tags=("devices",)),
        Op("POST", f"{V1}/devices/{{dev_id}}/quarantine", "quarantineDevice", "Quarantine a device or let it out",
           quarantine, P.DEVICES_WRITE, params=(DEV,), body=Quarantine, response=Device, tags=("devices",)),
        Op("POST", f"{V1}/devices/{{dev_id}}/bootstrap", "bootstrapDevice",
           "The plain-profile OMA DM bootstrap message with the device's DM account, returned and (send) pushed "
           "(audited)", bootstrap,
           P.DEVICES_WRITE, params=(DEV,), body=BootstrapRequest, response=Bootstrap, tags=("devices",)),
        Op("POST", f"{V1}/devices/{{dev_id}}/update", "updateDevice",
           "Bring one device to a version (a daisy chain if needed) and notify it", update_device, P.DEVICE_UPDATE,
           params=(DEV,), body=UpdateRequest, response=UpdateJob, status=201, tags=("devices",)),
        Op("GET", f"{V1}/jobs", "listJobs", "Update jobs by id (one device's or all), results in words",
           lambda f, c: f.reports.jobs(c.actor, dev_id=c.query["device"], after=c.query["after"] or 0,
                                       limit=c.query["limit"] or 100), P.READ,
           params=(Param("device", description="a DevId"), Param("after", kind=int, description="the last id seen"),
                   Param("limit", kind=int)), response=list[Job], tags=("reports",)),
        Op("GET", f"{V1}/devices/{{dev_id}}/history", "deviceHistory",
           "Every session, job, FUMO result, event, command and campaign attempt of a device",
           lambda f, c: f.reports.device_history(c.actor, c.path["dev_id"]), P.READ, params=(DEV,),
           response=DeviceHistory, tags=("reports",)),
        # groups
        Op("GET", f"{V1}/groups", "listGroups", "Device groups", lambda f, c: f.registry.groups(c.actor), P.READ,
           response=list[Group], tags=("devices",)),
        Op("POST", f"{V1}/groups", "createGroup", "Create a device group",
           lambda f, c: f.registry.create_group(c.actor, c.body.name, c.body.description), P.DEVICES_WRITE,
           body=NewGroup, response=Group, status=201, tags=("devices",)),
        Op("DELETE", f"{V1}/groups/{{name}}", "deleteGroup", "Delete a device group",
           lambda f, c: f.registry.delete_group(c.actor, c.path["name"]), P.DEVICES_WRITE,
           params=(Param("name", "path"),), tags=("devices",)),
        Op("POST", f"{V1}/groups/{{name}}/members", "groupMembers", "Add devices to a group and remove others",
           members, P.DEVICES_WRITE, params=(Param("name", "path"),), body=Members, response=Changed,
           tags=("devices",)),
        # releases
        Op("GET", f"{V1}/releases", "listReleases", "Packages and their lifecycle state",
           lambda f, c: f.releases.find(c.actor, state=c.query["state"], make=c.query["make"],
                                        model=c.query["model"]), P.READ,
           params=(Param("state"), Param("make"), Param("model")), response=list[Release], tags=("releases",)),
        Op("POST", f"{V1}/releases", "publishRelease",
           "Publish a signed package (state created, or released at once with state=released)",
           lambda f, c: f.releases.publish(c.actor, c.body, release=_publish_state(c.query["state"])),
           P.RELEASES_MANAGE, params=(Param("state", description="created (the default) or released"),),
           body=BINARY, response=Release, status=201, tags=("releases",)),
        Op("GET", f"{V1}/releases/{{id}}", "getRelease", "One package and its state",
           lambda f, c: f.releases.get(c.actor, c.path["id"]), P.READ, params=(Param("id", "path", int),),
           response=Release, tags=("releases",)),
        Op("POST", f"{V1}/releases/{{id}}/state", "moveRelease",
           "Move a package to tested (by a tester group), released, rejected or deactivated",
           lambda f, c: f.releases.move(c.actor, c.path["id"], c.body.state, tester_group=c.body.tester_group,
                                        note=c.body.note), P.RELEASES_MANAGE, params=(Param("id", "path", int),),
           body=ReleaseMove, response=Release, tags=("releases",)),
        # commands
        Op("POST", f"{V1}/commands", "executeCommands",
           "Queue DM commands for devices (one package each, behind an identity check); asynchronous", execute,
           P.COMMANDS_EXECUTE, body=CommandRequest, response=list[CommandView], status=202, tags=("commands",)),
        Op("GET", f"{V1}/commands", "listCommands", "Commands, by id, filtered",
           lambda f, c: f.commands.find(c.actor, dev_id=c.query["dev_id"], batch=c.query["batch"],
                                        state=c.query["state"], after=c.query["after"] or 0,
                                        limit=c.query["limit"] or 100), P.READ,
           params=(Param("dev_id"), Param("batch"), Param("state"), Param("after", kind=int),
                   Param("limit", kind=int)), response=list[CommandView], tags=("commands",)),
        Op("GET", f"{V1}/commands/{{id}}", "getCommand", "One command, its statuses and results (poll this)",
           lambda f, c: f.commands.get(c.actor, c.path["id"]), P.READ, params=(Param("id", "path", int),),
           response=CommandView, tags=("commands",)),
        Op("POST", f"{V1}/commands/{{id}}/cancel", "cancelCommand", "Cancel a command not sent yet",
           lambda f, c: f.commands.cancel(c.actor, c.path["id"]), P.COMMANDS_EXECUTE,
           params=(Param("id", "path", int),), response=CommandView, tags=("commands",)),
        Op("POST", f"{V1}/commands/{{id}}/retry", "retryCommand", "Run a failed, refused or cancelled command again",
           lambda f, c: f.commands.retry(c.actor, c.path["id"]), P.COMMANDS_EXECUTE,
           params=(Param("id", "path", int),), response=CommandView, status=202, tags=("commands",)),
        # campaigns
        Op("GET", f"{V1}/campaigns", "listCampaigns", "Campaigns", lambda f, c: f.campaigns.find(c.actor,
                                                                                                c.query["state"]),
           P.READ, params=(Param("state"),), response=list[Campaign], tags=("campaigns",)),
        Op("POST", f"{V1}/campaigns", "createCampaign", "Create a campaign (a draft)",
           lambda f, c: f.campaigns.create(c.actor, c.body), P.CAMPAIGNS_MANAGE, body=CampaignSpec,
           response=Campaign, status=201, tags=("campaigns",)),
        Op("GET", f"{V1}/campaigns/{{id}}", "getCampaign", "One campaign with its counts",
           lambda f, c: f.campaigns.get(c.actor, c.path["id"]), P.READ, params=(CID,), response=Campaign,
           tags=("campaigns",)),
        Op("POST", f"{V1}/campaigns/{{id}}/start", "startCampaign", "Fix the devices, split the waves, start",
           lambda f, c: f.campaigns.start(c.actor, c.path["id"]), P.CAMPAIGNS_MANAGE, params=(CID,),
           response=Campaign, tags=("campaigns",)),
        Op("POST", f"{V1}/campaigns/{{id}}/pause", "pauseCampaign", "Pause (no new attempts)",
           lambda f, c: f.campaigns.pause(c.actor, c.path["id"], c.body.reason), P.CAMPAIGNS_MANAGE, params=(CID,),
           body=Reason, response=Campaign, tags=("campaigns",)),
        Op("POST", f"{V1}/campaigns/{{id}}/resume", "resumeCampaign", "Resume a paused or suspended campaign",
           lambda f, c: f.campaigns.resume(c.actor, c.path["id"]), P.CAMPAIGNS_MANAGE, params=(CID,),
           response=Campaign, tags=("campaigns",)),
        Op("POST", f"{V1}/campaigns/{{id}}/cancel", "cancelCampaign", "Cancel for good",
           lambda f, c: f.campaigns.cancel(c.actor, c.path["id"], c.body.reason), P.CAMPAIGNS_MANAGE,
           params=(CID,), body=Reason, response=Campaign, tags=("campaigns",)),
        Op("POST", f"{V1}/campaigns/{{id}}/retarget", "retargetCampaign", "New attempts for the failed devices",
           lambda f, c: Changed(f.campaigns.retarget_failed(c.actor, c.path["id"])), P.CAMPAIGNS_MANAGE,
           params=(CID,), response=Changed, tags=("campaigns",)),
        Op("GET", f"{V1}/campaigns/{{id}}/report", "campaignReport",
           "Counts by state and by make/model/version, and the devices (filtered)", campaign_report, P.READ,
           params=(CID, *_REPORT_FILTER, Param("limit", kind=int)), response=CampaignReport, tags=("reports",)),
        Op("GET", f"{V1}/campaigns/{{id}}/report.csv", "campaignReportCsv", "The campaign's devices as CSV",
           campaign_csv, P.READ, params=(CID, *_REPORT_FILTER), response=CSV, tags=("reports",)),
        Op("GET", f"{V1}/campaigns/{{id}}/progress", "campaignProgress", "Device counts by state over time",
           lambda f, c: f.reports.progress(c.actor, c.path["id"]), P.READ, params=(CID,), response=list[Point],
           tags=("reports",)),
        Op("GET", f"{V1}/campaigns/{{id}}/progress.svg", "campaignProgressChart", "The progress as an SVG chart",
           lambda f, c: f.reports.progress_svg(c.actor, c.path["id"]), P.READ, params=(CID,), response=SVG,
           tags=("reports",)),
        Op("GET", f"{V1}/alerts", "listAlerts", "Alerts (suspensions, completions), newest first",
           lambda f, c: f.campaigns.alerts(c.actor, c.query["campaign"], c.query["limit"] or 100), P.READ,
           params=(Param("campaign", kind=int), Param("limit", kind=int)), response=list[Alert],
           tags=("campaigns",)),
        # capabilities per make/model/version
        Op("GET", f"{V1}/capabilities", "listCapabilities", "Every stored capability record, discovered and the "
           "operator's", lambda f, c: f.capabilities.records(c.actor), P.READ, response=list[CapabilityRecord],
           tags=("capabilities",)),
        Op("GET", f"{V1}/capabilities/{{make}}/{{model}}", "getCapability",
           "The capability in force for a make/model (at a firmware version)",
           lambda f, c: f.capabilities.in_force(c.actor, c.path["make"], c.path["model"], c.query["fw_version"] or ""),
           P.READ, params=_KIND, response=InForce, tags=("capabilities",)),
        Op("PUT", f"{V1}/capabilities/{{make}}/{{model}}", "setCapability",
           "Override what a make/model (at a firmware version) can take; fields not given stay as discovered",
           lambda f, c: f.capabilities.override(c.actor, c.path["make"], c.path["model"], c.query["fw_version"] or "",
                                                c.body), P.DEVICES_WRITE, params=_KIND, body=dict[str, Any],
           response=InForce, tags=("capabilities",)),
        Op("DELETE", f"{V1}/capabilities/{{make}}/{{model}}", "removeCapability",
           "Remove the operator's override (what was discovered stays)",
           lambda f, c: f.capabilities.remove_override(c.actor, c.path["make"], c.path["model"],
                                                       c.query["fw_version"] or ""), P.DEVICES_WRITE, params=_KIND,
           response=InForce, tags=("capabilities",)),
    ]
