"""Console log-in sessions, kept on the server: a random id in the browser's cookie, its SHA-256 in
the database (a copied database holds no usable session), the user it stands for and the session's
CSRF token. The user's row is read on every request, so a disabled user or a changed role takes
effect at once; logging out deletes the row, so the cookie is worth nothing after it.

A session ends after IDLE seconds without a request or LIFETIME seconds after the login, whichever
comes first; a user keeps at most PER_USER sessions (the oldest go). Nothing here is created before
the password has been checked."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from fotadelta.server.auth import Principal, Role
from fotadelta.server.store import Base, Store
from fotadelta.server.tables import UserRow

IDLE = 30 * 60.0
LIFETIME = 12 * 3600.0
PER_USER = 20
TOUCH_EVERY = 60.0  # last_seen is written at most this often (not a write per request)
MAX_FLASH = 5


class ConsoleSessionRow(Base):
    __tablename__ = "console_sessions"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the cookie's id
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(default=time.time)
    last_seen: Mapped[float] = mapped_column(default=time.time)
    flash: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # messages for the next page


@dataclass(frozen=True)
class Login:
    """A live session: who, and the token every form must carry."""

    principal: Principal
    csrf: str
    digest: str


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    def __init__(self, store: Store) -> None:
        self.store = store

    def open(self, principal: Principal) -> str:
        """A new session for an authenticated user; the id for the cookie (returned once, never stored)."""
        if principal.user_id is None:
            raise ValueError("console sessions are for users")
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        with self.store.tx() as s:
            s.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.last_seen < now - IDLE))
            s.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.created_at < now - LIFETIME))
            older = list(s.scalars(select(ConsoleSessionRow.digest).where(ConsoleSessionRow.user_id == principal.user_id)
                                   .order_by(ConsoleSessionRow.created_at.desc()).offset(PER_USER - 1)))
            if older:
                s.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.digest.in_(older)))
            s.add(ConsoleSessionRow(digest=_digest(session_id), user_id=principal.user_id,
                                    csrf=secrets.token_urlsafe(32), created_at=now, last_seen=now))
        return session_id

    def find(self, session_id: str) -> Login | None:
        """The live session with this id, or None (unknown, expired, or its user disabled)."""
        if not session_id or len(session_id) > 128:
            return None
        now = time.time()
        digest = _digest(session_id)
        with self.store.tx() as s:
            found = s.execute(select(ConsoleSessionRow, UserRow).join(UserRow, UserRow.id == ConsoleSessionRow.user_id)
                              .where(ConsoleSessionRow.digest == digest)).first()
            if found is None:
                return None
            row, user = found
            if user.disabled or row.last_seen < now - IDLE or row.created_at < now - LIFETIME:
                s.delete(row)
                return None
            if now - row.last_seen > TOUCH_EVERY:
                row.last_seen = now
            return Login(Principal(user.name, Role(user.role), user.id), row.csrf, digest)

    def close(self, login: Login) -> None:
        with self.store.tx() as s:
            s.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.digest == login.digest))

    def flash(self, login: Login, kind: str, text: str) -> None:
        """A message (kind: ok or error) for the next page this session shows."""
        with self.store.tx() as s:
            row = s.get(ConsoleSessionRow, login.digest)
            if row is not None:
                row.flash = [*row.flash, {"kind": kind, "text": text[:500]}][-MAX_FLASH:]

    def take_flash(self, login: Login) -> list[dict[str, Any]]:
        with self.store.tx() as s:
            row = s.get(ConsoleSessionRow, login.digest)
            if row is None or not row.flash:
                return []
            messages, row.flash = list(row.flash), []
            return messages
