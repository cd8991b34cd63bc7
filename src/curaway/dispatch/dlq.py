"""Dead-letter operations shared by the CLI and the internal API: list, show, replay (idempotent)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from curaway.clock import Clock
from curaway.db import SessionFactory, read_transaction, transaction
from curaway.dispatch.delivery import H_RUN_KEY
from curaway.errors import NotFoundError, ValidationFailed
from curaway.logging import get_logger
from curaway.models import DeadLetter
from curaway.repositories import queue as queue_repo
from curaway.repositories.runtime import get_dead_letter, list_dead_letters, mark_replayed
from curaway.schedules import get_task

log = get_logger("curaway.dlq")


def letter_dict(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "task": letter.task,
        "run_key": letter.run_key,
        "status": letter.status,
        "source": letter.source,
        "attempts": letter.attempts,
        "last_status": letter.last_status,
        "error_class": letter.error_class,
        "error_code": letter.error_code,
        "payload": letter.payload,
        "created_at": letter.created_at.isoformat() if letter.created_at else None,
        "replayed_at": letter.replayed_at.isoformat() if letter.replayed_at else None,
    }


@dataclass(frozen=True)
class ReplayResult:
    dead_letter_id: int
    replayed: bool  # False: it had been replayed already (nothing new enqueued)
    queue_item_id: int | None
    run_key: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "dead_letter_id": self.dead_letter_id,
            "replayed": self.replayed,
            "queue_item_id": self.queue_item_id,
            "run_key": self.run_key,
        }


class DeadLetters:
    def __init__(self, *, session_factory: SessionFactory, clock: Clock, backend: str = "local") -> None:
        self.session_factory = session_factory
        self.clock = clock
        self.backend = backend

    def list_letters(self, *, status: str | None = "open", limit: int = 100) -> list[dict[str, Any]]:
        with read_transaction(self.session_factory) as session:
            return [letter_dict(x) for x in list_dead_letters(session, status=status, limit=limit)]

    def show(self, letter_id: int) -> dict[str, Any]:
        with read_transaction(self.session_factory) as session:
            letter = get_dead_letter(session, letter_id)
            if letter is None:
                raise NotFoundError(f"dead letter {letter_id} not found")
            return letter_dict(letter)

    def replay(self, letter_id: int) -> ReplayResult:
        """Re-enqueue with the original run key, in the same transaction that marks the letter replayed: replaying
        twice re-runs once, and a crash cannot mark a letter replayed without enqueueing it."""
        if self.backend != "local":
            # Replays go onto the local queue; with another backend nothing would deliver them.
            raise ValidationFailed(
                f"replay through CURAWAY_DISPATCH_BACKEND={self.backend} is not available in this build",
                code="replay_unavailable",
            )
        now = self.clock.now()
        dedup_key = f"replay:{letter_id}"
        with transaction(self.session_factory) as session:
            letter = get_dead_letter(session, letter_id)
            if letter is None:
                raise NotFoundError(f"dead letter {letter_id} not found")
            spec = get_task(letter.task)
            if spec is None:
                raise ValidationFailed(f"dead letter {letter_id} is for {letter.task!r}, which cannot be replayed here")
            if not mark_replayed(session, letter_id=letter_id, now=now, replay_dedup_key=dedup_key):
                existing = session.scalar(queue_repo.select_by_dedup_key(dedup_key))
                return ReplayResult(letter_id, False, existing.id if existing else None, letter.run_key)
            item, _ = queue_repo.enqueue(
                session,
                task=spec.name,
                queue=spec.queue,
                dedup_key=dedup_key,
                payload=dict(letter.payload or {}),
                headers={H_RUN_KEY: letter.run_key},
                scheduled_for=now,
                max_attempts=spec.retry.max_attempts,
                now=now,
            )
            log.info("dlq.replayed", dead_letter_id=letter_id, task=spec.name, run_key=letter.run_key)
            return ReplayResult(letter_id, True, item.id, letter.run_key)

    def replay_all(self) -> list[ReplayResult]:
        with transaction(self.session_factory) as session:
            ids = [x.id for x in list_dead_letters(session, status="open", limit=10_000)]
        results = []
        for letter_id in ids:
            try:
                results.append(self.replay(letter_id))
            except ValidationFailed as exc:
                if exc.code == "replay_unavailable":
                    raise
                log.warning("dlq.not_replayable", dead_letter_id=letter_id)
        return results
