"""The DM store before migrations: devices, packages, jobs, sessions, events.

What `fotadelta serve` created on main before the fleet (issue 14), packages' kind and devices'
update_kinds included (columns a database from before them gets here, with an empty default)."""

from __future__ import annotations

import sqlalchemy as sa

from fotadelta.server.migrations import add_column, create_table

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_table(
        "devices",
        sa.Column("dev_id", sa.String(128), primary_key=True),
        sa.Column("user", sa.String(128), nullable=False),
        sa.Column("password", sa.String(128), nullable=False),
        sa.Column("server_password", sa.String(128), nullable=False),
        sa.Column("auth", sa.String(8), nullable=False),
        sa.Column("client_nonce", sa.String(64), nullable=False),
        sa.Column("server_nonce", sa.String(64), nullable=False),
        sa.Column("make", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("lang", sa.String(16), nullable=False),
        sa.Column("msisdn", sa.String(32), nullable=False),
        sa.Column("push_url", sa.String(256), nullable=False),
        sa.Column("large_objects", sa.Boolean(), nullable=False),
        sa.Column("last_seen", sa.Double(), nullable=False),
        sa.Column("update_kinds", sa.String(64), nullable=False, server_default=""),
    )
    create_table(
        "packages",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("make", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("from_version", sa.String(64), nullable=False),
        sa.Column("to_version", sa.String(64), nullable=False),
        sa.Column("content_type", sa.String(16), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False, server_default=""),
    )
    create_table(
        "sessions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("dev_id", sa.String(128), nullable=False),
        sa.Column("session_id", sa.String(8), nullable=False),
        sa.Column("initiator", sa.String(8), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("messages", sa.Integer(), nullable=False),
        sa.Column("note", sa.String(512), nullable=False),
        sa.Column("started", sa.Double(), nullable=False),
        sa.Column("ended", sa.Double(), nullable=True),
        indexes=(("ix_sessions_dev_id", ("dev_id",)),),
    )
    create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("dev_id", sa.String(128), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("text", sa.String(1024), nullable=False),
        indexes=(("ix_events_dev_id", ("dev_id",)),),
    )
    create_table(
        "jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("dev_id", sa.String(128), sa.ForeignKey("devices.dev_id"), nullable=False),
        sa.Column("package_id", sa.Integer(), sa.ForeignKey("packages.id"), nullable=False),
        sa.Column("goal_version", sa.String(64), nullable=False),
        sa.Column("correlator", sa.String(64), nullable=False, unique=True),
        sa.Column("delivery", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("result_code", sa.Integer(), nullable=True),
        sa.Column("message", sa.String(512), nullable=False),
        sa.Column("created", sa.Double(), nullable=False),
        sa.Column("updated", sa.Double(), nullable=False),
        indexes=(("ix_jobs_dev_id", ("dev_id",)), ("ix_jobs_state", ("state",))),
    )
    # Columns added on main before migrations existed (an older database lacks them).
    add_column("packages", sa.Column("kind", sa.String(16), nullable=False, server_default=""))
    add_column("devices", sa.Column("update_kinds", sa.String(64), nullable=False, server_default=""))
