"""``POST /api/v1/webhooks/clerk``: Svix verification, then the Clerk event handler (inbox dedup, role updates).

The body cap (413) is applied by ``BodyLimitMiddleware`` before the body is read whole. Every verification failure
answers 401 with a reason code in the log (``webhook.rejected reason=…``) and nothing else; a verified delivery always
answers 2xx (processed, ignored, duplicate or dead-lettered) unless the database is unavailable (503, Svix retries).
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from curaway.api.errors import error_response
from curaway.errors import ConfigurationError, RetryableError
from curaway.logging import bind_contextvars, get_logger
from curaway.webhooks.clerk import SOURCE, handle_clerk_delivery
from curaway.webhooks.svix import SvixVerifier, WebhookRejected

router = APIRouter(tags=["webhooks"])
log = get_logger("curaway.api.webhooks")

CLERK_PATH = "/api/v1/webhooks/clerk"
_LOCK = threading.Lock()


def clerk_verifier(services: Any) -> SvixVerifier:
    """Built once per ``Services`` from ``CLERK_WEBHOOK_SECRET`` with the app's clock."""
    verifier = services.extras.get("clerk_webhook_verifier")
    if verifier is None:
        with _LOCK:
            verifier = services.extras.get("clerk_webhook_verifier")
            if verifier is None:
                verifier = SvixVerifier(services.settings.clerk_webhook_secrets, clock=services.clock)
                services.extras["clerk_webhook_verifier"] = verifier
    assert isinstance(verifier, SvixVerifier)
    return verifier


def _rejected(request: Request, services: Any, reason: str) -> JSONResponse:
    level = "error" if reason in {"no_secret_configured", "secret_misconfigured"} else "warning"
    getattr(log, level)("webhook.rejected", source=SOURCE, reason=reason)
    services.metrics.webhooks.labels(source=SOURCE, event_type="unverified", outcome="rejected").inc()
    return error_response(401, "webhook verification failed", request=request)


@router.post(CLERK_PATH)
async def clerk_webhook(request: Request) -> JSONResponse:
    services = request.app.state.services
    body = await request.body()
    try:
        verifier = clerk_verifier(services)
    except ConfigurationError:
        return _rejected(request, services, "secret_misconfigured")
    try:
        delivery = verifier.verify(request.headers, body)
    except WebhookRejected as exc:
        return _rejected(request, services, exc.code)
    bind_contextvars(svix_id=delivery.msg_id)
    log.debug("webhook.verified", source=SOURCE, svix_id=delivery.msg_id, key_id=delivery.key_id)
    try:
        outcome = await run_in_threadpool(
            handle_clerk_delivery, services.session_factory, delivery, now=services.clock.now()
        )
    except OperationalError as exc:
        log.error("webhook.database_unavailable", source=SOURCE, error_class=type(exc).__name__)
        raise RetryableError("database unavailable", code="database_unavailable", retry_after_s=30) from exc
    services.metrics.webhooks.labels(source=SOURCE, event_type=outcome.event_type, outcome=outcome.outcome).inc()
    return JSONResponse(outcome.body, status_code=200)
