"""Every schedule and one-off task, declared once as data (DESIGN §2 "Registries are explicit data").

``schedules sync`` makes a backend match this table; the dispatcher, the internal endpoints, readiness and the CLI
all read it. Nothing registers by import side effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

CRON_QUEUE = "crons"
EXTRACTION_QUEUE = "extraction"
SWEEP_QUEUE = "fhir"

OverlapPolicy = Literal["skip_if_running", "allow"]


@dataclass(frozen=True)
class RetryPolicy:
    """Retries after the first attempt (3 → 4 deliveries), exponential backoff with a cap.

    ``delay_s(n)`` is the wait before retry ``n`` (0-based): ``min_backoff_s * 2**n`` capped at ``max_backoff_s``.
    Cloud Tasks expresses this as ``max_attempts = retries + 1`` and ``max_doublings``; QStash as ``Upstash-Retries``.
    """

    retries: int = 3
    min_backoff_s: float = 10.0
    max_backoff_s: float = 600.0

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def delay_s(self, retry_index: int) -> float:
        return float(min(self.max_backoff_s, self.min_backoff_s * math.pow(2, max(0, retry_index))))

    def is_final(self, retry_count: int) -> bool:
        """``retry_count`` is 0 on the first delivery (``Upstash-Retried``, ``X-CloudTasks-TaskRetryCount``)."""
        return retry_count >= self.retries


@dataclass(frozen=True)
class CatchUp:
    """What the cron loop does about slots missed while no dispatcher ran.

    ``skip``: nothing; ``latest``: run the most recent missed slot once; ``all_within``: every missed slot
    younger than ``within``.
    """

    mode: Literal["skip", "latest", "all_within"] = "latest"
    within: timedelta | None = None

    @classmethod
    def all_within(cls, within: timedelta) -> CatchUp:
        return cls(mode="all_within", within=within)

    def describe(self) -> str:
        if self.mode == "all_within" and self.within is not None:
            return f"all_within({int(self.within.total_seconds())}s)"
        return self.mode


@dataclass(frozen=True)
class TaskSpec:
    """A unit of work the runtime can execute, reachable at ``endpoint``."""

    name: str
    endpoint: str
    purpose: str
    queue: str = CRON_QUEUE
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    overlap: OverlapPolicy = "allow"
    timeout_s: float = 170.0  # under Cloud Scheduler's 180 s default attempt deadline

    @property
    def is_cron(self) -> bool:
        return False


@dataclass(frozen=True)
class Schedule(TaskSpec):
    cron: str = ""
    catch_up: CatchUp = field(default_factory=CatchUp)
    freshness_slo: timedelta | None = None
    overlap: OverlapPolicy = "skip_if_running"

    @property
    def is_cron(self) -> bool:
        return True


def _cron(name: str, cron: str, purpose: str, **kwargs: object) -> Schedule:
    return Schedule(
        name=name,
        endpoint=f"/api/v1/internal/tasks/{name}",
        purpose=purpose,
        cron=cron,
        **kwargs,  # type: ignore[arg-type]
    )


SCHEDULES: tuple[Schedule, ...] = (
    _cron(
        "exchange-rate-refresh",
        "0 0 * * *",
        "Pull currency rates from the Frankfurter API",
        freshness_slo=timedelta(hours=26),
        catch_up=CatchUp(mode="latest"),
    ),
    _cron(
        "intake-reminders",
        "0 * * * *",
        "Email patients stuck in intake > 24h",
        freshness_slo=timedelta(hours=2),
        catch_up=CatchUp(mode="latest"),
    ),
    _cron(
        "stale-session-cleanup",
        "0 3 * * *",
        "Clear stuck OCR jobs, orphaned uploads",
        freshness_slo=timedelta(hours=26),
        catch_up=CatchUp(mode="latest"),
    ),
    _cron(
        "consent-expiry-check",
        "0 9 * * *",
        "Warn 30-day-expiring consents",
        freshness_slo=timedelta(hours=26),
        catch_up=CatchUp(mode="latest"),
    ),
    _cron(
        "notification-digest",
        "0 8 * * *",
        "Daily digest emails",
        freshness_slo=timedelta(hours=26),
        # A digest sent hours late is still useful; one sent for a day long gone is not.
        catch_up=CatchUp(mode="latest"),
    ),
    _cron(
        "analytics-refresh",
        "0 */2 * * *",
        "Refresh Metabase materialized views",
        freshness_slo=timedelta(hours=5),
        catch_up=CatchUp(mode="latest"),
    ),
)

ONE_OFF_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec(
        name="extract",
        endpoint="/api/v1/internal/extract",
        purpose="Document text + entity extraction",
        queue=EXTRACTION_QUEUE,
        timeout_s=600.0,
    ),
    TaskSpec(
        name="fhir-sweep",
        endpoint="/api/v1/internal/fhir/sweep",
        purpose="Backfill FHIR resources for cases that lack them",
        queue=SWEEP_QUEUE,
        timeout_s=600.0,
    ),
)

_BY_NAME: dict[str, TaskSpec] = {t.name: t for t in (*SCHEDULES, *ONE_OFF_TASKS)}


def all_tasks() -> tuple[TaskSpec, ...]:
    return (*SCHEDULES, *ONE_OFF_TASKS)


def get_task(name: str) -> TaskSpec | None:
    return _BY_NAME.get(name)


def get_schedule(name: str) -> Schedule | None:
    spec = _BY_NAME.get(name)
    return spec if isinstance(spec, Schedule) else None
