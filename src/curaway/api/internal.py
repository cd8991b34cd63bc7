"""``/api/v1/internal/*``: the endpoints every backend delivers to, behind the internal-caller verifier chain."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from curaway.api.errors import error_response
from curaway.api.services import Services
from curaway.dispatch.auth import Caller
from curaway.dispatch.delivery import Delivery
from curaway.errors import AuthenticationError, ValidationFailed
from curaway.logging import get_logger
from curaway.schedules import TaskSpec, get_task
from curaway.schedules.registry import get_schedule
from curaway.values import parse_bool

router = APIRouter(prefix="/api/v1/internal", tags=["internal"])
log = get_logger("curaway.internal")

LetterId = Annotated[int, Path(ge=1, le=2**63 - 1, description="Dead-letter id")]


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def authenticate(request: Request, body: bytes) -> Caller:
    services = _services(request)
    url = services.settings.endpoint_url(request.url.path)
    if request.url.query:
        url += "?" + request.url.query
    headers = dict(request.headers)  # Starlette's keys are already lower-case
    try:
        caller = await run_in_threadpool(services.internal_auth.verify, headers, url=url, body=body)
    except AuthenticationError as exc:
        log.warning("internal_auth.rejected", reason=exc.code, path=request.url.path)
        services.metrics.auth_rejected.labels(reason=exc.code).inc()
        raise
    services.metrics.auth_accepted.labels(verifier=caller.verifier, key_id=caller.key_id).inc()
    return caller


def _parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except UnicodeDecodeError as exc:
        raise ValidationFailed("request body is not UTF-8 JSON") from exc
    except json.JSONDecodeError as exc:
        raise ValidationFailed(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    if not isinstance(value, dict):
        raise ValidationFailed("request body must be a JSON object")
    return value


def _flag(value: str | None, name: str) -> bool:
    if value is None or not value.strip():
        return False
    parsed = parse_bool(value)
    if parsed is None:
        raise ValidationFailed(f"query parameter {name} must be true or false")
    return parsed


async def _run(request: Request, spec: TaskSpec, payload_from_query: dict[str, Any] | None = None) -> JSONResponse:
    services = _services(request)
    body = await request.body()
    caller = await authenticate(request, body)
    try:
        payload = _parse_json_object(body)
        force = _flag(request.query_params.get("force"), "force")
        if payload_from_query:
            payload.update(payload_from_query)
        delivery = Delivery.from_headers(dict(request.headers), force=force, received_at=services.clock.now())
    except ValidationFailed as exc:
        # Nothing may be lost: the malformed delivery is dead-lettered, then answered 400 naming the problem
        # (489 + Upstash-NonRetryable-Error for QStash, so it does not retry what cannot succeed).
        outcome = await run_in_threadpool(services.runner.reject, spec, dict(request.headers), caller, exc)
        return error_response(
            outcome.status_code,
            exc.message,
            code="bad_request",
            request=request,
            headers=outcome.headers,
            extra=outcome.body,
        )
    outcome = await run_in_threadpool(services.runner.execute, spec, payload, delivery, caller)
    return JSONResponse(outcome.body, status_code=outcome.status_code, headers=outcome.headers)


@router.post("/tasks/{schedule}")
async def run_schedule(schedule: str, request: Request) -> JSONResponse:
    spec = get_schedule(schedule)
    if spec is None:
        # Authenticate first so the 404 does not reveal the task list to anonymous callers.
        await authenticate(request, await request.body())
        return error_response(404, f"unknown schedule {schedule!r}", code="not_found", request=request)
    return await _run(request, spec)


@router.post("/extract")
async def extract(request: Request) -> JSONResponse:
    spec = get_task("extract")
    assert spec is not None
    return await _run(request, spec)


@router.post("/fhir/sweep")
async def fhir_sweep(request: Request) -> JSONResponse:
    spec = get_task("fhir-sweep")
    assert spec is not None
    query: dict[str, Any] = {}
    params = request.query_params
    try:
        if "dry_run" in params:
            query["dry_run"] = _flag(params["dry_run"], "dry_run")
        if params.get("case_id"):
            query["case_id"] = params["case_id"]
        if "limit" in params:
            raw = params["limit"].strip()
            if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
                raise ValidationFailed("query parameter limit must be an integer between 1 and 10000")
            query["limit"] = int(raw)
    except ValidationFailed as exc:
        await authenticate(request, await request.body())
        return error_response(400, exc.message, code="bad_request", request=request)
    return await _run(request, spec, query)


# -- dead letters -------------------------------------------------------------------------------------------


@router.get("/dlq")
async def dlq_list(request: Request, status: str = "open", limit: int = 100) -> JSONResponse:
    await authenticate(request, b"")
    if status not in {"open", "replayed", "discarded", "all"}:
        return error_response(400, "status must be open, replayed, discarded or all", request=request)
    if not 1 <= limit <= 10_000:
        return error_response(400, "limit must be between 1 and 10000", request=request)
    rows = await run_in_threadpool(
        _services(request).dead_letters.list_letters, status=None if status == "all" else status, limit=limit
    )
    return JSONResponse({"dead_letters": rows})


@router.get("/dlq/{letter_id}")
async def dlq_show(letter_id: LetterId, request: Request) -> JSONResponse:
    await authenticate(request, b"")
    return JSONResponse(await run_in_threadpool(_services(request).dead_letters.show, letter_id))


@router.post("/dlq/{letter_id}/replay")
async def dlq_replay(letter_id: LetterId, request: Request) -> JSONResponse:
    await authenticate(request, await request.body())
    result = await run_in_threadpool(_services(request).dead_letters.replay, letter_id)
    return JSONResponse(result.as_dict(), status_code=202 if result.replayed else 200)


@router.post("/dlq/replay-all")
async def dlq_replay_all(request: Request) -> JSONResponse:
    await authenticate(request, await request.body())
    results = await run_in_threadpool(_services(request).dead_letters.replay_all)
    return JSONResponse({"replayed": [r.as_dict() for r in results]}, status_code=202)
