"""The schema built from migrations matches the models (``alembic check``), on SQLite and Postgres."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect

from curaway.db import alembic_config, create_db_engine, current_revision, upgrade
from curaway.models import Base


def test_migrations_match_models(database_url):
    upgrade(database_url)  # idempotent on an already migrated database
    command.check(alembic_config(database_url))  # raises on drift
    engine = create_db_engine(database_url)
    try:
        assert current_revision(engine) is not None
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(tmp_path):
    url = f"sqlite:///{tmp_path / 'roundtrip.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    engine = create_db_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    upgrade(url)
    command.check(alembic_config(url))
