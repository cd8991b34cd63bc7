"""Building a handler's ``TaskContext`` directly in tests, with a recording enqueuer and a recording logger."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from curaway.clock import Clock
from curaway.integrations import Integrations
from curaway.logging import get_logger
from curaway.settings import Settings
from curaway.tasks.base import EnqueueReceipt, TaskContext


@dataclass
class RecordingEnqueuer:
    """``Enqueuer`` fake: records every call; a repeated dedup key is reported as not created."""

    calls: list[tuple[str, dict[str, Any], str | None]] = field(default_factory=list)

    def enqueue(
        self, task: str, payload: Mapping[str, Any], *, dedup_key: str | None = None, delay_s: float = 0.0
    ) -> EnqueueReceipt:
        key = dedup_key or f"{task}:{len(self.calls)}"
        created = all(k != key for _t, _p, k in self.calls)
        self.calls.append((task, dict(payload), key))
        return EnqueueReceipt(task=task, dedup_key=key, created=created)


class RecordingLog:
    """A structlog-shaped logger that records ``(level, event, fields)`` and can wake a waiter on an event."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._waiters: dict[str, threading.Event] = {}
        self._counts: dict[str, int] = {}
        self._inner = get_logger("tests.crons")

    def waiter(self, event: str, *, count: int = 1) -> threading.Event:
        flag = threading.Event()
        with self._lock:
            self._waiters[f"{event}#{count}"] = flag
        return flag

    def _record(self, level: str, event: str, **fields: Any) -> None:
        with self._lock:
            self.records.append((level, event, fields))
            self._counts[event] = self._counts.get(event, 0) + 1
            flag = self._waiters.get(f"{event}#{self._counts[event]}")
        if flag is not None:
            flag.set()

    def info(self, event: str, **fields: Any) -> None:
        self._record("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._record("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self._record("error", event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._record("debug", event, **fields)

    def events(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [f for _lvl, e, f in self.records if e == name]


def make_ctx(
    *,
    task: str,
    session_factory: Any,
    settings: Settings,
    clock: Clock,
    email: Any = None,
    rates: Any = None,
    storage: Any = None,
    log: Any = None,
    run_key: str | None = None,
    slot: datetime | None = None,
) -> TaskContext:
    return TaskContext(
        task=task,
        run_key=run_key or f"{task}@manual:test",
        session_factory=session_factory,
        clock=clock,
        settings=settings,
        integrations=Integrations(email=email, rates=rates, storage=storage),
        enqueuer=RecordingEnqueuer(),
        log=log if log is not None else get_logger("tests.crons"),
        slot=slot,
    )
