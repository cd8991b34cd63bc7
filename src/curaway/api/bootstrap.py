"""Composition root used by the CLI: build services and the app from settings."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import FastAPI

from curaway.api.app import create_app
from curaway.api.services import Services
from curaway.clock import SystemClock
from curaway.db import create_db_engine, create_session_factory, transaction, upgrade
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


def build_app(settings: Settings, *, dispatcher: bool = True, **overrides: Any) -> FastAPI:
    services = Services.build(settings, **overrides)
    return create_app(settings, services=services)


async def run_worker(settings: Settings, *, over_http: bool, concurrency: int, cron: bool) -> None:
    raise NotImplementedError


def load_demo_data(settings: Settings) -> DemoSummary:
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
