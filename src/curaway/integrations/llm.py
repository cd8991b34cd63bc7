"""The LLM gateway (the spec's ``llm_gateway``): one protocol, typed results, two providers and a shipped fake.

Operations:
- ``extract_entities(text, document_ref=…)`` → ``EntityExtraction``: conditions, medications, allergies,
  procedures and observations (values + UCUM units), each with a SNOMED CT / RxNorm / LOINC coding when known.
- ``clinical_context(text, document_ref=…, patient_reference=…)`` → ``ClinicalContext``: the ``clinical_context``
  agent re-extracting FHIR R4B resources with the current prompt. The resources are returned as JSON objects;
  the sweep validates them with ``fhir.resources`` (this layer only checks the envelope).

Providers: ``local`` (the embedded default, ``llm_local.LocalClinicalExtractor``: deterministic and offline) and
``anthropic`` (``llm_anthropic.AnthropicGateway``: the official SDK, imported lazily). ``TracedLlmGateway`` wraps
either with one OpenTelemetry span per call. ``FakeLlmGateway`` scripts replies, latency and failures for tests and
the benchmark. Garbage output raises ``LlmOutputError`` (permanent); transport trouble raises ``RetryableError``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol

from opentelemetry.trace import NoOpTracerProvider, TracerProvider
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from curaway.errors import CurawayError, PermanentError
from curaway.integrations.tracing import TRACER_NAME, llm_span
from curaway.settings import Settings

ENTITY_PROMPT_VERSION = "entity_extraction/v1"
CLINICAL_CONTEXT_PROMPT_VERSION = "clinical_context/v1"
FHIR_RESOURCE_TYPES = ("Condition", "MedicationStatement", "AllergyIntolerance", "Procedure", "Observation")
MAX_RESOURCES = 500

UCUM = "http://unitsofmeasure.org"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"


class LlmOutputError(PermanentError):
    """The model answered, but not with usable structured output (garbage, truncated, no tool call, invalid)."""

    code = "llm_output_invalid"


# -- typed results ------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Coding(_Strict):
    system: str = Field(min_length=1, max_length=200)
    code: str = Field(min_length=1, max_length=64)
    display: str | None = Field(default=None, max_length=300)


class ConditionEntity(_Strict):
    text: str = Field(min_length=1, max_length=300)
    coding: Coding | None = None


class MedicationEntity(_Strict):
    text: str = Field(min_length=1, max_length=300)
    coding: Coding | None = None
    dose_value: float | None = None
    dose_unit: str | None = Field(default=None, max_length=32)
    frequency: str | None = Field(default=None, max_length=100)


class AllergyEntity(_Strict):
    text: str = Field(min_length=1, max_length=300)
    coding: Coding | None = None


class ProcedureEntity(_Strict):
    text: str = Field(min_length=1, max_length=300)
    coding: Coding | None = None
    performed: str | None = Field(default=None, pattern=r"^\d{4}(-\d{2}(-\d{2})?)?$")


class ObservationComponent(_Strict):
    coding: Coding
    value: float
    unit: str | None = Field(default=None, max_length=32)


class ObservationEntity(_Strict):
    text: str = Field(min_length=1, max_length=300)
    coding: Coding | None = None
    value: float | None = None
    unit: str | None = Field(default=None, max_length=32)
    components: list[ObservationComponent] = Field(default_factory=list, max_length=10)


class ClinicalEntities(_Strict):
    conditions: list[ConditionEntity] = Field(default_factory=list, max_length=200)
    medications: list[MedicationEntity] = Field(default_factory=list, max_length=200)
    allergies: list[AllergyEntity] = Field(default_factory=list, max_length=200)
    procedures: list[ProcedureEntity] = Field(default_factory=list, max_length=200)
    observations: list[ObservationEntity] = Field(default_factory=list, max_length=200)

    def counts(self) -> dict[str, int]:
        return {
            "conditions": len(self.conditions),
            "medications": len(self.medications),
            "allergies": len(self.allergies),
            "procedures": len(self.procedures),
            "observations": len(self.observations),
        }


class LlmUsage(BaseModel):
    model_config = ConfigDict(frozen=True)

    input_tokens: int | None = None
    output_tokens: int | None = None


class LlmCall(BaseModel):
    """Metadata of one call (safe to store and log: no content)."""

    model_config = ConfigDict(frozen=True)

    provider: str
    model: str
    prompt_version: str
    usage: LlmUsage = Field(default_factory=LlmUsage)
    stop_reason: str | None = None


class EntityExtraction(BaseModel):
    model_config = ConfigDict(frozen=True)

    entities: ClinicalEntities
    call: LlmCall


class ClinicalContext(BaseModel):
    model_config = ConfigDict(frozen=True)

    resources: list[dict[str, Any]]
    call: LlmCall


class LlmGateway(Protocol):
    provider: str
    model: str

    def extract_entities(self, text: str, *, document_ref: str) -> EntityExtraction: ...

    def clinical_context(self, text: str, *, document_ref: str, patient_reference: str) -> ClinicalContext: ...


# -- prompts and tool schemas (shared by every provider that talks to a model) ------------------------------

ENTITY_TOOL_NAME = "record_clinical_entities"
FHIR_TOOL_NAME = "emit_fhir_resources"

ENTITY_SYSTEM_PROMPT = (
    "You extract clinical entities from one medical document for a medical-travel coordinator. Report only what "
    "the document states about the patient: conditions, medications (dose value, unit, frequency), allergies "
    "(substances), procedures (year when given) and observations (numeric value and UCUM unit; blood pressure as "
    "systolic/diastolic components). Code conditions, allergies and procedures with SNOMED CT "
    "(http://snomed.info/sct), medications with RxNorm (http://www.nlm.nih.gov/research/umls/rxnorm) and "
    "observations with LOINC (http://loinc.org) when you are confident; otherwise omit the coding. Ignore negated "
    f"findings. Answer only by calling {ENTITY_TOOL_NAME}."
)

CLINICAL_CONTEXT_SYSTEM_PROMPT = (
    "You are the clinical_context agent. Convert one medical document into FHIR R4B (4.3.0) resources of these "
    "types only: Condition, MedicationStatement, AllergyIntolerance, Procedure, Observation. Every resource "
    "references the patient given by the user message (Condition/MedicationStatement/Procedure/Observation "
    "'subject', AllergyIntolerance 'patient'). Use SNOMED CT, RxNorm, LOINC and UCUM codings; R4 shapes "
    "(MedicationStatement.medicationCodeableConcept, Procedure.performedDateTime). Do not invent resource ids, "
    f"names or dates that the document does not state. Answer only by calling {FHIR_TOOL_NAME}."
)


def entity_tool() -> dict[str, Any]:
    return {
        "name": ENTITY_TOOL_NAME,
        "description": "Record the clinical entities found in the document.",
        "input_schema": ClinicalEntities.model_json_schema(),
    }


def fhir_tool() -> dict[str, Any]:
    return {
        "name": FHIR_TOOL_NAME,
        "description": "Emit FHIR R4B resources for the document.",
        "input_schema": {
            "type": "object",
            "properties": {
                "resources": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"resourceType": {"type": "string", "enum": list(FHIR_RESOURCE_TYPES)}},
                        "required": ["resourceType"],
                    },
                }
            },
            "required": ["resources"],
        },
    }


def parse_entities(payload: Any) -> ClinicalEntities:
    if not isinstance(payload, dict):
        raise LlmOutputError("entity output is not an object", code="llm_output_invalid")
    try:
        return ClinicalEntities.model_validate(payload)
    except ValidationError as exc:
        # Only the count of problems: the messages may quote document content.
        raise LlmOutputError(
            f"entity output failed validation ({exc.error_count()} problems)", code="llm_output_invalid"
        ) from None


def parse_resources(payload: Any) -> list[dict[str, Any]]:
    """Check the envelope ``{"resources": [{"resourceType": …}, …]}``; FHIR validation happens in the sweep."""
    if not isinstance(payload, dict) or not isinstance(payload.get("resources"), list):
        raise LlmOutputError("FHIR output has no resources list", code="llm_output_invalid")
    resources = payload["resources"]
    if len(resources) > MAX_RESOURCES:
        raise LlmOutputError("FHIR output has too many resources", code="llm_output_invalid")
    for item in resources:
        if not isinstance(item, dict) or not isinstance(item.get("resourceType"), str):
            raise LlmOutputError("FHIR output holds a non-resource item", code="llm_output_invalid")
    return [dict(item) for item in resources]


# -- entities → FHIR R4B JSON (used by the local provider; the sweep validates it like any model output) -----


def _concept(text: str, coding: Coding | None) -> dict[str, Any]:
    concept: dict[str, Any] = {"text": text}
    if coding is not None:
        entry = {"system": coding.system, "code": coding.code}
        if coding.display:
            entry["display"] = coding.display
        concept["coding"] = [entry]
    return concept


def _quantity(value: float, unit: str | None) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": value}
    if unit:
        quantity.update({"unit": unit, "system": UCUM, "code": unit})
    return quantity


def _status(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def entities_to_fhir(entities: ClinicalEntities, *, patient_reference: str) -> list[dict[str, Any]]:
    """R4B-shaped resources for ``entities``; every one references ``patient_reference``."""
    subject = {"reference": patient_reference}
    out: list[dict[str, Any]] = []
    for c in entities.conditions:
        out.append(
            {
                "resourceType": "Condition",
                "clinicalStatus": _status(CONDITION_CLINICAL, "active"),
                "code": _concept(c.text, c.coding),
                "subject": subject,
            }
        )
    for m in entities.medications:
        resource: dict[str, Any] = {
            "resourceType": "MedicationStatement",
            "status": "active",
            "medicationCodeableConcept": _concept(m.text, m.coding),
            "subject": subject,
        }
        dosage: dict[str, Any] = {}
        parts = []
        if m.dose_value is not None:
            dosage["doseAndRate"] = [{"doseQuantity": _quantity(m.dose_value, m.dose_unit)}]
            parts.append(f"{m.dose_value:g} {m.dose_unit or ''}".strip())
        if m.frequency:
            parts.append(m.frequency)
        if parts:
            dosage["text"] = " ".join(parts)
        if dosage:
            resource["dosage"] = [dosage]
        out.append(resource)
    for a in entities.allergies:
        out.append(
            {
                "resourceType": "AllergyIntolerance",
                "clinicalStatus": _status(ALLERGY_CLINICAL, "active"),
                "code": _concept(a.text, a.coding),
                "patient": subject,
            }
        )
    for p in entities.procedures:
        resource = {
            "resourceType": "Procedure",
            "status": "completed",
            "code": _concept(p.text, p.coding),
            "subject": subject,
        }
        if p.performed:
            resource["performedDateTime"] = p.performed
        out.append(resource)
    for o in entities.observations:
        resource = {
            "resourceType": "Observation",
            "status": "final",
            "code": _concept(o.text, o.coding),
            "subject": subject,
        }
        if o.components:
            resource["component"] = [
                {
                    "code": _concept(comp.coding.display or comp.coding.code, comp.coding),
                    "valueQuantity": _quantity(comp.value, comp.unit),
                }
                for comp in o.components
            ]
        elif o.value is not None:
            resource["valueQuantity"] = _quantity(o.value, o.unit)
        out.append(resource)
    return out


# -- tracing wrapper ----------------------------------------------------------------------------------------


class TracedLlmGateway:
    """One OpenTelemetry span per call: model, latency, token usage, outcome; content only when enabled."""

    def __init__(
        self, inner: LlmGateway, *, tracer_provider: TracerProvider | None = None, capture_content: bool = False
    ) -> None:
        self.inner = inner
        self.provider = inner.provider
        self.model = inner.model
        self._tracer = (tracer_provider or NoOpTracerProvider()).get_tracer(TRACER_NAME)
        self._capture_content = capture_content

    def extract_entities(self, text: str, *, document_ref: str) -> EntityExtraction:
        with llm_span(
            self._tracer,
            operation="extract_entities",
            provider=self.provider,
            model=self.model,
            document_ref=document_ref,
            capture_content=self._capture_content,
        ) as span:
            span.record("curaway.prompt_version", ENTITY_PROMPT_VERSION)
            result = self.inner.extract_entities(text, document_ref=document_ref)
            span.record_usage(
                input_tokens=result.call.usage.input_tokens, output_tokens=result.call.usage.output_tokens
            )
            if result.call.stop_reason:
                span.record("gen_ai.response.finish_reason", result.call.stop_reason)
            for key, value in result.entities.counts().items():
                span.record(f"curaway.entities.{key}", value)
            if self._capture_content:  # never even serialise PHI that will not be recorded
                span.record_content(prompt=text, output=result.entities.model_dump_json())
            return result

    def clinical_context(self, text: str, *, document_ref: str, patient_reference: str) -> ClinicalContext:
        with llm_span(
            self._tracer,
            operation="clinical_context",
            provider=self.provider,
            model=self.model,
            document_ref=document_ref,
            capture_content=self._capture_content,
        ) as span:
            span.record("curaway.prompt_version", CLINICAL_CONTEXT_PROMPT_VERSION)
            result = self.inner.clinical_context(text, document_ref=document_ref, patient_reference=patient_reference)
            span.record_usage(
                input_tokens=result.call.usage.input_tokens, output_tokens=result.call.usage.output_tokens
            )
            if result.call.stop_reason:
                span.record("gen_ai.response.finish_reason", result.call.stop_reason)
            span.record("curaway.resources", len(result.resources))
            if self._capture_content:
                span.record_content(prompt=text, output=json.dumps(result.resources))
            return result


# -- the shipped fake ---------------------------------------------------------------------------------------

Operation = Literal["extract_entities", "clinical_context"]
ScriptItem = EntityExtraction | ClinicalContext | CurawayError | Callable[[str], Any]


class FakeLlmGateway:
    """Counts calls (thread-safe), adds a fixed latency, and plays scripted replies or errors before delegating.

    ``script`` maps an operation to a list of items consumed in order: a result to return, an error to raise, or
    a callable ``(text) -> result``. Once a script is empty the call goes to ``inner`` (default: the local
    extractor), so a fake is always a working gateway.
    """

    def __init__(
        self,
        inner: LlmGateway | None = None,
        *,
        latency_s: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        script: dict[str, Iterable[ScriptItem]] | None = None,
    ) -> None:
        if inner is None:
            from curaway.integrations.llm_local import LocalClinicalExtractor

            inner = LocalClinicalExtractor()
        self.inner = inner
        self.provider = "fake"
        self.model = f"fake/{inner.model}"
        self.latency_s = latency_s
        self._sleep = sleep
        self._lock = threading.Lock()
        self._script: dict[str, list[ScriptItem]] = {k: list(v) for k, v in (script or {}).items()}
        self.calls: Counter[str] = Counter()
        self.documents: Counter[str] = Counter()

    def push(self, operation: Operation, *items: ScriptItem) -> None:
        with self._lock:
            self._script.setdefault(operation, []).extend(items)

    def _next(self, operation: str, document_ref: str) -> ScriptItem | None:
        with self._lock:
            self.calls[operation] += 1
            self.documents[document_ref] += 1
            queue = self._script.get(operation)
            return queue.pop(0) if queue else None

    def _play(self, item: ScriptItem | None, text: str) -> Any:
        if self.latency_s:
            self._sleep(self.latency_s)
        if isinstance(item, CurawayError):
            raise item
        if callable(item) and not isinstance(item, BaseModel):
            return item(text)
        return item

    def extract_entities(self, text: str, *, document_ref: str) -> EntityExtraction:
        item = self._next("extract_entities", document_ref)
        result = self._play(item, text)
        if result is None:
            return self.inner.extract_entities(text, document_ref=document_ref)
        if not isinstance(result, EntityExtraction):
            raise TypeError("scripted extract_entities item must give an EntityExtraction")
        return result

    def clinical_context(self, text: str, *, document_ref: str, patient_reference: str) -> ClinicalContext:
        item = self._next("clinical_context", document_ref)
        result = self._play(item, text)
        if result is None:
            return self.inner.clinical_context(text, document_ref=document_ref, patient_reference=patient_reference)
        if not isinstance(result, ClinicalContext):
            raise TypeError("scripted clinical_context item must give a ClinicalContext")
        return result


def fake_context(resources: list[dict[str, Any]], *, model: str = "fake") -> ClinicalContext:
    """A scripted ``clinical_context`` reply (for tests and the benchmark)."""
    return ClinicalContext(
        resources=resources, call=LlmCall(provider="fake", model=model, prompt_version=CLINICAL_CONTEXT_PROMPT_VERSION)
    )


# -- factory ------------------------------------------------------------------------------------------------


def build_llm_gateway(
    settings: Settings,
    *,
    tracer_provider: TracerProvider | None = None,
    anthropic_client: Any = None,
) -> LlmGateway:
    """The configured provider, traced. ``anthropic_client`` injects a prebuilt SDK client (tests)."""
    inner: LlmGateway
    if settings.llm_provider == "anthropic":
        from curaway.integrations.llm_anthropic import AnthropicGateway

        inner = AnthropicGateway.from_settings(settings, client=anthropic_client)
    else:
        from curaway.integrations.llm_local import LocalClinicalExtractor

        inner = LocalClinicalExtractor()
    return TracedLlmGateway(inner, tracer_provider=tracer_provider, capture_content=settings.llm_trace_content)
