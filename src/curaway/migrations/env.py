"""Alembic environment: the URL comes from the Config (``curaway.db.alembic_config``), never from a file."""

from __future__ import annotations

from typing import Any

from alembic import context

from curaway.db import create_db_engine
from curaway.models import Base

config = context.config
target_metadata = Base.metadata

# Not ORM models: the analytics materialized views (Postgres) / rebuilt tables (SQLite) of migration 0002.
NON_MODEL_PREFIXES = ("analytics_",)


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Keep the analytics views/tables (and their indexes) out of autogenerate and ``alembic check``."""
    table = getattr(obj, "table", None)
    owner = table.name if type_ in {"index", "unique_constraint", "column"} and table is not None else name
    return not (owner or "").startswith(NON_MODEL_PREFIXES)


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        compare_type=True,
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url") or ""
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
                include_object=include_object,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
