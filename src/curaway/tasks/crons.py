"""The six cron handlers (registry: ``curaway.schedules.SCHEDULES``), each real, idempotent work.

Every handler answers with a summary of what it did. Time comes from ``ctx.clock`` (except stale-session-cleanup,
which judges staleness by the database clock); I/O goes through ``ctx.integrations``; transactions are short and
never span an HTTP or SMTP call. Effects that must not repeat carry unique keys in the database:

==========================  ==========================================================================
effect                      key
==========================  ==========================================================================
intake reminder             ``intake-reminder:{case_id}:{episode}:{window}`` (``email_outbox`` + ``events``)
consent expiry warning      ``consent-expiry:{consent_id}:{expires_on}`` (``email_outbox`` + ``events``)
notification digest         ``digest:{user_id}:{day}`` (``email_outbox``)
exchange rates              ``exchange_rates (date, base, quote)``
==========================  ==========================================================================
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from curaway.db import engine_of
from curaway.errors import PermanentError, RetryableError, ValidationFailed
from curaway.integrations.rates import RatesClient, RatesInvalid, RatesSnapshot, build_rates_client
from curaway.integrations.storage import Storage, build_storage
from curaway.integrations.templates import render
from curaway.repositories import crons as repo
from curaway.repositories.webhooks import INBOX_RETENTION, prune_inbox
from curaway.tasks.base import Result, TaskContext
from curaway.tasks.cron_outbox import deliver_due

# -- exchange-rate-refresh ----------------------------------------------------------------------------------


def _fetch_rates(ctx: TaskContext, base: str, quotes: list[str]) -> RatesSnapshot:
    """Through the injected client, else a Frankfurter client built from settings (and closed after use)."""
    client: RatesClient | None = ctx.integrations.rates
    if client is not None:
        return client.latest(base, quotes)
    with build_rates_client(ctx.settings) as owned:
        return owned.latest(base, quotes)


def exchange_rate_refresh(ctx: TaskContext, payload: dict[str, Any]) -> Result:
    """Fetch the latest rates for ``CURAWAY_FX_BASE`` against ``CURAWAY_FX_CURRENCIES`` and upsert them, all or nothing.

    The HTTP call happens before any transaction. Garbage → ``RatesInvalid`` (permanent), API down →
    ``RatesUnavailable`` (retryable); in both cases the stored rates are untouched. The same date with the same
    rates (weekends, holidays) writes no rate and only records the confirmation time used for freshness.
    """
    base = ctx.settings.fx_base.upper()
    quotes = ctx.settings.fx_currency_list
    snapshot = _fetch_rates(ctx, base, quotes)
    now = ctx.clock.now()
    if snapshot.date > now.date() + timedelta(days=1):
        raise RatesInvalid("rates date lies in the future", code="rates_future_date")
    with ctx.transaction() as session:
        stored = repo.latest_rates(session, base=snapshot.base)
        if stored is not None and snapshot.date < stored.date:
            raise RatesInvalid(
                f"rates date {snapshot.date.isoformat()} is older than the stored {stored.date.isoformat()}",
                code="rates_stale_date",
            )
        fresh = {q: _quantize(v) for q, v in snapshot.rates.items()}
        unchanged = (
            stored is not None
            and snapshot.date == stored.date
            and all(q in stored.rates and _quantize(stored.rates[q]) == v for q, v in fresh.items())
        )
        if unchanged:
            repo.touch_rates(session, base=snapshot.base, on=snapshot.date, fetched_at=now)
            ctx.log.info("fx.unchanged", task=ctx.task, base=snapshot.base, date=snapshot.date.isoformat())
            return Result(
                {
                    "base": snapshot.base,
                    "date": snapshot.date.isoformat(),
                    "changed": False,
                    "rates_written": 0,
                    "quotes": sorted(fresh),
                },
                status="skipped",
            )
        written = repo.upsert_rates(session, base=snapshot.base, on=snapshot.date, rates=fresh, fetched_at=now)
    ctx.log.info("fx.updated", task=ctx.task, base=snapshot.base, date=snapshot.date.isoformat(), count=written)
    return Result(
        {
            "base": snapshot.base,
            "date": snapshot.date.isoformat(),
            "changed": True,
            "rates_written": written,
            "previous_date": stored.date.isoformat() if stored is not None else None,
            "quotes": sorted(fresh),
        }
    )


def _quantize(value: Decimal) -> Decimal:
    """Rates are stored as NUMERIC(20, 10): compare at that precision."""
    return Decimal(value).quantize(Decimal("1e-10"))


# -- intake-reminders ---------------------------------------------------------------------------------------

REMINDER_AFTER = timedelta(hours=24)
REMINDERS_PER_EPISODE = 3
PLAN_BATCH = 200
MAX_CASES_PER_RUN = 5000


def reminder_key(case_id: str, last_message_at: datetime, now: datetime) -> tuple[str, int, int]:
    """``(dedup_key, episode, window)``: the episode is the last patient message (epoch s), the window the
    number of whole 24 h periods since it (≥ 1 for a stuck case)."""
    episode = int(last_message_at.timestamp())
    window = int((now - last_message_at) // REMINDER_AFTER)
    return f"intake-reminder:{case_id}:{episode}:{window}", episode, window


def intake_reminders(ctx: TaskContext, payload: dict[str, Any]) -> Result:
    """Email patients stuck in intake > 24 h: ≤ 1 per case per 24 h, ≤ 3 per stuck episode.

    Phase 1 (short transactions, candidate cases locked ``SKIP LOCKED``): write the outbox row and the
    ``reminder_sent`` event together under one key per case and 24 h window. Phase 2: deliver due reminder rows.
    A redelivery or a concurrent trigger finds the keys taken and the rows leased or sent, so no case is emailed
    twice. ``reminders_sent`` counts the reminders delivered by this run.
    """
    now = ctx.clock.now()
    cutoff = now - REMINDER_AFTER
    counts = {"queued": 0, "already_queued": 0, "exhausted": 0, "recent": 0, "no_email": 0, "examined": 0}
    after_id: str | None = None
    while counts["examined"] < MAX_CASES_PER_RUN:
        with ctx.transaction() as session:
            cases = repo.stuck_intake_cases(session, older_than=cutoff, limit=PLAN_BATCH, after_id=after_id)
            if not cases:
                break
            for case in cases:
                counts["examined"] += 1
                counts[_plan_reminder(ctx, session, case, now)] += 1
            after_id = cases[-1].id
    with ctx.transaction() as session:
        cancelled = repo.cancel_stale_reminders(session, now=now)
    delivery = deliver_due(ctx, templates=("intake_reminder",))
    summary = {
        "reminders_sent": delivery.sent,
        "reminders_cancelled": cancelled,
        "reminders_queued": counts["queued"],
        "stuck_cases": counts["examined"],
        "skipped_already_queued": counts["already_queued"],
        "skipped_recent": counts["recent"],
        "skipped_episode_limit": counts["exhausted"],
        "skipped_no_email": counts["no_email"],
        "delivery_retry_scheduled": delivery.failed_temporary,
        "delivery_failed": delivery.failed_permanent,
    }
    ctx.log.info("intake_reminders.done", task=ctx.task, run_key=ctx.run_key, **summary)
    return Result(summary)


def _plan_reminder(ctx: TaskContext, session: Any, case: Any, now: datetime) -> str:
    if not case.patient_email:
        return "no_email"
    key, episode, window = reminder_key(case.id, case.last_message_at, now)
    if repo.event_exists(session, dedup_key=key):
        return "already_queued"  # a duplicate trigger in the same window
    sent_in_episode = repo.count_events_with_prefix(session, prefix=f"intake-reminder:{case.id}:{episode}:")
    if sent_in_episode >= REMINDERS_PER_EPISODE:
        return "exhausted"
    last = repo.last_event_at(session, case_id=case.id, event_type=repo.REMINDER_EVENT)
    if last is not None and now - last < REMINDER_AFTER:
        return "recent"
    number = sent_in_episode + 1
    rendered = render(
        "intake_reminder",
        {
            "patient_name": case.patient_name,
            "case_link": ctx.settings.endpoint_url(f"/cases/{case.id}/intake"),
            "reminder_number": number,
        },
    )
    created = repo.queue_email_with_event(
        session,
        email=repo.QueuedEmail(
            dedup_key=key,
            template="intake_reminder",
            to_address=case.patient_email,
            subject=rendered.subject,
            body_text=rendered.text,
            body_html=rendered.html,
        ),
        event_type=repo.REMINDER_EVENT,
        case_id=case.id,
        event_payload={"episode": episode, "window": window, "reminder_number": number, "run_key": ctx.run_key},
        now=now,
    )
    return "queued" if created else "already_queued"


# -- stale-session-cleanup ----------------------------------------------------------------------------------

OCR_TIMEOUT = timedelta(minutes=30)
UPLOAD_CONFIRM_WINDOW = timedelta(hours=24)
CLEANUP_BATCH = 500


def _storage(ctx: TaskContext) -> Storage:
    storage: Any = ctx.integrations.storage
    if storage is None:
        return build_storage(ctx.settings)
    return storage


def stale_session_cleanup(ctx: TaskContext, payload: dict[str, Any]) -> Result:
    """Fail OCR jobs stuck in ``processing`` > 30 min (their documents → ``failed``, ``ocr_timeout``) and delete
    uploads never confirmed within 24 h, with their stored files.

    Staleness is judged by the **database clock** (``now()`` / SQLite ``'now'``, read in the same transaction),
    so app servers with skewed clocks agree; ``ctx.clock`` is not used here. Each row moves by a conditional
    UPDATE, so a concurrent run does nothing twice. A file that cannot be deleted puts its upload back
    (``deleted_at`` cleared) and the run fails retryably, so the next attempt deletes both.
    """
    ocr_failed = documents_failed = 0
    with ctx.transaction() as session:
        db_now = repo.database_now(session)
        for job in repo.stale_ocr_jobs(session, started_before=db_now - OCR_TIMEOUT, limit=CLEANUP_BATCH):
            if repo.fail_ocr_job(session, job_id=job.id, now=db_now, error_class="ocr_timeout"):
                ocr_failed += 1
                if repo.fail_document_for_ocr(
                    session, document_id=job.document_id, now=db_now, error_class="ocr_timeout"
                ):
                    documents_failed += 1
                ctx.log.info("cleanup.ocr_job_failed", task=ctx.task, ocr_job_id=job.id, document_id=job.document_id)
    deleted: list[tuple[str, str, datetime]] = []
    with ctx.transaction() as session:
        db_now = repo.database_now(session)
        for upload in repo.orphan_uploads(session, created_before=db_now - UPLOAD_CONFIRM_WINDOW, limit=CLEANUP_BATCH):
            if repo.soft_delete_upload(session, upload_id=upload.id, now=db_now):
                deleted.append((upload.id, upload.storage_key, db_now))
    storage = _storage(ctx)
    files_deleted = files_missing = 0
    restored: list[str] = []
    for upload_id, key, deleted_at in deleted:
        try:
            if storage.delete(key):
                files_deleted += 1
            else:
                files_missing += 1
        except ValidationFailed:
            # An unsafe key can never name a stored file of ours: the row stays deleted, nothing to remove.
            files_missing += 1
            ctx.log.warning("cleanup.upload_key_invalid", task=ctx.task, upload_id=upload_id)
        except RetryableError as exc:
            with ctx.transaction() as session:
                repo.restore_upload(session, upload_id=upload_id, deleted_at=deleted_at)
            restored.append(upload_id)
            ctx.log.warning("cleanup.file_delete_failed", task=ctx.task, upload_id=upload_id, error_code=exc.code)
    inbox_pruned = _prune_webhook_inbox(ctx)
    summary = {
        "ocr_jobs_failed": ocr_failed,
        "documents_failed": documents_failed,
        "uploads_deleted": len(deleted) - len(restored),
        "files_deleted": files_deleted,
        "files_missing": files_missing,
        "uploads_restored": len(restored),
        "webhook_inbox_pruned": inbox_pruned,
    }
    ctx.log.info("cleanup.done", task=ctx.task, run_key=ctx.run_key, **summary)
    if restored:
        raise RetryableError(
            f"{len(restored)} stored upload file(s) could not be deleted; their uploads were kept for a retry",
            code="cleanup_storage_unavailable",
        )
    return Result(summary)


def _prune_webhook_inbox(ctx: TaskContext) -> int:
    """Maintenance: forget processed webhook ids older than the inbox retention (≥ 3 days; Svix retries ~28 h)."""
    with ctx.transaction() as session:
        db_now = repo.database_now(session)
        return prune_inbox(session, older_than=db_now - INBOX_RETENTION)


# -- consent-expiry-check -----------------------------------------------------------------------------------

CONSENT_WARNING_WINDOW = timedelta(days=30)


def consent_expiry_check(ctx: TaskContext, payload: dict[str, Any]) -> Result:
    """One warning (email + ``consent_expiry_warning`` event) per consent and expiry date for consents expiring
    within 30 days. A renewed consent (new ``expires_at``) gets a new key, so it is warned again for the new
    date only."""
    now = ctx.clock.now()
    queued = already = no_email = 0
    with ctx.transaction() as session:
        rows = repo.consents_expiring(session, now=now, until=now + CONSENT_WARNING_WINDOW, limit=MAX_CASES_PER_RUN)
        for consent, case in rows:
            if not case.patient_email:
                no_email += 1
                continue
            expires_on = consent.expires_at.date().isoformat()
            key = f"consent-expiry:{consent.id}:{expires_on}"
            rendered = render(
                "consent_expiry",
                {
                    "patient_name": case.patient_name,
                    "consent_kind": consent.kind,
                    "expires_on": expires_on,
                    "days_left": max(0, math.ceil((consent.expires_at - now) / timedelta(days=1))),
                },
            )
            created = repo.queue_email_with_event(
                session,
                email=repo.QueuedEmail(
                    dedup_key=key,
                    template="consent_expiry",
                    to_address=case.patient_email,
                    subject=rendered.subject,
                    body_text=rendered.text,
                    body_html=rendered.html,
                ),
                event_type=repo.CONSENT_EVENT,
                case_id=case.id,
                event_payload={"consent_id": consent.id, "expires_on": expires_on, "run_key": ctx.run_key},
                now=now,
            )
            if created:
                queued += 1
            else:
                already += 1
    delivery = deliver_due(ctx, templates=("consent_expiry",))
    summary = {
        "consents_expiring": len(rows),
        "warnings_queued": queued,
        "skipped_already_warned": already,
        "skipped_no_email": no_email,
        **delivery.as_dict(),
    }
    ctx.log.info("consent_expiry.done", task=ctx.task, run_key=ctx.run_key, **summary)
    return Result(summary)


# -- notification-digest ------------------------------------------------------------------------------------

DIGEST_MAX_ITEMS = 50


def notification_digest(ctx: TaskContext, payload: dict[str, Any]) -> Result:
    """One email per user per UTC day listing unread, undigested notifications; marks them digested.

    The outbox row (key ``digest:{user}:{day}``) and the ``digested_at`` marks commit together; a second run on
    the same day finds the key taken and leaves newer notifications for tomorrow's digest.
    """
    now = ctx.clock.now()
    day = now.date().isoformat()
    digests = already = notifications = 0
    after_id: str | None = None
    while True:
        with ctx.transaction() as session:
            users = repo.users_with_pending_notifications(session, limit=PLAN_BATCH, after_id=after_id)
            if not users:
                break
            for user in users:
                items = repo.pending_notifications(session, user_id=user.id, created_until=now)
                if not items:
                    continue
                listed = items[:DIGEST_MAX_ITEMS]
                rendered = render(
                    "notification_digest",
                    {"display_name": user.display_name, "day": day, "items": [{"title": n.title} for n in listed]},
                )
                created = repo.queue_email_with_event(
                    session,
                    email=repo.QueuedEmail(
                        dedup_key=f"digest:{user.id}:{day}",
                        template="notification_digest",
                        to_address=str(user.email),
                        subject=rendered.subject,
                        body_text=rendered.text,
                        body_html=rendered.html,
                    ),
                    event_type=None,
                    case_id=None,
                    event_payload={},
                    now=now,
                )
                if not created:
                    already += 1
                    continue
                digests += 1
                notifications += repo.mark_notifications_digested(session, ids=[n.id for n in listed], now=now)
            after_id = users[-1].id
    delivery = deliver_due(ctx, templates=("notification_digest",))
    summary = {
        "digests_queued": digests,
        "notifications_digested": notifications,
        "skipped_already_digested_today": already,
        **delivery.as_dict(),
    }
    ctx.log.info("notification_digest.done", task=ctx.task, run_key=ctx.run_key, **summary)
    return Result(summary)


# -- analytics-refresh --------------------------------------------------------------------------------------


def analytics_refresh(ctx: TaskContext, payload: dict[str, Any]) -> Result:
    """Refresh the Metabase views. Postgres: ``REFRESH MATERIALIZED VIEW CONCURRENTLY`` (plain on first
    population) under ``pg_try_advisory_xact_lock``; SQLite: rebuild the tables in one ``BEGIN IMMEDIATE``
    transaction. A refresh that overlaps another is skipped (``status="skipped"``), never run twice."""
    now = ctx.clock.now()
    engine = engine_of(ctx.session_factory)
    dialect = engine.dialect.name
    if dialect == "postgresql":
        with ctx.transaction() as session:
            try:
                outcome = repo.refresh_analytics_postgres(session, now=now)
            except LookupError as exc:
                raise PermanentError(str(exc), code="analytics_missing_view") from exc
    else:
        seen = repo.analytics_generation(engine)
        ctx.log.info("analytics.lock_wait", task=ctx.task, generation=seen)
        with ctx.transaction() as session:
            outcome = repo.refresh_analytics_sqlite(session, now=now, seen_generation=seen)
    if outcome is None:
        ctx.log.info("analytics.skipped_overlap", task=ctx.task, run_key=ctx.run_key)
        return Result({"refreshed": [], "reason": "another refresh is running"}, status="skipped")
    ctx.log.info("analytics.refreshed", task=ctx.task, run_key=ctx.run_key, generation=outcome.generation)
    return Result(
        {
            "refreshed": list(outcome.views),
            "rows": outcome.views,
            "concurrent": outcome.concurrent,
            "generation": outcome.generation,
            "dialect": dialect,
        }
    )
