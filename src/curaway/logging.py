"""Structured logging: stable event names plus fields, JSON lines in Cloud Logging's shape (DESIGN §7).

Configure only in entrypoints (``configure_logging``). Library code does ``log = get_logger(__name__)`` and
``log.info("task.succeeded", schedule=..., run_key=...)``. The redaction processor drops values of fields that
can carry secrets or PHI, and masks token-shaped strings anywhere, so a careless field never leaks.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog
from structlog.contextvars import bind_contextvars, clear_contextvars, merge_contextvars, unbind_contextvars

REDACTED = "[redacted]"

SENSITIVE_KEY = re.compile(
    r"(secret|password|passwd|token|signature|authorization|api[_-]?key|cookie|credential|private"
    r"|email|e_mail|name$|^name|first_name|last_name|full_name|phone|address|birth|dob"
    r"|text$|^text|body$|^body|content$|prompt|llm_output|completion|note$|^notes?$)",
    re.I,
)
# Field names that match the pattern above but are known to hold opaque ids/codes.
SAFE_KEYS = frozenset(
    {
        "event",
        "logger",
        "level",
        "timestamp",
        "schedule",
        "task",
        "run_key",
        "svix_id",
        "request_id",
        "verifier",
        "key_id",
        "reason",
        "queue",
        "status",
        "error_class",
        "error_code",
        "task_name",
        "schedule_name",
        "event_type",
        "content_type",
        "body_bytes",
        "template",
        "template_name",
        "resource_type",
        "job_name",
        "queue_name",
        "message_id",
        "filename_ext",
        "token_kind",
    }
)
TOKENISH = re.compile(
    r"(eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*|whsec_[A-Za-z0-9+/=]+|v1,[A-Za-z0-9+/=]{16,})"
)

_LEVEL_TO_SEVERITY = {
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARNING",
    "warn": "WARNING",
    "error": "ERROR",
    "exception": "ERROR",
    "critical": "CRITICAL",
}


def _scrub(value: Any, depth: int = 0) -> Any:
    if depth > 4:
        return value
    if isinstance(value, str):
        return TOKENISH.sub(REDACTED, value)
    if isinstance(value, Mapping):
        return {k: (REDACTED if _is_sensitive(str(k)) else _scrub(v, depth + 1)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, depth + 1) for v in value]
    return value


def _is_sensitive(key: str) -> bool:
    return key not in SAFE_KEYS and bool(SENSITIVE_KEY.search(key))


def redact_processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict.keys()):
        if _is_sensitive(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def cloud_logging_processor(
    _logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Add ``severity``/``message`` (and the trace field when a trace id is bound) for Cloud Logging."""
    level = str(event_dict.get("level", method)).lower()
    event_dict["severity"] = _LEVEL_TO_SEVERITY.get(level, "DEFAULT")
    event_dict.setdefault("message", event_dict.get("event"))
    trace = event_dict.pop("trace_id", None)
    if trace:
        event_dict["logging.googleapis.com/trace"] = trace
    return event_dict


SHARED_PROCESSORS: list[Any] = [
    merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.format_exc_info,  # before redaction, so a rendered traceback is scrubbed too
    redact_processor,
]


def configure_logging(*, level: str = "INFO", fmt: str = "json", stream: Any = None) -> None:
    """Entrypoints only. JSON lines on stderr by default."""
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        processors = [
            *SHARED_PROCESSORS,
            structlog.processors.format_exc_info,
            cloud_logging_processor,
            renderer,
        ]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        processors = [*SHARED_PROCESSORS, renderer]
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Quiet third-party loggers that would print sentences or request lines with query strings.
    logging.basicConfig(level=logging.WARNING, stream=stream or sys.stderr, format="%(message)s")
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name) if name else structlog.get_logger()


__all__ = [
    "REDACTED",
    "bind_contextvars",
    "clear_contextvars",
    "configure_logging",
    "get_logger",
    "redact_processor",
    "unbind_contextvars",
]
