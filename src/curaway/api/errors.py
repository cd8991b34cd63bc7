"""One JSON error shape for every failure: ``{"error": {"code", "message", "request_id"}}``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from curaway.errors import AuthenticationError, CurawayError, NotFoundError, PermanentError, RetryableError
from curaway.logging import get_logger

log = get_logger("curaway.api")

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    request: Request | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "code": code or _STATUS_CODES.get(status, "error"),
        "message": message,
    }
    if request is not None:
        body["request_id"] = getattr(request.state, "request_id", None)
    if extra:
        body.update(extra)
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else _STATUS_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, detail, request=request, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
        return error_response(422, "; ".join(problems) or "invalid request", request=request)

    @app.exception_handler(AuthenticationError)
    async def _auth(request: Request, exc: AuthenticationError) -> JSONResponse:
        return error_response(401, "unauthenticated", request=request)

    @app.exception_handler(NotFoundError)
    async def _not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return error_response(404, exc.message, code=exc.code, request=request)

    @app.exception_handler(PermanentError)
    async def _permanent(request: Request, exc: PermanentError) -> JSONResponse:
        return error_response(400, exc.message, code=exc.code, request=request)

    @app.exception_handler(RetryableError)
    async def _retryable(request: Request, exc: RetryableError) -> JSONResponse:
        retry_after = str(int(exc.retry_after_s or 5))
        return error_response(503, exc.message, code=exc.code, request=request, headers={"Retry-After": retry_after})

    @app.exception_handler(CurawayError)
    async def _curaway(request: Request, exc: CurawayError) -> JSONResponse:
        log.error("request.error", error_class=type(exc).__name__, error_code=exc.code)
        return error_response(500, "internal error", request=request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Class only: an exception message may quote input (PHI) or a credential.
        log.error("request.unhandled", error_class=type(exc).__name__, path=request.url.path)
        return error_response(500, "internal error", request=request)
