"""Cron-slot math in UTC (cronsim). A slot is the cron instant a run serves; it names the run key."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from cronsim import CronSim, CronSimError

from curaway.errors import ValidationFailed


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("slot math needs tz-aware datetimes")
    return value.astimezone(UTC)


def validate_cron(expr: str) -> None:
    try:
        CronSim(expr, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ValidationFailed(f"invalid cron expression {expr!r}") from exc


def latest_slot(expr: str, at: datetime) -> datetime:
    """The latest cron instant ≤ ``at`` (an instant exactly on the slot serves that slot)."""
    at = _utc(at).replace(microsecond=0)
    return next(iter(CronSim(expr, at + timedelta(seconds=1), reverse=True)))


def is_slot(expr: str, candidate: datetime) -> bool:
    candidate = _utc(candidate)
    return candidate.second == 0 and candidate.microsecond == 0 and latest_slot(expr, candidate) == candidate


def next_slots(expr: str, after: datetime, count: int = 1) -> list[datetime]:
    it = iter(CronSim(expr, _utc(after)))
    return [next(it) for _ in range(count)]


def slots_between(expr: str, after: datetime, until: datetime, *, limit: int = 10_000) -> Iterator[datetime]:
    """Cron instants in ``(after, until]``, oldest first, at most ``limit``."""
    after, until = _utc(after), _utc(until)
    for n, slot in enumerate(CronSim(expr, after)):
        if slot > until or n >= limit:
            return
        yield slot


def format_slot(slot: datetime) -> str:
    return _utc(slot).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_slot(value: str) -> datetime:
    """RFC 3339 / ISO-8601 (``Z`` or offset) → tz-aware UTC. Naive values are refused."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise ValidationFailed("schedule time is not an RFC 3339 timestamp") from exc
    if parsed.tzinfo is None:
        raise ValidationFailed("schedule time has no UTC offset")
    return parsed.astimezone(UTC)


def slot_key(schedule: str, slot: datetime) -> str:
    return f"{schedule}@{format_slot(slot)}"
