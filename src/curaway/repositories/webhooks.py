"""The webhook inbox: one row per (source, event id), so a redelivery is answered as a duplicate.

A delivery applies its effects and inserts its row (with the outcome) in one transaction, so a crash leaves either
nothing (the sender retries) or the whole result. The unique constraint on ``(source, event_id)`` makes two concurrent
deliveries of one id collapse into one: the loser's insert finds the winner's row, and the loser rolls back.
Rows are kept at least ``INBOX_RETENTION`` (Svix retries one message id for about 28 h); ``prune_inbox`` runs as a
scheduled maintenance step.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from curaway.models import WebhookInbox

INBOX_RETENTION = timedelta(days=3)


def find_inbox(session: Session, *, source: str, event_id: str) -> WebhookInbox | None:
    return session.scalar(select(WebhookInbox).where(WebhookInbox.source == source, WebhookInbox.event_id == event_id))


_INSERT_INBOX: dict[str, Any] = {}


def _build_insert(dialect: str) -> Any:
    """Built once per dialect with bind parameters: statement construction is a visible cost on the hot path."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = (
        insert(WebhookInbox)
        .values(
            source=bindparam("b_source"),
            event_id=bindparam("b_event_id"),
            event_type=bindparam("b_event_type"),
            outcome=bindparam("b_outcome"),
            result=bindparam("b_result"),
            received_at=bindparam("b_received_at"),
            processed_at=bindparam("b_received_at"),
            created_at=bindparam("b_received_at"),
        )
        .on_conflict_do_nothing(index_elements=["source", "event_id"])
        .returning(WebhookInbox.id)
    )
    _INSERT_INBOX[dialect] = stmt
    return stmt


def record_inbox(
    session: Session,
    *,
    source: str,
    event_id: str,
    event_type: str | None,
    outcome: str,
    result: dict[str, Any],
    received_at: datetime,
) -> bool:
    """Insert the inbox row with its final outcome; ``False`` when the id is already there (a duplicate).

    ``INSERT … ON CONFLICT DO NOTHING`` on ``(source, event_id)``: on Postgres a concurrent insert of the same id waits
    for the other transaction and then does nothing, so the caller rolls back its effects and answers a duplicate.
    """
    dialect = session.get_bind().dialect.name
    stmt = _INSERT_INBOX.get(dialect)
    if stmt is None:
        stmt = _build_insert(dialect)
    params = {
        "b_source": source,
        "b_event_id": event_id,
        "b_event_type": event_type,
        "b_outcome": outcome,
        "b_result": result,
        "b_received_at": received_at,
    }
    # Core execution on the session's connection: the ORM bulk-insert path costs more than the statement itself.
    return session.connection().execute(stmt, params).first() is not None


def prune_inbox(session: Session, *, older_than: datetime) -> int:
    """Delete inbox rows received before ``older_than``; returns the number deleted.

    Callers pass ``now - INBOX_RETENTION`` (or older): pruning younger rows would let a Svix retry apply twice.
    """
    result = session.execute(
        delete(WebhookInbox).where(WebhookInbox.received_at < older_than).execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def list_inbox(
    session: Session, *, source: str | None = None, outcome: str | None = None, limit: int = 100
) -> Sequence[WebhookInbox]:
    stmt = select(WebhookInbox).order_by(WebhookInbox.received_at.desc(), WebhookInbox.id.desc()).limit(limit)
    if source is not None:
        stmt = stmt.where(WebhookInbox.source == source)
    if outcome is not None:
        stmt = stmt.where(WebhookInbox.outcome == outcome)
    return list(session.scalars(stmt))
