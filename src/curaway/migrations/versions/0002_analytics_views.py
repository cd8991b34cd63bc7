"""analytics views for Metabase

Postgres: materialized views (``WITH NO DATA``; the first ``analytics-refresh`` populates them, later ones use
``REFRESH MATERIALIZED VIEW CONCURRENTLY``, which needs the unique indexes created here). SQLite: plain tables of
the same names and columns, rebuilt in one transaction by the handler. ``analytics_refresh_state`` records the
refresh generation on both. None of these are ORM models; ``env.py`` keeps them out of ``alembic check``.

The SELECTs are a frozen copy of ``curaway.repositories.crons.ANALYTICS_SQL`` (a unit test checks they agree).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 18:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS_PG: dict[str, tuple[str, tuple[str, ...]]] = {
    "analytics_case_funnel": (
        "SELECT tenant_id, status, (created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS cases "
        "FROM cases GROUP BY tenant_id, status, (created_at AT TIME ZONE 'UTC')::date",
        ("tenant_id", "status", "day"),
    ),
    "analytics_document_pipeline": (
        "SELECT status, fhir_status, count(*) AS documents, max(updated_at) AS last_updated_at "
        "FROM documents GROUP BY status, fhir_status",
        ("status", "fhir_status"),
    ),
    "analytics_task_health": (
        "SELECT task, status AS outcome, "
        "(coalesce(finished_at, started_at, created_at) AT TIME ZONE 'UTC')::date AS day, "
        "count(*) AS runs, "
        "avg(EXTRACT(EPOCH FROM (finished_at - started_at))) AS avg_duration_s, "
        "max(attempts) AS max_attempts "
        "FROM run_ledger "
        "GROUP BY task, status, (coalesce(finished_at, started_at, created_at) AT TIME ZONE 'UTC')::date",
        ("task", "outcome", "day"),
    ),
}

TABLES_SQLITE: dict[str, str] = {
    "analytics_case_funnel": (
        "CREATE TABLE analytics_case_funnel ("
        "tenant_id VARCHAR(40) NOT NULL, status VARCHAR(32) NOT NULL, day DATE NOT NULL, cases INTEGER NOT NULL, "
        "CONSTRAINT pk_analytics_case_funnel PRIMARY KEY (tenant_id, status, day))"
    ),
    "analytics_document_pipeline": (
        "CREATE TABLE analytics_document_pipeline ("
        "status VARCHAR(32) NOT NULL, fhir_status VARCHAR(32) NOT NULL, documents INTEGER NOT NULL, "
        "last_updated_at DATETIME, "
        "CONSTRAINT pk_analytics_document_pipeline PRIMARY KEY (status, fhir_status))"
    ),
    "analytics_task_health": (
        "CREATE TABLE analytics_task_health ("
        "task VARCHAR(64) NOT NULL, outcome VARCHAR(16) NOT NULL, day DATE NOT NULL, runs INTEGER NOT NULL, "
        "avg_duration_s FLOAT, max_attempts INTEGER, "
        "CONSTRAINT pk_analytics_task_health PRIMARY KEY (task, outcome, day))"
    ),
}

STATE_TABLE = (
    "CREATE TABLE analytics_refresh_state ("
    "name VARCHAR(64) NOT NULL, generation INTEGER NOT NULL, refreshed_at {ts}, "
    "CONSTRAINT pk_analytics_refresh_state PRIMARY KEY (name))"
)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        for name, (query, unique_cols) in VIEWS_PG.items():
            op.execute(f"CREATE MATERIALIZED VIEW {name} AS {query} WITH NO DATA")
            op.execute(f"CREATE UNIQUE INDEX uq_{name} ON {name} ({', '.join(unique_cols)})")
        op.execute(STATE_TABLE.format(ts="TIMESTAMP WITH TIME ZONE"))
    else:
        for ddl in TABLES_SQLITE.values():
            op.execute(ddl)
        op.execute(STATE_TABLE.format(ts="DATETIME"))


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute("DROP TABLE IF EXISTS analytics_refresh_state")
    for name in reversed(list(VIEWS_PG)):
        if dialect == "postgresql":
            op.execute(f"DROP MATERIALIZED VIEW IF EXISTS {name}")
        else:
            op.execute(f"DROP TABLE IF EXISTS {name}")
