"""The local dispatcher end to end: queue → in-process HTTP → runner → handler, retries, DLQ, replay, cron."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from curaway.api.app import create_app
from curaway.api.bootstrap import build_services, sync_local_schedules
from curaway.db import create_db_engine, create_session_factory, transaction
from curaway.dispatch.local import DispatcherConfig, HttpxDeliverer, LocalDispatcher, LocalEnqueuer
from curaway.dispatch.runner import RunnerConfig
from curaway.errors import PermanentError, RetryableError
from curaway.models import DeadLetter, QueuedTask, RunLedger, ScheduleState
from curaway.schedules import all_tasks
from curaway.schedules.registry import get_schedule
from tests.integration.runtime.conftest import NOW
from tests.support.runtime import CountingHandlers


class Harness:
    def __init__(self, settings, clock, handlers, *, backoff_scale=0.0, concurrency=4, engine=None):
        self.handlers = handlers
        overrides = {"engine": engine} if engine is not None else {}
        self.services = build_services(
            settings,
            clock=clock,
            handlers=handlers.table([t.name for t in all_tasks()]),
            runner_config=RunnerConfig(lease_s=30),
            **overrides,
        )
        self.app = create_app(settings, services=self.services)
        self.dispatcher = LocalDispatcher(
            session_factory=self.services.session_factory,
            clock=clock,
            deliverer=HttpxDeliverer.in_process(self.app, settings),
            enqueuer=self.services.local_enqueuer,
            config=DispatcherConfig(concurrency=concurrency, backoff_scale=backoff_scale, lease_s=30),
        )
        self.enqueuer: LocalEnqueuer = self.services.local_enqueuer

    def drain(self) -> int:
        # A fresh in-process client per event loop (asyncio.run makes a new loop each time).
        self.dispatcher.deliverer = HttpxDeliverer.in_process(self.app, self.services.settings)

        async def go():
            try:
                return await self.dispatcher.drain()
            finally:
                await self.dispatcher.deliverer.aclose()

        return asyncio.run(go())

    def scalar(self, stmt):
        with transaction(self.services.session_factory) as s:
            return s.scalar(stmt)


@pytest.fixture
def harness(make_settings, database_url):
    from curaway.clock import FrozenClock

    settings = make_settings(database_url=database_url)
    h = Harness(settings, FrozenClock(NOW), CountingHandlers())
    yield h
    h.services.engine.dispose()


def test_enqueue_is_idempotent_and_delivery_runs_the_handler_once(harness):
    first = harness.enqueuer.enqueue("extract", {"document_id": "doc_1"}, dedup_key="extract:doc_1")
    again = harness.enqueuer.enqueue("extract", {"document_id": "doc_1"}, dedup_key="extract:doc_1")
    assert first.created and not again.created
    assert harness.drain() == 1
    assert harness.handlers.calls == [("extract", "extract:doc_1")]
    assert harness.scalar(select(QueuedTask.status)) == "done"
    assert harness.scalar(select(RunLedger.status).where(RunLedger.run_key == "extract:doc_1")) == "succeeded"


def test_exhaustion_then_one_dead_letter_then_replay_succeeds_once(harness):
    def flaky(ctx, payload):
        raise RetryableError("dependency down", code="dependency_down")

    harness.handlers.behaviour["extract"] = flaky
    harness.enqueuer.enqueue("extract", {"document_id": "doc_9"}, dedup_key="extract:doc_9")
    for _ in range(6):
        harness.drain()
    item = harness.scalar(select(QueuedTask))
    assert (item.status, item.attempts) == ("dead", 4)
    assert harness.handlers.count("extract") == 4
    assert harness.scalar(select(func.count()).select_from(DeadLetter)) == 1
    letter = harness.scalar(select(DeadLetter))
    assert (letter.run_key, letter.error_code, letter.attempts, letter.payload) == (
        "extract:doc_9",
        "dependency_down",
        4,
        {"document_id": "doc_9"},
    )

    harness.handlers.behaviour.pop("extract")  # the dependency is back
    replay = harness.services.dead_letters.replay(letter.id)
    twice = harness.services.dead_letters.replay(letter.id)
    assert replay.replayed and not twice.replayed
    assert twice.queue_item_id == replay.queue_item_id
    harness.drain()
    assert harness.handlers.count("extract") == 5
    assert harness.scalar(select(RunLedger.status).where(RunLedger.run_key == "extract:doc_9")) == "succeeded"
    assert harness.scalar(select(DeadLetter.status)) == "replayed"
    harness.drain()
    assert harness.handlers.count("extract") == 5


def test_permanent_failure_is_dead_lettered_at_once(harness):
    def bad(ctx, payload):
        raise PermanentError("unknown document", code="not_found")

    harness.handlers.behaviour["extract"] = bad
    harness.enqueuer.enqueue("extract", {"document_id": "doc_x"}, dedup_key="extract:doc_x")
    harness.drain()
    assert harness.handlers.count() == 1
    assert harness.scalar(select(QueuedTask.status)) == "done"  # answered 2xx dead_lettered
    assert harness.scalar(select(func.count()).select_from(DeadLetter)) == 1


def test_retry_after_is_honoured(make_settings, database_url):
    from curaway.clock import FrozenClock

    clock = FrozenClock(NOW)
    h = Harness(make_settings(database_url=database_url), clock, CountingHandlers(), backoff_scale=1.0)

    def slow_down(ctx, payload):
        raise RetryableError("rate limited", code="rate_limited", retry_after_s=120)

    h.handlers.behaviour["extract"] = slow_down
    h.enqueuer.enqueue("extract", {"document_id": "d"}, dedup_key="extract:d")
    h.drain()
    item = h.scalar(select(QueuedTask))
    assert item.status == "queued"
    assert item.scheduled_for >= NOW + timedelta(seconds=120)
    assert h.drain() == 0  # not due yet
    clock.advance(seconds=121)
    assert h.drain() == 1
    h.services.engine.dispose()


def _set_last_slot(harness, name, slot):
    with transaction(harness.services.session_factory) as s:
        s.execute(update(ScheduleState).where(ScheduleState.schedule == name).values(last_slot=slot))


def test_cron_loop_enqueues_each_slot_once_across_many_schedulers(harness):
    sync_local_schedules(harness.services)
    assert harness.dispatcher.tick_cron() == 0  # first tick only sets the baseline
    harness.dispatcher.clock.advance(hours=1)
    others = [
        LocalDispatcher(
            session_factory=harness.services.session_factory,
            clock=harness.dispatcher.clock,
            deliverer=harness.dispatcher.deliverer,
            enqueuer=harness.enqueuer,
        )
        for _ in range(4)
    ]
    barrier = threading.Barrier(len(others))

    def tick(d):
        barrier.wait()
        d.tick_cron()

    threads = [threading.Thread(target=tick, args=(d,)) for d in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with transaction(harness.services.session_factory) as s:
        keys = list(s.scalars(select(QueuedTask.dedup_key)))
    assert len(keys) == len(set(keys))
    assert "cron:intake-reminders@2026-12-03T17:00:00Z" in keys
    assert "cron:analytics-refresh@2026-12-03T16:00:00Z" not in keys  # not due: 16:00 was the baseline
    harness.drain()
    assert harness.handlers.count("intake-reminders") == 1


def test_catch_up_latest_after_downtime_runs_one_slot(harness):
    sync_local_schedules(harness.services)
    harness.dispatcher.tick_cron()
    _set_last_slot(harness, "intake-reminders", NOW.replace(minute=0, second=0) - timedelta(hours=6))
    _set_last_slot(harness, "analytics-refresh", NOW.replace(minute=0, second=0) - timedelta(hours=6))
    harness.dispatcher.clock.advance(minutes=30)
    harness.dispatcher.tick_cron()
    with transaction(harness.services.session_factory) as s:
        keys = set(s.scalars(select(QueuedTask.dedup_key)))
    assert keys == {"cron:intake-reminders@2026-12-03T16:00:00Z", "cron:analytics-refresh@2026-12-03T16:00:00Z"}
    assert get_schedule("intake-reminders").catch_up.mode == "latest"


@pytest.mark.slow
def test_two_dispatchers_share_1000_tasks_without_double_execution(make_settings, database_url):
    from curaway.clock import SystemClock

    total = 1000 if database_url.startswith("postgresql") else 300
    settings = make_settings(database_url=database_url)
    handlers = CountingHandlers()
    a = Harness(settings, SystemClock(), handlers, concurrency=4, engine=create_db_engine(database_url))
    b = Harness(settings, SystemClock(), handlers, concurrency=4, engine=create_db_engine(database_url))
    factory = create_session_factory(a.services.engine)
    with transaction(factory) as s:
        for n in range(total):
            s.add(
                QueuedTask(
                    task="extract",
                    queue="extraction",
                    dedup_key=f"extract:doc_{n}",
                    payload={"document_id": f"doc_{n}"},
                    headers={},
                    status="queued",
                    attempts=0,
                    max_attempts=4,
                    scheduled_for=NOW,
                )
            )
    results = {}
    threads = [
        threading.Thread(target=lambda h=h, k=k: results.setdefault(k, h.drain())) for k, h in (("a", a), ("b", b))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    run_keys = [k for _, k in handlers.calls]
    assert len(run_keys) == total
    assert len(set(run_keys)) == total  # zero double executions
    assert results["a"] > 0 and results["b"] > 0  # both did work
    with transaction(factory) as s:
        assert s.scalar(select(func.count()).select_from(QueuedTask).where(QueuedTask.status == "done")) == total
        assert s.scalar(select(func.max(QueuedTask.attempts))) == 1
    a.services.engine.dispose()
    b.services.engine.dispose()


def test_an_item_reclaimed_after_its_final_attempt_is_dead_lettered_not_redelivered(harness):
    harness.enqueuer.enqueue("extract", {"document_id": "doc_k"}, dedup_key="extract:doc_k")
    with transaction(harness.services.session_factory) as s:
        s.execute(
            update(QueuedTask).values(
                status="running", attempts=4, locked_by="dead-worker", lease_expires_at=NOW - timedelta(seconds=1)
            )
        )
    harness.drain()
    assert harness.handlers.count() == 0
    assert harness.scalar(select(QueuedTask.status)) == "dead"
    letter = harness.scalar(select(DeadLetter))
    assert (letter.run_key, letter.error_class) == ("extract:doc_k", "LeaseLapsedAfterFinalAttempt")


def test_an_exception_escaping_the_app_is_retried_then_dead_lettered_never_stuck(harness):
    def broken_execute(*args, **kwargs):  # a failure outside any handler: a DB error while claiming, say
        raise RuntimeError("database is locked")

    harness.services.runner.execute = broken_execute
    harness.enqueuer.enqueue("extract", {"document_id": "doc_e"}, dedup_key="extract:doc_e")
    harness.drain()  # retries at once (backoff scale 0) until the attempts are spent; the dispatcher survives
    item = harness.scalar(select(QueuedTask))
    assert (item.status, item.attempts, item.last_status) == ("dead", 4, 500)
    letter = harness.scalar(select(DeadLetter))
    assert (letter.run_key, letter.error_code) == ("extract:doc_e", "http_500")
    assert harness.handlers.count() == 0


def test_two_overlapping_runs_never_both_skip(harness):
    from curaway.repositories import ledger

    with transaction(harness.services.session_factory) as s:
        a = ledger.claim(s, run_key="intake-reminders@A", task="intake-reminders", owner="a", now=NOW, lease_s=30)
        b = ledger.claim(s, run_key="intake-reminders@B", task="intake-reminders", owner="b", now=NOW, lease_s=30)
        older = ledger.other_live_run(
            s, task="intake-reminders", run_key="intake-reminders@A", now=NOW, claimed_after=a.row.id
        )
        newer = ledger.other_live_run(
            s, task="intake-reminders", run_key="intake-reminders@B", now=NOW, claimed_after=b.row.id
        )
    assert older is None  # the first claimant proceeds
    assert newer is not None and newer.run_key == "intake-reminders@A"  # the second one skips
