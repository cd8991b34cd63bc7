"""OpenTelemetry tracing for LLM calls (DESIGN §3: Langfuse ingests OTLP).

``build_tracer_provider(settings)`` returns a private ``TracerProvider`` (never the global one) that exports:
- to Langfuse over OTLP/HTTP with Basic auth when ``LANGFUSE_PUBLIC_KEY`` and ``LANGFUSE_SECRET_KEY`` are set;
- else to ``OTEL_EXPORTER_OTLP_ENDPOINT`` when set;
- else nowhere (spans are created and dropped).
Tests pass ``exporter=InMemorySpanExporter()``. Export never blocks a call (batch processor, 2 s exporter timeout)
and never raises into the caller. The composition root owns the provider and calls ``shutdown()`` on exit.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from curaway.errors import CurawayError, RetryableError
from curaway.settings import Settings

DEFAULT_LANGFUSE_HOST = "https://cloud.langfuse.com"
EXPORT_TIMEOUT_S = 2.0
TRACER_NAME = "curaway.llm"


def export_target(settings: Settings) -> str:
    """Where spans go: ``langfuse``, ``otlp`` or ``off`` (for logs and the ops page; never the keys)."""
    if settings.langfuse_public_key and settings.langfuse_secret_key:
        return "langfuse"
    if settings.otel_exporter_otlp_endpoint:
        return "otlp"
    return "off"


def langfuse_otlp_endpoint(host: str) -> str:
    return (host or DEFAULT_LANGFUSE_HOST).rstrip("/") + "/api/public/otel/v1/traces"


def langfuse_auth_header(public_key: str, secret_key: str) -> str:
    token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode("ascii")
    return f"Basic {token}"


def build_tracer_provider(settings: Settings, *, exporter: SpanExporter | None = None) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "curaway"}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        return provider
    target = export_target(settings)
    if target == "off":
        return provider
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if target == "langfuse":
        otlp = OTLPSpanExporter(
            endpoint=langfuse_otlp_endpoint(settings.langfuse_host),
            headers={"Authorization": langfuse_auth_header(settings.langfuse_public_key, settings.langfuse_secret_key)},
            timeout=EXPORT_TIMEOUT_S,
        )
    else:
        otlp = OTLPSpanExporter(
            endpoint=settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces", timeout=EXPORT_TIMEOUT_S
        )
    provider.add_span_processor(BatchSpanProcessor(otlp))
    return provider


@dataclass
class LlmSpan:
    """What a traced call records; the caller fills ``usage``/``stop_reason`` (and content only when allowed)."""

    span: Span
    capture_content: bool
    attributes: dict[str, Any] = field(default_factory=dict)

    def record_usage(self, *, input_tokens: int | None, output_tokens: int | None) -> None:
        if input_tokens is not None:
            self.span.set_attribute("gen_ai.usage.input_tokens", int(input_tokens))
        if output_tokens is not None:
            self.span.set_attribute("gen_ai.usage.output_tokens", int(output_tokens))

    def record(self, key: str, value: str | int | float | bool) -> None:
        self.span.set_attribute(key, value)

    def record_content(self, *, prompt: str | None = None, output: str | None = None) -> None:
        """Document text, prompts and outputs are PHI: recorded only when explicitly enabled."""
        if not self.capture_content:
            return
        if prompt is not None:
            self.span.set_attribute("gen_ai.prompt", prompt)
        if output is not None:
            self.span.set_attribute("gen_ai.completion", output)


@contextlib.contextmanager
def llm_span(
    tracer: Tracer,
    *,
    operation: str,
    provider: str,
    model: str,
    document_ref: str | None = None,
    capture_content: bool = False,
) -> Iterator[LlmSpan]:
    """One span per LLM call with model, latency, token usage and outcome (``ok`` or the error code)."""
    started = time.perf_counter()
    with tracer.start_as_current_span(
        f"llm.{operation}", record_exception=False, set_status_on_exception=False
    ) as span:
        span.set_attribute("gen_ai.system", provider)
        span.set_attribute("gen_ai.request.model", model)
        span.set_attribute("gen_ai.operation.name", operation)
        span.set_attribute("langfuse.observation.type", "generation")
        if document_ref:
            span.set_attribute("curaway.document_id", document_ref)
        handle = LlmSpan(span=span, capture_content=capture_content)
        try:
            yield handle
        except CurawayError as exc:
            span.set_attribute("llm.outcome", exc.code)
            span.set_attribute("llm.retryable", isinstance(exc, RetryableError))
            span.set_status(Status(StatusCode.ERROR, exc.code))
            raise
        except Exception as exc:
            span.set_attribute("llm.outcome", "unexpected_error")
            span.set_attribute("llm.error_type", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR, "unexpected_error"))
            raise
        else:
            span.set_attribute("llm.outcome", "ok")
        finally:
            span.set_attribute("llm.latency_ms", round((time.perf_counter() - started) * 1000, 3))
