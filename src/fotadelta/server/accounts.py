"""Device accounts: the credentials a device and the server use, per direction, as the operator sets them.

An account is what a deployed client has in its DMAcc: the scheme and credentials it authenticates
with (client to server), the scheme and password the server must use towards it (server to
client; the server's user name is its server id), the first nonce for the server's credentials
(often empty in a factory-fresh client), and optionally the SNMP credentials its traps carry.

`server_auth` may name several schemes: the first is used until the client asks for another in the
Chal of its answer; only the schemes listed are ever used. Accounts live in the devices table; the
operator API and `fotadelta account` reach them through `put`, `describe` and `remove`."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.orm import Session

from fotadelta.dm import snmp
from fotadelta.server.store import DeviceRow, JobRow

SCHEMES = ("basic", "md5", "hmac")
MAX_NONCE = 256  # bytes of a nonce the store keeps (either way: given by a device or set by the operator)
MAX_FIELD = 128


class AccountError(ValueError):
    """An account's fields are unusable."""


@dataclass(frozen=True)
class Account:
    dev_id: str
    client_auth: str
    client_user: str
    client_password: str
    server_auth: tuple[str, ...]
    server_password: str
    server_nonce: bytes | None = None  # None: keep the stored one (a new account: four zero bytes)
    snmp: snmp.Credentials | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.dev_id) <= MAX_FIELD or not self.dev_id.isprintable():
            raise AccountError(f"a DevId is 1 to {MAX_FIELD} printable characters")
        if self.client_auth not in SCHEMES or not self.server_auth or any(s not in SCHEMES for s in self.server_auth):
            raise AccountError(f"authentication schemes are {', '.join(SCHEMES)}")
        for what, value in (("client user", self.client_user), ("client password", self.client_password),
                            ("server password", self.server_password)):
            if not 1 <= len(value) <= MAX_FIELD or not value.isprintable():
                raise AccountError(f"the {what} is 1 to {MAX_FIELD} printable characters")
        if self.server_nonce is not None and len(self.server_nonce) > MAX_NONCE:
            raise AccountError(f"a nonce is at most {MAX_NONCE} bytes")

    @classmethod
    def from_json(cls, spec: object) -> Account:
        """The account an operator's JSON describes; AccountError if anything is missing or malformed."""
        if not isinstance(spec, dict):
            raise AccountError("an account is a JSON object")
        try:
            server_auth = spec.get("server_auth", "md5")
            schemes = tuple(server_auth.split(",")) if isinstance(server_auth, str) else tuple(server_auth)
            return cls(str(spec["dev_id"]), str(spec.get("client_auth", "md5")), str(spec["client_user"]),
                       str(spec["client_password"]), schemes, str(spec["server_password"]),
                       None if spec.get("server_nonce") is None else bytes.fromhex(str(spec["server_nonce"])),
                       _snmp_from_json(spec.get("snmp")))
        except KeyError as exc:
            raise AccountError(f"an account needs {exc.args[0]!r}") from None
        except (TypeError, ValueError, snmp.SnmpError) as exc:
            raise AccountError(str(exc)) from None


def _snmp_from_json(spec: object) -> snmp.Credentials | None:
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise AccountError("snmp is a JSON object")
    if "community" in spec:
        return snmp.V2c(str(spec["community"]))
    return snmp.V3(str(spec["user"]), str(spec["auth_key"]), str(spec["priv_key"]), str(spec["engine_id"]))


def _snmp_to_json(creds: snmp.Credentials) -> dict[str, str]:
    if isinstance(creds, snmp.V2c):
        return {"community": creds.community}
    return {"user": creds.user, "auth_key": creds.auth_key, "priv_key": creds.priv_key, "engine_id": creds.engine_id}


def snmp_of(row: DeviceRow) -> snmp.Credentials | None:
    """The SNMP credentials stored with a device, if any."""
    return _snmp_from_json(json.loads(row.snmp)) if row.snmp else None


def put(s: Session, account: Account) -> bool:
    """Create or replace the account (the device's other state is kept); True if it is new."""
    if account.snmp is not None:
        _check_snmp_unique(s, account)
    row = s.get(DeviceRow, account.dev_id)
    new = row is None
    if row is None:
        row = DeviceRow(dev_id=account.dev_id)
        s.add(row)
    row.auth, row.user, row.password = account.client_auth, account.client_user, account.client_password
    row.server_auth, row.server_password = ",".join(account.server_auth), account.server_password
    if account.server_nonce is not None:
        row.server_nonce = base64.b64encode(account.server_nonce).decode()
    row.snmp = json.dumps(_snmp_to_json(account.snmp)) if account.snmp is not None else ""
    return new


def _check_snmp_unique(s: Session, account: Account) -> None:
    """A community or v3 user identifies one device: refuse one that another device has."""
    assert account.snmp is not None
    key = _snmp_key(account.snmp)
    for other in s.query(DeviceRow).filter(DeviceRow.snmp != "", DeviceRow.dev_id != account.dev_id):
        creds = snmp_of(other)
        if creds is not None and _snmp_key(creds) == key:
            raise AccountError(f"{other.dev_id} already has these SNMP credentials (community or user)")


def _snmp_key(creds: snmp.Credentials) -> str:
    return f"v2c:{creds.community}" if isinstance(creds, snmp.V2c) else f"v3:{creds.user}"


def describe(row: DeviceRow) -> dict[str, object]:
    """What the operator may see of an account: no passwords, keys, communities or nonces (as the fleet)."""
    creds = snmp_of(row)
    return {"dev_id": row.dev_id, "client_auth": row.auth, "client_user": row.user,
            "server_auth": row.server_auth,
            "snmp": None if creds is None else ("v2c" if isinstance(creds, snmp.V2c) else f"v3 user {creds.user}"),
            "make": row.make, "model": row.model, "version": row.version, "last_seen": row.last_seen}


def remove(s: Session, dev_id: str) -> bool:
    """Delete the account and the device's jobs (sessions and events stay as history); whether it existed."""
    row = s.get(DeviceRow, dev_id)
    if row is None:
        return False
    s.execute(delete(JobRow).where(JobRow.dev_id == dev_id))
    s.delete(row)
    return True


__all__ = ["Account", "AccountError", "SCHEMES", "describe", "put", "remove", "snmp_of"]
