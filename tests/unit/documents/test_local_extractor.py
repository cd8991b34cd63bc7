"""The embedded ``local`` provider: deterministic extraction with SNOMED CT / RxNorm / LOINC codes."""

from __future__ import annotations

from curaway.integrations.llm_local import LocalClinicalExtractor
from curaway.repositories.demo import SAMPLE_NOTE

SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"


def _codes(items):
    return [(i.coding.system, i.coding.code) for i in items]


def test_the_demo_note_is_fully_extracted():
    e = LocalClinicalExtractor().entities(SAMPLE_NOTE)
    assert _codes(e.conditions) == [(SNOMED, "44054006"), (SNOMED, "59621000")]
    assert _codes(e.medications) == [(RXNORM, "6809"), (RXNORM, "29046")]
    metformin, lisinopril = e.medications
    assert (metformin.dose_value, metformin.dose_unit, metformin.frequency) == (500.0, "mg", "twice daily")
    assert (lisinopril.dose_value, lisinopril.dose_unit, lisinopril.frequency) == (10.0, "mg", "daily")
    assert _codes(e.allergies) == [(SNOMED, "764146007")]
    assert _codes(e.procedures) == [(SNOMED, "179344006")] and e.procedures[0].performed == "2019"
    hba1c, bp, weight = e.observations
    assert (hba1c.coding.code, hba1c.value, hba1c.unit) == ("4548-4", 7.2, "%")
    assert bp.coding.code == "85354-9"
    assert [(c.coding.code, c.value, c.unit) for c in bp.components] == [
        ("8480-6", 138.0, "mm[Hg]"),
        ("8462-4", 86.0, "mm[Hg]"),
    ]
    assert (weight.coding.code, weight.value, weight.unit) == ("29463-7", 82.0, "kg")


def test_deterministic_and_typed_like_every_provider():
    gateway = LocalClinicalExtractor()
    a = gateway.extract_entities(SAMPLE_NOTE, document_ref="doc_1")
    b = gateway.extract_entities(SAMPLE_NOTE, document_ref="doc_2")
    assert a.entities == b.entities
    assert a.call.provider == "local" and a.call.prompt_version == "entity_extraction/v1"


def test_negation_sections_and_free_text():
    e = LocalClinicalExtractor().entities(
        "Patient denies asthma. No hypertension.\n"
        "Allergies: aspirin; latex.\n"
        "Medications: aspirin 81 mg daily.\n"
        "History of appendectomy in 2004 and atrial fibrillation. Pulse 72 bpm, temperature 37.1 C."
    )
    assert [c.coding.code for c in e.conditions] == ["49436004"]
    assert [a.coding.code for a in e.allergies] == ["387458008", "111088007"]
    assert [(m.coding.code, m.dose_value) for m in e.medications] == [("1191", 81.0)]
    assert [(p.coding.code, p.performed) for p in e.procedures] == [("80146002", "2004")]
    assert [(o.coding.code, o.value, o.unit) for o in e.observations] == [
        ("8867-4", 72.0, "/min"),
        ("8310-5", 37.1, "Cel"),
    ]


def test_empty_or_unrelated_text_gives_no_entities():
    e = LocalClinicalExtractor().entities("Invoice for travel arrangements. Flight 123 to Istanbul.")
    assert sum(e.counts().values()) == 0
