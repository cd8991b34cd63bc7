"""Pure ASGI middleware: request ids and request-body caps (Uvicorn/Starlette have no body limit)."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException

from curaway.logging import bind_contextvars, clear_contextvars

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
ASGIApp = Callable[[Scope, Receive, Send], Any]

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    """Accept a sane ``X-Request-ID`` or mint one; echo it; bind it (and the Cloud trace id) for logging."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        incoming = headers.get("x-request-id", "")
        request_id = incoming if _REQUEST_ID_OK.match(incoming) else secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = request_id
        clear_contextvars()
        context: dict[str, Any] = {"request_id": request_id}
        trace = headers.get("x-cloud-trace-context", "").split("/", 1)[0]
        if trace and re.fullmatch(r"[0-9a-fA-F]{32}", trace):
            context["trace_id"] = trace
        bind_contextvars(**context)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            clear_contextvars()


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


class BodyLimitMiddleware:
    """Refuse bodies over a per-path cap with 413 before they are read whole.

    ``limits`` is a list of (path prefix, max bytes), first match wins, then ``default_bytes``.
    """

    def __init__(self, app: ASGIApp, *, default_bytes: int, limits: list[tuple[str, int]]) -> None:
        self.app = app
        self.default_bytes = default_bytes
        self.limits = limits

    def _limit_for(self, path: str) -> int:
        for prefix, limit in self.limits:
            if path.startswith(prefix):
                return limit
        return self.default_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit_for(scope.get("path", ""))
        for key, value in scope.get("headers", []):
            if key.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _plain_error(send, 400, "bad_request", "Content-Length is not a number")
                    return
                if declared > limit:
                    await _plain_error(send, 413, "payload_too_large", f"request body exceeds {limit} bytes")
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _plain_error(send, 413, "payload_too_large", f"request body exceeds {limit} bytes")


async def _plain_error(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
