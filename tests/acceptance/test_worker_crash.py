"""A `curaway worker` killed with SIGKILL mid-task: after a restart the task completes, exactly once."""

from __future__ import annotations

import os
import signal
import time

import pytest
from sqlalchemy import select

from curaway.api.app import create_app
from curaway.api.bootstrap import build_services
from curaway.db import transaction
from curaway.dispatch.runner import RunnerConfig
from curaway.models import QueuedTask, RunLedger
from curaway.schedules import all_tasks
from tests.support.proc import base_env, running
from tests.support.runtime import CountingHandlers, serving_app

pytestmark = pytest.mark.slow
SECRET = "acceptance-internal-secret-0001"


def worker_env(tmp_path, db_url, public_url, **extra):
    """Environment for a `curaway worker --http` delivering to the test's server (data dir created)."""
    (tmp_path / "data").mkdir(exist_ok=True)
    return base_env(
        tmp_path / "data",
        DATABASE_URL=db_url,
        CURAWAY_PUBLIC_URL=public_url,
        INTERNAL_SECRET=SECRET,
        CURAWAY_DISPATCH_POLL_S="0.1",
        **extra,
    )


def wait_for(predicate, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_killed_worker_task_is_redelivered_and_runs_once(make_settings, database_url, tmp_path):
    db_url = database_url
    settings = make_settings(database_url=db_url, internal_secret=SECRET)
    handlers = CountingHandlers()
    handlers.release.clear()
    services = build_services(
        settings, handlers=handlers.table([t.name for t in all_tasks()]), runner_config=RunnerConfig(lease_s=2)
    )
    app = create_app(settings, services=services)
    services.local_enqueuer.enqueue("extract", {"document_id": "doc_crash"}, dedup_key="extract:doc_crash")

    def item():
        with transaction(services.session_factory) as s:
            return s.scalars(select(QueuedTask)).one()

    with serving_app(app) as url:
        env = worker_env(tmp_path, db_url, url, CURAWAY_DISPATCH_LEASE_S="1", CURAWAY_LOG_FORMAT="json")
        with running(["worker", "--http", "--no-cron"], env=env, log_path=tmp_path / "w1.log") as first:
            assert handlers.started.wait(60), (tmp_path / "w1.log").read_text()
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(10)
        assert item().status == "running"  # the dead worker still holds it, until its lease lapses
        handlers.release.set()  # the request it had sent completes on the service side
        assert wait_for(lambda: handlers.count() == 1)
        with running(["worker", "--http", "--no-cron"], env=env, log_path=tmp_path / "w2.log"):
            assert wait_for(lambda: item().status == "done", 60), (tmp_path / "w2.log").read_text()
        final = item()
        assert final.attempts == 2  # delivered twice …
        assert handlers.count() == 1  # … executed once
        with transaction(services.session_factory) as s:
            row = s.scalars(select(RunLedger).where(RunLedger.run_key == "extract:doc_crash")).one()
            assert row.status == "succeeded"
        assert '"status_code": 200' in (tmp_path / "w2.log").read_text()
    services.engine.dispose()


def test_killed_worker_with_in_flight_handler_is_taken_over_after_the_lease(make_settings, database_url, tmp_path):
    """The handler's own process dies too (in-process delivery): the ledger lease lapses and a new run takes over."""
    db_url = database_url
    settings = make_settings(database_url=db_url, internal_secret=SECRET)
    handlers = CountingHandlers()
    services = build_services(
        settings, handlers=handlers.table([t.name for t in all_tasks()]), runner_config=RunnerConfig(lease_s=1)
    )
    # Simulate the state a SIGKILLed in-process worker leaves behind: item running, ledger running, both leased.
    services.local_enqueuer.enqueue("extract", {"document_id": "doc_x"}, dedup_key="extract:doc_x")
    with transaction(services.session_factory) as s:
        it = s.scalars(select(QueuedTask)).one()
        it.status, it.attempts, it.locked_by = "running", 1, "killed-worker"
        it.lease_expires_at = services.clock.now()
        s.add(
            RunLedger(
                run_key="extract:doc_x",
                task="extract",
                status="running",
                attempts=1,
                owner="killed-worker",
                lease_expires_at=services.clock.now(),
            )
        )
    app = create_app(settings, services=services)
    with serving_app(app) as url:
        env = worker_env(tmp_path, db_url, url, CURAWAY_DISPATCH_LEASE_S="1", CURAWAY_RETRY_BACKOFF_SCALE="0.01")
        with running(["worker", "--http", "--no-cron"], env=env, log_path=tmp_path / "w.log"):
            assert wait_for(lambda: handlers.count() == 1, 60), (tmp_path / "w.log").read_text()

            def done():
                with transaction(services.session_factory) as s:
                    return s.scalars(select(QueuedTask)).one().status == "done"

            assert wait_for(done, 30)
    with transaction(services.session_factory) as s:
        row = s.scalars(select(RunLedger)).one()
        assert (row.status, row.attempts) == ("succeeded", 2)
    assert handlers.count() == 1
    services.engine.dispose()


def test_two_worker_processes_share_the_queue_without_double_execution(make_settings, database_url, tmp_path):
    total = 200
    settings = make_settings(database_url=database_url, internal_secret=SECRET)
    handlers = CountingHandlers()
    services = build_services(settings, handlers=handlers.table([t.name for t in all_tasks()]))
    for n in range(total):
        services.local_enqueuer.enqueue("extract", {"document_id": f"doc_{n}"}, dedup_key=f"extract:doc_{n}")
    app = create_app(settings, services=services)

    def done() -> int:
        with transaction(services.session_factory) as s:
            return len(list(s.scalars(select(QueuedTask.id).where(QueuedTask.status == "done"))))

    with serving_app(app) as url:
        env = worker_env(tmp_path, database_url, url, CURAWAY_DISPATCH_CONCURRENCY="4")
        with (
            running(["worker", "--http", "--no-cron"], env=env, log_path=tmp_path / "a.log"),
            running(["worker", "--http", "--no-cron"], env=env, log_path=tmp_path / "b.log"),
        ):
            assert wait_for(lambda: done() == total, 240), (tmp_path / "a.log").read_text()[-2000:]
    run_keys = [k for _, k in handlers.calls]
    assert len(run_keys) == total and len(set(run_keys)) == total
    with transaction(services.session_factory) as s:
        attempts = set(s.scalars(select(QueuedTask.attempts)))
    assert attempts == {1}
    assert "dispatch.delivered" in (tmp_path / "a.log").read_text()
    assert "dispatch.delivered" in (tmp_path / "b.log").read_text()  # both processes did work
    services.engine.dispose()
