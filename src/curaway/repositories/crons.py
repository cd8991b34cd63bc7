"""Data access for the six cron handlers: the email outbox, events, stuck cases, consents, notifications,
exchange rates, stale OCR jobs and uploads, and the analytics views.

Idempotency lives in the database: ``email_outbox.dedup_key`` and ``events.dedup_key`` are unique, claims are
conditional UPDATEs (a row is only moved by the caller that saw it in the expected state), and candidate rows are
selected ``FOR UPDATE SKIP LOCKED`` on Postgres (SQLite's ``BEGIN IMMEDIATE`` already serialises writers), so two
concurrent runs never act on one row twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from curaway.clock import ensure_utc
from curaway.db import rowcount
from curaway.models import (
    Case,
    Consent,
    Document,
    EmailOutbox,
    Event,
    ExchangeRate,
    Notification,
    OcrJob,
    Upload,
    User,
)
from curaway.models.base import UTCDateTime

# -- generic ------------------------------------------------------------------------------------------------


def dialect_name(session: Session) -> str:
    return session.get_bind().dialect.name


def database_now(session: Session) -> datetime:
    """The database's clock (tz-aware UTC): Postgres ``now()`` (transaction start), SQLite's ``'now'``."""
    if dialect_name(session) == "postgresql":
        value = session.execute(text("SELECT now()")).scalar_one()
        return ensure_utc(value)
    raw = session.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one()
    return datetime.fromisoformat(str(raw)).replace(tzinfo=UTC)


def _insert_once(session: Session, row: Any) -> bool:
    """Add ``row`` inside a savepoint; ``False`` when a unique key already exists (nothing written)."""
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        return False
    return True


@dataclass(frozen=True)
class QueuedEmail:
    dedup_key: str
    template: str
    to_address: str
    subject: str
    body_text: str
    body_html: str | None


def queue_email_with_event(
    session: Session,
    *,
    email: QueuedEmail,
    event_type: str | None,
    case_id: str | None,
    event_payload: dict[str, Any],
    now: datetime,
) -> bool:
    """Write the outbox row and (optionally) its ``events`` row atomically; ``False`` if either key exists.

    Both rows carry the same ``dedup_key``; one savepoint covers both, so either both exist or neither does.
    """
    try:
        with session.begin_nested():
            session.add(
                EmailOutbox(
                    dedup_key=email.dedup_key,
                    template=email.template,
                    to_address=email.to_address,
                    subject=email.subject,
                    body_text=email.body_text,
                    body_html=email.body_html,
                    status="pending",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
            )
            if event_type is not None:
                session.add(
                    Event(
                        case_id=case_id,
                        type=event_type,
                        payload=event_payload,
                        dedup_key=email.dedup_key,
                        created_at=now,
                    )
                )
            session.flush()
    except IntegrityError:
        return False
    return True


# -- email outbox delivery ----------------------------------------------------------------------------------

OUTBOX_MAX_ATTEMPTS = 8
OUTBOX_BACKOFF_BASE_S = 60.0
OUTBOX_BACKOFF_MAX_S = 6 * 3600.0


def outbox_backoff_s(attempts: int) -> float:
    """Wait after the ``attempts``-th failed attempt (1-based): 1 min, 2, 4, … capped at 6 h."""
    return float(min(OUTBOX_BACKOFF_MAX_S, OUTBOX_BACKOFF_BASE_S * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class OutboxItem:
    id: int
    dedup_key: str
    template: str
    to_address: str
    subject: str
    body_text: str
    body_html: str | None
    attempts: int
    lease_expires_at: datetime


def cancel_stale_reminders(session: Session, *, now: datetime) -> int:
    """Cancel unsent intake reminders whose case is no longer stuck in the same episode (it left intake, or the
    patient wrote again) — a reminder waiting for a retry must not reach a patient who has since replied."""
    pending = session.scalars(
        select(EmailOutbox).where(
            EmailOutbox.template == "intake_reminder",
            EmailOutbox.status == "pending",
            or_(EmailOutbox.lease_expires_at.is_(None), EmailOutbox.lease_expires_at <= now),
        )
    ).all()
    cancelled = 0
    for row in pending:
        # Key: intake-reminder:{case_id}:{episode}:{window} (episode = last patient message, epoch seconds).
        parts = row.dedup_key.split(":")
        if len(parts) != 4:
            continue
        case = session.get(Case, parts[1])
        episode = int(case.last_message_at.timestamp()) if case and case.last_message_at else None
        if case is not None and case.status == "intake" and str(episode) == parts[2]:
            continue
        result = session.execute(
            update(EmailOutbox)
            .where(EmailOutbox.id == row.id, EmailOutbox.status == "pending")
            .values(status="cancelled", last_error="case_no_longer_stuck", updated_at=now)
            .execution_options(synchronize_session=False)
        )
        cancelled += rowcount(result)
    return cancelled


def claim_due_emails(
    session: Session,
    *,
    now: datetime,
    lease_s: float,
    limit: int,
    templates: Sequence[str] | None = None,
) -> list[OutboxItem]:
    """Lease up to ``limit`` due, pending rows (oldest first). A leased row is invisible to other senders."""
    lease_until = now + timedelta(seconds=lease_s)
    conditions = [
        EmailOutbox.status == "pending",
        or_(EmailOutbox.next_attempt_at.is_(None), EmailOutbox.next_attempt_at <= now),
        or_(EmailOutbox.lease_expires_at.is_(None), EmailOutbox.lease_expires_at <= now),
    ]
    if templates:
        conditions.append(EmailOutbox.template.in_(list(templates)))
    rows = session.scalars(
        select(EmailOutbox).where(*conditions).order_by(EmailOutbox.id).limit(limit).with_for_update(skip_locked=True)
    ).all()
    claimed: list[OutboxItem] = []
    for row in rows:
        # Conditional: only moves a row still unleased (belt and braces next to the row lock).
        result = session.execute(
            update(EmailOutbox)
            .where(
                EmailOutbox.id == row.id,
                EmailOutbox.status == "pending",
                or_(EmailOutbox.lease_expires_at.is_(None), EmailOutbox.lease_expires_at <= now),
            )
            .values(lease_expires_at=lease_until, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if rowcount(result) == 1:
            claimed.append(
                OutboxItem(
                    id=row.id,
                    dedup_key=row.dedup_key,
                    template=row.template,
                    to_address=row.to_address,
                    subject=row.subject,
                    body_text=row.body_text,
                    body_html=row.body_html,
                    attempts=row.attempts,
                    lease_expires_at=lease_until,
                )
            )
    return claimed


def mark_email_sent(session: Session, *, email_id: int, provider_message_id: str, now: datetime) -> bool:
    """``pending`` → ``sent`` (never back). ``False`` when the row was no longer pending."""
    result = session.execute(
        update(EmailOutbox)
        .where(EmailOutbox.id == email_id, EmailOutbox.status == "pending")
        .values(
            status="sent",
            sent_at=now,
            provider_message_id=provider_message_id[:255],
            attempts=EmailOutbox.attempts + 1,
            lease_expires_at=None,
            next_attempt_at=None,
            last_error=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


def mark_email_failed(
    session: Session,
    *,
    email_id: int,
    error_code: str,
    now: datetime,
    permanent: bool,
    max_attempts: int = OUTBOX_MAX_ATTEMPTS,
) -> str | None:
    """Record one failed attempt. Returns the new status (``pending`` with backoff, or ``failed``)."""
    row = session.get(EmailOutbox, email_id, with_for_update=True)
    if row is None or row.status != "pending":
        return None
    attempts = row.attempts + 1
    final = permanent or attempts >= max_attempts
    row.attempts = attempts
    row.last_error = error_code[:200]
    row.lease_expires_at = None
    row.updated_at = now
    if final:
        row.status = "failed"
        row.next_attempt_at = None
    else:
        row.next_attempt_at = now + timedelta(seconds=outbox_backoff_s(attempts))
    session.flush()
    return row.status


def release_email_leases(session: Session, *, email_ids: Iterable[int], now: datetime) -> int:
    """Give back leases of rows that were claimed but never attempted (e.g. the sender is shutting down)."""
    ids = list(email_ids)
    if not ids:
        return 0
    result = session.execute(
        update(EmailOutbox)
        .where(EmailOutbox.id.in_(ids), EmailOutbox.status == "pending")
        .values(lease_expires_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result)


def outbox_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(EmailOutbox.status, func.count()).group_by(EmailOutbox.status)).all()
    return {str(status): int(count) for status, count in rows}


# -- intake reminders ---------------------------------------------------------------------------------------

REMINDER_EVENT = "reminder_sent"


def stuck_intake_cases(
    session: Session, *, older_than: datetime, limit: int, after_id: str | None = None
) -> list[Case]:
    """Cases in ``intake`` whose last patient message is older than ``older_than``; rows locked (SKIP LOCKED)."""
    query = select(Case).where(
        Case.status == "intake",
        Case.last_message_at.is_not(None),
        Case.last_message_at < older_than,
    )
    if after_id is not None:
        query = query.where(Case.id > after_id)
    return list(session.scalars(query.order_by(Case.id).limit(limit).with_for_update(skip_locked=True)).all())


def event_exists(session: Session, *, dedup_key: str) -> bool:
    return session.scalar(select(Event.id).where(Event.dedup_key == dedup_key)) is not None


def count_events_with_prefix(session: Session, *, prefix: str) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(Event).where(Event.dedup_key.startswith(prefix, autoescape=True))
        )
        or 0
    )


def last_event_at(session: Session, *, case_id: str, event_type: str) -> datetime | None:
    value = session.scalar(select(func.max(Event.created_at)).where(Event.case_id == case_id, Event.type == event_type))
    if value is None:
        return None
    if isinstance(value, str):  # SQLite aggregates lose the column type
        value = datetime.fromisoformat(value)
    return ensure_utc(value)


# -- consents -----------------------------------------------------------------------------------------------

CONSENT_EVENT = "consent_expiry_warning"


def consents_expiring(session: Session, *, now: datetime, until: datetime, limit: int) -> list[tuple[Consent, Case]]:
    """Active consents with ``now < expires_at <= until``, with their case; consent rows locked (SKIP LOCKED)."""
    rows = session.execute(
        select(Consent, Case)
        .join(Case, Case.id == Consent.case_id)
        .where(Consent.revoked_at.is_(None), Consent.expires_at > now, Consent.expires_at <= until)
        .order_by(Consent.expires_at, Consent.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=Consent)
    ).all()
    return [(consent, case) for consent, case in rows]


# -- notifications ------------------------------------------------------------------------------------------


def users_with_pending_notifications(session: Session, *, limit: int, after_id: str | None = None) -> list[User]:
    """Live users with an email and at least one unread, undigested notification."""
    pending = (
        select(Notification.id)
        .where(Notification.user_id == User.id, Notification.read_at.is_(None), Notification.digested_at.is_(None))
        .exists()
    )
    query = select(User).where(User.deleted_at.is_(None), User.email.is_not(None), pending)
    if after_id is not None:
        query = query.where(User.id > after_id)
    return list(session.scalars(query.order_by(User.id).limit(limit)).all())


def pending_notifications(session: Session, *, user_id: str, created_until: datetime) -> list[Notification]:
    """Unread, undigested notifications of one user, locked (SKIP LOCKED) so a concurrent digest sees none."""
    return list(
        session.scalars(
            select(Notification)
            .where(
                Notification.user_id == user_id,
                Notification.read_at.is_(None),
                Notification.digested_at.is_(None),
                Notification.created_at <= created_until,
            )
            .order_by(Notification.created_at, Notification.id)
            .with_for_update(skip_locked=True)
        ).all()
    )


def mark_notifications_digested(session: Session, *, ids: Sequence[int], now: datetime) -> int:
    if not ids:
        return 0
    result = session.execute(
        update(Notification)
        .where(Notification.id.in_(list(ids)), Notification.digested_at.is_(None))
        .values(digested_at=now)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result)


# -- exchange rates -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredRates:
    base: str
    date: date
    rates: dict[str, Decimal]
    fetched_at: datetime | None


def latest_rates(session: Session, *, base: str) -> StoredRates | None:
    latest = session.scalar(select(func.max(ExchangeRate.date)).where(ExchangeRate.base == base))
    if latest is None:
        return None
    if isinstance(latest, str):
        latest = date.fromisoformat(latest)
    rows = session.scalars(select(ExchangeRate).where(ExchangeRate.base == base, ExchangeRate.date == latest)).all()
    fetched = max((r.fetched_at for r in rows), default=None)
    return StoredRates(base=base, date=latest, rates={r.quote: Decimal(r.rate) for r in rows}, fetched_at=fetched)


def upsert_rates(session: Session, *, base: str, on: date, rates: dict[str, Decimal], fetched_at: datetime) -> int:
    """Insert or update ``(date, base, quote)`` rows in one statement per row; returns the rows written."""
    if not rates:
        return 0
    values = [
        {"date": on, "base": base, "quote": quote, "rate": rate, "fetched_at": fetched_at, "created_at": fetched_at}
        for quote, rate in sorted(rates.items())
    ]
    insert_fn = pg_insert if dialect_name(session) == "postgresql" else sqlite_insert
    stmt = insert_fn(ExchangeRate).values(values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["date", "base", "quote"],
        set_={"rate": stmt.excluded.rate, "fetched_at": stmt.excluded.fetched_at},
    )
    session.execute(stmt)
    return len(values)


def touch_rates(session: Session, *, base: str, on: date, fetched_at: datetime) -> int:
    """Record that the stored rates for ``on`` were confirmed unchanged at ``fetched_at`` (freshness)."""
    result = session.execute(
        update(ExchangeRate)
        .where(ExchangeRate.base == base, ExchangeRate.date == on)
        .values(fetched_at=fetched_at)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result)


@dataclass(frozen=True)
class RatesFreshness:
    """What readiness reports: the newest rate date and when the source last confirmed it."""

    base: str
    latest_date: date | None
    fetched_at: datetime | None
    quotes: int

    def age_s(self, now: datetime) -> float | None:
        if self.fetched_at is None:
            return None
        return max(0.0, (now - self.fetched_at).total_seconds())

    def is_stale(self, now: datetime, *, max_age: timedelta) -> bool:
        age = self.age_s(now)
        return age is None or age > max_age.total_seconds()


def exchange_rate_freshness(session: Session, *, base: str) -> RatesFreshness:
    """Freshness of the stored rates for ``base`` (no rows → everything ``None``; treat as stale)."""
    stored = latest_rates(session, base=base.upper())
    if stored is None:
        return RatesFreshness(base=base.upper(), latest_date=None, fetched_at=None, quotes=0)
    return RatesFreshness(
        base=stored.base, latest_date=stored.date, fetched_at=stored.fetched_at, quotes=len(stored.rates)
    )


# -- stale sessions -----------------------------------------------------------------------------------------


def stale_ocr_jobs(session: Session, *, started_before: datetime, limit: int) -> list[OcrJob]:
    started = func.coalesce(OcrJob.started_at, OcrJob.updated_at)
    return list(
        session.scalars(
            select(OcrJob)
            .where(OcrJob.status == "processing", started < started_before)
            .order_by(OcrJob.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
    )


def fail_ocr_job(session: Session, *, job_id: str, now: datetime, error_class: str) -> bool:
    result = session.execute(
        update(OcrJob)
        .where(OcrJob.id == job_id, OcrJob.status == "processing")
        .values(status="failed", finished_at=now, error_class=error_class, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


def fail_document_for_ocr(session: Session, *, document_id: str, now: datetime, error_class: str) -> bool:
    """Mark a document whose OCR never finished as failed (only if it is still waiting on extraction)."""
    result = session.execute(
        update(Document)
        .where(Document.id == document_id, Document.status.in_(("queued", "extracting")))
        .values(status="failed", error_class=error_class, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


def orphan_uploads(session: Session, *, created_before: datetime, limit: int) -> list[Upload]:
    return list(
        session.scalars(
            select(Upload)
            .where(Upload.confirmed_at.is_(None), Upload.deleted_at.is_(None), Upload.created_at < created_before)
            .order_by(Upload.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
    )


def soft_delete_upload(session: Session, *, upload_id: str, now: datetime) -> bool:
    result = session.execute(
        update(Upload)
        .where(Upload.id == upload_id, Upload.confirmed_at.is_(None), Upload.deleted_at.is_(None))
        .values(deleted_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


def restore_upload(session: Session, *, upload_id: str, deleted_at: datetime) -> bool:
    """Undo :func:`soft_delete_upload` (its stored file could not be deleted; the next run tries again)."""
    result = session.execute(
        update(Upload)
        .where(Upload.id == upload_id, Upload.deleted_at == deleted_at)
        .values(deleted_at=None)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


# -- analytics ----------------------------------------------------------------------------------------------

ANALYTICS_VIEWS = ("analytics_case_funnel", "analytics_document_pipeline", "analytics_task_health")
ANALYTICS_LOCK_KEY = 7_411_020_301  # pg advisory lock id for analytics-refresh (any stable bigint)

analytics_metadata = MetaData()
analytics_refresh_state = Table(
    "analytics_refresh_state",
    analytics_metadata,
    Column("name", String(64), primary_key=True),
    Column("generation", Integer, nullable=False),
    Column("refreshed_at", UTCDateTime),
)

# The SELECTs behind each view, per dialect. The 0002 migration holds a frozen copy of these (a unit test checks
# they agree); change them only together with a new migration.
ANALYTICS_SQL: dict[str, dict[str, str]] = {
    "postgresql": {
        "analytics_case_funnel": (
            "SELECT tenant_id, status, (created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS cases "
            "FROM cases GROUP BY tenant_id, status, (created_at AT TIME ZONE 'UTC')::date"
        ),
        "analytics_document_pipeline": (
            "SELECT status, fhir_status, count(*) AS documents, max(updated_at) AS last_updated_at "
            "FROM documents GROUP BY status, fhir_status"
        ),
        "analytics_task_health": (
            "SELECT task, status AS outcome, "
            "(coalesce(finished_at, started_at, created_at) AT TIME ZONE 'UTC')::date AS day, "
            "count(*) AS runs, "
            "avg(EXTRACT(EPOCH FROM (finished_at - started_at))) AS avg_duration_s, "
            "max(attempts) AS max_attempts "
            "FROM run_ledger "
            "GROUP BY task, status, (coalesce(finished_at, started_at, created_at) AT TIME ZONE 'UTC')::date"
        ),
    },
    "sqlite": {
        "analytics_case_funnel": (
            "SELECT tenant_id, status, date(created_at) AS day, count(*) AS cases "
            "FROM cases GROUP BY tenant_id, status, date(created_at)"
        ),
        "analytics_document_pipeline": (
            "SELECT status, fhir_status, count(*) AS documents, max(updated_at) AS last_updated_at "
            "FROM documents GROUP BY status, fhir_status"
        ),
        "analytics_task_health": (
            "SELECT task, status AS outcome, date(coalesce(finished_at, started_at, created_at)) AS day, "
            "count(*) AS runs, "
            "avg((julianday(finished_at) - julianday(started_at)) * 86400.0) AS avg_duration_s, "
            "max(attempts) AS max_attempts "
            "FROM run_ledger GROUP BY task, status, date(coalesce(finished_at, started_at, created_at))"
        ),
    },
}

ANALYTICS_COLUMNS: dict[str, tuple[str, ...]] = {
    "analytics_case_funnel": ("tenant_id", "status", "day", "cases"),
    "analytics_document_pipeline": ("status", "fhir_status", "documents", "last_updated_at"),
    "analytics_task_health": ("task", "outcome", "day", "runs", "avg_duration_s", "max_attempts"),
}


@dataclass(frozen=True)
class AnalyticsRefresh:
    views: dict[str, int]  # view → rows after the refresh
    concurrent: dict[str, bool]  # Postgres: whether CONCURRENTLY was used (False on the first population)
    generation: int


def analytics_generation(engine: Engine) -> int:
    """The refresh generation, read *without* taking SQLite's write lock (raw autocommit read under WAL)."""
    if engine.dialect.name != "sqlite":
        with engine.connect() as conn:
            value = conn.execute(
                select(analytics_refresh_state.c.generation).where(analytics_refresh_state.c.name == "all")
            ).scalar()
            conn.rollback()
        return int(value or 0)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SELECT generation FROM analytics_refresh_state WHERE name = 'all'")
        row = cursor.fetchone()
        cursor.close()
        return int(row[0]) if row else 0
    finally:
        raw.close()


