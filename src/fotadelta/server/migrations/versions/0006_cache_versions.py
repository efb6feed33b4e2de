"""Counts of changes to read-mostly data that each server process keeps in memory (the capability records):
a message reads the count beside its device's row and reads the data again only when it moved."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fotadelta.server.migrations import create_table

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

CACHED = ("capabilities",)  # the kinds of data counted, one row each


def upgrade() -> None:
    create_table("cache_versions", sa.Column("name", sa.String(32), primary_key=True),
                 sa.Column("version", sa.Integer(), nullable=False))
    versions = sa.table("cache_versions", sa.column("name", sa.String), sa.column("version", sa.Integer))
    known = set(op.get_bind().scalars(sa.select(versions.c.name)))
    if rows := [{"name": name, "version": 0} for name in CACHED if name not in known]:
        op.bulk_insert(versions, rows)
