"""Local dispatcher throughput: the full path (queue claim → in-process HTTP → verify → ledger → no-op handler →
settle) beside the runner alone (ledger → handler, no queue, no HTTP) as the baseline, in the same run.

    python -m bench.dispatch_throughput [--tasks 300] [--concurrency 1,4] [--database-url URL]

Without ``--database-url`` a temporary SQLite file is used; with a Postgres URL the tables are truncated first
(use a dedicated database). Output: one JSON object, tasks/s per configuration and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from curaway.api.app import create_app
from curaway.api.bootstrap import build_dispatcher
from curaway.api.services import Services
from curaway.db import transaction, upgrade
from curaway.dispatch.auth import Caller
from curaway.dispatch.delivery import Delivery
from curaway.dispatch.local import HttpxDeliverer
from curaway.models import Base
from curaway.schedules import all_tasks, get_task
from curaway.settings import Settings
from curaway.tasks.base import Result


def _noop(ctx: Any, payload: dict[str, Any]) -> Result:
    return Result({"ok": True})


def _services(url: str, data_dir: Path) -> Services:
    settings = Settings(env="test", database_url=url, data_dir=data_dir)
    return Services.build(settings, handlers={t.name: _noop for t in all_tasks()})


def _reset(services: Services) -> None:
    with transaction(services.session_factory) as s:
        for table in reversed(Base.metadata.sorted_tables):
            if table.name in {"task_queue", "run_ledger", "dead_letters"}:
                s.execute(table.delete())


def bench_runner(services: Services, n: int) -> float:
    spec = get_task("extract")
    assert spec is not None
    caller = Caller("internal_secret", "secret#0")
    started = time.perf_counter()
    for i in range(n):
        delivery = Delivery.from_headers(
            {"x-curaway-run-key": f"bench:runner:{i}"}, force=False, received_at=services.clock.now()
        )
        services.runner.execute(spec, {"document_id": f"d{i}"}, delivery, caller)
    return n / (time.perf_counter() - started)


def bench_dispatch(services: Services, n: int, concurrency: int) -> float:
    for i in range(n):
        services.local_enqueuer.enqueue("extract", {"document_id": f"d{i}"}, dedup_key=f"bench:{concurrency}:{i}")
    app = create_app(services.settings, services=services)
    dispatcher = build_dispatcher(app, services, cron=False, concurrency=concurrency)

    async def go() -> int:
        dispatcher.deliverer = HttpxDeliverer.in_process(app, services.settings)
        try:
            return await dispatcher.drain()
        finally:
            await dispatcher.deliverer.aclose()

    started = time.perf_counter()
    done = asyncio.run(go())
    elapsed = time.perf_counter() - started
    assert done == n, (done, n)
    return n / elapsed


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        services = _services(url, Path(tmp))
        try:
            _reset(services)
            baseline = bench_runner(services, args.tasks)
            runs = []
            for c in (int(x) for x in args.concurrency.split(",")):
                _reset(services)
                rate = bench_dispatch(services, args.tasks, c)
                runs.append({"concurrency": c, "tasks_per_s": round(rate, 1), "vs_runner": round(rate / baseline, 3)})
        finally:
            services.close()
    result = {
        "benchmark": "dispatch_throughput",
        "database": "postgres" if url.startswith("postgres") else "sqlite",
        "tasks": args.tasks,
        "baseline_runner_tasks_per_s": round(baseline, 1),
        "dispatch": runs,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
