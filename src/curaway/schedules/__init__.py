"""The schedule and task registry (explicit data) and cron-slot math."""

from curaway.schedules.registry import (
    ONE_OFF_TASKS,
    SCHEDULES,
    CatchUp,
    RetryPolicy,
    Schedule,
    TaskSpec,
    all_tasks,
    get_task,
)
from curaway.schedules.slots import latest_slot, next_slots, parse_slot, slot_key, slots_between

__all__ = [
    "ONE_OFF_TASKS",
    "SCHEDULES",
    "CatchUp",
    "RetryPolicy",
    "Schedule",
    "TaskSpec",
    "all_tasks",
    "get_task",
    "latest_slot",
    "next_slots",
    "parse_slot",
    "slot_key",
    "slots_between",
]
