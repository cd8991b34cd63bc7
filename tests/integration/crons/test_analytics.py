"""analytics-refresh: views populated from the source tables; overlapping refreshes are skipped."""

from __future__ import annotations

import threading
from datetime import date, timedelta

from sqlalchemy import text

from curaway.db import create_db_engine, transaction
from curaway.models import Case, Document, RunLedger, Tenant
from curaway.repositories.crons import ANALYTICS_LOCK_KEY, ANALYTICS_VIEWS, analytics_rows
from curaway.tasks.crons import analytics_refresh
from tests.support.crons_context import RecordingLog

from .conftest import NOW


def _world(session_factory):
    with transaction(session_factory) as s:
        s.add(Tenant(id="ten_a", name="A", slug="a"))
        s.add(Tenant(id="ten_b", name="B", slug="b"))
        s.flush()
        for i, (tenant, status, age) in enumerate(
            [("ten_a", "intake", 0), ("ten_a", "intake", 0), ("ten_a", "closed", 1), ("ten_b", "intake", 1)]
        ):
            s.add(Case(id=f"case_{i}", tenant_id=tenant, status=status, created_at=NOW - timedelta(days=age)))
        s.flush()
        s.add(Document(id="doc_1", case_id="case_0", status="extracted", fhir_status="pending"))
        s.add(Document(id="doc_2", case_id="case_0", status="extracted", fhir_status="complete"))
        s.add(Document(id="doc_3", case_id="case_1", status="extracted", fhir_status="pending"))
        for i, status in enumerate(["succeeded", "succeeded", "failed"]):
            s.add(
                RunLedger(
                    run_key=f"intake-reminders@{i}",
                    task="intake-reminders",
                    status=status,
                    attempts=i + 1,
                    started_at=NOW,
                    finished_at=NOW + timedelta(seconds=2 * (i + 1)),
                    created_at=NOW,
                )
            )


def test_refresh_populates_every_view_and_reflects_changes(ctx_for, session_factory, database_url):
    _world(session_factory)
    first = analytics_refresh(ctx_for("analytics-refresh"), {})
    assert first.status == "succeeded"
    assert set(first.data["refreshed"]) == set(ANALYTICS_VIEWS)
    if database_url.startswith("postgres"):
        # A second refresh may be CONCURRENTLY (populated views with unique indexes).
        assert analytics_refresh(ctx_for("analytics-refresh"), {}).data["concurrent"] == dict.fromkeys(
            ANALYTICS_VIEWS, True
        )
    with transaction(session_factory) as s:
        funnel = analytics_rows(s, "analytics_case_funnel")
        pipeline = analytics_rows(s, "analytics_document_pipeline")
        health = analytics_rows(s, "analytics_task_health")
    as_day = lambda v: v if isinstance(v, date) else date.fromisoformat(str(v))  # noqa: E731
    assert {(r["tenant_id"], r["status"], as_day(r["day"]), r["cases"]) for r in funnel} == {
        ("ten_a", "intake", NOW.date(), 2),
        ("ten_a", "closed", NOW.date() - timedelta(days=1), 1),
        ("ten_b", "intake", NOW.date() - timedelta(days=1), 1),
    }
    assert {(r["status"], r["fhir_status"], r["documents"]) for r in pipeline} == {
        ("extracted", "pending", 2),
        ("extracted", "complete", 1),
    }
    by_outcome = {r["outcome"]: r for r in health}
    assert by_outcome["succeeded"]["runs"] == 2 and by_outcome["failed"]["runs"] == 1
    assert round(float(by_outcome["succeeded"]["avg_duration_s"]), 3) == 3.0
    assert by_outcome["failed"]["max_attempts"] == 3

    with transaction(session_factory) as s:
        s.get(Document, "doc_1").fhir_status = "complete"
    analytics_refresh(ctx_for("analytics-refresh"), {})
    with transaction(session_factory) as s:
        pipeline = analytics_rows(s, "analytics_document_pipeline")
    assert {(r["status"], r["fhir_status"], r["documents"]) for r in pipeline} == {
        ("extracted", "pending", 1),
        ("extracted", "complete", 2),
    }


def test_overlapping_refresh_is_skipped(ctx_for, session_factory, database_url):
    _world(session_factory)
    if database_url.startswith("postgres"):
        holder = create_db_engine(database_url)
        try:
            with holder.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ANALYTICS_LOCK_KEY})
                try:
                    skipped = analytics_refresh(ctx_for("analytics-refresh"), {})
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ANALYTICS_LOCK_KEY})
                    conn.commit()
        finally:
            holder.dispose()
        assert skipped.status == "skipped"
        assert analytics_refresh(ctx_for("analytics-refresh"), {}).status == "succeeded"
        return

    # SQLite: two refreshes start while another writer holds the lock; one rebuilds, the other is skipped.
    log = RecordingLog()
    both_waiting = log.waiter("analytics.lock_wait", count=2)
    results = []
    with transaction(session_factory) as blocker:  # BEGIN IMMEDIATE: holds the write lock
        blocker.execute(text("SELECT 1"))
        threads = [
            threading.Thread(
                target=lambda: results.append(analytics_refresh(ctx_for("analytics-refresh", log=log), {}))
            )
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        assert both_waiting.wait(timeout=10)
    for t in threads:
        t.join(timeout=60)
    assert sorted(r.status for r in results) == ["skipped", "succeeded"]
    # Sequential refreshes are not overlaps: both run.
    assert analytics_refresh(ctx_for("analytics-refresh"), {}).status == "succeeded"
    assert analytics_refresh(ctx_for("analytics-refresh"), {}).status == "succeeded"
