"""One capability record per make, model, firmware version and source: two server processes that met a
new kind of device at once could each store a discovered record, and the two then disagreed on every
session after (each session rewrote one of them). Duplicates are removed, the first stored kept, and a
unique index keeps it so (the message that loses the race runs again and finds the record)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fotadelta.server.migrations import has_index

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEX = "ix_capabilities_record"


def upgrade() -> None:
    if has_index("capabilities", INDEX):
        return
    caps = sa.table("capabilities", sa.column("id", sa.Integer), sa.column("make", sa.String),
                    sa.column("model", sa.String), sa.column("fw_version", sa.String), sa.column("source", sa.String))
    first = sa.select(sa.func.min(caps.c.id)).group_by(caps.c.make, caps.c.model, caps.c.fw_version, caps.c.source)
    op.execute(caps.delete().where(caps.c.id.not_in(first)))
    op.create_index(INDEX, "capabilities", ["make", "model", "fw_version", "source"], unique=True)
