"""Operator-facing runtime status: schedule freshness against each SLO, queue depth, open dead letters."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from curaway.repositories import ledger
from curaway.repositories import queue as queue_repo
from curaway.repositories.runtime import dead_letter_counts
from curaway.schedules import SCHEDULES


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


def runtime_status(session: Session, *, now: datetime) -> dict[str, Any]:
    return {
        "freshness": schedule_freshness(session, now=now),
        "queue": queue_repo.counts_by_status(session),
        "dead_letters": dead_letter_counts(session),
    }
