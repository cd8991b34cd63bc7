"""Data access for the runtime tables: dead letters (shared by the task runner, the dispatcher and webhooks)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from curaway.models import DeadLetter


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
