"""intake-reminders: ≤ 1 per case per 24 h, ≤ 3 per stuck episode, transactional outbox, crash-safe delivery."""

from __future__ import annotations

import itertools
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from curaway.db import transaction
from curaway.integrations.email import EmailRejectedError, EmailTemporaryError, FakeEmailBackend, OutboxEmailBackend
from curaway.models import Case, EmailOutbox, Event, Tenant
from curaway.repositories.demo import load_demo
from curaway.tasks.crons import intake_reminders

from .conftest import NOW


def _tenant(session_factory):
    with transaction(session_factory) as s:
        s.add(Tenant(id="ten_t", name="T", slug="t"))


def _case(session_factory, cid, *, last_message_ago, status="intake", email=True):
    with transaction(session_factory) as s:
        s.add(
            Case(
                id=cid,
                tenant_id="ten_t",
                status=status,
                patient_name=f"Patient {cid}",
                patient_email=f"{cid}@patients.example" if email else None,
                last_message_at=NOW - last_message_ago,
                created_at=NOW - timedelta(days=10),
                updated_at=NOW - timedelta(days=10),
            )
        )


def _count(session_factory, model, *where):
    with transaction(session_factory) as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def test_only_cases_stuck_over_24h_get_one_reminder(ctx_for, session_factory, email):
    _tenant(session_factory)
    _case(session_factory, "case_over", last_message_ago=timedelta(hours=24, seconds=1))
    _case(session_factory, "case_exact", last_message_ago=timedelta(hours=24))
    _case(session_factory, "case_under", last_message_ago=timedelta(hours=23, minutes=59))
    _case(session_factory, "case_other_status", last_message_ago=timedelta(days=3), status="in_review")
    _case(session_factory, "case_no_email", last_message_ago=timedelta(days=3), email=False)

    result = intake_reminders(ctx_for("intake-reminders"), {})

    assert result.data["reminders_sent"] == 1
    assert result.data["skipped_no_email"] == 1
    assert email.recipients() == ["case_over@patients.example"]
    sent = email.sent[0]
    assert sent.html and "Patient case_over" in sent.text and sent.subject
    with transaction(session_factory) as s:
        event = s.scalars(select(Event)).one()
        assert event.type == "reminder_sent" and event.case_id == "case_over"
        row = s.scalars(select(EmailOutbox)).one()
        assert row.status == "sent" and row.dedup_key == event.dedup_key and row.attempts == 1


def test_duplicate_trigger_same_hour_sends_nothing_more(ctx_for, session_factory, email, clock):
    _tenant(session_factory)
    for i in range(5):
        _case(session_factory, f"case_{i}", last_message_ago=timedelta(days=2))
    first = intake_reminders(ctx_for("intake-reminders", run_key="intake-reminders@slot-a"), {})
    clock.advance(minutes=10)
    second = intake_reminders(ctx_for("intake-reminders", run_key="intake-reminders@manual:x"), {})
    assert first.data["reminders_sent"] == 5
    assert second.data["reminders_sent"] == 0
    assert second.data["skipped_already_queued"] + second.data["skipped_recent"] == 5
    assert len(email.sent) == 5 and len(set(email.recipients())) == 5
    assert _count(session_factory, Event) == 5
    assert _count(session_factory, EmailOutbox) == 5


def test_at_most_one_per_24h_and_three_per_episode_then_reset(ctx_for, session_factory, email, clock):
    _tenant(session_factory)
    _case(session_factory, "case_a", last_message_ago=timedelta(hours=25))
    sent_at = []
    for _hour in range(24 * 6):
        result = intake_reminders(ctx_for("intake-reminders"), {})
        if result.data["reminders_sent"]:
            sent_at.append(clock.now())
        clock.advance(hours=1)
    assert len(email.sent) == 3  # capped per episode
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert all(g >= timedelta(hours=24) for g in gaps)

    # The patient writes again: a new episode starts; the next reminder comes only after 24 h of silence.
    with transaction(session_factory) as s:
        s.get(Case, "case_a").last_message_at = clock.now()
    clock.advance(hours=23)
    intake_reminders(ctx_for("intake-reminders"), {})
    assert len(email.sent) == 3
    clock.advance(hours=1, seconds=1)
    result = intake_reminders(ctx_for("intake-reminders"), {})
    assert result.data["reminders_sent"] == 1 and len(email.sent) == 4
    assert "Reminder 1 of 3" in email.sent[-1].text


