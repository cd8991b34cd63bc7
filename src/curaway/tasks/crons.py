"""The six cron handlers (registry: ``curaway.schedules.SCHEDULES``).

Minimal bodies wired by the runtime issue; the crons issue replaces each with the real, idempotent work.
"""

from __future__ import annotations

from typing import Any

from curaway.tasks.base import Result, TaskContext


def _minimal(ctx: TaskContext, payload: dict[str, Any]) -> Result:
    ctx.log.info("task.minimal_handler", task=ctx.task, run_key=ctx.run_key)
    return Result({"handled": ctx.task})


def exchange_rate_refresh(ctx: TaskContext, payload: dict[str, Any]) -> Result:
    return _minimal(ctx, payload)


def intake_reminders(ctx: TaskContext, payload: dict[str, Any]) -> Result:
    return Result({"reminders_sent": 0})


def stale_session_cleanup(ctx: TaskContext, payload: dict[str, Any]) -> Result:
    return _minimal(ctx, payload)


def consent_expiry_check(ctx: TaskContext, payload: dict[str, Any]) -> Result:
    return _minimal(ctx, payload)


def notification_digest(ctx: TaskContext, payload: dict[str, Any]) -> Result:
    return _minimal(ctx, payload)


def analytics_refresh(ctx: TaskContext, payload: dict[str, Any]) -> Result:
    return _minimal(ctx, payload)
