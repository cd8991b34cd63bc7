"""Data access for the runtime tables: dead letters (shared by the task runner, the dispatcher and webhooks)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from curaway.db import rowcount
from curaway.models import DeadLetter, ScheduleState

REFERENCE_KEYS = frozenset({"dry_run", "limit", "concurrency", "fan_out"})


def scalar_references(payload: Any) -> dict[str, Any]:
    """What of a task payload a dead letter may keep: ids (``*_id``) and the known option flags, scalars only.

    Payloads carry ids by contract, but a caller can send anything; an allow-list keeps PHI out of the DLQ."""
    if not isinstance(payload, dict):
        return {}
    return {
        k: v
        for k, v in payload.items()
        if (k.endswith("_id") or k in REFERENCE_KEYS) and (isinstance(v, str | int | float | bool) or v is None)
    }


def record_dead_letter(
    session: Session,
    *,
    task: str,
    run_key: str,
    payload: dict[str, Any],
    source: str | None,
    attempts: int,
    last_status: int | None,
    error_class: str | None,
    error_code: str | None,
) -> DeadLetter:
    """Write the dead letter for ``run_key`` unless an open one exists (then return it).

    ``payload`` must hold references only (ids), never PHI. At most one *open* dead letter exists per run key; a
    replayed one may be followed by a new one if the replay fails too (``dedup_key = run_key#generation``).
    """
    existing = session.scalar(
        select(DeadLetter).where(DeadLetter.run_key == run_key, DeadLetter.status == "open").limit(1)
    )
    if existing is not None:
        return existing
    generation = session.scalar(select(func.count()).select_from(DeadLetter).where(DeadLetter.run_key == run_key))
    letter = DeadLetter(
        task=task,
        run_key=run_key,
        dedup_key=f"{run_key}#{generation or 0}",
        payload=payload,
        source=source,
        attempts=attempts,
        last_status=last_status,
        error_class=error_class,
        error_code=error_code,
        status="open",
    )
    try:
        with session.begin_nested():
            session.add(letter)
            session.flush()
    except IntegrityError:
        # A concurrent writer recorded the same failure first.
        winner = session.scalar(select(DeadLetter).where(DeadLetter.dedup_key == letter.dedup_key))
        if winner is None:
            raise
        return winner
    return letter


def list_dead_letters(session: Session, *, status: str | None = "open", limit: int = 100) -> list[DeadLetter]:
    stmt = select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)
    if status:
        stmt = stmt.where(DeadLetter.status == status)
    return list(session.scalars(stmt))


def get_dead_letter(session: Session, letter_id: int) -> DeadLetter | None:
    return session.get(DeadLetter, letter_id)


def mark_replayed(session: Session, *, letter_id: int, now: Any, replay_dedup_key: str) -> bool:
    """open → replayed, once: a second replay of the same letter changes nothing (conditional UPDATE)."""
    result = session.execute(
        update(DeadLetter)
        .where(DeadLetter.id == letter_id, DeadLetter.status == "open")
        .values(status="replayed", replayed_at=now, replay_dedup_key=replay_dedup_key, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(rowcount(result))


def dead_letter_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(DeadLetter.status, func.count()).group_by(DeadLetter.status)).all()
    return {status: int(n) for status, n in rows}


# -- schedule state (what the local backend has registered) ------------------------------------------------


def schedule_states(session: Session) -> dict[str, ScheduleState]:
    return {row.schedule: row for row in session.scalars(select(ScheduleState))}


def upsert_schedule_state(
    session: Session, *, schedule: str, cron: str, endpoint: str, enabled: bool, now: Any
) -> ScheduleState:
    row = session.scalars(select(ScheduleState).where(ScheduleState.schedule == schedule)).first()
    if row is None:
        row = ScheduleState(schedule=schedule, cron=cron, endpoint=endpoint, enabled=enabled, synced_at=now)
        session.add(row)
    else:
        row.cron, row.endpoint, row.enabled, row.synced_at = cron, endpoint, enabled, now
    session.flush()
    return row


def delete_schedule_state(session: Session, schedule: str) -> None:
    row = session.scalars(select(ScheduleState).where(ScheduleState.schedule == schedule)).first()
    if row is not None:
        session.delete(row)
        session.flush()


def advance_last_slot(session: Session, *, schedule: str, slot: Any) -> bool:
    """Move ``last_slot`` forward only (several schedulers may race; the max wins)."""
    result = session.execute(
        update(ScheduleState)
        .where(
            ScheduleState.schedule == schedule,
            (ScheduleState.last_slot.is_(None)) | (ScheduleState.last_slot < slot),
        )
        .values(last_slot=slot)
        .execution_options(synchronize_session=False)
    )
    return bool(rowcount(result))
