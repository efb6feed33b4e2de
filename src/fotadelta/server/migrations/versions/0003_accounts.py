"""Device accounts and capabilities (issue 12): the server's own authentication schemes per device,
the SNMP credentials of its traps, room for the longer nonces third-party clients use, and the
capability records per make/model/version (discovered and the operator's).

A database that `fotadelta serve` made with these before migrations knew them already has them:
only what is missing is added, and only columns still narrow are widened (on a database that enforces
widths)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fotadelta.server.migrations import add_column, create_table

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NONCE = 512  # characters of a base64 nonce the devices table keeps


def upgrade() -> None:
    add_column("devices", sa.Column("server_auth", sa.String(32), nullable=False, server_default="md5"))
    add_column("devices", sa.Column("snmp", sa.String(512), nullable=False, server_default=""))
    # SQLite does not enforce a VARCHAR's length (and would have to rebuild a table other tables refer to):
    # there the declared width changes nothing, and the column stays as it is.
    if op.get_bind().dialect.name != "sqlite":
        columns = {c["name"]: c["type"] for c in sa.inspect(op.get_bind()).get_columns("devices")}
        for name in ("client_nonce", "server_nonce"):
            if getattr(columns[name], "length", NONCE) < NONCE:
                op.alter_column("devices", name, type_=sa.String(NONCE), existing_type=columns[name],
                                existing_nullable=False)
    create_table(
        "capabilities",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("make", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("fw_version", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("values", sa.String(2048), nullable=False),
        sa.Column("updated", sa.Double(), nullable=False),
        indexes=(("ix_capabilities_make", ("make",)),),
    )
