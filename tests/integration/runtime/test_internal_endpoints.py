"""The internal endpoints over HTTP: verification, run keys, and status codes as the retry protocol."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import func, select, update

from curaway.db import transaction
from curaway.errors import PermanentError, RetryableError
from curaway.models import DeadLetter, RunLedger
from tests.integration.runtime.conftest import NOW, PUBLIC_URL
from tests.support.runtime import QSTASH_CURRENT, QSTASH_NEXT, google_claims, qstash_token

TASK = "/api/v1/internal/tasks/intake-reminders"


def count(runtime, model, *where):
    with transaction(runtime.services.session_factory) as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def test_a_slot_delivered_by_every_backend_style_runs_once(runtime):
    body = b"{}"
    first = runtime.post(
        TASK,
        secret=False,
        content=body,
        headers={
            "Upstash-Signature": qstash_token(QSTASH_CURRENT, url=PUBLIC_URL + TASK, body=body, now=NOW),
            "Upstash-Message-Id": "msg_1",
            "Upstash-Retried": "0",
        },
    )
    assert first.status_code == 200, first.text
    assert first.json() == {
        "task": "intake-reminders",
        "run_key": "intake-reminders@2026-12-03T16:00:00Z",
        "status": "succeeded",
        "result": {"ran": "intake-reminders", "attempt": 0},
    }
    token = runtime.key.sign(google_claims(aud=PUBLIC_URL + TASK, now=NOW))
    scheduler = runtime.post(
        TASK,
        secret=False,
        headers={
            "Authorization": f"Bearer {token}",
            "X-CloudScheduler-JobName": "intake-reminders",
            "X-CloudScheduler-ScheduleTime": "2026-12-03T16:00:00Z",
        },
    )
    curl = runtime.post(TASK)
    qstash_again = runtime.post(
        TASK,
        secret=False,
        content=body,
        headers={
            "Upstash-Signature": qstash_token(QSTASH_NEXT, url=PUBLIC_URL + TASK, body=body, now=NOW),
            "Upstash-Message-Id": "msg_2",
        },
    )
    for response in (scheduler, curl, qstash_again):
        assert response.status_code == 200
        assert response.json()["status"] == "duplicate"
        assert response.json()["result"] == first.json()["result"]
    assert runtime.handlers.count() == 1
    # which verifier and key accepted each call is recorded (rotation telemetry)
    metrics = runtime.client.get("/metrics").text
    assert 'curaway_internal_auth_accepted_total{key_id="qstash#current",verifier="qstash"} 1.0' in metrics
    assert 'curaway_internal_auth_accepted_total{key_id="qstash#next",verifier="qstash"} 1.0' in metrics
    assert 'verifier="oidc"' in metrics


def test_next_slot_runs_again_and_force_runs_get_their_own_key(runtime):
    assert runtime.post(TASK).json()["status"] == "succeeded"
    runtime.clock.advance(hours=1)
    assert runtime.post(TASK).json()["run_key"] == "intake-reminders@2026-12-03T17:00:00Z"
    forced = runtime.post(TASK + "?force=true").json()
    assert forced["status"] == "succeeded" and "@manual:" in forced["run_key"]
    assert runtime.handlers.count() == 3


def test_running_key_answers_409_with_retry_after_and_a_crashed_lease_is_taken_over(runtime):
    runtime.handlers.release.clear()
    results = {}
    t = threading.Thread(target=lambda: results.setdefault("first", runtime.post(TASK)))
    t.start()
    assert runtime.handlers.started.wait(10)
    busy = runtime.post(TASK)
    assert busy.status_code == 409
    assert int(busy.headers["retry-after"]) >= 1
    assert busy.json()["status"] == "in_progress"
    runtime.handlers.release.set()
    t.join(10)
    assert results["first"].status_code == 200
    # A worker that crashed mid-run leaves a running row; once its lease lapses the key can be taken over.
    runtime.clock.advance(hours=1)
    with transaction(runtime.services.session_factory) as s:
        s.add(
            RunLedger(
                run_key="intake-reminders@2026-12-03T17:00:00Z",
                task="intake-reminders",
                status="running",
                attempts=1,
                owner="dead-worker",
                lease_expires_at=runtime.clock.now() + timedelta(seconds=30),
            )
        )
    assert runtime.post(TASK).status_code == 409
    runtime.clock.advance(seconds=31)
    taken = runtime.post(TASK)
    assert taken.status_code == 200 and taken.json()["status"] == "succeeded"
    with transaction(runtime.services.session_factory) as s:
        row = s.scalars(select(RunLedger).where(RunLedger.run_key == taken.json()["run_key"])).one()
        assert row.attempts == 2 and row.status == "succeeded"


def _fail_with(runtime, name, exc):
    def boom(ctx, payload):
        raise exc

    runtime.handlers.behaviour[name] = boom


def test_permanent_failure_dead_letters_2xx_except_489_for_qstash(runtime):
    _fail_with(runtime, "extract", PermanentError("document doc_404 not found", code="not_found"))
    plain = runtime.post("/api/v1/internal/extract", json={"document_id": "doc_404"})
    assert plain.status_code == 200
    assert plain.json()["status"] == "dead_lettered"
    body = b'{"document_id": "doc_405"}'
    url = PUBLIC_URL + "/api/v1/internal/extract"
    qs = runtime.post(
        "/api/v1/internal/extract",
        secret=False,
        content=body,
        headers={
            "Upstash-Signature": qstash_token(QSTASH_CURRENT, url=url, body=body, now=NOW),
            "Upstash-Message-Id": "m1",
            "Upstash-Retried": "0",
        },
    )
    assert qs.status_code == 489
    assert qs.headers["upstash-nonretryable-error"] == "true"
    assert count(runtime, DeadLetter) == 2
    with transaction(runtime.services.session_factory) as s:
        letters = {d.run_key: d for d in s.scalars(select(DeadLetter))}
    assert letters["extract:doc_404"].payload == {"document_id": "doc_404"}
    assert letters["extract:doc_404"].error_code == "not_found"


def test_retryable_failure_answers_503_then_dead_letters_on_the_final_attempt(runtime):
    _fail_with(runtime, "intake-reminders", RetryableError("smtp down", code="smtp_unavailable", retry_after_s=42))
    headers = {
        "X-CloudTasks-TaskName": "t1",
        "X-CloudTasks-QueueName": "crons",
        "X-CloudScheduler-ScheduleTime": "2026-12-03T16:00:00Z",
    }
    for attempt in range(3):
        r = runtime.post(TASK, headers={**headers, "X-CloudTasks-TaskRetryCount": str(attempt)})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "42"
        assert r.json()["error"]["final_attempt"] is False
    assert count(runtime, DeadLetter) == 0
    final = runtime.post(TASK, headers={**headers, "X-CloudTasks-TaskRetryCount": "3"})
    assert final.status_code == 503
    assert final.json()["error"]["final_attempt"] is True
    assert count(runtime, DeadLetter) == 1
    assert runtime.handlers.count() == 4


def test_unexpected_exception_is_retryable_and_leaks_nothing(runtime):
    _fail_with(runtime, "intake-reminders", ValueError("patient Ada Lovelace, born 1815"))
    r = runtime.post(TASK)
    assert r.status_code == 500
    assert "Ada" not in r.text and "1815" not in r.text
    assert r.headers["retry-after"]


def test_bad_requests(runtime):
    assert runtime.post(TASK, secret=False).status_code == 401
    assert runtime.post(TASK, headers={"X-Internal-Secret": "nope"}, secret=False).status_code == 401
    assert (
        runtime.post(TASK, headers={"X-Internal-Secret": "old-secret-still-valid-0002"}, secret=False).status_code
        == 200
    )
    unknown = runtime.post("/api/v1/internal/tasks/no-such-task")
    assert unknown.status_code == 404 and "no-such-task" in unknown.json()["error"]["message"]
    assert runtime.post("/api/v1/internal/tasks/no-such-task", secret=False).status_code == 401
    broken = runtime.post("/api/v1/internal/extract", content=b'{"document_id": ')
    assert broken.status_code == 400
    assert "not valid JSON" in broken.json()["error"]["message"]
    array = runtime.post("/api/v1/internal/extract", content=b"[1]")
    assert array.status_code == 400 and "JSON object" in array.json()["error"]["message"]
    not_utf8 = runtime.post("/api/v1/internal/extract", content=b"\xff\xfe")
    assert not_utf8.status_code == 400
    bad_limit = runtime.post("/api/v1/internal/fhir/sweep?limit=lots")
    assert bad_limit.status_code == 400 and "limit" in bad_limit.json()["error"]["message"]
    bad_header = runtime.post(TASK, headers={"X-CloudScheduler-ScheduleTime": "yesterday"})
    assert bad_header.status_code == 400
    assert runtime.handlers.count() == 1


def test_sweep_query_parameters_reach_the_handler(runtime):
    seen = {}

    def capture(ctx, payload):
        seen.update(payload)
        from curaway.tasks.base import Result

        return Result({"processed_count": 0, "failed_count": 0, "dry_run": payload.get("dry_run", False)})

    runtime.handlers.behaviour["fhir-sweep"] = capture
    r = runtime.post("/api/v1/internal/fhir/sweep?dry_run=true&case_id=case_1&limit=5")
    assert r.status_code == 200
    assert seen == {"dry_run": True, "case_id": "case_1", "limit": 5}


def test_overlap_policy_skips_a_new_slot_while_the_previous_runs(runtime):
    runtime.handlers.release.clear()
    t = threading.Thread(target=lambda: runtime.post(TASK))
    t.start()
    assert runtime.handlers.started.wait(10)
    runtime.clock.advance(hours=1)
    with transaction(runtime.services.session_factory) as s:  # the running worker's heartbeat, at the new time
        s.execute(
            update(RunLedger)
            .where(RunLedger.status == "running")
            .values(lease_expires_at=runtime.clock.now() + timedelta(seconds=30))
        )
    skipped = runtime.post(TASK)
    runtime.handlers.release.set()
    t.join(10)
    assert skipped.status_code == 200
    assert skipped.json()["status"] == "skipped"
    assert skipped.json()["result"]["skipped"] == "overlap"
    assert runtime.handlers.count() == 1


def test_dead_letter_api_lists_shows_and_replays_idempotently(runtime):
    _fail_with(runtime, "extract", PermanentError("bad payload", code="validation"))
    runtime.post("/api/v1/internal/extract", json={"document_id": "doc_1"})
    secret = {"X-Internal-Secret": "internal-secret-for-tests-0001"}
    assert runtime.client.get("/api/v1/internal/dlq").status_code == 401
    listing = runtime.client.get("/api/v1/internal/dlq", headers=secret).json()["dead_letters"]
    assert [(d["task"], d["run_key"], d["error_code"]) for d in listing] == [("extract", "extract:doc_1", "validation")]
    letter_id = listing[0]["id"]
    assert runtime.client.get(f"/api/v1/internal/dlq/{letter_id}", headers=secret).json()["status"] == "open"
    assert runtime.client.get("/api/v1/internal/dlq/999999", headers=secret).status_code == 404
    first = runtime.client.post(f"/api/v1/internal/dlq/{letter_id}/replay", headers=secret)
    second = runtime.client.post(f"/api/v1/internal/dlq/{letter_id}/replay", headers=secret)
    assert (first.status_code, first.json()["replayed"]) == (202, True)
    assert (second.status_code, second.json()["replayed"]) == (200, False)
    assert first.json()["queue_item_id"] == second.json()["queue_item_id"]
    assert runtime.client.get("/api/v1/internal/dlq?status=bogus", headers=secret).status_code == 400


def test_readyz_reports_schedule_freshness(runtime):
    checks = runtime.client.get("/readyz").json()["checks"]
    assert checks["schedules"]["schedules"]["intake-reminders"]["status"] == "never"
    runtime.post(TASK)
    checks = runtime.client.get("/readyz").json()["checks"]
    assert checks["schedules"]["schedules"]["intake-reminders"]["status"] == "ok"
    runtime.clock.advance(hours=3)  # SLO for the hourly reminders is 2 h
    ready = runtime.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["schedules"]["schedules"]["intake-reminders"]["status"] == "stale"
    assert ready.json()["checks"]["schedules"]["status"] == "stale"


def test_readyz_reports_exchange_rate_staleness(runtime):
    from decimal import Decimal

    from curaway.models import ExchangeRate

    assert runtime.client.get("/readyz").json()["checks"]["exchange_rates"]["status"] == "never"
    with transaction(runtime.services.session_factory) as s:
        s.add(ExchangeRate(date=NOW.date(), base="EUR", quote="USD", rate=Decimal("1.08"), fetched_at=NOW))
    rates = runtime.client.get("/readyz").json()["checks"]["exchange_rates"]
    assert (rates["status"], rates["quotes"], rates["latest_date"]) == ("ok", 1, "2026-12-03")
    runtime.clock.advance(hours=27)
    assert runtime.client.get("/readyz").json()["checks"]["exchange_rates"]["status"] == "stale"


def test_rejections_are_logged_with_a_reason_and_never_the_credential(runtime):
    from structlog.testing import capture_logs

    token = qstash_token("wrong-key-" + "w" * 32, url=PUBLIC_URL + TASK, body=b"{}", now=NOW)
    with capture_logs() as logs:
        r = runtime.post(TASK, secret=False, content=b"{}", headers={"Upstash-Signature": token})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated"
    rejected = [e for e in logs if e["event"] == "internal_auth.rejected"]
    assert rejected and rejected[0]["reason"] == "qstash_bad_signature"
    assert token not in repr(logs) and token not in r.text


def test_malformed_deliveries_are_dead_lettered_not_lost(runtime):
    broken = runtime.post(
        "/api/v1/internal/extract",
        content=b'{"document_id": ',
        headers={"X-CloudTasks-TaskName": "task-77", "X-CloudTasks-TaskRetryCount": "0"},
    )
    assert broken.status_code == 400
    assert "not valid JSON" in broken.json()["error"]["message"]
    again = runtime.post(
        "/api/v1/internal/extract",
        content=b'{"document_id": ',
        headers={"X-CloudTasks-TaskName": "task-77", "X-CloudTasks-TaskRetryCount": "1"},
    )
    assert again.status_code == 400
    body = b"[not json"
    qs = runtime.post(
        "/api/v1/internal/extract",
        secret=False,
        content=body,
        headers={
            "Upstash-Signature": qstash_token(
                QSTASH_CURRENT, url=PUBLIC_URL + "/api/v1/internal/extract", body=body, now=NOW
            ),
            "Upstash-Message-Id": "msg_bad",
        },
    )
    assert qs.status_code == 489 and qs.headers["upstash-nonretryable-error"] == "true"
    with transaction(runtime.services.session_factory) as s:
        keys = sorted(s.scalars(select(DeadLetter.run_key)))
    assert keys == ["extract:invalid:msg_bad", "extract:invalid:task-77"]  # a retried bad task is one letter
    assert runtime.handlers.count() == 0


def test_huge_dead_letter_id_is_a_validation_error_not_a_crash(runtime):
    secret = {"X-Internal-Secret": "internal-secret-for-tests-0001"}
    assert runtime.client.get(f"/api/v1/internal/dlq/{2**70}", headers=secret).status_code == 422
    assert runtime.client.post("/api/v1/internal/dlq/0/replay", headers=secret).status_code == 422


def test_a_delivery_a_little_early_serves_the_coming_slot(runtime):
    runtime.clock.set(NOW.replace(hour=15, minute=59, second=50))  # the sender's clock runs 10 s ahead
    assert runtime.post(TASK).json()["run_key"] == "intake-reminders@2026-12-03T16:00:00Z"


def test_an_unusable_document_id_does_not_become_a_run_key(runtime):
    _fail_with(runtime, "extract", PermanentError("document not found", code="not_found"))
    r = runtime.post("/api/v1/internal/extract", json={"document_id": "x" * 400})
    assert r.status_code == 200 and r.json()["status"] == "dead_lettered"
    assert r.json()["run_key"].startswith("extract@manual:")
    with transaction(runtime.services.session_factory) as s:
        assert s.scalars(select(DeadLetter.payload)).one() == {"document_id": "x" * 400}


def test_dead_letters_keep_ids_and_options_only(runtime):
    _fail_with(runtime, "fhir-sweep", PermanentError("bad", code="validation"))
    runtime.post(
        "/api/v1/internal/fhir/sweep?dry_run=false&limit=5",
        json={"case_id": "case_1", "patient_email": "ada@example.org", "note": "diabetes"},
    )
    with transaction(runtime.services.session_factory) as s:
        assert s.scalars(select(DeadLetter.payload)).one() == {"case_id": "case_1", "dry_run": False, "limit": 5}


def test_skipped_runs_count_as_fresh(runtime):
    from curaway.tasks.base import Result

    runtime.handlers.behaviour["exchange-rate-refresh"] = lambda ctx, payload: Result(
        {"unchanged": True}, status="skipped"
    )
    r = runtime.post("/api/v1/internal/tasks/exchange-rate-refresh")
    assert r.json()["status"] == "skipped"
    checks = runtime.client.get("/readyz").json()["checks"]["schedules"]["schedules"]
    assert checks["exchange-rate-refresh"]["status"] == "ok"


def test_sql_errors_never_carry_statement_parameters(runtime):
    import pytest
    from sqlalchemy.exc import IntegrityError

    from curaway.models import Event

    with pytest.raises(IntegrityError) as info:
        for _ in range(2):
            with transaction(runtime.services.session_factory) as s:
                s.add(Event(type="x", payload={}, dedup_key="patient-ada-lovelace@example.org"))
    # The parameters are hidden (Postgres's own DETAIL line can still quote a key: we log error classes only).
    assert "SQL parameters hidden" in str(info.value)
    assert "[parameters:" not in str(info.value)
