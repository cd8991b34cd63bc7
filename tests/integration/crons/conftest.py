from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from curaway.clock import FrozenClock
from curaway.integrations.email import FakeEmailBackend
from curaway.tasks.base import TaskContext
from tests.support.crons_context import make_ctx

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
def settings(make_settings: Callable[..., Any], database_url: str) -> Any:
    return make_settings(database_url=database_url)


@pytest.fixture
def email() -> FakeEmailBackend:
    return FakeEmailBackend()


@pytest.fixture
def ctx_for(
    session_factory: Any, settings: Any, clock: FrozenClock, email: FakeEmailBackend
) -> Callable[..., TaskContext]:
    def factory(task: str, **overrides: Any) -> TaskContext:
        values: dict[str, Any] = {
            "task": task,
            "session_factory": session_factory,
            "settings": settings,
            "clock": clock,
            "email": email,
        }
        values.update(overrides)
        return make_ctx(**values)

    return factory