def test_crash_after_30_of_100_then_redelivery_never_sends_twice(ctx_for, session_factory, clock):
    _tenant(session_factory)
    for i in range(100):
        _case(session_factory, f"case_{i:03d}", last_message_ago=timedelta(hours=30))
    crashing = FakeEmailBackend(fail_after=30)
    with pytest.raises(RuntimeError):
        intake_reminders(ctx_for("intake-reminders", email=crashing), {})
    assert len(crashing.sent) == 30
    assert _count(session_factory, EmailOutbox) == 100  # all planned atomically with their events
    assert _count(session_factory, Event) == 100

    healthy = FakeEmailBackend()
    redelivery = intake_reminders(ctx_for("intake-reminders", email=healthy), {})
    # The message in flight at the crash keeps its lease (its fate is unknown); the rest go out now.
    assert redelivery.data["reminders_sent"] == 69
    assert redelivery.data["reminders_queued"] == 0
    clock.advance(minutes=6)  # past the lease
    later = intake_reminders(ctx_for("intake-reminders", email=healthy), {})
    assert later.data["reminders_sent"] == 1
    everyone = crashing.recipients() + healthy.recipients()
    assert len(everyone) == 100 and len(set(everyone)) == 100
    assert _count(session_factory, EmailOutbox, EmailOutbox.status == "sent") == 100
    assert _count(session_factory, Event) == 100


def test_two_concurrent_triggers_never_double_send(ctx_for, session_factory, email):
    _tenant(session_factory)
    for i in range(40):
        _case(session_factory, f"case_{i:02d}", last_message_ago=timedelta(hours=48))
    barrier = threading.Barrier(2)
    results, errors = [], []

    def run(key):
        try:
            barrier.wait(timeout=10)
            results.append(intake_reminders(ctx_for("intake-reminders", run_key=key), {}))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"intake-reminders@t{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert sum(r.data["reminders_sent"] for r in results) == 40
    assert sorted(email.recipients()) == sorted(set(email.recipients()))
    assert len(email.sent) == 40
    assert _count(session_factory, Event) == 40
    assert _count(session_factory, EmailOutbox) == 40


def test_provider_failures_are_recorded_per_message_with_backoff(ctx_for, session_factory, clock):
    _tenant(session_factory)
    for cid in ("case_ok", "case_temp", "case_perm"):
        _case(session_factory, cid, last_message_ago=timedelta(hours=30))
    backend = FakeEmailBackend(
        fail_for={
            "case_temp@patients.example": EmailTemporaryError("SMTP 451", code="smtp_451"),
            "case_perm@patients.example": EmailRejectedError("SMTP 550", code="smtp_550"),
        }
    )
    result = intake_reminders(ctx_for("intake-reminders", email=backend), {})
    assert result.data["reminders_sent"] == 1
    assert result.data["delivery_retry_scheduled"] == 1 and result.data["delivery_failed"] == 1
    with transaction(session_factory) as s:
        rows = {r.to_address.split("@")[0]: r for r in s.scalars(select(EmailOutbox))}
    assert rows["case_ok"].status == "sent"
    assert rows["case_temp"].status == "pending" and rows["case_temp"].last_error == "smtp_451"
    assert rows["case_temp"].next_attempt_at == NOW + timedelta(seconds=60)
    assert rows["case_perm"].status == "failed" and rows["case_perm"].last_error == "smtp_550"

    # Before the backoff: nothing is retried. After it: the temporary failure is retried once, the rest never.
    clock.advance(seconds=30)
    assert intake_reminders(ctx_for("intake-reminders", email=backend), {}).data["reminders_sent"] == 0
    backend.fail_for.clear()
    clock.advance(seconds=31)
    assert intake_reminders(ctx_for("intake-reminders", email=backend), {}).data["reminders_sent"] == 1
    assert sorted(backend.recipients()) == ["case_ok@patients.example", "case_temp@patients.example"]


