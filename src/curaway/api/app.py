"""The app factory: ``create_app(settings, ...)`` wires routes, middleware and services; nothing global."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import FastAPI

from curaway import __version__
from curaway.api.documents import router as documents_router
from curaway.api.errors import install_error_handlers
from curaway.api.health import router as health_router
from curaway.api.internal import router as internal_router
from curaway.api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from curaway.api.services import Services
from curaway.api.webhooks import router as webhooks_router
from curaway.settings import Settings

Hook = Callable[[FastAPI], Any]


def create_app(
    settings: Settings,
    *,
    services: Services | None = None,
    on_startup: Sequence[Hook] = (),
    on_shutdown: Sequence[Hook] = (),
    **service_overrides: Any,
) -> FastAPI:
    """Build the ASGI app. ``services`` (or overrides such as ``clock=``, ``engine=``) inject collaborators."""
    services = services or Services.build(settings, **service_overrides)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for hook in on_startup:
            result = hook(app)
            if hasattr(result, "__await__"):
                await result
        try:
            yield
        finally:
            for hook in reversed(on_shutdown):
                result = hook(app)
                if hasattr(result, "__await__"):
                    await result
            services.close()

    app = FastAPI(
        title="Curaway async pipelines + webhooks",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs" if settings.env != "prod" else None,
        redoc_url=None,
    )
    app.state.services = services
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(webhooks_router)
    app.include_router(internal_router)
    app.include_router(documents_router)
    app.add_middleware(
        BodyLimitMiddleware,
        default_bytes=settings.max_body_bytes,
        limits=[
            ("/api/v1/webhooks/", settings.webhook_max_body_bytes),
            ("/api/v1/uploads", settings.upload_max_bytes + 64 * 1024),
        ],
    )
    app.add_middleware(RequestIdMiddleware)
    return app
