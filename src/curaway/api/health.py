"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from curaway import __version__
from curaway.api.services import Services
from curaway.db import ping, read_transaction
from curaway.dispatch.status import runtime_status
from curaway.logging import get_logger

router = APIRouter(tags=["health"])
log = get_logger("curaway.health")


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.get("/healthz")
def healthz() -> dict[str, Any]:
    return {"status": "ok", "version": __version__}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    services = services_of(request)
    checks: dict[str, Any] = {}
    ready = True
    try:
        ping(services.engine)
        checks["database"] = {"status": "ok"}
    except Exception as exc:  # noqa: BLE001 - readiness reports any failure as data
        log.warning("readyz.database_unreachable", error_class=type(exc).__name__)
        checks["database"] = {"status": "unreachable", "error_class": type(exc).__name__}
        ready = False
    if ready:
        # Informational: stale schedules are visible here (and alerting reads them) without failing readiness,
        # so one stuck cron does not take the whole service out of rotation.
        try:
            with read_transaction(services.session_factory) as session:
                status = runtime_status(session, now=services.clock.now(), fx_base=services.settings.fx_base)
            checks["schedules"] = status["freshness"]
            checks["exchange_rates"] = status["exchange_rates"]
            checks["queue"] = status["queue"]
            checks["dead_letters"] = status["dead_letters"]
        except Exception as exc:  # noqa: BLE001 - readiness reports any failure as data
            checks["schedules"] = {"status": "error", "error_class": type(exc).__name__}
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks}, status_code=200 if ready else 503
    )


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(generate_latest(services_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
