"""The composition root's product: every long-lived collaborator of a running service, built once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import Engine

from curaway.clock import Clock, SystemClock
from curaway.db import SessionFactory, create_db_engine, create_session_factory
from curaway.integrations import Integrations
from curaway.settings import Settings


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


@dataclass
class Services:
    settings: Settings
    engine: Engine
    session_factory: SessionFactory
    clock: Clock
    integrations: Integrations
    metrics: Metrics
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        engine: Engine | None = None,
        clock: Clock | None = None,
        integrations: Integrations | None = None,
    ) -> Services:
        engine = engine or create_db_engine(settings.resolved_database_url)
        return cls(
            settings=settings,
            engine=engine,
            session_factory=create_session_factory(engine),
            clock=clock or SystemClock(),
            integrations=integrations or Integrations(),
            metrics=Metrics.create(),
        )
