"""The ``curaway`` command (Typer + Rich). Heavy modules are imported inside commands so ``--help`` is instant."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

app = typer.Typer(help="Curaway async pipelines + webhooks.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
schedules_app = typer.Typer(help="The cron registry and what a backend has registered.", no_args_is_help=True)
tasks_app = typer.Typer(help="Run tasks through the dispatcher.", no_args_is_help=True)
fhir_app = typer.Typer(help="FHIR backfill.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: inspect and replay.", no_args_is_help=True)
dev_app = typer.Typer(help="Developer helpers (dev only).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(schedules_app, name="schedules")
app.add_typer(tasks_app, name="tasks")
app.add_typer(fhir_app, name="fhir")
app.add_typer(dlq_app, name="dlq")
app.add_typer(dev_app, name="dev")

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _settings(**overrides: Any) -> Any:
    from curaway.errors import ConfigurationError
    from curaway.settings import load_settings

    try:
        return load_settings(**overrides)
    except ConfigurationError as exc:
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - pydantic.ValidationError: name the variable, never echo its value
        _fail(f"invalid configuration: {_describe_validation(exc)}")


def _describe_validation(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for err in errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{loc}: {err.get('msg')}")
        return "; ".join(parts)
    return type(exc).__name__


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _logging(settings: Any) -> None:
    from curaway.logging import configure_logging

    configure_logging(level=settings.log_level, fmt=settings.log_format)


def _emit(data: Any, as_json: bool, render: Any) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        render(data)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    no_dispatcher: Annotated[bool, typer.Option("--no-dispatcher", help="Do not run the embedded dispatcher.")] = False,
    no_migrate: Annotated[bool, typer.Option("--no-migrate", help="Do not apply migrations on start.")] = False,
) -> None:
    """Serve the API (and, on the local backend, the embedded dispatcher)."""
    import uvicorn

    from curaway.api.bootstrap import build_app, prepare

    settings = _settings()
    _logging(settings)
    prepare(settings, migrate=not no_migrate)
    application = build_app(settings, dispatcher=not no_dispatcher)
    typer.echo(
        f"curaway {settings.env} on http://{host}:{port}  (health: /healthz, ops: /ops, API docs: /docs)",
        err=True,
    )
    uvicorn.run(application, host=host, port=port, log_config=None, access_log=False, lifespan="on")


@app.command()
def worker(
    http: Annotated[bool, typer.Option("--http", help="Deliver over HTTP to CURAWAY_PUBLIC_URL.")] = False,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Parallel deliveries.")] = 4,
    no_cron: Annotated[
        bool, typer.Option("--no-cron", help="Only drain the queue; do not enqueue cron slots.")
    ] = False,
) -> None:
    """Run the local dispatcher only (cron loop + queue worker)."""
    import asyncio

    from curaway.api.bootstrap import run_worker

    settings = _settings()
    _logging(settings)
    asyncio.run(run_worker(settings, over_http=http, concurrency=concurrency, cron=not no_cron))


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply migrations."""
    from curaway.db import upgrade

    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url, revision)
    typer.echo(f"database at revision {revision}")


@app.command()
def demo(as_json: JsonFlag = False) -> None:
    """Load demo data (idempotent)."""
    from curaway.api.bootstrap import load_demo_data

    settings = _settings()
    summary = load_demo_data(settings)
    _emit(
        summary.added,
        as_json,
        lambda d: typer.echo("demo data: " + (", ".join(f"{k}+{v}" for k, v in sorted(d.items())) or "already loaded")),
    )


@schedules_app.command("list")
def schedules_list(as_json: JsonFlag = False, count: Annotated[int, typer.Option(min=1, max=20)] = 1) -> None:
    """The registry with next fire times (UTC)."""
    from curaway.api.bootstrap import schedule_rows

    rows = schedule_rows(count=count)

    def render(data: list[dict[str, Any]]) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="Schedules (UTC)")
        for col in (
            "name",
            "cron",
            "next",
            "queue",
            "retries",
            "catch_up",
            "overlap",
            "freshness_slo",
            "purpose",
        ):
            table.add_column(col)
        for r in data:
            table.add_row(
                r["name"],
                r["cron"],
                ", ".join(r["next"]),
                r["queue"],
                str(r["retries"]),
                r["catch_up"],
                r["overlap"],
                r["freshness_slo"] or "-",
                r["purpose"],
            )
        Console().print(table)

    _emit(rows, as_json, render)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