def _current_generation(session: Session) -> int:
    value = session.scalar(select(analytics_refresh_state.c.generation).where(analytics_refresh_state.c.name == "all"))
    return int(value or 0)


def _bump_generation(session: Session, *, now: datetime) -> int:
    generation = _current_generation(session) + 1
    result = session.execute(
        update(analytics_refresh_state)
        .where(analytics_refresh_state.c.name == "all")
        .values(generation=generation, refreshed_at=now)
    )
    if rowcount(result) == 0:
        session.execute(analytics_refresh_state.insert().values(name="all", generation=generation, refreshed_at=now))
    return generation


def _view_counts(session: Session) -> dict[str, int]:
    return {v: int(session.scalar(text(f"SELECT count(*) FROM {v}")) or 0) for v in ANALYTICS_VIEWS}


def refresh_analytics_postgres(session: Session, *, now: datetime) -> AnalyticsRefresh | None:
    """In the caller's transaction: take the advisory xact lock or return ``None`` (another refresh runs)."""
    got = session.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": ANALYTICS_LOCK_KEY}).scalar()
    if not got:
        return None
    concurrent: dict[str, bool] = {}
    for view in ANALYTICS_VIEWS:
        populated = session.execute(
            text("SELECT ispopulated FROM pg_matviews WHERE matviewname = :name"), {"name": view}
        ).scalar()
        if populated is None:
            raise LookupError(f"materialized view {view} is missing (run the migrations)")
        # The first refresh of a WITH NO DATA view cannot be CONCURRENTLY.
        session.execute(text(f"REFRESH MATERIALIZED VIEW {'CONCURRENTLY ' if populated else ''}{view}"))
        concurrent[view] = bool(populated)
    generation = _bump_generation(session, now=now)
    return AnalyticsRefresh(views=_view_counts(session), concurrent=concurrent, generation=generation)


def refresh_analytics_sqlite(session: Session, *, now: datetime, seen_generation: int) -> AnalyticsRefresh | None:
    """In the caller's (``BEGIN IMMEDIATE``) transaction: rebuild every table, unless another refresh committed
    since ``seen_generation`` was read (it overlapped with us, so ours is skipped: ``None``)."""
    if _current_generation(session) != seen_generation:
        return None
    for view in ANALYTICS_VIEWS:
        columns = ", ".join(ANALYTICS_COLUMNS[view])
        session.execute(text(f"DELETE FROM {view}"))
        session.execute(text(f"INSERT INTO {view} ({columns}) {ANALYTICS_SQL['sqlite'][view]}"))
    generation = _bump_generation(session, now=now)
    return AnalyticsRefresh(views=_view_counts(session), concurrent={}, generation=generation)


def analytics_rows(session: Session, view: str) -> list[dict[str, Any]]:
    if view not in ANALYTICS_VIEWS:
        raise ValueError(f"unknown analytics view {view}")
    columns = ", ".join(ANALYTICS_COLUMNS[view])
    result = session.execute(text(f"SELECT {columns} FROM {view} ORDER BY {columns}"))
    return [dict(row._mapping) for row in result]
