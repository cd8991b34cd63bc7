"""Composition root used by the CLI: build services, the app and the local dispatcher from settings."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from datetime import timedelta
from typing import Any

from fastapi import FastAPI

from curaway.api.app import create_app
from curaway.api.services import Services
from curaway.clock import SystemClock
from curaway.db import create_db_engine, create_session_factory, read_transaction, transaction, upgrade
from curaway.dispatch.local import DispatcherConfig, HttpxDeliverer, LocalDispatcher
from curaway.dispatch.runner import RunnerConfig
from curaway.dispatch.schedule_sync import apply_local, plan_local
from curaway.integrations import Integrations
from curaway.logging import get_logger
from curaway.repositories.demo import DemoSummary, load_demo
from curaway.schedules import SCHEDULES, next_slots
from curaway.settings import Settings

log = get_logger("curaway.bootstrap")


def prepare(settings: Settings, *, migrate: bool = True) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if migrate:
        upgrade(settings.resolved_database_url)
        log.info("db.migrated")


def build_integrations(settings: Settings) -> Integrations:
    """The real seams for these settings (embedded defaults: outbox email, local storage, local LLM)."""
    from curaway.integrations.email import build_email_backend
    from curaway.integrations.llm import build_llm_gateway
    from curaway.integrations.ocr import build_ocr
    from curaway.integrations.rates import build_rates_client
    from curaway.integrations.storage import build_storage
    from curaway.integrations.tracing import build_tracer_provider

    tracer_provider = build_tracer_provider(settings)
    return Integrations(
        email=build_email_backend(settings),
        rates=build_rates_client(settings),
        llm=build_llm_gateway(settings, tracer_provider=tracer_provider),
        storage=build_storage(settings),
        ocr=build_ocr(settings),
        tracer_provider=tracer_provider,
    )


def build_services(settings: Settings, **overrides: Any) -> Services:
    overrides.setdefault("runner_config", RunnerConfig(lease_s=settings.run_lease_s))
    if overrides.get("integrations") is None:
        overrides["integrations"] = build_integrations(settings)
    return Services.build(settings, **overrides)


def dispatcher_config(settings: Settings, *, cron: bool = True, concurrency: int | None = None) -> DispatcherConfig:
    return DispatcherConfig(
        concurrency=concurrency or settings.dispatch_concurrency,
        poll_interval_s=settings.dispatch_poll_s,
        lease_s=settings.dispatch_lease_s,
        backoff_scale=settings.retry_backoff_scale,
        cron=cron,
    )


def sync_local_schedules(services: Services) -> int:
    with transaction(services.session_factory) as session:
        changes = plan_local(session)
        applied = apply_local(session, changes, clock=services.clock)
    if applied:
        log.info("schedules.synced", backend="local", count=applied)
    return applied


def build_dispatcher(
    app: FastAPI, services: Services, *, cron: bool = True, concurrency: int | None = None
) -> LocalDispatcher:
    return LocalDispatcher(
        session_factory=services.session_factory,
        clock=services.clock,
        deliverer=HttpxDeliverer.in_process(app, services.settings),
        enqueuer=services.local_enqueuer,
        config=dispatcher_config(services.settings, cron=cron, concurrency=concurrency),
    )


def build_app(settings: Settings, *, dispatcher: bool = True, **overrides: Any) -> FastAPI:
    """The served app. With ``dispatcher`` (local backend only) the embedded dispatcher runs in its lifespan."""
    services = build_services(settings, **overrides)
    embedded = dispatcher and settings.dispatch_backend == "local"
    state: dict[str, Any] = {}

    async def start(app: FastAPI) -> None:
        if not embedded:
            return
        await asyncio.to_thread(sync_local_schedules, services)
        runner = build_dispatcher(app, services)
        state["stop"] = asyncio.Event()
        state["dispatcher"] = runner
        state["task"] = asyncio.create_task(runner.run(state["stop"]))

    async def stop(app: FastAPI) -> None:
        if "task" in state:
            state["stop"].set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(state["task"], timeout=30)
            await state["dispatcher"].deliverer.aclose()

    app = create_app(settings, services=services, on_startup=[start], on_shutdown=[stop])
    app.state.embedded_dispatcher = embedded
    return app


async def run_worker(settings: Settings, *, over_http: bool, concurrency: int, cron: bool) -> None:
    """``curaway worker``: the dispatcher alone, delivering in-process (default) or to ``CURAWAY_PUBLIC_URL``."""
    services = build_services(settings)
    app = create_app(settings, services=services)
    if cron:
        await asyncio.to_thread(sync_local_schedules, services)
    deliverer = HttpxDeliverer.over_http(settings) if over_http else HttpxDeliverer.in_process(app, settings)
    dispatcher = LocalDispatcher(
        session_factory=services.session_factory,
        clock=services.clock,
        deliverer=deliverer,
        enqueuer=services.local_enqueuer,
        config=dispatcher_config(settings, cron=cron, concurrency=concurrency),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await dispatcher.run(stop)
    finally:
        await deliverer.aclose()
        services.close()


class TaskDriver:
    """Runs tasks now, through the local queue and dispatcher (``tasks run``, ``fhir sweep``): each run is enqueued
    with its own run key and delivered in-process — unless another dispatcher claims it first, then this waits."""

    def __init__(self, settings: Settings) -> None:
        prepare(settings, migrate=True)
        self.services = build_services(settings)
        self.app = create_app(settings, services=self.services)
        self.dispatcher = build_dispatcher(self.app, self.services, cron=False, concurrency=1)

    async def run(
        self, name: str, payload: dict[str, Any], *, wait: bool = True, timeout_s: float = 3600
    ) -> dict[str, Any]:
        receipt = await asyncio.to_thread(self.services.local_enqueuer.enqueue, name, payload)
        item_id = int(receipt.message_id or 0)
        if not wait:
            return {"task": name, "run_key": receipt.dedup_key, "queue_item": item_id, "status": "queued"}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            state = await self.dispatcher.run_item(item_id)
            if state is None:
                state = await asyncio.to_thread(_queue_status, self.services, item_id)
            if state != "running":  # done, dead, or queued again for a later retry
                break
            await asyncio.sleep(0.2)
        return await asyncio.to_thread(_run_report, self.services, receipt.dedup_key, item_id)

    async def aclose(self) -> None:
        await self.dispatcher.deliverer.aclose()
        self.services.close()


async def run_task_now(settings: Settings, name: str, payload: dict[str, Any], *, wait: bool) -> dict[str, Any]:
    driver = TaskDriver(settings)
    try:
        return await driver.run(name, payload, wait=wait)
    finally:
        await driver.aclose()


async def run_fhir_sweep(
    settings: Settings,
    *,
    dry_run: bool,
    case_id: str | None,
    limit: int,
    on_plan: Any = None,
    on_case: Any = None,
) -> dict[str, Any]:
    """``fhir sweep``: one ``fhir-sweep`` task per case, each through the dispatcher, reporting progress per case.

    ``on_plan(cases)`` receives ``[(case_id, candidates)]`` before work starts; ``on_case(case_id, report)`` after
    each case. A dry run is one task that lists the candidates and writes nothing."""
    from curaway.repositories.documents import candidate_case_ids

    driver = TaskDriver(settings)
    try:
        if dry_run:
            payload: dict[str, Any] = {"dry_run": True, "limit": limit}
            if case_id:
                payload["case_id"] = case_id
            report = await driver.run("fhir-sweep", payload)
            return {"dry_run": True, "status": report["status"], **(report.get("result") or {})}
        if case_id:
            cases = [(case_id, limit)]
        else:
            with transaction(driver.services.session_factory) as session:
                cases = candidate_case_ids(session, now=driver.services.clock.now(), limit=limit, attempt_budget=3)
        if on_plan:
            on_plan(cases)
        totals = {"processed_count": 0, "failed_count": 0, "deferred_count": 0, "skipped_count": 0}
        per_case = []
        for cid, _ in cases:
            report = await driver.run("fhir-sweep", {"case_id": cid, "limit": limit, "fan_out": False})
            result = report.get("result") or {}
            for key in totals:
                totals[key] += int(result.get(key) or 0)
            per_case.append(
                {
                    "case_id": cid,
                    "status": report["status"],
                    "run_key": report["run_key"],
                    **{k: result.get(k) for k in totals},
                    "error": report.get("error"),
                }
            )
            if on_case:
                on_case(cid, report)
        return {"dry_run": False, **totals, "cases": per_case}
    finally:
        await driver.aclose()


def _queue_status(services: Services, item_id: int) -> str | None:
    from curaway.repositories import queue as queue_repo

    with read_transaction(services.session_factory) as session:
        item = queue_repo.get(session, item_id)
        return item.status if item is not None else None


def _run_report(services: Services, run_key: str, item_id: int) -> dict[str, Any]:
    from curaway.repositories import ledger
    from curaway.repositories import queue as queue_repo

    with read_transaction(services.session_factory) as session:
        item = queue_repo.get(session, item_id)
        row = ledger.get(session, run_key)
        report: dict[str, Any] = {
            "task": item.task if item else None,
            "run_key": run_key,
            "queue_item": item_id,
            "queue_status": item.status if item else None,
            "attempts": item.attempts if item else None,
            "status": row.status if row else (item.status if item else "unknown"),
            "result": row.result if row else None,
        }
        if row is not None and row.error_class:
            report["error"] = {"class": row.error_class, "code": row.error_code}
        if item is not None and item.status == "queued":
            report["retry_at"] = item.scheduled_for.isoformat()
        return report


def load_demo_data(settings: Settings) -> DemoSummary:
    prepare(settings, migrate=True)
    engine = create_db_engine(settings.resolved_database_url)
    try:
        with transaction(create_session_factory(engine)) as session:
            summary = load_demo(session, now=SystemClock().now())
        log.info("demo.loaded", count=summary.total)
        return summary
    finally:
        engine.dispose()


def _fmt_td(value: timedelta | None) -> str | None:
    if value is None:
        return None
    hours = value.total_seconds() / 3600
    return f"{hours:g}h"


def schedule_rows(*, count: int = 1) -> list[dict[str, Any]]:
    now = SystemClock().now()
    return [
        {
            "name": s.name,
            "cron": s.cron,
            "endpoint": s.endpoint,
            "purpose": s.purpose,
            "queue": s.queue,
            "retries": s.retry.retries,
            "catch_up": s.catch_up.describe(),
            "overlap": s.overlap,
            "freshness_slo": _fmt_td(s.freshness_slo),
            "next": [t.strftime("%Y-%m-%dT%H:%MZ") for t in next_slots(s.cron, now, count)],
        }
        for s in SCHEDULES
    ]
