"""The gateway contract (local, fake, traced) and its OpenTelemetry spans."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from curaway.errors import RetryableError
from curaway.integrations.llm import (
    ClinicalContext,
    EntityExtraction,
    FakeLlmGateway,
    LlmOutputError,
    TracedLlmGateway,
    build_llm_gateway,
    parse_entities,
    parse_resources,
)
from curaway.integrations.llm_local import LocalClinicalExtractor
from curaway.integrations.tracing import (
    build_tracer_provider,
    export_target,
    langfuse_auth_header,
    langfuse_otlp_endpoint,
)
from curaway.repositories.demo import SAMPLE_NOTE

GATEWAYS = {
    "local": LocalClinicalExtractor,
    "fake": FakeLlmGateway,
    "traced": lambda: TracedLlmGateway(LocalClinicalExtractor()),
}


@pytest.mark.parametrize("name", sorted(GATEWAYS))
def test_every_gateway_returns_the_same_typed_results(name):
    gateway = GATEWAYS[name]()
    extraction = gateway.extract_entities(SAMPLE_NOTE, document_ref="doc_1")
    assert isinstance(extraction, EntityExtraction)
    assert extraction.entities.counts() == {
        "conditions": 2,
        "medications": 2,
        "allergies": 1,
        "procedures": 1,
        "observations": 3,
    }
    context = gateway.clinical_context(SAMPLE_NOTE, document_ref="doc_1", patient_reference="Patient/case-1")
    assert isinstance(context, ClinicalContext) and len(context.resources) == 9
    assert context.call.prompt_version == "clinical_context/v1"


def test_build_llm_gateway_defaults_to_local(make_settings):
    gateway = build_llm_gateway(make_settings())
    assert gateway.provider == "local" and isinstance(gateway, TracedLlmGateway)


def test_envelope_parsers_reject_garbage():
    for bad in (None, "text", [], {"resources": {}}, {"resources": [1]}, {"resources": [{"no": "type"}]}):
        with pytest.raises(LlmOutputError):
            parse_resources(bad)
    for bad in (None, [], {"conditions": "x"}, {"unknown": []}, {"conditions": [{"text": ""}]}):
        with pytest.raises(LlmOutputError):
            parse_entities(bad)


def test_fake_plays_its_script_then_delegates_and_counts():
    fake = FakeLlmGateway(script={"clinical_context": [RetryableError("busy", code="llm_overloaded")]})
    with pytest.raises(RetryableError):
        fake.clinical_context("x", document_ref="d1", patient_reference="Patient/p")
    assert fake.clinical_context(SAMPLE_NOTE, document_ref="d1", patient_reference="Patient/p").resources
    assert fake.calls["clinical_context"] == 2 and fake.documents["d1"] == 2


def _traced(make_settings, *, capture: bool, inner=None):
    exporter = InMemorySpanExporter()
    provider = build_tracer_provider(make_settings(), exporter=exporter)
    return TracedLlmGateway(
        inner or LocalClinicalExtractor(), tracer_provider=provider, capture_content=capture
    ), exporter


def test_spans_carry_model_latency_usage_and_outcome_but_no_content(make_settings):
    gateway, exporter = _traced(make_settings, capture=False)
    gateway.extract_entities(SAMPLE_NOTE, document_ref="doc_9")
    (span,) = exporter.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert span.name == "llm.extract_entities"
    assert attrs["gen_ai.request.model"].startswith("curaway-local-extractor/")
    assert attrs["gen_ai.system"] == "local" and attrs["llm.outcome"] == "ok"
    assert attrs["curaway.document_id"] == "doc_9" and attrs["llm.latency_ms"] >= 0
    assert "gen_ai.prompt" not in attrs and "gen_ai.completion" not in attrs
    assert "metformin" not in repr(attrs).lower()


def test_content_is_recorded_only_when_enabled(make_settings):
    gateway, exporter = _traced(make_settings, capture=True)
    gateway.clinical_context(SAMPLE_NOTE, document_ref="doc_9", patient_reference="Patient/p")
    attrs = dict(exporter.get_finished_spans()[0].attributes or {})
    assert "metformin" in str(attrs["gen_ai.prompt"]) and "6809" in str(attrs["gen_ai.completion"])


def test_failed_calls_record_the_error_code(make_settings):
    inner = FakeLlmGateway(script={"extract_entities": [LlmOutputError("x", code="llm_output_garbage")]})
    gateway, exporter = _traced(make_settings, capture=False, inner=inner)
    with pytest.raises(LlmOutputError):
        gateway.extract_entities(SAMPLE_NOTE, document_ref="doc_9")
    attrs = dict(exporter.get_finished_spans()[0].attributes or {})
    assert attrs["llm.outcome"] == "llm_output_garbage" and attrs["llm.retryable"] is False


def test_export_goes_to_langfuse_only_with_both_keys(make_settings):
    assert export_target(make_settings()) == "off"
    assert export_target(make_settings(langfuse_public_key="pk-lf-1")) == "off"
    assert export_target(make_settings(langfuse_public_key="pk-lf-1", langfuse_secret_key="sk-lf-1")) == "langfuse"
    assert export_target(make_settings(otel_exporter_otlp_endpoint="http://127.0.0.1:4318")) == "otlp"
    assert langfuse_otlp_endpoint("") == "https://cloud.langfuse.com/api/public/otel/v1/traces"
    assert langfuse_otlp_endpoint("http://lf.local/") == "http://lf.local/api/public/otel/v1/traces"
    assert langfuse_auth_header("pk", "sk") == "Basic cGs6c2s="
