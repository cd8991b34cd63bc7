"""The local backend's durable queue (``task_queue``).

Claims use ``FOR UPDATE SKIP LOCKED`` on Postgres; on SQLite every transaction is ``BEGIN IMMEDIATE`` (db.py), so
the claim's select-and-update runs with the single write lock held — a correct single-writer claim across threads
and processes. Leases are extended by the owner's heartbeat; an expired lease (a killed worker) makes the item
claimable again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from curaway.db import rowcount
from curaway.models import QueuedTask


def enqueue(
    session: Session,
    *,
    task: str,
    queue: str,
    dedup_key: str,
    payload: dict[str, Any],
    headers: dict[str, Any],
    scheduled_for: datetime,
    max_attempts: int,
    now: datetime,
) -> tuple[QueuedTask, bool]:
    """Insert unless ``dedup_key`` exists. Returns (item, created)."""
    dialect = session.get_bind().dialect.name
    insert_fn = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = (
        insert_fn(QueuedTask)
        .values(
            task=task,
            queue=queue,
            dedup_key=dedup_key,
            payload=payload,
            headers=headers,
            status="queued",
            attempts=0,
            max_attempts=max_attempts,
            scheduled_for=scheduled_for,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["dedup_key"])
        .returning(QueuedTask.id)
    )
    inserted = session.execute(stmt).scalar()
    item = session.scalars(select(QueuedTask).where(QueuedTask.dedup_key == dedup_key)).one()
    return item, inserted is not None


def _claimable(now: datetime) -> Any:
    return or_(
        and_(QueuedTask.status == "queued", QueuedTask.scheduled_for <= now),
        and_(QueuedTask.status == "running", QueuedTask.lease_expires_at <= now),
    )


def claim(
    session: Session,
    *,
    worker: str,
    now: datetime,
    lease_s: float,
    queues: Sequence[str] | None = None,
    item_id: int | None = None,
) -> QueuedTask | None:
    """Take the next due item (or ``item_id``) and lease it to ``worker``; ``attempts`` counts deliveries."""
    pick = select(QueuedTask.id).where(_claimable(now))
    if queues:
        pick = pick.where(QueuedTask.queue.in_(list(queues)))
    if item_id is not None:
        pick = pick.where(QueuedTask.id == item_id)
    pick = pick.order_by(QueuedTask.scheduled_for, QueuedTask.id).limit(1)
    if session.get_bind().dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    stmt = (
        update(QueuedTask)
        .where(QueuedTask.id == pick.scalar_subquery(), _claimable(now))
        .values(
            status="running",
            locked_by=worker,
            lease_expires_at=now + timedelta(seconds=lease_s),
            attempts=QueuedTask.attempts + 1,
            updated_at=now,
        )
        .returning(QueuedTask)
        .execution_options(synchronize_session=False)
    )
    return session.scalars(stmt).first()


def extend_leases(session: Session, *, worker: str, ids: Sequence[int], now: datetime, lease_s: float) -> int:
    if not ids:
        return 0
    result = session.execute(
        update(QueuedTask)
        .where(QueuedTask.id.in_(list(ids)), QueuedTask.locked_by == worker, QueuedTask.status == "running")
        .values(lease_expires_at=now + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    return rowcount(result)


def settle(
    session: Session,
    *,
    item_id: int,
    worker: str,
    now: datetime,
    status: str,
    last_status: int | None,
    last_error: str | None = None,
    retry_at: datetime | None = None,
    refund_attempt: bool = False,
) -> bool:
    """``status``: ``done`` | ``dead`` | ``queued`` (retry at ``retry_at``). Only the lease holder may settle.
    ``refund_attempt`` gives the delivery back (it never reached a handler that could fail)."""
    values: dict[str, Any] = {
        "status": status,
        "last_status": last_status,
        "last_error": last_error,
        "lease_expires_at": None,
        "locked_by": None,
        "updated_at": now,
    }
    if refund_attempt:
        values["attempts"] = QueuedTask.attempts - 1
    if status == "queued":
        values["scheduled_for"] = retry_at or now
    else:
        values["finished_at"] = now
    result = session.execute(
        update(QueuedTask)
        .where(QueuedTask.id == item_id, QueuedTask.locked_by == worker, QueuedTask.status == "running")
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(rowcount(result))


def select_by_dedup_key(dedup_key: str) -> Any:
    return select(QueuedTask).where(QueuedTask.dedup_key == dedup_key)


def get(session: Session, item_id: int) -> QueuedTask | None:
    return session.get(QueuedTask, item_id)


def counts_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(QueuedTask.status, func.count()).group_by(QueuedTask.status)).all()
    return {status: int(n) for status, n in rows}


def next_due(session: Session, *, queues: Sequence[str] | None = None) -> datetime | None:
    stmt = select(func.min(QueuedTask.scheduled_for)).where(QueuedTask.status == "queued")
    if queues:
        stmt = stmt.where(QueuedTask.queue.in_(list(queues)))
    return session.scalar(stmt)
