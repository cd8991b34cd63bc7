"""Domain tables named by the spec (DESIGN §3 "Data"). Column names are contracts."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from curaway.models.base import Base, CreatedAtMixin, JSONType, TimestampsMixin, UTCDateTime, int_pk, str_pk

AUTO_GRANTOR = "system:clerk_jwt"

CASE_STATUSES = (
    "intake",
    "documents_pending",
    "extraction_complete",
    "in_review",
    "matched",
    "treatment_scheduled",
    "closed",
)
DOCUMENT_STATUSES = ("uploaded", "queued", "extracting", "extracted", "failed")
FHIR_STATUSES = ("pending", "complete", "failed")
OCR_STATUSES = ("queued", "processing", "succeeded", "failed")


class Tenant(TimestampsMixin, Base):
    __tablename__ = "tenants"

    id: Mapped[str] = str_pk("ten")
    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(80), unique=True)


class TenantOrgMapping(CreatedAtMixin, Base):
    __tablename__ = "tenant_org_mappings"

    id: Mapped[int] = int_pk()
    clerk_org_id: Mapped[str] = mapped_column(String(64), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)


class User(TimestampsMixin, Base):
    """A Clerk user as the platform knows it (id is the Clerk user id)."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320))
    display_name: Mapped[str | None] = mapped_column(String(200))
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class UserRole(TimestampsMixin, Base):
    __tablename__ = "user_roles"
    __table_args__ = (
        # One auto-assigned row per user and tenant; manual rows are free-form.
        Index(
            "uq_user_roles_auto",
            "user_id",
            "tenant_id",
            unique=True,
            sqlite_where=text("granted_by = 'system:clerk_jwt'"),
            postgresql_where=text("granted_by = 'system:clerk_jwt'"),
        ),
        Index("ix_user_roles_user_tenant", "user_id", "tenant_id"),
    )

    id: Mapped[int] = int_pk()
    user_id: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(64))
    granted_by: Mapped[str] = mapped_column(String(128))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    # Sticky revoke: an operator's manual revocation that the JWT path must respect.
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_by: Mapped[str | None] = mapped_column(String(128))


class Case(TimestampsMixin, Base):
    __tablename__ = "cases"
    __table_args__ = (
        CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in CASE_STATUSES) + ")", name="status_known"),
        Index("ix_cases_status_last_message_at", "status", "last_message_at"),
    )

    id: Mapped[str] = str_pk("case")
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(32), default="intake")
    patient_user_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(200))
    patient_email: Mapped[str | None] = mapped_column(String(320))
    patient_birth_date: Mapped[date | None] = mapped_column(Date)
    # Last message from the patient; the intake-reminder episode restarts when it moves.
    last_message_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Upload(TimestampsMixin, Base):
    __tablename__ = "uploads"

    id: Mapped[str] = str_pk("upl")
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str | None] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(500))
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Document(TimestampsMixin, Base):
    __tablename__ = "documents"
    __table_args__ = (
        CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in DOCUMENT_STATUSES) + ")", name="status_known"),
        CheckConstraint(
            "fhir_status IN (" + ", ".join(f"'{s}'" for s in FHIR_STATUSES) + ")", name="fhir_status_known"
        ),
        Index("ix_documents_status_fhir_status", "status", "fhir_status"),
    )

    id: Mapped[str] = str_pk("doc")
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    upload_id: Mapped[str | None] = mapped_column(ForeignKey("uploads.id", ondelete="SET NULL"), unique=True)
    filename: Mapped[str | None] = mapped_column(String(255))
    content_type: Mapped[str | None] = mapped_column(String(100))
    storage_key: Mapped[str | None] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(32), default="uploaded")
    fhir_status: Mapped[str] = mapped_column(String(32), default="pending")
    extracted_text: Mapped[str | None] = mapped_column(Text)
    entities: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    extracted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error_class: Mapped[str | None] = mapped_column(String(100))
    fhir_error_class: Mapped[str | None] = mapped_column(String(100))
    fhir_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # A FHIR sweep claims a document (owner + lease) before its LLM call so concurrent sweeps skip it.
    fhir_lease_owner: Mapped[str | None] = mapped_column(String(64))
    fhir_lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OcrJob(TimestampsMixin, Base):
    __tablename__ = "ocr_jobs"
    __table_args__ = (
        CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in OCR_STATUSES) + ")", name="status_known"),
        Index("ix_ocr_jobs_status_started_at", "status", "started_at"),
    )

    id: Mapped[str] = str_pk("ocr")
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(32), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error_class: Mapped[str | None] = mapped_column(String(100))


class FhirResource(CreatedAtMixin, Base):
    __tablename__ = "fhir_resources"
    __table_args__ = (UniqueConstraint("document_id", "fingerprint", name="uq_fhir_resources_document_fingerprint"),)

    id: Mapped[str] = str_pk("fhir")
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    fhir_version: Mapped[str] = mapped_column(String(16))
    resource: Mapped[dict[str, Any]] = mapped_column(JSONType)
    fingerprint: Mapped[str] = mapped_column(String(64))


class Event(CreatedAtMixin, Base):
    __tablename__ = "events"

    id: Mapped[int] = int_pk()
    case_id: Mapped[str | None] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(64), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    dedup_key: Mapped[str] = mapped_column(String(255), unique=True)


class Consent(TimestampsMixin, Base):
    __tablename__ = "consents"

    id: Mapped[str] = str_pk("cons")
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Notification(CreatedAtMixin, Base):
    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_user_unread", "user_id", "read_at", "digested_at"),)

    id: Mapped[int] = int_pk()
    user_id: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    case_id: Mapped[str | None] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200))
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    digested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ExchangeRate(CreatedAtMixin, Base):
    __tablename__ = "exchange_rates"
    __table_args__ = (UniqueConstraint("date", "base", "quote", name="uq_exchange_rates_date_base_quote"),)

    id: Mapped[int] = int_pk()
    date: Mapped[date] = mapped_column(Date)
    base: Mapped[str] = mapped_column(String(3))
    quote: Mapped[str] = mapped_column(String(3))
    rate: Mapped[Decimal] = mapped_column(Numeric(20, 10))
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime)


class EmailOutbox(TimestampsMixin, Base):
    """One row per email; ``dedup_key`` makes "send this reminder" idempotent (transactional outbox)."""

    __tablename__ = "email_outbox"
    __table_args__ = (Index("ix_email_outbox_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[int] = int_pk()
    dedup_key: Mapped[str] = mapped_column(String(255), unique=True)
    template: Mapped[str] = mapped_column(String(64))
    to_address: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(300))
    body_text: Mapped[str] = mapped_column(Text)
    body_html: Mapped[str | None] = mapped_column(Text)
    # pending → sent | failed (permanent) ; a send in flight holds a lease so two senders never both send.
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(200))
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
