"""stale-session-cleanup (by the database clock), consent-expiry-check and notification-digest."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from curaway.clock import FrozenClock
from curaway.db import transaction
from curaway.errors import RetryableError
from curaway.integrations.storage import InMemoryStorage, LocalFileStorage
from curaway.models import Case, Consent, Document, EmailOutbox, Event, Notification, OcrJob, Tenant, Upload, User
from curaway.repositories.crons import database_now
from curaway.tasks.crons import consent_expiry_check, notification_digest, stale_session_cleanup

from .conftest import NOW


def _count(session_factory, model, *where):
    with transaction(session_factory) as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def _base(session_factory):
    with transaction(session_factory) as s:
        s.add(Tenant(id="ten_t", name="T", slug="t"))
        s.flush()
        s.add(
            Case(
                id="case_a",
                tenant_id="ten_t",
                status="documents_pending",
                patient_name="Ada Demo",
                patient_email="ada@patients.example",
                last_message_at=NOW,
            )
        )
        s.add(
            Case(
                id="case_b",
                tenant_id="ten_t",
                status="in_review",
                patient_name="Bo Demo",
                patient_email="bo@patients.example",
                last_message_at=NOW,
            )
        )


# -- stale-session-cleanup ----------------------------------------------------------------------------------


class FailingStorage(InMemoryStorage):
    def delete(self, key):
        raise RetryableError("storage delete failed", code="storage_unavailable")


@pytest.fixture
def stale_world(session_factory):
    """Rows placed relative to the *database* clock, while the handler's ctx clock is frozen years away."""
    _base(session_factory)
    with transaction(session_factory) as s:
        db_now = database_now(s)
    minute = timedelta(minutes=1)
    with transaction(session_factory) as s:
        for i, (doc_status, started_ago) in enumerate(
            [("extracting", 31 * minute), ("extracting", 29 * minute), ("extracted", 3 * 60 * minute)]
        ):
            s.add(Document(id=f"doc_{i}", case_id="case_a", status=doc_status, fhir_status="pending"))
            s.flush()
            s.add(
                OcrJob(
                    id=f"ocr_{i}",
                    document_id=f"doc_{i}",
                    status="processing",
                    attempts=1,
                    started_at=db_now - started_ago,
                )
            )
        s.add(OcrJob(id="ocr_done", document_id="doc_2", status="succeeded", started_at=db_now - 600 * minute))

        def upload(uid, age, confirmed=False):
            s.add(
                Upload(
                    id=uid,
                    tenant_id="ten_t",
                    filename="f.txt",
                    content_type="text/plain",
                    size_bytes=3,
                    sha256="0" * 64,
                    storage_key=f"uploads/{uid}",
                    created_at=db_now - age,
                    updated_at=db_now - age,
                    confirmed_at=(db_now - age + minute) if confirmed else None,
                )
            )

        upload("upl_orphan", timedelta(hours=24, minutes=5))
        upload("upl_recent", timedelta(hours=23, minutes=55))
        upload("upl_confirmed", timedelta(days=3), confirmed=True)
    return db_now


def test_cleanup_uses_the_database_clock_and_does_nothing_twice(ctx_for, session_factory, settings, stale_world):
    storage = LocalFileStorage(settings.data_dir / "uploads")
    for uid in ("upl_orphan", "upl_recent", "upl_confirmed"):
        storage.put(f"uploads/{uid}", b"abc")
    far_future = FrozenClock(datetime(2031, 1, 1, tzinfo=UTC))  # would make everything stale if it were used
    ctx = ctx_for("stale-session-cleanup", clock=far_future, storage=storage)

    result = stale_session_cleanup(ctx, {})
    assert result.data["ocr_jobs_failed"] == 2  # 31 min and 3 h; not the 29 min one
    assert result.data["documents_failed"] == 1  # the extracted document is left alone
    assert result.data["uploads_deleted"] == 1 and result.data["files_deleted"] == 1
    with transaction(session_factory) as s:
        jobs = {j.id: j.status for j in s.scalars(select(OcrJob))}
        assert jobs == {"ocr_0": "failed", "ocr_1": "processing", "ocr_2": "failed", "ocr_done": "succeeded"}
        assert s.get(OcrJob, "ocr_0").error_class == "ocr_timeout"
        assert s.get(Document, "doc_0").status == "failed" and s.get(Document, "doc_0").error_class == "ocr_timeout"
        assert s.get(Document, "doc_1").status == "extracting"
        assert s.get(Document, "doc_2").status == "extracted"
        assert s.get(Upload, "upl_orphan").deleted_at is not None
        assert s.get(Upload, "upl_recent").deleted_at is None
        assert s.get(Upload, "upl_confirmed").deleted_at is None
    assert not storage.exists("uploads/upl_orphan")
    assert storage.exists("uploads/upl_recent") and storage.exists("uploads/upl_confirmed")

    again = stale_session_cleanup(ctx, {})
    assert again.data["ocr_jobs_failed"] == 0 and again.data["uploads_deleted"] == 0


