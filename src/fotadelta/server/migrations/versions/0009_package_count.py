"""The packages' change count (server/planning.py): a process keeps the chain planner's packages of each make and
model, and reads them again only when the count it reads has moved since."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    versions = sa.table("cache_versions", sa.column("name", sa.String), sa.column("version", sa.Integer))
    if "packages" not in set(op.get_bind().scalars(sa.select(versions.c.name))):
        op.bulk_insert(versions, [{"name": "packages", "version": 0}])
