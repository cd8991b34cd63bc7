"""``schedules plan|sync``: make a backend's registered schedules match the registry (plan → apply, idempotent).

The local backend keeps its registrations in ``schedule_states``. Other backends implement the same two steps
against their own APIs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from sqlalchemy.orm import Session

from curaway.clock import Clock
from curaway.repositories.runtime import delete_schedule_state, schedule_states, upsert_schedule_state
from curaway.schedules import SCHEDULES, Schedule

Action = Literal["create", "update", "delete", "unchanged"]


@dataclass(frozen=True)
class Change:
    schedule: str
    action: Action
    cron: str | None
    endpoint: str | None
    detail: str = ""

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)


def plan_local(session: Session, schedules: tuple[Schedule, ...] = SCHEDULES) -> list[Change]:
    registered = schedule_states(session)
    changes: list[Change] = []
    for s in schedules:
        row = registered.get(s.name)
        if row is None:
            changes.append(Change(s.name, "create", s.cron, s.endpoint))
        elif (row.cron, row.endpoint, row.enabled) != (s.cron, s.endpoint, True):
            differences = []
            if row.cron != s.cron:
                differences.append(f"cron {row.cron!r} → {s.cron!r}")
            if row.endpoint != s.endpoint:
                differences.append(f"endpoint {row.endpoint!r} → {s.endpoint!r}")
            if not row.enabled:
                differences.append("enable")
            changes.append(Change(s.name, "update", s.cron, s.endpoint, "; ".join(differences)))
        else:
            changes.append(Change(s.name, "unchanged", s.cron, s.endpoint))
    known = {s.name for s in schedules}
    for name, row in sorted(registered.items()):
        if name not in known:
            changes.append(Change(name, "delete", row.cron, row.endpoint, "not in the registry"))
    return changes


def apply_local(session: Session, changes: list[Change], *, clock: Clock) -> int:
    applied = 0
    now = clock.now()
    for change in changes:
        if change.action in ("create", "update"):
            assert change.cron is not None and change.endpoint is not None
            upsert_schedule_state(
                session, schedule=change.schedule, cron=change.cron, endpoint=change.endpoint, enabled=True, now=now
            )
            applied += 1
        elif change.action == "delete":
            delete_schedule_state(session, change.schedule)
            applied += 1
    return applied