def test_concurrent_cleanups_act_once(ctx_for, session_factory, stale_world):
    storage = InMemoryStorage()
    storage.put("uploads/upl_orphan", b"abc")
    barrier = threading.Barrier(2)
    results = []

    def run():
        barrier.wait(timeout=10)
        results.append(stale_session_cleanup(ctx_for("stale-session-cleanup", storage=storage), {}))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 2
    assert sum(r.data["ocr_jobs_failed"] for r in results) == 2
    assert sum(r.data["uploads_deleted"] for r in results) == 1
    assert sum(r.data["files_deleted"] for r in results) == 1


def test_storage_failure_keeps_the_upload_for_a_retry(ctx_for, session_factory, stale_world):
    with pytest.raises(RetryableError):
        stale_session_cleanup(ctx_for("stale-session-cleanup", storage=FailingStorage()), {})
    with transaction(session_factory) as s:
        assert s.get(Upload, "upl_orphan").deleted_at is None
    storage = InMemoryStorage()
    storage.put("uploads/upl_orphan", b"abc")
    result = stale_session_cleanup(ctx_for("stale-session-cleanup", storage=storage), {})
    assert result.data["uploads_deleted"] == 1 and not storage.exists("uploads/upl_orphan")


# -- consent-expiry-check -----------------------------------------------------------------------------------


def _consent(session_factory, cid, case_id, expires_in):
    with transaction(session_factory) as s:
        s.add(
            Consent(
                id=cid,
                case_id=case_id,
                kind="data_processing",
                granted_at=NOW - timedelta(days=300),
                expires_at=NOW + expires_in,
            )
        )


def test_consent_warnings_once_per_consent_and_date(ctx_for, session_factory, email, clock):
    _base(session_factory)
    _consent(session_factory, "cons_in", "case_a", timedelta(days=29, hours=23))
    _consent(session_factory, "cons_edge", "case_b", timedelta(days=30))
    _consent(session_factory, "cons_out", "case_a", timedelta(days=30, seconds=1))
    _consent(session_factory, "cons_past", "case_b", -timedelta(hours=1))
    with transaction(session_factory) as s:
        s.add(
            Consent(
                id="cons_revoked",
                case_id="case_a",
                kind="x",
                granted_at=NOW - timedelta(days=10),
                expires_at=NOW + timedelta(days=3),
                revoked_at=NOW - timedelta(days=1),
            )
        )

    first = consent_expiry_check(ctx_for("consent-expiry-check"), {})
    assert first.data["warnings_queued"] == 2 and first.data["emails_sent"] == 2
    assert sorted(email.recipients()) == ["ada@patients.example", "bo@patients.example"]
    assert "expires on" in email.sent[0].subject and email.sent[0].html

    clock.advance(days=1)
    second = consent_expiry_check(ctx_for("consent-expiry-check"), {})
    assert second.data["warnings_queued"] == 1  # cons_out entered the window; the others were warned already
    assert second.data["skipped_already_warned"] == 2
    assert len(email.sent) == 3

    # Renewal: a new expiry date is warned again (only once), once it is inside the window.
    with transaction(session_factory) as s:
        s.get(Consent, "cons_in").expires_at = clock.now() + timedelta(days=20)
    third = consent_expiry_check(ctx_for("consent-expiry-check"), {})
    fourth = consent_expiry_check(ctx_for("consent-expiry-check"), {})
    assert third.data["warnings_queued"] == 1 and fourth.data["warnings_queued"] == 0
    assert len(email.sent) == 4
    assert _count(session_factory, Event, Event.type == "consent_expiry_warning") == 4
    assert _count(session_factory, EmailOutbox) == 4


