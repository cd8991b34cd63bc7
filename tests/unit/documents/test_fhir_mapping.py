"""Entities and model output → validated FHIR R4B resources bound to the case's Patient."""

from __future__ import annotations

import pytest

from curaway.integrations.llm_local import LocalClinicalExtractor
from curaway.repositories.demo import SAMPLE_NOTE
from curaway.tasks.fhir_mapping import (
    FhirMappingError,
    fhir_id,
    map_entities,
    patient_reference,
    validate_resources,
)

REF = patient_reference("case_abc_1")


def test_patient_reference_is_a_valid_fhir_id_from_the_opaque_case_id():
    assert REF == "Patient/case-abc-1"
    assert fhir_id("a_b/c" * 30) == ("a-b-c" * 30)[:64]


def test_sample_entities_map_to_valid_r4b_resources():
    mapped = map_entities(LocalClinicalExtractor().entities(SAMPLE_NOTE), case_id="case_abc_1")
    assert [m.resource_type for m in mapped] == [
        "Condition",
        "Condition",
        "MedicationStatement",
        "MedicationStatement",
        "AllergyIntolerance",
        "Procedure",
        "Observation",
        "Observation",
        "Observation",
    ]
    med = mapped[2].resource
    assert med["medicationCodeableConcept"]["coding"][0]["code"] == "6809"
    assert med["dosage"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 500
    assert mapped[4].resource["patient"] == {"reference": REF}
    assert mapped[5].resource["performedDateTime"] == "2019"
    bp = mapped[7].resource
    assert [c["code"]["coding"][0]["code"] for c in bp["component"]] == ["8480-6", "8462-4"]
    assert len({m.fingerprint for m in mapped}) == len(mapped)


def test_fingerprints_are_stable_and_duplicates_collapse():
    cond = {"resourceType": "Condition", "code": {"text": "asthma"}, "subject": {"reference": REF}}
    a = validate_resources([cond, dict(cond), {**cond, "id": "model-made"}], patient_ref=REF)
    b = validate_resources([cond], patient_ref=REF)
    assert len(a) == 1 and a[0].fingerprint == b[0].fingerprint and "id" not in a[0].resource


def test_missing_subject_is_filled_in():
    (m,) = validate_resources([{"resourceType": "Procedure", "status": "completed"}], patient_ref=REF)
    assert m.resource["subject"] == {"reference": REF}


@pytest.mark.parametrize(
    ("resource", "code"),
    [
        ({"resourceType": "Patient"}, "fhir_type_not_allowed"),
        ({"noType": True}, "fhir_type_not_allowed"),
        ({"resourceType": "Condition", "subject": {"reference": "Patient/other"}}, "fhir_subject_mismatch"),
        ({"resourceType": "AllergyIntolerance", "patient": "Patient/x"}, "fhir_subject_mismatch"),
        ({"resourceType": "Condition", "onsetDateTime": "2024-13-45"}, "fhir_schema_invalid"),
        ({"resourceType": "Observation", "code": {"text": "x"}}, "fhir_schema_invalid"),  # status is required
        ({"resourceType": "MedicationStatement", "status": "active", "medication": {}}, "fhir_schema_invalid"),
        ({"resourceType": "Condition", "bogus": 1}, "fhir_schema_invalid"),
    ],
)
def test_invalid_resources_are_refused_with_an_error_class(resource, code):
    with pytest.raises(FhirMappingError) as info:
        validate_resources([resource], patient_ref=REF)
    assert info.value.code == code
    assert "2024-13-45" not in str(info.value)
