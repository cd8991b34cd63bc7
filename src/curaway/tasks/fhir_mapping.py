"""Entities / model output → validated FHIR R4B resources (``fhir.resources.R4B``), ready to store.

Rules (DESIGN §4 "FHIR"): R4B (4.3.0) models, the version stored per row; only Condition, MedicationStatement,
AllergyIntolerance, Procedure and Observation; every resource references the case's Patient (``subject``, or
``patient`` for AllergyIntolerance) — a missing reference is filled in, a different patient is refused. Model-made
``id``/``meta`` are dropped (rows carry their own ids); the validated JSON is stored as given. One invalid resource
fails the whole document: no partial writes. Each resource gets a fingerprint (SHA-256 of its canonical JSON),
unique per document in the database.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from curaway.errors import PermanentError
from curaway.integrations.llm import FHIR_RESOURCE_TYPES, ClinicalEntities, entities_to_fhir

FHIR_VERSION = "4.3.0"
_NOT_ID = re.compile(r"[^A-Za-z0-9\-.]")


class FhirMappingError(PermanentError):
    """The resources are not valid FHIR R4B for this case (the message names the problem, never content)."""

    code = "fhir_invalid"


@dataclass(frozen=True)
class MappedResource:
    resource_type: str
    resource: dict[str, Any]
    fingerprint: str


def fhir_id(value: str) -> str:
    """A FHIR ``id`` ([A-Za-z0-9-.]{1,64}) derived from an opaque internal id."""
    return _NOT_ID.sub("-", value)[:64] or "unknown"


def patient_reference(case_id: str) -> str:
    """The case's Patient. Derived from the opaque case id: no PHI in references."""
    return f"Patient/{fhir_id(case_id)}"


def fingerprint(resource: dict[str, Any]) -> str:
    canonical = json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _model_class(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


def validate_resources(raw: list[dict[str, Any]], *, patient_ref: str) -> list[MappedResource]:
    """Validate every resource; raise ``FhirMappingError`` on the first problem. Duplicates collapse."""
    out: dict[str, MappedResource] = {}
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise FhirMappingError(f"resource #{index} is not an object", code="fhir_schema_invalid")
        resource = {k: v for k, v in item.items() if k not in {"id", "meta"}}
        resource_type = resource.get("resourceType")
        if resource_type not in FHIR_RESOURCE_TYPES:
            raise FhirMappingError(
                f"resource #{index} has a resourceType outside the allowed set", code="fhir_type_not_allowed"
            )
        key = "patient" if resource_type == "AllergyIntolerance" else "subject"
        ref = resource.get(key)
        if ref is None:
            resource[key] = {"reference": patient_ref}
        elif not isinstance(ref, dict) or ref.get("reference") != patient_ref:
            raise FhirMappingError(
                f"resource #{index} ({resource_type}) does not reference the case's Patient",
                code="fhir_subject_mismatch",
            )
        try:
            _model_class(str(resource_type)).model_validate(resource)
        except (ValidationError, ValueError, TypeError) as exc:
            count = exc.error_count() if isinstance(exc, ValidationError) else 1
            raise FhirMappingError(
                f"resource #{index} ({resource_type}) is not valid FHIR R4B ({count} problems)",
                code="fhir_schema_invalid",
            ) from None
        # Store what was validated (a JSON round trip drops non-JSON values); re-serialising through the model
        # would cost more than validating and change nothing a FHIR reader relies on.
        stored = json.loads(json.dumps(resource))
        fp = fingerprint(stored)
        out.setdefault(fp, MappedResource(resource_type=str(resource_type), resource=stored, fingerprint=fp))
    return list(out.values())


def map_entities(entities: ClinicalEntities, *, case_id: str) -> list[MappedResource]:
    """Extracted entities → validated R4B resources for the case's Patient."""
    ref = patient_reference(case_id)
    return validate_resources(entities_to_fhir(entities, patient_reference=ref), patient_ref=ref)
