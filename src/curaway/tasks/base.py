"""The handler contract: ``run(ctx, payload) -> Result``, knowing nothing of HTTP or backends (DESIGN §2)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from sqlalchemy.orm import Session

from curaway.clock import Clock
from curaway.db import SessionFactory, transaction
from curaway.errors import PermanentError
from curaway.integrations import Integrations
from curaway.integrations.llm import LlmGateway
from curaway.settings import Settings


@dataclass(frozen=True)
class Result:
    """What a handler did, as JSON-able data. ``skipped`` means "nothing to do by policy" (still a 2xx)."""

    data: dict[str, Any] = field(default_factory=dict)
    status: Literal["succeeded", "skipped"] = "succeeded"


@dataclass(frozen=True)
class EnqueueReceipt:
    task: str
    dedup_key: str
    created: bool  # False: an equal key was already enqueued (deduplicated at enqueue)
    message_id: str | None = None


class Enqueuer(Protocol):
    """Follow-up work, through whatever backend is active. Idempotent per ``dedup_key``."""

    def enqueue(
        self,
        task: str,
        payload: Mapping[str, Any],
        *,
        dedup_key: str | None = None,
        delay_s: float = 0.0,
    ) -> EnqueueReceipt: ...


@dataclass
class TaskContext:
    """Everything a handler may use. Built by the runtime per run; tests build it directly."""

    task: str
    run_key: str
    session_factory: SessionFactory
    clock: Clock
    settings: Settings
    integrations: Integrations
    enqueuer: Enqueuer
    log: Any
    slot: datetime | None = None
    attempt: int = 0  # retries so far (0 on the first delivery)
    final_attempt: bool = False
    trigger: str = "local"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """A short unit of work. Never hold one across an LLM, HTTP or SMTP call."""
        with transaction(self.session_factory) as session:
            yield session


Handler = Callable[[TaskContext, dict[str, Any]], Result]


def llm_gateway(ctx: TaskContext) -> LlmGateway:
    gateway: LlmGateway | None = ctx.integrations.llm
    if gateway is None:
        raise PermanentError("no LLM gateway is configured", code="llm_not_configured")
    return gateway
