"""A job's state changes with each step of its update: with no index on it (every query of jobs names the
device or the job), PostgreSQL can write a job's new version without new entries in any index (a
heap-only update)."""

from __future__ import annotations

from alembic import op

from fotadelta.server.migrations import has_index

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if has_index("jobs", "ix_jobs_state"):
        op.drop_index("ix_jobs_state", "jobs")
