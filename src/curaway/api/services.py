"""The composition root's product: every long-lived collaborator of a running service, built once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import Engine

from curaway.clock import Clock, SystemClock
from curaway.db import SessionFactory, create_db_engine, create_session_factory
from curaway.dispatch.auth import InternalAuth, JwksCache
from curaway.dispatch.dlq import DeadLetters
from curaway.dispatch.local import LocalEnqueuer
from curaway.dispatch.runner import RunnerConfig, TaskRunner
from curaway.errors import ConfigurationError
from curaway.integrations import Integrations
from curaway.settings import Settings
from curaway.tasks.base import Enqueuer, EnqueueReceipt, Handler
from curaway.tasks.registry import HANDLERS


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    task_runs: Counter
    task_seconds: Histogram
    auth_accepted: Counter
    auth_rejected: Counter
    webhooks: Counter

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter(
                "curaway_http_requests",
                "HTTP requests by route and status",
                ["route", "status"],
                registry=registry,
            ),
            task_runs=Counter(
                "curaway_task_runs",
                "Task deliveries by task and outcome",
                ["task", "outcome"],
                registry=registry,
            ),
            task_seconds=Histogram(
                "curaway_task_seconds",
                "Handler wall time",
                ["task"],
                registry=registry,
                buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 15, 60, 180, 600),
            ),
            auth_accepted=Counter(
                "curaway_internal_auth_accepted",
                "Internal calls accepted, by verifier and key",
                ["verifier", "key_id"],
                registry=registry,
            ),
            auth_rejected=Counter(
                "curaway_internal_auth_rejected",
                "Internal calls rejected, by reason",
                ["reason"],
                registry=registry,
            ),
            webhooks=Counter(
                "curaway_webhooks",
                "Inbound webhooks by source, type and outcome",
                ["source", "event_type", "outcome"],
                registry=registry,
            ),
        )


class UnavailableEnqueuer:
    """Publishing through a backend this build cannot reach: fail loudly rather than lose work."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def enqueue(self, task: str, payload: Any, *, dedup_key: str | None = None, delay_s: float = 0.0) -> EnqueueReceipt:
        raise ConfigurationError(
            f"CURAWAY_DISPATCH_BACKEND={self.backend}: publishing through this backend is not available in this "
            "build; use the local backend (inbound deliveries from it are verified and run)"
        )


@dataclass
class Services:
    settings: Settings
    engine: Engine
    session_factory: SessionFactory
    clock: Clock
    integrations: Integrations
    metrics: Metrics
    internal_auth: InternalAuth
    enqueuer: Enqueuer
    runner: TaskRunner
    dead_letters: DeadLetters
    local_enqueuer: LocalEnqueuer
    extras: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        self.integrations.close()
        self.engine.dispose()

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        engine: Engine | None = None,
        clock: Clock | None = None,
        integrations: Integrations | None = None,
        enqueuer: Enqueuer | None = None,
        handlers: dict[str, Handler] | None = None,
        runner_config: RunnerConfig | None = None,
        oidc_certs: JwksCache | None = None,
    ) -> Services:
        engine = engine or create_db_engine(settings.resolved_database_url)
        session_factory = create_session_factory(engine)
        clock = clock or SystemClock()
        integrations = integrations or Integrations()
        metrics = Metrics.create()
        local = LocalEnqueuer(session_factory=session_factory, clock=clock)
        if enqueuer is None:
            enqueuer = local if settings.dispatch_backend == "local" else UnavailableEnqueuer(settings.dispatch_backend)

        def observe(task: str, outcome: str, seconds: float) -> None:
            metrics.task_runs.labels(task=task, outcome=outcome).inc()
            if seconds:
                metrics.task_seconds.labels(task=task).observe(seconds)

        runner = TaskRunner(
            settings=settings,
            session_factory=session_factory,
            clock=clock,
            integrations=integrations,
            enqueuer=enqueuer,
            handlers=handlers if handlers is not None else HANDLERS,
            config=runner_config,
            observe=observe,
        )
        return cls(
            settings=settings,
            engine=engine,
            session_factory=session_factory,
            clock=clock,
            integrations=integrations,
            metrics=metrics,
            internal_auth=InternalAuth(settings, clock=clock, certs=oidc_certs),
            enqueuer=enqueuer,
            runner=runner,
            dead_letters=DeadLetters(session_factory=session_factory, clock=clock, backend=settings.dispatch_backend),
            local_enqueuer=local,
        )
