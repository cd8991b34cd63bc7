"""The webhook inbox: one row per (source, event id), so a redelivery is answered as a duplicate.

A delivery claims its row and records its outcome in the same transaction as its effects, so a crash leaves either
nothing (the sender retries) or the whole result. The unique constraint on ``(source, event_id)`` makes two concurrent
deliveries of one id collapse into one: the loser waits for the winner's commit and then sees its row.
Rows are kept at least ``INBOX_RETENTION`` (Svix retries one message id for about 28 h); ``prune_inbox`` runs as a
scheduled maintenance step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from curaway.models import WebhookInbox

INBOX_RETENTION = timedelta(days=3)


@dataclass(frozen=True)
class InboxClaim:
    row: WebhookInbox
    duplicate: bool


def find_inbox(session: Session, *, source: str, event_id: str) -> WebhookInbox | None:
    return session.scalar(select(WebhookInbox).where(WebhookInbox.source == source, WebhookInbox.event_id == event_id))


def claim_inbox(
    session: Session, *, source: str, event_id: str, event_type: str | None, received_at: datetime
) -> InboxClaim:
    """Insert the inbox row (outcome ``processing``) or return the existing one as a duplicate."""
    existing = find_inbox(session, source=source, event_id=event_id)
    if existing is not None:
        return InboxClaim(existing, duplicate=True)
    row = WebhookInbox(
        source=source,
        event_id=event_id,
        event_type=event_type,
        outcome="processing",
        received_at=received_at,
        created_at=received_at,
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        # A concurrent delivery of the same id committed first (Postgres waits for it on the unique index).
        winner = find_inbox(session, source=source, event_id=event_id)
        if winner is None:
            raise
        return InboxClaim(winner, duplicate=True)
    return InboxClaim(row, duplicate=False)


def complete_inbox(
    session: Session, row: WebhookInbox, *, outcome: str, result: dict[str, Any], processed_at: datetime
) -> None:
    row.outcome = outcome
    row.result = result
    row.processed_at = processed_at
    session.flush()


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
