"""Runtime tables: run ledger, local dispatch queue, dead letters, webhook inbox, schedule state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Index, Integer, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from curaway.models.base import Base, CreatedAtMixin, JSONType, TimestampsMixin, UTCDateTime, int_pk

LEDGER_STATES = ("running", "succeeded", "skipped", "failed", "dead")
QUEUE_STATES = ("queued", "running", "done", "dead")
DEAD_LETTER_STATES = ("open", "replayed", "discarded")


class RunLedger(TimestampsMixin, Base):
    """One row per run key, claimed before a handler acts (DESIGN §2 "Run keys")."""

    __tablename__ = "run_ledger"
    __table_args__ = (Index("ix_run_ledger_task_status", "task", "status"),)

    id: Mapped[int] = int_pk()
    run_key: Mapped[str] = mapped_column(String(255), unique=True)
    task: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    slot: Mapped[datetime | None] = mapped_column(UTCDateTime)
    trigger: Mapped[str | None] = mapped_column(String(32))  # local | qstash | cloudtasks | cloudscheduler | manual
    verifier: Mapped[str | None] = mapped_column(String(32))
    key_id: Mapped[str | None] = mapped_column(String(64))
    owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error_class: Mapped[str | None] = mapped_column(String(100))
    error_code: Mapped[str | None] = mapped_column(String(64))


class QueuedTask(TimestampsMixin, Base):
    """The local backend's durable queue. ``dedup_key`` is unique: N schedulers enqueue one task per slot."""

    __tablename__ = "task_queue"
    __table_args__ = (Index("ix_task_queue_claim", "status", "queue", "scheduled_for"),)

    id: Mapped[int] = int_pk()
    task: Mapped[str] = mapped_column(String(64))
    queue: Mapped[str] = mapped_column(String(64))
    dedup_key: Mapped[str] = mapped_column(String(255), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    headers: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=4)
    scheduled_for: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    locked_by: Mapped[str | None] = mapped_column(String(64))
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(200))
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DeadLetter(TimestampsMixin, Base):
    """The service's own DLQ for every backend. Holds references and error classes, never PHI."""

    __tablename__ = "dead_letters"
    __table_args__ = (Index("ix_dead_letters_status", "status"),)

    id: Mapped[int] = int_pk()
    task: Mapped[str] = mapped_column(String(64))
    run_key: Mapped[str] = mapped_column(String(255), index=True)
    # Unique per run key and generation so the runner and the dispatcher never write two for one failure.
    dedup_key: Mapped[str] = mapped_column(String(300), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)  # ids only (e.g. document_id)
    source: Mapped[str | None] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[int | None] = mapped_column(Integer)
    error_class: Mapped[str | None] = mapped_column(String(100))
    error_code: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="open")
    replayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    replay_dedup_key: Mapped[str | None] = mapped_column(String(255))


class WebhookInbox(CreatedAtMixin, Base):
    """Inbound webhook ids (``svix-id``), kept ≥ 3 days so redeliveries are answered as duplicates."""

    __tablename__ = "webhook_inbox"
    __table_args__ = (UniqueConstraint("source", "event_id", name="uq_webhook_inbox_source_event_id"),)

    id: Mapped[int] = int_pk()
    source: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str | None] = mapped_column(String(100))
    outcome: Mapped[str] = mapped_column(String(32))  # processing | deactivated | ignored | dead_lettered | ...
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)


class ScheduleState(TimestampsMixin, Base):
    """What the local backend has registered (``schedules sync``) and the last slot its cron loop enqueued."""

    __tablename__ = "schedule_states"

    id: Mapped[int] = int_pk()
    schedule: Mapped[str] = mapped_column(String(64), unique=True)
    cron: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(255))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    last_slot: Mapped[datetime | None] = mapped_column(UTCDateTime)
    synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
