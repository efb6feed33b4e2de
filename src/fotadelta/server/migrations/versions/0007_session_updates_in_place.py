"""A session's row is written by every message of the session: with no index on its `touched` column, and
(PostgreSQL) room left on each page, PostgreSQL can write the new version of the row beside the old one
without new entries in any index (a heap-only update) whenever the token stays. The sweep finds the
sessions it ends through the token's index: only rows still heard at a token have one."""

from __future__ import annotations

from alembic import op

from fotadelta.server.migrations import has_index

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

FILLFACTOR = 70  # percent of a sessions page filled by inserts: the rest is for the later versions of its rows


def upgrade() -> None:
    if has_index("sessions", "ix_sessions_touched"):
        op.drop_index("ix_sessions_touched", "sessions")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE sessions SET (fillfactor = {FILLFACTOR})")