def test_demo_data_sends_expected_reminders_into_the_outbox_files(ctx_for, session_factory, settings, clock):
    with transaction(session_factory) as s:
        load_demo(s, now=clock.now())
    outbox = OutboxEmailBackend(settings.data_dir / "outbox")
    result = intake_reminders(ctx_for("intake-reminders", email=outbox), {})
    stuck = {"case_demo_stuck_1", "case_demo_stuck_2", "case_demo_stuck_3", "case_demo_stuck_4"}
    assert result.data["reminders_sent"] == len(stuck)
    files = outbox.list_messages()
    assert len(files) == len(stuck)
    with transaction(session_factory) as s:
        cases = {e.case_id for e in s.scalars(select(Event).where(Event.type == "reminder_sent"))}
    assert cases == stuck
    again = intake_reminders(ctx_for("intake-reminders", email=outbox), {})
    assert again.data["reminders_sent"] == 0 and len(outbox.list_messages()) == len(stuck)


def test_real_smtp_failures_back_off_and_delivered_mail_is_never_resent(ctx_for, session_factory, clock):
    from curaway.integrations.email import SmtpEmailBackend
    from tests.support.crons_smtp import smtp_sink

    _tenant(session_factory)
    for cid in ("case_ok", "case_busy"):
        _case(session_factory, cid, last_message_ago=timedelta(hours=30))
    with smtp_sink() as sink:
        smtp = SmtpEmailBackend.from_url(sink.url(timeout_s=5))
        sink.handler.reply_for["case_busy@patients.example"] = "451 4.3.0 try again later"
        first = intake_reminders(ctx_for("intake-reminders", email=smtp), {})
        assert first.data["reminders_sent"] == 1 and first.data["delivery_retry_scheduled"] == 1
        with transaction(session_factory) as s:
            busy = s.scalars(select(EmailOutbox).where(EmailOutbox.to_address.startswith("case_busy"))).one()
            assert busy.last_error == "smtp_451" and busy.attempts == 1 and busy.status == "pending"
        sink.handler.reply_for.clear()
        clock.advance(minutes=2)
        second = intake_reminders(ctx_for("intake-reminders", email=smtp), {})
        assert second.data["reminders_sent"] == 1
        delivered = [r.rcpt_tos[0] for r in sink.received]
    assert sorted(delivered) == ["case_busy@patients.example", "case_ok@patients.example"]


def test_a_reminder_waiting_for_a_retry_is_cancelled_once_the_patient_replies(ctx_for, session_factory, clock):
    _tenant(session_factory)
    for cid in ("case_replies", "case_leaves", "case_still_stuck"):
        _case(session_factory, cid, last_message_ago=timedelta(hours=30))
    backend = FakeEmailBackend(
        fail_for={
            f"{cid}@patients.example": EmailTemporaryError("SMTP 451", code="smtp_451")
            for cid in ("case_replies", "case_leaves", "case_still_stuck")
        }
    )
    assert intake_reminders(ctx_for("intake-reminders", email=backend), {}).data["delivery_retry_scheduled"] == 3
    with transaction(session_factory) as s:
        s.get(Case, "case_replies").last_message_at = NOW + timedelta(seconds=30)  # the patient wrote again
        s.get(Case, "case_leaves").status = "documents_pending"
    backend.fail_for.clear()
    clock.advance(seconds=61)
    result = intake_reminders(ctx_for("intake-reminders", email=backend), {})
    assert result.data["reminders_cancelled"] == 2
    assert backend.recipients() == ["case_still_stuck@patients.example"]
    with transaction(session_factory) as s:
        states = {r.to_address.split("@")[0]: r.status for r in s.scalars(select(EmailOutbox))}
    assert states == {"case_replies": "cancelled", "case_leaves": "cancelled", "case_still_stuck": "sent"}
