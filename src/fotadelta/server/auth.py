"""Operators: roles and their permissions, users with argon2id password hashes, API tokens scoped by
role, and the audit log of every operator action.

Every service method that changes something takes the acting `Principal`, checks its permission
here (`Auth.require`) and writes an audit entry; the REST layer and the web console only find out
who is asking. The server's `--admin-token` stays a bootstrap administrator credential; without one,
a local caller without a token is the operator (`loopback_operator`). Password logins are throttled
(`logins.py`) and a failed one stores nothing."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import bindparam, insert, select
from sqlalchemy.engine import Connection

from fotadelta.server.limits import Refusals
from fotadelta.server.logins import PER_ADDRESS, PER_NAME, LoginThrottle
from fotadelta.server.store import Direct, Store, table_of
from fotadelta.server.tables import AuditRow, TokenRow, UserRow

TOKEN_PREFIX = "fdt_"
BOOTSTRAP_ADMIN = "admin-token"  # the actor name of the server's --admin-token
LOOPBACK = "loopback"  # the actor name of a local caller without a token, on a server without an admin token
VERIFY_WAIT = 10.0  # seconds a login waits for a free password verification before it is turned away


class Role(StrEnum):
    ADMIN = "admin"
    DEPLOYMENT_MANAGER = "deployment_manager"
    CUSTOMER_CARE = "customer_care"
    READ_ONLY = "read_only"


class Permission(StrEnum):
    READ = "read"  # the fleet, releases, campaigns, commands, reports
    DEVICES_WRITE = "devices.write"  # registry: create, change, delete, import, groups, tags, credentials
    DEVICE_UPDATE = "devices.update"  # an update job for one device
    COMMANDS_EXECUTE = "commands.execute"  # DM commands on devices; cancel and retry them
    RELEASES_MANAGE = "releases.manage"  # publish packages, move them through their lifecycle
    CAMPAIGNS_MANAGE = "campaigns.manage"  # create, start, pause, resume, cancel, retarget
    USERS_MANAGE = "users.manage"  # users and other users' tokens
    AUDIT_READ = "audit.read"


PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.DEPLOYMENT_MANAGER: frozenset({Permission.READ, Permission.DEVICES_WRITE, Permission.DEVICE_UPDATE,
                                        Permission.COMMANDS_EXECUTE, Permission.RELEASES_MANAGE,
                                        Permission.CAMPAIGNS_MANAGE}),
    Role.CUSTOMER_CARE: frozenset({Permission.READ, Permission.DEVICE_UPDATE, Permission.COMMANDS_EXECUTE}),
    Role.READ_ONLY: frozenset({Permission.READ}),
}


class AuthError(Exception):
    """No valid credential (HTTP 401)."""


class Forbidden(Exception):
    """A valid credential without the permission (HTTP 403)."""


class Throttled(Exception):
    """Too many failed logins for this name or address (HTTP 429), or too many being checked at once
    (busy: HTTP 503); retry_after is in seconds."""

    def __init__(self, text: str, retry_after: int, *, busy: bool = False) -> None:
        super().__init__(text)
        self.retry_after, self.busy = retry_after, busy


class Conflict(ValueError):
    """The request does not fit the current state: a duplicate, a forbidden transition (HTTP 409)."""


@dataclass(frozen=True)
class Principal:
    """Who acts: a user through a token (or a password login), or the bootstrap administrator."""

    name: str
    role: Role
    user_id: int | None = None

    def can(self, permission: Permission) -> bool:
        return permission in PERMISSIONS[self.role]


SYSTEM = Principal("system", Role.ADMIN)  # the server's own actions (campaign scheduler, recovery)


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: Role
    disabled: bool
    created_at: float
    created_by: str


@dataclass(frozen=True)
class Token:
    id: int
    user: str
    name: str
    role: Role
    created_at: float
    expires_at: float | None
    last_used: float | None
    revoked: bool


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    target: str
    outcome: str
    detail: dict[str, Any]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _user(row: UserRow) -> User:
    return User(row.id, row.name, Role(row.role), row.disabled, row.created_at, row.created_by)


class Auth:
    """Users, tokens, permission checks and the audit log."""

    def __init__(self, store: Store, admin_token: str | None = None, hasher: PasswordHasher | None = None, *,
                 refusals: Refusals | None = None, workers: int = 1) -> None:
        self.store = store
        self.admin_token = admin_token
        # argon2id; by default the library's parameters (RFC 9106's low-memory recommendation, 64 MiB, 3 passes).
        self.hasher = hasher or PasswordHasher()
        # Each of `workers` processes counts its share of the allowances (docs/security.md).
        self.logins = LoginThrottle(per_name=max(1, math.ceil(PER_NAME / workers)),
                                    per_address=max(1, math.ceil(PER_ADDRESS / workers)))
        # Failed logins are not stored (a stranger writes no row): one log line per caller and minute.
        self.refusals = refusals or Refusals()

    @functools.cache
    def _dummy_hash(self) -> str:
        return self.hasher.hash(secrets.token_hex(16))

    # -- who is asking -----------------------------------------------------------------------------

    def authenticate(self, token: str) -> Principal:
        """The principal a bearer token stands for; AuthError if none."""
        if self.admin_token is not None and secrets.compare_digest(token.encode(), self.admin_token.encode()):
            return Principal(BOOTSTRAP_ADMIN, Role.ADMIN)
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            raise AuthError("invalid token")
        now = time.time()
        with self.store.tx() as s:
            found = s.execute(select(TokenRow, UserRow).join(UserRow, UserRow.id == TokenRow.user_id)
                              .where(TokenRow.digest == _digest(token))).first()
            if found is None:
                raise AuthError("invalid token")
            row, user = found
            if row.revoked or user.disabled or (row.expires_at is not None and row.expires_at < now):
                raise AuthError("the token is revoked or expired, or its user is disabled")
            if row.last_used is None or now - row.last_used > 60:  # (not a write on every request)
                row.last_used = now
            return Principal(user.name, Role(row.role), user.id)

    def bootstrap_admin(self) -> Principal:
        """The bootstrap administrator, for code running inside the server process (it holds the
        database anyway): the scenario, `fotadelta user add` on the server's database."""
        return Principal(BOOTSTRAP_ADMIN, Role.ADMIN)

    def loopback_operator(self) -> Principal | None:
        """Who a caller without a token is when it runs on the server's own host: the operator, as an
        administrator, if the server has no admin token (every local process is trusted then, see
        docs/security.md); None if it has one."""
        return Principal(LOOPBACK, Role.ADMIN) if self.admin_token is None else None

    def login(self, name: str, password: str, address: str = "") -> Principal:
        """A user by name and password (the console's login, the token endpoint): AuthError if wrong,
        Throttled after too many failures for the name or the address (before any hashing). Nothing
        is stored for a failure: it is counted in memory and logged."""
        if not name or len(name) > 64 or len(password) > 1024:
            raise AuthError("wrong user name or password")
        wait = self.logins.wait(name, address)
        if wait > 0:
            self.refusals.note("login", address, f"{name[:64]}: throttled")
            raise Throttled("too many failed logins: try again later", int(wait) + 1)
        # argon2id takes tens of MiB per verification: only a few at once, whoever asks.
        if not self.logins.verifying.acquire(timeout=VERIFY_WAIT):
            raise Throttled("the server is busy checking other logins: try again in a moment", 5, busy=True)
        try:
            principal = self._verify(name, password)
        finally:
            self.logins.verifying.release()
        if principal is None:
            self.logins.failed(name, address)
            self.refusals.note("login", address, f"{name[:64]}: wrong user name or password")
            raise AuthError("wrong user name or password")
        self.logins.succeeded(name)
        return principal

    def _verify(self, name: str, password: str) -> Principal | None:
        with self.store.tx() as s:
            row = s.scalars(select(UserRow).where(UserRow.name == name)).first()
            try:
                # (A missing user still costs one hash, so timing does not tell who exists.)
                self.hasher.verify(row.password_hash if row is not None else self._dummy_hash(), password)
            except (VerificationError, InvalidHashError):
                return None
            if row is None or row.disabled:
                return None
            if self.hasher.check_needs_rehash(row.password_hash):
                row.password_hash = self.hasher.hash(password)
            return Principal(row.name, Role(row.role), row.id)

    def require(self, actor: Principal, permission: Permission, action: str, target: str = "") -> None:
        """Forbidden (and an audit entry) unless actor has the permission."""
        if not actor.can(permission):
            self.audit(actor, action, target, outcome="denied", detail={"needs": permission.value})
            raise Forbidden(f"{actor.role.value} may not {action} (needs {permission.value})")

    # -- users and tokens --------------------------------------------------------------------------

    def create_user(self, actor: Principal, name: str, password: str, role: Role) -> User:
        self.require(actor, Permission.USERS_MANAGE, "user.create", name)
        if not name or len(name) > 64 or not name.isprintable():
            raise ValueError("a user name is 1 to 64 printable characters")
        if len(password) < 8 or len(password) > 1024:
            raise ValueError("a password is 8 to 1024 characters")
        with self.store.tx() as s:
            if s.scalars(select(UserRow.id).where(UserRow.name == name)).first() is not None:
                raise Conflict(f"user {name} exists")
            row = UserRow(name=name, password_hash=self.hasher.hash(password), role=role.value, created_by=actor.name)
            s.add(row)
            s.flush()
            user = _user(row)
        self.audit(actor, "user.create", name, detail={"role": role.value})
        return user

    def users(self, actor: Principal) -> list[User]:
        self.require(actor, Permission.USERS_MANAGE, "user.list")
        with self.store.tx() as s:
            return [_user(r) for r in s.scalars(select(UserRow).order_by(UserRow.id))]

    def set_user(self, actor: Principal, name: str, *, role: Role | None = None, disabled: bool | None = None,
                 password: str | None = None) -> User:
        self.require(actor, Permission.USERS_MANAGE, "user.change", name)
        with self.store.tx() as s:
            row = s.scalars(select(UserRow).where(UserRow.name == name)).first()
            if row is None:
                raise LookupError(f"no user {name}")
            if role is not None:
                row.role = role.value
                # A token never carries more than its user's role.
                for tok in s.scalars(select(TokenRow).where(TokenRow.user_id == row.id)):
                    if _rank(Role(tok.role)) > _rank(role):
                        tok.role = role.value
            if disabled is not None:
                row.disabled = disabled
            if password is not None:
                if len(password) < 8 or len(password) > 1024:
                    raise ValueError("a password is 8 to 1024 characters")
                row.password_hash = self.hasher.hash(password)
            user = _user(row)
        self.audit(actor, "user.change", name, detail={"role": role.value if role else None, "disabled": disabled,
                                                       "password": password is not None})
        return user

    def issue_token(self, actor: Principal, *, name: str = "", role: Role | None = None, user: str | None = None,
                    ttl: float | None = None) -> tuple[str, Token]:
        """A new token for actor (or, with users.manage, for another user), scoped to role (default: the
        user's role; never more). The token text is returned once and never stored."""
        if user is not None and user != actor.name:
            self.require(actor, Permission.USERS_MANAGE, "token.issue", user)
        owner = user or actor.name
        if actor.user_id is None and user is None:
            raise ValueError("the bootstrap administrator has no user: name the user the token is for")
        with self.store.tx() as s:
            urow = s.scalars(select(UserRow).where(UserRow.name == owner)).first()
            if urow is None:
                raise LookupError(f"no user {owner}")
            scope = role or Role(urow.role)
            # Never more than the user's role, nor than the credential asking (a read-only token of an
            # administrator does not mint an administrator's token).
            ceiling = min(Role(urow.role), actor.role, key=_rank)
            if _rank(scope) > _rank(ceiling):
                raise Forbidden(f"a token of {owner} can be scoped to {ceiling.value} at most")
            text = TOKEN_PREFIX + secrets.token_urlsafe(32)
            row = TokenRow(user_id=urow.id, name=name[:64], digest=_digest(text), role=scope.value,
                           expires_at=None if ttl is None else time.time() + ttl)
            s.add(row)
            s.flush()
            token = Token(row.id, owner, row.name, scope, row.created_at, row.expires_at, None, False)
        self.audit(actor, "token.issue", owner, detail={"token": token.id, "role": scope.value, "name": name})
        return text, token

    def tokens(self, actor: Principal, user: str | None = None) -> list[Token]:
        owner = user or actor.name
        if owner != actor.name:
            self.require(actor, Permission.USERS_MANAGE, "token.list", owner)
        with self.store.tx() as s:
            rows = s.execute(select(TokenRow, UserRow.name).join(UserRow, UserRow.id == TokenRow.user_id)
                             .where(UserRow.name == owner).order_by(TokenRow.id)).all()
            return [Token(t.id, n, t.name, Role(t.role), t.created_at, t.expires_at, t.last_used, t.revoked)
                    for t, n in rows]

    def revoke_token(self, actor: Principal, token_id: int) -> None:
        with self.store.tx() as s:
            found = s.execute(select(TokenRow, UserRow.name).join(UserRow, UserRow.id == TokenRow.user_id)
                              .where(TokenRow.id == token_id)).first()
            if found is None:
                raise LookupError(f"no token {token_id}")
            row, owner = found
            if owner != actor.name:
                self.require(actor, Permission.USERS_MANAGE, "token.revoke", str(token_id))
            row.revoked = True
        self.audit(actor, "token.revoke", owner, detail={"token": token_id})

    # -- the audit log -----------------------------------------------------------------------------

    def audit(self, actor: Principal, action: str, target: str = "", *, outcome: str = "ok",
              detail: dict[str, Any] | None = None) -> None:
        with self.store.tx() as s:
            add_audit(s.connection(), actor, action, target, outcome=outcome, detail=detail)

    def audit_log(self, actor: Principal, *, since_id: int = 0, before_id: int | None = None, limit: int = 100,
                  action: str | None = None, who: str | None = None) -> list[AuditEntry]:
        """Entries after since_id, oldest first; or (before_id) the newest ones below that id, newest first."""
        self.require(actor, Permission.AUDIT_READ, "audit.read")
        q = select(AuditRow).where(AuditRow.id > since_id)
        if before_id is not None:
            q = q.where(AuditRow.id < before_id)
        if action:
            q = q.where(AuditRow.action == action)
        if who:
            q = q.where(AuditRow.actor == who)
        with self.store.tx() as s:
            return [AuditEntry(r.id, r.at, r.actor, r.action, r.target, r.outcome, dict(r.detail))
                    for r in s.scalars(q.order_by(AuditRow.id.desc() if before_id is not None else AuditRow.id)
                                       .limit(max(1, min(limit, 1000))))]


AUDIT = table_of(AuditRow)
_ADD_AUDIT = Direct(insert(AUDIT).values(
    {c: bindparam(c) for c in ("at", "actor", "action", "target", "outcome", "detail")}))


def audit_entry(actor: Principal, action: str, target: str = "", *, outcome: str = "ok",
                detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """An entry of the audit log as its row's values: written by add_audit, or appended to a transaction's
    Tracked rows (written with its other rows)."""
    return {"at": time.time(), "actor": actor.name, "action": action, "target": target[:256], "outcome": outcome,
            "detail": json.dumps(detail or {})}


def add_audit(conn: Connection, actor: Principal, action: str, target: str = "", *, outcome: str = "ok",
              detail: dict[str, Any] | None = None) -> None:
    """An entry of the audit log in conn's transaction, a plain INSERT written now (Auth.audit writes one in a
    transaction of its own)."""
    _ADD_AUDIT.run(conn, audit_entry(actor, action, target, outcome=outcome, detail=detail))


_RANKS = {Role.READ_ONLY: 0, Role.CUSTOMER_CARE: 1, Role.DEPLOYMENT_MANAGER: 2, Role.ADMIN: 3}


def _rank(role: Role) -> int:
    return _RANKS[role]

