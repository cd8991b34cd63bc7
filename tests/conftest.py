"""Shared fixtures: a scrubbed environment, settings, and fresh databases on SQLite and (when reachable) Postgres.

The Postgres tier creates one database per test session (dropped at the end) and truncates between tests.
Under ``CI=true`` an unreachable Postgres is an error, not a skip.
"""

from __future__ import annotations

import gc
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from curaway.db import create_db_engine, create_session_factory, upgrade
from curaway.models import Base
from curaway.settings import Settings

PG_ADMIN_URL = os.environ.get("CURAWAY_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _settings_env_names() -> set[str]:
    names: set[str] = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None) or ([alias] if alias else [])
        names.update(str(c) for c in choices if str(c).isupper())
    return names


SETTINGS_ENV = _settings_env_names()


@pytest.fixture(autouse=True)
def scrub_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's shell must never leak into a test."""
    for name in list(os.environ):
        leaks = name in SETTINGS_ENV or name.startswith(("CURAWAY_", "QSTASH_", "LANGFUSE_", "ANTHROPIC_", "OTEL_"))
        if leaks and name != "CURAWAY_TEST_PG_ADMIN_URL":
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def factory(**values: Any) -> Settings:
        values.setdefault("env", "test")
        values.setdefault("data_dir", tmp_path / "data")
        return Settings(**values)

    return factory


# -- databases ----------------------------------------------------------------------------------------------


def _pg_reachable() -> bool:
    try:
        engine = create_engine(
            PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"),
            connect_args={"connect_timeout": 3},
        )
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    if not _pg_reachable():
        if IN_CI:
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} and CI=true requires the Postgres tier")
        pytest.skip("PostgreSQL not reachable: Postgres tier skipped (set CI=true to make this an error)")
    name = f"curaway_test_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


def _truncate_pg(engine: Engine) -> None:
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    """A migrated, empty database: a copy of the SQLite template, or the session's Postgres database truncated."""
    if request.param == "sqlite":
        path = tmp_path / "curaway.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("pg_database_url")
    engine = create_db_engine(url)
    try:
        _truncate_pg(engine)
    finally:
        engine.dispose()
    yield url


@pytest.fixture(autouse=True)
def _collect_garbage_per_test() -> Iterator[None]:
    """Collect after each test, so an unclosed connection is reported against the test that leaked it."""
    yield
    gc.collect()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = create_db_engine(database_url)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> Any:
    return create_session_factory(engine)
