from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from curaway.dispatch.delivery import Delivery
from curaway.dispatch.local import choose_slots
from curaway.errors import ValidationFailed
from curaway.schedules import CatchUp, RetryPolicy, get_task
from curaway.schedules.registry import ONE_OFF_TASKS, SCHEDULES, get_schedule
from curaway.tasks.registry import HANDLERS

NOW = datetime(2026, 12, 3, 16, 20, tzinfo=UTC)


def hours_ago(*hs):
    return [NOW.replace(minute=0) - timedelta(hours=h) for h in hs]


def test_every_registered_task_has_a_handler():
    names = {t.name for t in (*SCHEDULES, *ONE_OFF_TASKS)}
    assert {s.name for s in SCHEDULES} <= set(HANDLERS)
    assert names >= set(HANDLERS)


def test_registry_defaults():
    for s in SCHEDULES:
        assert s.retry.retries == 3 and s.retry.max_attempts == 4
        assert s.overlap == "skip_if_running"
        assert s.catch_up.mode == "latest"
        assert s.queue == "crons"
    assert get_task("extract").queue == "extraction"  # an extraction backlog cannot starve the crons
    assert get_schedule("exchange-rate-refresh").freshness_slo == timedelta(hours=26)


def test_retry_policy_backoff_is_exponential_and_capped():
    p = RetryPolicy(retries=3, min_backoff_s=10, max_backoff_s=30)
    assert [p.delay_s(n) for n in range(4)] == [10, 20, 30, 30]
    assert not p.is_final(2) and p.is_final(3)


def test_catch_up_policies():
    due = hours_ago(5, 4, 3, 2, 1)
    assert choose_slots(CatchUp("skip"), due, NOW) == []
    assert choose_slots(CatchUp("latest"), due, NOW) == hours_ago(1)
    assert choose_slots(CatchUp.all_within(timedelta(hours=3, minutes=30)), due, NOW) == hours_ago(3, 2, 1)
    on_time = [NOW - timedelta(minutes=2)]
    assert choose_slots(CatchUp("latest"), [*due, *on_time], NOW) == on_time
    assert choose_slots(CatchUp("skip"), on_time, NOW) == on_time


def _delivery(headers, *, force=False, at=NOW):
    return Delivery.from_headers({k.lower(): v for k, v in headers.items()}, force=force, received_at=at)


def test_one_slot_whatever_the_header_style():
    spec = get_schedule("intake-reminders")
    keys = {
        _delivery({"Upstash-Message-Id": "msg_1", "Upstash-Retried": "0"}).run_key(spec, {})[0],
        _delivery(
            {"X-CloudScheduler-JobName": "intake-reminders", "X-CloudScheduler-ScheduleTime": "2026-12-03T16:00:00Z"}
        ).run_key(spec, {})[0],
        _delivery(
            {"X-CloudScheduler-ScheduleTime": "2026-12-03T16:00:00+00:00"}, at=NOW + timedelta(minutes=30)
        ).run_key(spec, {})[0],
        _delivery({}).run_key(spec, {})[0],  # a manual curl in the same hour
        _delivery({"X-Curaway-Queue-Item": "7", "X-Curaway-Slot": "2026-12-03T16:00:00Z"}).run_key(spec, {})[0],
    }
    assert keys == {"intake-reminders@2026-12-03T16:00:00Z"}


def test_forced_and_future_slot_runs_get_their_own_keys():
    spec = get_schedule("intake-reminders")
    forced = _delivery({}, force=True).run_key(spec, {})[0]
    assert forced.startswith("intake-reminders@manual:")
    # A Cloud Scheduler force-run carrying the next slot must not swallow that slot's real run.
    early = _delivery({"X-CloudScheduler-ScheduleTime": "2026-12-03T17:00:00Z"}).run_key(spec, {})[0]
    assert early.startswith("intake-reminders@manual:")


def test_one_off_keys():
    extract = get_task("extract")
    assert _delivery({"Upstash-Message-Id": "m1"}).run_key(extract, {"document_id": "doc_1"})[0] == "extract:doc_1"
    sweep = get_task("fhir-sweep")
    assert _delivery({"X-CloudTasks-TaskName": "t-9"}).run_key(sweep, {})[0] == "fhir-sweep:cloudtasks:t-9"
    assert _delivery({"X-Curaway-Run-Key": "fhir-sweep:case_1"}).run_key(sweep, {})[0] == "fhir-sweep:case_1"


@pytest.mark.parametrize(
    "headers",
    [
        {"Upstash-Retried": "two", "Upstash-Message-Id": "m"},
        {"X-CloudScheduler-ScheduleTime": "not a time"},
        {"X-Curaway-Run-Key": "bad key with spaces"},
    ],
)
def test_malformed_delivery_headers_are_validation_errors(headers):
    with pytest.raises(ValidationFailed):
        _delivery(headers)


def test_triggers_and_retry_counts():
    assert _delivery({"Upstash-Message-Id": "m", "Upstash-Retried": "3"}).retry_count == 3
    d = _delivery({"X-CloudTasks-TaskName": "t", "X-CloudTasks-TaskRetryCount": "2"})
    assert (d.trigger, d.retry_count) == ("cloudtasks", 2)
    assert _delivery({"X-CloudScheduler-JobName": "j"}).trigger == "cloudscheduler"
    assert _delivery({}).trigger == "http"
