"""The fleet-management tables: operators, tokens and the audit log; device groups and tags; package
releases; DM commands of the application API; campaigns, their devices, attempts, samples and alerts.

They share the DM store's metadata (`store.Base`), so one `create_all` makes every table and foreign
keys reach the devices and packages tables. States are short strings, listed beside each column."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from fotadelta.server.store import Base, DeviceRow

# The registry's keyset pages under a filter (status, or make/model/version) walk these in DevId
# order, and a search by MSISDN is one lookup: a page costs the same for ten devices or a million.
DEVICE_INDEXES = (Index("ix_devices_status_dev_id", DeviceRow.status, DeviceRow.dev_id),
                  Index("ix_devices_model_dev_id", DeviceRow.make, DeviceRow.model, DeviceRow.version, DeviceRow.dev_id),
                  Index("ix_devices_msisdn", DeviceRow.msisdn))


class UserRow(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))  # argon2id, PHC string
    role: Mapped[str] = mapped_column(String(32))  # admin | deployment_manager | customer_care | read_only
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[float] = mapped_column(default=time.time)
    created_by: Mapped[str] = mapped_column(String(64), default="")


class TokenRow(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(64), default="")
    digest: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the token; the token is never stored
    role: Mapped[str] = mapped_column(String(32))  # the scope: the user's role or a lesser one
    created_at: Mapped[float] = mapped_column(default=time.time)
    expires_at: Mapped[float | None] = mapped_column(default=None)
    last_used: Mapped[float | None] = mapped_column(default=None)
    revoked: Mapped[bool] = mapped_column(default=False)


class AuditRow(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[float] = mapped_column(default=time.time, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256), default="")
    outcome: Mapped[str] = mapped_column(String(16), default="ok")  # ok | denied | error
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class GroupRow(Base):
    __tablename__ = "device_groups"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[float] = mapped_column(default=time.time)
    created_by: Mapped[str] = mapped_column(String(64), default="")


class MemberRow(Base):
    __tablename__ = "group_members"
    group_id: Mapped[int] = mapped_column(ForeignKey("device_groups.id", ondelete="CASCADE"), primary_key=True)
    dev_id: Mapped[str] = mapped_column(ForeignKey("devices.dev_id", ondelete="CASCADE"), primary_key=True,
                                        index=True)


class TagRow(Base):
    __tablename__ = "device_tags"
    dev_id: Mapped[str] = mapped_column(ForeignKey("devices.dev_id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class ReleaseRow(Base):
    """A package's lifecycle. A package without a row was published outside it (DmServer.publish, the
    legacy operator endpoint, `serve --publish`) and counts as released."""

    __tablename__ = "releases"
    package_id: Mapped[int] = mapped_column(ForeignKey("packages.id"), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="created", index=True)
    # created -> tested (handed to a tester group) -> released; created|tested -> rejected; released -> deactivated
    tester_group_id: Mapped[int | None] = mapped_column(ForeignKey("device_groups.id"), default=None)
    note: Mapped[str] = mapped_column(String(512), default="")
    created_at: Mapped[float] = mapped_column(default=time.time)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    changed_at: Mapped[float] = mapped_column(default=time.time)
    changed_by: Mapped[str] = mapped_column(String(64), default="")


class CommandRow(Base):
    """A DM command (or Atomic/Sequence) for one device, delivered in its next session."""

    __tablename__ = "dm_commands"
    id: Mapped[int] = mapped_column(primary_key=True)
    dev_id: Mapped[str] = mapped_column(ForeignKey("devices.dev_id", ondelete="CASCADE"), index=True)
    batch: Mapped[str] = mapped_column(String(32), index=True)  # the commands created by one request
    spec: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    # queued -> sent -> succeeded | failed | refused (answered by another device); queued -> cancelled
    statuses: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    error: Mapped[str] = mapped_column(String(512), default="")
    callback_url: Mapped[str] = mapped_column(String(512), default="")
    retry_of: Mapped[int | None] = mapped_column(default=None)
    created_at: Mapped[float] = mapped_column(default=time.time)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    sent_at: Mapped[float | None] = mapped_column(default=None)
    finished_at: Mapped[float | None] = mapped_column(default=None)


class CampaignRow(Base):
    __tablename__ = "campaigns"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default="draft", index=True)
    # draft -> running <-> paused | suspended -> completed | cancelled
    priority: Mapped[int] = mapped_column(default=0)
    target_version: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # CampaignSpec as JSON: targets, waves, thresholds, windows
    wave: Mapped[int] = mapped_column(default=0)  # the last wave opened
    reason: Mapped[str] = mapped_column(String(512), default="")  # why it is suspended, paused or cancelled
    created_at: Mapped[float] = mapped_column(default=time.time)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    started_at: Mapped[float | None] = mapped_column(default=None)
    counted_from: Mapped[float | None] = mapped_column(default=None)  # failures count from the start or last resume
    finished_at: Mapped[float | None] = mapped_column(default=None)


class CampaignDeviceRow(Base):
    __tablename__ = "campaign_devices"
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    dev_id: Mapped[str] = mapped_column(ForeignKey("devices.dev_id", ondelete="CASCADE"), primary_key=True,
                                        index=True)
    wave: Mapped[int] = mapped_column(default=0)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    # queued -> running -> succeeded | failed (after the last attempt, with a reason) | cancelled; running -> queued
    attempts: Mapped[int] = mapped_column(default=0)
    first_job: Mapped[int | None] = mapped_column(default=None)  # the attempt's first job; a chain adds later ones
    started: Mapped[float | None] = mapped_column(default=None)
    finished: Mapped[float | None] = mapped_column(default=None)
    not_before: Mapped[float | None] = mapped_column(default=None)  # the next attempt's earliest start
    result_code: Mapped[int | None] = mapped_column(default=None)
    reason: Mapped[str] = mapped_column(String(512), default="")

    __table_args__ = (Index("ix_campaign_devices_state", "campaign_id", "state"),)


class AttemptRow(Base):
    """One attempt to update one device in a campaign, as it ended."""

    __tablename__ = "campaign_attempts"
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    dev_id: Mapped[str] = mapped_column(String(128), index=True)
    attempt: Mapped[int]
    started: Mapped[float]
    ended: Mapped[float] = mapped_column(index=True)
    outcome: Mapped[str] = mapped_column(String(16))  # succeeded | failed | cancelled
    result_code: Mapped[int | None] = mapped_column(default=None)
    reason: Mapped[str] = mapped_column(String(512), default="")


class SampleRow(Base):
    """A campaign's counts by device state at one moment: the progress chart's points."""

    __tablename__ = "campaign_samples"
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    at: Mapped[float]
    counts: Mapped[dict[str, int]] = mapped_column(JSON)


class AlertRow(Base):
    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[float] = mapped_column(default=time.time, index=True)
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), default=None)
    kind: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(String(1024))
    delivery: Mapped[str] = mapped_column(String(128), default="")  # the webhook's outcome, or empty without one
