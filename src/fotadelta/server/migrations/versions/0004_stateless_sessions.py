"""Stateless DM workers (issue 15): a session in progress lives in its row (the RespURI token it is
heard at, the engine's sealed state between messages, the time of its last message), and redeemed
portal tokens are rows, so that every server process sharing the database knows them."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fotadelta.server.migrations import add_column, create_table, has_index

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_column("sessions", sa.Column("token", sa.String(32), nullable=True))
    add_column("sessions", sa.Column("live", sa.LargeBinary(), nullable=True))
    add_column("sessions", sa.Column("touched", sa.Double(), nullable=False, server_default="0"))
    if not has_index("sessions", "ix_sessions_token"):
        op.create_index("ix_sessions_token", "sessions", ["token"], unique=True)
    if not has_index("sessions", "ix_sessions_touched"):
        op.create_index("ix_sessions_touched", "sessions", ["touched"])
    create_table(
        "portal_redemptions",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("expires", sa.Double(), nullable=False),
        indexes=(("ix_portal_redemptions_expires", ("expires",)),),
    )
