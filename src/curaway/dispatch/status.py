"""Operator-facing runtime status: schedule freshness against each SLO, queue depth, open dead letters."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from curaway.repositories import ledger
from curaway.repositories import queue as queue_repo
from curaway.repositories.crons import exchange_rate_freshness
from curaway.repositories.runtime import dead_letter_counts
from curaway.schedules import SCHEDULES
from curaway.schedules.registry import get_schedule


def schedule_freshness(session: Session, *, now: datetime) -> dict[str, Any]:
    """Per schedule: age of the last successful run vs its freshness SLO (``ok`` | ``stale`` | ``never``)."""
    schedules: dict[str, Any] = {}
    for s in SCHEDULES:
        last = ledger.last_success(session, s.name)
        finished = last.finished_at if last else None
        age_s = (now - finished).total_seconds() if finished else None
        slo_s = s.freshness_slo.total_seconds() if s.freshness_slo else None
        if finished is None:
            state = "never"
        elif slo_s is not None and age_s is not None and age_s > slo_s:
            state = "stale"
        else:
            state = "ok"
        schedules[s.name] = {
            "status": state,
            "last_success_at": finished.isoformat() if finished else None,
            "age_s": round(age_s) if age_s is not None else None,
            "slo_s": slo_s,
        }
    worst = "ok"
    states = {v["status"] for v in schedules.values()}
    if "stale" in states:
        worst = "stale"
    elif "never" in states:
        worst = "never"
    return {"status": worst, "schedules": schedules}


def rates_freshness(session: Session, *, now: datetime, base: str) -> dict[str, Any]:
    """The data the exchange-rate cron keeps fresh, against that schedule's SLO."""
    schedule = get_schedule("exchange-rate-refresh")
    slo = schedule.freshness_slo if schedule and schedule.freshness_slo else timedelta(hours=26)
    fresh = exchange_rate_freshness(session, base=base)
    age = fresh.age_s(now)
    return {
        "status": "never" if fresh.fetched_at is None else ("stale" if fresh.is_stale(now, max_age=slo) else "ok"),
        "base": fresh.base,
        "latest_date": fresh.latest_date.isoformat() if fresh.latest_date else None,
        "quotes": fresh.quotes,
        "age_s": round(age) if age is not None else None,
        "slo_s": slo.total_seconds(),
    }


def runtime_status(session: Session, *, now: datetime, fx_base: str) -> dict[str, Any]:
    return {
        "freshness": schedule_freshness(session, now=now),
        "exchange_rates": rates_freshness(session, now=now, base=fx_base),
        "queue": queue_repo.counts_by_status(session),
        "dead_letters": dead_letter_counts(session),
    }
