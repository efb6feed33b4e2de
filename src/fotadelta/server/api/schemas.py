"""Request and response bodies of the REST API that the services do not already define.

They are dataclasses read and written through pydantic (unknown keys are refused), so the same
declarations validate requests and make the OpenAPI document's schemas. Pydantic was chosen over
hand-written JSON Schema because one declaration then serves validation, serialisation and the
document; plain dataclasses keep the service layer free of it (bar one config attribute)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict

from fotadelta.dm import snmp
from fotadelta.server.auth import Role
from fotadelta.server.registry import DeviceFields

STRICT = ConfigDict(extra="forbid")


@dataclass
class Error:
    error: str


@dataclass(kw_only=True)
class NewDevice(DeviceFields):
    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    dev_id: str


Scheme = Literal["md5", "basic", "hmac"]


@dataclass
class SnmpCredentials:
    """What a device's software-request traps carry: an SNMPv2c community, or an SNMPv3 user with its
    HMAC-SHA and AES-128 passphrases and the device's engine id (hex)."""

    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    community: str | None = None
    user: str | None = None
    auth_key: str = ""
    priv_key: str = ""
    engine_id: str = ""

    def credentials(self) -> snmp.Credentials:
        if (self.community is None) == (self.user is None):
            raise ValueError("snmp takes a community (v2c) or a user (v3), not both")
        if self.community is not None:
            return snmp.V2c(self.community)
        assert self.user is not None
        return snmp.V3(self.user, self.auth_key, self.priv_key, self.engine_id)


@dataclass
class AccountSpec:
    """A device's DM account, per direction. Passwords not given (and not factory): random ones.
    Secrets go in, never out."""

    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    client_auth: Scheme = "md5"  # how the device authenticates
    client_user: str | None = None  # default: the DevId
    client_password: str | None = None
    server_auth: list[Scheme] | None = None  # the server's schemes towards it, preferred first (default: the client's)
    server_password: str | None = None  # its user name is the server id
    server_nonce: str | None = None  # hex; "" an empty nonce; default: keep (a new account: four zero bytes)
    snmp: SnmpCredentials | None = None
    factory: bool = False  # derive both passwords from the server's factory secret

    def nonce(self) -> bytes | None:
        if self.server_nonce is None:
            return None
        try:
            return bytes.fromhex(self.server_nonce)
        except ValueError:
            raise ValueError("server_nonce is hex digits") from None


@dataclass
class Quarantine:
    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    on: bool = True
    reason: str = ""


@dataclass
class UpdateRequest:
    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    version: str
    delivery: Literal["download", "inline"] = "download"
    notify: bool = True


@dataclass
class NewGroup:
    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    name: str
    description: str = ""


@dataclass
class Members:
    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    add: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)


@dataclass
class Changed:
    count: int


@dataclass
class ReleaseMove:
    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    state: Literal["tested", "released", "rejected", "deactivated"]
    tester_group: str | None = None
    note: str = ""


@dataclass
class DmCommand:
    """One DM command: Get/Replace/Add/Delete/Exec on a target, or Atomic/Sequence of commands."""

    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    op: Literal["Get", "Replace", "Add", "Delete", "Exec", "Atomic", "Sequence"]
    target: str | None = None
    data: str | None = None
    data_b64: str | None = None
    format: str | None = None
    type: str | None = None
    commands: list[DmCommand] | None = None

    def as_spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in vars(self).items() if v is not None and k != "commands"}
        if self.commands is not None:
            out["commands"] = [c.as_spec() for c in self.commands]
        return out


@dataclass
class CommandRequest:
    """Which devices (a list, a group or a tag) and the commands, sent as one package to each."""

    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    commands: list[DmCommand]
    devices: list[str] | None = None
    group: str | None = None
    tag: str | None = None
    callback_url: str = ""
    notify: bool = True


@dataclass
class TokenLogin:
    """A user's name and password for a new token (scoped to role, at most the user's own)."""

    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    user: str
    password: str
    name: str = ""
    role: Role | None = None
    ttl: float | None = None


@dataclass
class NewToken:
    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    name: str = ""
    role: Role | None = None
    user: str | None = None
    ttl: float | None = None


@dataclass
class IssuedToken:
    """The token text, shown this once."""

    token: str
    id: int
    user: str
    role: Role
    expires_at: float | None


@dataclass
class NewUser:
    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    name: str
    password: str
    role: Role


@dataclass
class UserChange:
    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    role: Role | None = None
    disabled: bool | None = None
    password: str | None = None


@dataclass
class Reason:
    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    reason: str = ""


@dataclass
class Whoami:
    name: str
    role: Role
    permissions: list[str]


@dataclass
class BootstrapRequest:
    """The user PIN the device will ask for (it keys the message's MAC); send: push it too (to push_url,
    else to the device's push address, within the server's push policy)."""

    __pydantic_config__: ClassVar[ConfigDict] = STRICT
    pin: str
    send: bool = False
    push_url: str | None = None


@dataclass
class Bootstrap:
    """A plain-profile bootstrap message: push it with this content type (SEC and MAC included)."""

    content_type: str
    sec: str
    mac: str
    body_b64: str
    sent_to: str = ""  # where it was pushed ("": returned only)
