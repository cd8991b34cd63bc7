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
roles_app = typer.Typer(help="Role rows: list, sticky revoke, restore.", no_args_is_help=True)
app.add_typer(roles_app, name="roles")

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _settings(**overrides: Any) -> Any:
    from curaway.errors import ConfigurationError
    from curaway.settings import load_settings

    try:
        settings = load_settings(**overrides)
        _logging(settings)
        return settings
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
    prepare(settings, migrate=not no_migrate)
    application = build_app(settings, dispatcher=not no_dispatcher)
    typer.echo(
        f"curaway {settings.env} on http://{host}:{port}  (health: /healthz, ready: /readyz, API docs: /docs)",
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
        for col in ("name", "cron", "next", "retries", "catch-up", "overlap", "SLO"):
            table.add_column(col, no_wrap=True)
        for r in data:
            row = (r["name"], r["cron"], ", ".join(r["next"]), str(r["retries"]), r["catch_up"], r["overlap"])
            table.add_row(*row, r["freshness_slo"] or "-")
        Console().print(table)

    _emit(rows, as_json, render)


def _services_for_cli(settings: Any) -> Any:
    from curaway.api.bootstrap import build_services, prepare

    prepare(settings, migrate=True)
    return build_services(settings)


@schedules_app.command("plan")
def schedules_plan(
    as_json: JsonFlag = False,
    backend: Annotated[str | None, typer.Option(help="Backend to compare against (default: the active one).")] = None,
) -> None:
    """Show what `sync` would change on the backend (nothing is written)."""
    _schedules_sync(apply=False, as_json=as_json, backend=backend)


@schedules_app.command("sync")
def schedules_sync(
    as_json: JsonFlag = False,
    backend: Annotated[str | None, typer.Option(help="Backend to sync (default: the active one).")] = None,
) -> None:
    """Make the backend's registered schedules match the registry (idempotent)."""
    _schedules_sync(apply=True, as_json=as_json, backend=backend)


def _schedules_sync(*, apply: bool, as_json: bool, backend: str | None) -> None:
    from curaway.db import transaction
    from curaway.dispatch.schedule_sync import apply_local, plan_local

    settings = _settings()
    chosen = backend or settings.dispatch_backend
    if chosen != "local":
        _fail(
            f"schedules {'sync' if apply else 'plan'} for backend {chosen!r} is not available in this build "
            "(supported: local)"
        )
    services = _services_for_cli(settings)
    try:
        with transaction(services.session_factory) as session:
            changes = plan_local(session)
            applied = apply_local(session, changes, clock=services.clock) if apply else 0
    finally:
        services.close()
    data = {"backend": chosen, "applied": applied, "changes": [c.as_dict() for c in changes]}

    def render(d: dict[str, Any]) -> None:
        for c in d["changes"]:
            mark = {"create": "+", "update": "~", "delete": "-", "unchanged": "="}[c["action"]]
            typer.echo(f"{mark} {c['schedule']:<24} {c['cron'] or '':<14} {c['action']} {c['detail']}".rstrip())
        pending = sum(1 for c in d["changes"] if c["action"] != "unchanged")
        typer.echo(f"{d['applied']} change(s) applied" if apply else f"{pending} change(s) pending")

    _emit(data, as_json, render)


@tasks_app.command("run")
def tasks_run(
    name: Annotated[str, typer.Argument(help="Task or schedule name (see `schedules list`).")],
    payload: Annotated[str, typer.Option(help="JSON object passed to the handler.")] = "{}",
    wait: Annotated[bool, typer.Option(help="Deliver now and wait for the outcome.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Run a task now, through the dispatcher (queued with its own run key, delivered like any other task)."""
    import asyncio

    from curaway.schedules import all_tasks, get_task

    if get_task(name) is None:
        _fail(f"unknown task {name!r}; known: {', '.join(t.name for t in all_tasks())}")
    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        _fail(f"--payload is not valid JSON: {exc.msg}")
    if not isinstance(body, dict):
        _fail("--payload must be a JSON object")
    settings = _settings()
    if settings.dispatch_backend != "local":
        _fail(f"tasks run needs the local backend (CURAWAY_DISPATCH_BACKEND={settings.dispatch_backend})")
    from curaway.api.bootstrap import run_task_now

    outcome = asyncio.run(run_task_now(settings, name, body, wait=wait))
    _emit(outcome, as_json, lambda d: typer.echo(json.dumps(d, indent=2, default=str)))
    if outcome.get("status") in {"failed", "dead", "dead_lettered"}:
        raise typer.Exit(1)


@fhir_app.command("sweep")
def fhir_sweep(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List candidates; write nothing.")] = False,
    case_id: Annotated[str | None, typer.Option("--case-id", help="Only this case.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many documents/cases.")] = 100,
    as_json: JsonFlag = False,
) -> None:
    """Backfill FHIR resources for extracted documents that lack them (one task per case, with progress)."""
    import asyncio

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from curaway.api.bootstrap import run_fhir_sweep

    settings = _settings()
    if settings.dispatch_backend != "local":
        _fail(f"fhir sweep needs the local backend (CURAWAY_DISPATCH_BACKEND={settings.dispatch_backend})")
    progress = Progress(
        TextColumn("[bold]FHIR sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("documents"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=dry_run,
    )
    bar: dict[str, Any] = {}

    def on_plan(cases: list[tuple[str, int]]) -> None:
        bar["total"] = dict(cases)
        bar["task"] = progress.add_task("sweep", total=sum(n for _, n in cases) or 1)

    def on_case(case_id: str, report: dict[str, Any]) -> None:
        progress.advance(bar["task"], bar["total"].get(case_id, 0))

    with progress:
        summary = asyncio.run(
            run_fhir_sweep(settings, dry_run=dry_run, case_id=case_id, limit=limit, on_plan=on_plan, on_case=on_case)
        )

    def render(d: dict[str, Any]) -> None:
        if d["dry_run"]:
            for c in d.get("candidates", []):
                typer.echo(f"would extract {c['document_id']} (case {c['case_id']}, attempts {c['attempts']})")
            typer.echo(f"{d.get('candidate_count', 0)} candidate(s); nothing written")
            return
        typer.echo(
            f"processed {d['processed_count']}, failed {d['failed_count']}, deferred {d['deferred_count']} "
            f"across {len(d['cases'])} case(s)"
        )

    _emit(summary, as_json, render)
    if summary.get("failed_count") or summary.get("status") in {"dead", "failed"}:
        raise typer.Exit(1)


@dlq_app.command("list")
def dlq_list(
    as_json: JsonFlag = False,
    status: Annotated[str, typer.Option(help="open | replayed | all")] = "open",
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
) -> None:
    """Dead letters, newest first."""
    if status not in {"open", "replayed", "discarded", "all"}:
        _fail("--status must be open, replayed, discarded or all")
    services = _services_for_cli(_settings())
    try:
        rows = services.dead_letters.list_letters(status=None if status == "all" else status, limit=limit)
    finally:
        services.close()

    def render(data: list[dict[str, Any]]) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"Dead letters ({status})")
        for col in ("id", "task", "run_key", "status", "source", "attempts", "last_status", "error", "created_at"):
            table.add_column(col)
        for r in data:
            table.add_row(
                str(r["id"]),
                r["task"],
                r["run_key"],
                r["status"],
                r["source"] or "-",
                str(r["attempts"]),
                str(r["last_status"] or "-"),
                f"{r['error_class']} ({r['error_code']})",
                r["created_at"],
            )
        Console().print(table)

    _emit(rows, as_json, render)


@dlq_app.command("show")
def dlq_show(letter_id: Annotated[int, typer.Argument(help="Dead-letter id.")], as_json: JsonFlag = False) -> None:
    """One dead letter."""
    from curaway.errors import NotFoundError

    services = _services_for_cli(_settings())
    try:
        row = services.dead_letters.show(letter_id)
    except NotFoundError as exc:
        _fail(exc.message, code=1)
    finally:
        services.close()
    _emit(row, as_json, lambda d: typer.echo(json.dumps(d, indent=2, default=str)))


@dlq_app.command("replay")
def dlq_replay(
    letter_id: Annotated[int | None, typer.Argument(help="Dead-letter id (or --all).")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every open dead letter.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Re-enqueue through the active backend with the original run key. Idempotent: a second replay does nothing."""
    from curaway.errors import NotFoundError, ValidationFailed

    if (letter_id is None) == (not replay_all):
        _fail("give a dead-letter id or --all (not both)")
    services = _services_for_cli(_settings())
    try:
        if replay_all:
            results = [r.as_dict() for r in services.dead_letters.replay_all()]
        else:
            assert letter_id is not None
            results = [services.dead_letters.replay(letter_id).as_dict()]
    except (NotFoundError, ValidationFailed) as exc:
        _fail(exc.message, code=1)
    finally:
        services.close()

    def render(data: list[dict[str, Any]]) -> None:
        for r in data:
            verb = "replayed" if r["replayed"] else "already replayed"
            typer.echo(f"dead letter {r['dead_letter_id']}: {verb} (queue item {r['queue_item_id']}, {r['run_key']})")
        if not data:
            typer.echo("no open dead letters")

    _emit(results, as_json, render)


@dev_app.command("token")
def dev_token(
    user: Annotated[str, typer.Option(help="Clerk user id (sub).")] = "user_demo_coordinator",
    org: Annotated[str, typer.Option(help="Clerk organization id; '' for none.")] = "org_demo_sunrise",
    role: Annotated[str, typer.Option(help="Organization role.")] = "org:member",
    ttl: Annotated[int, typer.Option(min=1, max=86_400, help="Lifetime in seconds.")] = 3600,
    claims_version: Annotated[int, typer.Option("--claims-version", min=1, max=2, help="Clerk claim shape.")] = 1,
) -> None:
    """Mint a Clerk-shaped session token signed by the local dev key (dev only; `serve` trusts it in dev)."""
    from curaway.api.identity import dev_key_trusted, mint_dev_token
    from curaway.clock import SystemClock
    from curaway.errors import ConfigurationError

    settings = _settings()
    if not dev_key_trusted(settings):
        typer.echo("warning: CURAWAY_CLERK_JWKS_URL is set, so the server will not trust dev tokens", err=True)
    try:
        token = mint_dev_token(
            settings,
            user_id=user,
            org_id=org or None,
            role=role,
            ttl_s=ttl,
            now=SystemClock().now(),
            claims_version=claims_version,
        )
    except ConfigurationError as exc:
        _fail(exc.message)
    typer.echo(token)


@roles_app.command("list")
def roles_list(
    user: Annotated[str | None, typer.Option(help="Only this user id.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant id.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Role rows (auto and manual) with their state."""
    from curaway.cli.roles import list_role_rows

    rows = list_role_rows(_settings(), user_id=user, tenant_id=tenant)
    _emit(rows, as_json, _render_roles)


@roles_app.command("revoke")
def roles_revoke(
    user_id: Annotated[str, typer.Argument(help="Clerk user id.")],
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    role: Annotated[str | None, typer.Option(help="Only this role (default: every role in the tenant).")] = None,
    by: Annotated[str, typer.Option(help="Who revokes (recorded).")] = "operator:cli",
    as_json: JsonFlag = False,
) -> None:
    """Sticky revoke: sign-ins and membership webhooks will not re-activate these rows."""
    from curaway.cli.roles import revoke_role_rows
    from curaway.clock import SystemClock
    from curaway.errors import NotFoundError

    try:
        rows = revoke_role_rows(
            _settings(), user_id=user_id, tenant_id=tenant, role=role, revoked_by=by, now=SystemClock().now()
        )
    except NotFoundError as exc:
        _fail(exc.message, code=1)
    _emit(rows, as_json, _render_roles)


@roles_app.command("restore")
def roles_restore(
    user_id: Annotated[str, typer.Argument(help="Clerk user id.")],
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    role: Annotated[str | None, typer.Option(help="Only this role.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Lift a revoke: manual rows become active; the auto row waits for a fresh membership (sign-in/webhook)."""
    from curaway.cli.roles import restore_role_rows
    from curaway.clock import SystemClock

    rows = restore_role_rows(_settings(), user_id=user_id, tenant_id=tenant, role=role, now=SystemClock().now())
    _emit(rows, as_json, _render_roles)


def _render_roles(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Roles ({len(rows)})")
    for col in ("id", "user_id", "tenant_id", "role", "granted_by", "active", "revoked_by", "updated_at"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["user_id"],
            r["tenant_id"],
            r["role"],
            r["granted_by"],
            "yes" if r["is_active"] else "no",
            r["revoked_by"] or "-",
            r["updated_at"] or "-",
        )
    Console().print(table)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
