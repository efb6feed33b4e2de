"""Fleet management (issue 14): the registry's device columns and indexes; operators, API tokens and
the audit log; groups and tags; releases; DM commands; campaigns with their devices, attempts,
samples and alerts; web console sessions.

Devices already there get a lifecycle status from what the store knows of them: `unknown` if they
enrolled themselves with factory credentials (an `enrol` event), else `provisioned` if they have
had a session, else `assigned` (an operator registered their credentials)."""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

from fotadelta.server.migrations import add_column, create_table, has_index

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _created(prefix: str = "created") -> list[sa.Column[object]]:
    return [sa.Column(f"{prefix}_at", sa.Double(), nullable=False), sa.Column(f"{prefix}_by", sa.String(64),
                                                                                nullable=False)]


def upgrade() -> None:
    now = repr(time.time())
    new_status = add_column("devices", sa.Column("status", sa.String(16), nullable=False, server_default="unknown"))
    add_column("devices", sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"))
    for name, default in (("created_at", now), ("created_by", ""), ("modified_at", now), ("modified_by", "")):
        kind = sa.Double() if name.endswith("_at") else sa.String(64)
        add_column("devices", sa.Column(name, kind, nullable=False, server_default=sa.text(default) if
                                        name.endswith("_at") else default))
    if new_status:
        devices = sa.table("devices", sa.column("dev_id"), sa.column("status"), sa.column("last_seen"))
        events = sa.table("events", sa.column("dev_id"), sa.column("kind"))
        enrolled = sa.select(events.c.dev_id).where(events.c.kind == "enrol")
        op.execute(devices.update().where(devices.c.dev_id.not_in(enrolled), devices.c.last_seen > 0)
                   .values(status="provisioned"))
        op.execute(devices.update().where(devices.c.dev_id.not_in(enrolled), devices.c.last_seen <= 0)
                   .values(status="assigned"))
    for index, cols in (("ix_devices_status", ("status",)), ("ix_devices_status_dev_id", ("status", "dev_id")),
                        ("ix_devices_model_dev_id", ("make", "model", "version", "dev_id")),
                        ("ix_devices_msisdn", ("msisdn",))):
        if not has_index("devices", index):
            op.create_index(index, "devices", list(cols))
    # A DevId search by prefix is LIKE 'prefix%' on PostgreSQL, which an index of the column's collation
    # cannot serve unless that collation is C; an index in pattern order can, under any collation.
    if op.get_bind().dialect.name == "postgresql" and not has_index("devices", "ix_devices_dev_id_pattern"):
        op.create_index("ix_devices_dev_id_pattern", "devices", ["dev_id"],
                        postgresql_ops={"dev_id": "varchar_pattern_ops"})

    create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(256), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        *_created(),
    )
    create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=True),
        sa.Column("last_used", sa.Double(), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        indexes=(("ix_api_tokens_user_id", ("user_id",)),),
    )
    create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(256), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        indexes=(("ix_audit_log_at", ("at",)),),
    )
    create_table(
        "device_groups",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("description", sa.String(256), nullable=False),
        *_created(),
    )
    create_table(
        "group_members",
        sa.Column("group_id", sa.Integer(), sa.ForeignKey("device_groups.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("dev_id", sa.String(128), sa.ForeignKey("devices.dev_id", ondelete="CASCADE"), primary_key=True),
        indexes=(("ix_group_members_dev_id", ("dev_id",)),),
    )
    create_table(
        "device_tags",
        sa.Column("dev_id", sa.String(128), sa.ForeignKey("devices.dev_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("tag", sa.String(64), primary_key=True),
        indexes=(("ix_device_tags_tag", ("tag",)),),
    )
    create_table(
        "releases",
        sa.Column("package_id", sa.Integer(), sa.ForeignKey("packages.id"), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("tester_group_id", sa.Integer(), sa.ForeignKey("device_groups.id"), nullable=True),
        sa.Column("note", sa.String(512), nullable=False),
        *_created(),
        *_created("changed"),
        indexes=(("ix_releases_state", ("state",)),),
    )
    create_table(
        "dm_commands",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("dev_id", sa.String(128), sa.ForeignKey("devices.dev_id", ondelete="CASCADE"), nullable=False),
        sa.Column("batch", sa.String(32), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("statuses", sa.JSON(), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.Column("error", sa.String(512), nullable=False),
        sa.Column("callback_url", sa.String(512), nullable=False),
        sa.Column("retry_of", sa.Integer(), nullable=True),
        *_created(),
        sa.Column("sent_at", sa.Double(), nullable=True),
        sa.Column("finished_at", sa.Double(), nullable=True),
        indexes=(("ix_dm_commands_batch", ("batch",)), ("ix_dm_commands_dev_id", ("dev_id",)),
                 ("ix_dm_commands_state", ("state",))),
    )
    create_table(
        "campaigns",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("target_version", sa.String(64), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(512), nullable=False),
        *_created(),
        sa.Column("started_at", sa.Double(), nullable=True),
        sa.Column("counted_from", sa.Double(), nullable=True),
        sa.Column("finished_at", sa.Double(), nullable=True),
        indexes=(("ix_campaigns_state", ("state",)),),
    )
    create_table(
        "campaign_devices",
        sa.Column("campaign_id", sa.Integer(), sa.ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("dev_id", sa.String(128), sa.ForeignKey("devices.dev_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_job", sa.Integer(), nullable=True),
        sa.Column("started", sa.Double(), nullable=True),
        sa.Column("finished", sa.Double(), nullable=True),
        sa.Column("not_before", sa.Double(), nullable=True),
        sa.Column("result_code", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(512), nullable=False),
        indexes=(("ix_campaign_devices_dev_id", ("dev_id",)), ("ix_campaign_devices_state", ("campaign_id", "state"))),
    )
    create_table(
        "campaign_attempts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("campaign_id", sa.Integer(), sa.ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
        sa.Column("dev_id", sa.String(128), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started", sa.Double(), nullable=False),
        sa.Column("ended", sa.Double(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("result_code", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(512), nullable=False),
        indexes=(("ix_campaign_attempts_campaign_id", ("campaign_id",)), ("ix_campaign_attempts_dev_id", ("dev_id",)),
                 ("ix_campaign_attempts_ended", ("ended",))),
    )
    create_table(
        "campaign_samples",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("campaign_id", sa.Integer(), sa.ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        indexes=(("ix_campaign_samples_campaign_id", ("campaign_id",)),),
    )
    create_table(
        "alerts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), sa.ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("text", sa.String(1024), nullable=False),
        sa.Column("delivery", sa.String(128), nullable=False),
        indexes=(("ix_alerts_at", ("at",)),),
    )
    create_table(
        "console_sessions",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("last_seen", sa.Double(), nullable=False),
        sa.Column("flash", sa.JSON(), nullable=False),
        indexes=(("ix_console_sessions_user_id", ("user_id",)),),
    )