# -- notification-digest ------------------------------------------------------------------------------------


def _users_and_notifications(session_factory):
    with transaction(session_factory) as s:
        s.add(User(id="user_a", email="a@staff.example", display_name="Ann <Staff>"))
        s.add(User(id="user_b", email="b@staff.example", display_name="Ben"))
        s.add(User(id="user_gone", email="g@staff.example", deleted_at=NOW - timedelta(days=1)))
        s.add(User(id="user_noemail", email=None))
        s.flush()
        for title in ("First <thing>", "Second"):
            s.add(Notification(user_id="user_a", kind="k", title=title, created_at=NOW - timedelta(hours=3)))
        s.add(
            Notification(
                user_id="user_a",
                kind="k",
                title="Already read",
                created_at=NOW - timedelta(hours=3),
                read_at=NOW - timedelta(hours=1),
            )
        )
        s.add(Notification(user_id="user_b", kind="k", title="For Ben", created_at=NOW - timedelta(hours=2)))
        s.add(Notification(user_id="user_gone", kind="k", title="x", created_at=NOW - timedelta(hours=2)))
        s.add(Notification(user_id="user_noemail", kind="k", title="x", created_at=NOW - timedelta(hours=2)))


def test_one_digest_per_user_per_day(ctx_for, session_factory, email, clock):
    _users_and_notifications(session_factory)
    first = notification_digest(ctx_for("notification-digest"), {})
    assert first.data["digests_queued"] == 2 and first.data["notifications_digested"] == 3
    assert sorted(email.recipients()) == ["a@staff.example", "b@staff.example"]
    ann = next(m for m in email.sent if m.to == "a@staff.example")
    assert "First <thing>" in ann.text and "Second" in ann.text and "Already read" not in ann.text
    assert "First &lt;thing&gt;" in ann.html and "Ann &lt;Staff&gt;" in ann.html

    # Later the same day: a new notification waits for tomorrow; no second digest today.
    with transaction(session_factory) as s:
        s.add(Notification(user_id="user_a", kind="k", title="Third", created_at=clock.now()))
    clock.advance(hours=6)
    second = notification_digest(ctx_for("notification-digest"), {})
    assert second.data["digests_queued"] == 0 and second.data["skipped_already_digested_today"] == 1
    assert len(email.sent) == 2
    with transaction(session_factory) as s:
        third = s.scalars(select(Notification).where(Notification.title == "Third")).one()
        assert third.digested_at is None

    clock.advance(hours=12)  # next UTC day
    tomorrow = notification_digest(ctx_for("notification-digest"), {})
    assert tomorrow.data["digests_queued"] == 1 and tomorrow.data["notifications_digested"] == 1
    assert len(email.sent) == 3 and "Third" in email.sent[-1].text


def test_concurrent_digests_send_one_per_user(ctx_for, session_factory, email):
    _users_and_notifications(session_factory)
    barrier = threading.Barrier(2)
    results = []

    def run():
        barrier.wait(timeout=10)
        results.append(notification_digest(ctx_for("notification-digest"), {}))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 2
    assert sorted(email.recipients()) == ["a@staff.example", "b@staff.example"]
    assert _count(session_factory, EmailOutbox) == 2
    assert _count(session_factory, Notification, Notification.digested_at.is_not(None)) == 3


def test_cleanup_prunes_webhook_ids_past_the_retention_by_the_database_clock(ctx_for, session_factory):
    from curaway.models import WebhookInbox
    from curaway.repositories.webhooks import INBOX_RETENTION

    with transaction(session_factory) as s:
        db_now = database_now(s)
        for event_id, age in (("msg_old", INBOX_RETENTION + timedelta(hours=1)), ("msg_recent", timedelta(hours=26))):
            s.add(
                WebhookInbox(
                    source="clerk",
                    event_id=event_id,
                    event_type="user.deleted",
                    outcome="deactivated",
                    received_at=db_now - age,
                    processed_at=db_now - age,
                )
            )
    result = stale_session_cleanup(ctx_for("stale-session-cleanup", storage=InMemoryStorage()), {})
    assert result.data["webhook_inbox_pruned"] == 1
    with transaction(session_factory) as s:
        assert set(s.scalars(select(WebhookInbox.event_id))) == {"msg_recent"}  # a 26 h redelivery still dedups
