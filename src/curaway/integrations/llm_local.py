"""Provider ``local``: a deterministic, offline clinical extractor over the shipped vocabulary.

It reads section headers ("Diagnoses:", "Medications:", "Allergies:", "Procedures:", "Observations:"/"Vitals:")
to decide what a term means (aspirin the drug vs aspirin the allergen), skips negated clauses ("no", "denies"),
and parses doses ("500 mg twice daily"), procedure years ("(2019)") and observation values with UCUM units
("HbA1c 7.2 %", "blood pressure 138/86 mmHg"). Same input, same output, no network.
"""

from __future__ import annotations

import re

from curaway.integrations.llm import (
    CLINICAL_CONTEXT_PROMPT_VERSION,
    ENTITY_PROMPT_VERSION,
    AllergyEntity,
    ClinicalContext,
    ClinicalEntities,
    Coding,
    ConditionEntity,
    EntityExtraction,
    LlmCall,
    MedicationEntity,
    ObservationComponent,
    ObservationEntity,
    ProcedureEntity,
    entities_to_fhir,
)
from curaway.integrations.vocabulary import Concept, Vocabulary, default_vocabulary

MAX_TEXT_CHARS = 200_000

_SECTION = re.compile(
    r"^\s*(?P<head>diagnos[ie]s|diagnosis|problems?|problem list|conditions?|medical history|past medical history"
    r"|medications?|meds|current medications|drugs|allerg(?:y|ies)|drug allergies|procedures?|surgical history"
    r"|surgeries|observations?|vitals?|vital signs|labs?|laboratory|results)\s*:\s*",
    re.I,
)
_SECTION_CATEGORY = {
    "diagnos": "conditions",
    "problem": "conditions",
    "condition": "conditions",
    "medical history": "conditions",
    "past medical": "conditions",
    "medication": "medications",
    "meds": "medications",
    "current medication": "medications",
    "drug allerg": "allergies",
    "drugs": "medications",
    "allerg": "allergies",
    "procedure": "procedures",
    "surgical": "procedures",
    "surger": "procedures",
    "observation": "observations",
    "vital": "observations",
    "lab": "observations",
    "result": "observations",
}
_CLAUSE_SPLIT = re.compile(r"[;\n]|\.(?!\d)|,(?!\d)")
_NEGATION = re.compile(r"\b(no|not|denies|denied|without|negative for|nkda)\b", re.I)
_DOSE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(mg|mcg|µg|ug|g|ml|units?|iu)(?![A-Za-z])", re.I)
_FREQUENCY = re.compile(
    r"\b(once daily|twice daily|three times daily|four times daily|daily|nightly|weekly|every \d+ hours"
    r"|as needed|bid|tid|qid|qd|prn)\b",
    re.I,
)
_YEAR = re.compile(r"^[\s,]*(?:\(|in\s+)?((?:19|20)\d{2})(?:-(\d{2}))?\)?")
_PAIR = re.compile(r"^[\s:=]*(?:of\s+|is\s+|was\s+)?(\d{2,3})\s*/\s*(\d{2,3})")
_NUMBER = re.compile(r"^[\s:=]*(?:of\s+|is\s+|was\s+)?(-?\d+(?:\.\d+)?)")


def _section_of(head: str) -> str | None:
    lowered = head.lower()
    for prefix, category in _SECTION_CATEGORY.items():
        if lowered.startswith(prefix):
            return category
    return None


def _coding(concept: Concept) -> Coding:
    return Coding(system=concept.system, code=concept.code, display=concept.display)


class LocalClinicalExtractor:
    provider = "local"

    def __init__(self, vocabulary: Vocabulary | None = None) -> None:
        self.vocabulary = vocabulary or default_vocabulary()
        self.model = f"curaway-local-extractor/{self.vocabulary.version}"

    # -- the gateway operations -----------------------------------------------------------------------------
    def extract_entities(self, text: str, *, document_ref: str) -> EntityExtraction:
        return EntityExtraction(entities=self.entities(text), call=self._call(ENTITY_PROMPT_VERSION))

    def clinical_context(self, text: str, *, document_ref: str, patient_reference: str) -> ClinicalContext:
        resources = entities_to_fhir(self.entities(text), patient_reference=patient_reference)
        return ClinicalContext(resources=resources, call=self._call(CLINICAL_CONTEXT_PROMPT_VERSION))

    def _call(self, prompt_version: str) -> LlmCall:
        return LlmCall(provider=self.provider, model=self.model, prompt_version=prompt_version, stop_reason="end_turn")

    # -- extraction -----------------------------------------------------------------------------------------
    def entities(self, text: str) -> ClinicalEntities:
        text = text[:MAX_TEXT_CHARS]
        found: dict[str, dict[str, object]] = {
            "conditions": {},
            "medications": {},
            "allergies": {},
            "procedures": {},
            "observations": {},
        }
        for line in text.splitlines():
            section: str | None = None
            header = _SECTION.match(line)
            if header:
                section = _section_of(header.group("head"))
                line = line[header.end() :]
            for clause in _CLAUSE_SPLIT.split(line):
                if not clause.strip():
                    continue
                for category in self._categories(section, clause):
                    for match in self.vocabulary.find(category, clause):
                        if _NEGATION.search(clause[: match.start]):
                            continue
                        key = match.concept.code
                        if key in found[category]:
                            continue
                        rest = clause[match.end :]
                        entity = self._entity(category, clause[match.start : match.end], match.concept, rest)
                        if entity is not None:
                            found[category][key] = entity
        return ClinicalEntities.model_validate({k: list(v.values()) for k, v in found.items()})

    @staticmethod
    def _categories(section: str | None, clause: str) -> tuple[str, ...]:
        if section is not None:
            return (section,)
        if re.search(r"\ballerg", clause, re.I):
            return ("allergies",)
        return ("conditions", "medications", "procedures", "observations")

    def _entity(self, category: str, surface: str, concept: Concept, rest: str) -> object | None:
        text = surface.strip()
        coding = _coding(concept)
        if category == "conditions":
            return ConditionEntity(text=text, coding=coding)
        if category == "allergies":
            return AllergyEntity(text=text, coding=coding)
        if category == "medications":
            dose = _DOSE.match(rest)
            freq = _FREQUENCY.search(rest)
            unit = self.vocabulary.unit(dose.group(2)) if dose else None
            return MedicationEntity(
                text=text,
                coding=coding,
                dose_value=float(dose.group(1)) if dose else None,
                dose_unit=unit if dose else None,
                frequency=freq.group(1).lower() if freq else None,
            )
        if category == "procedures":
            year = _YEAR.match(rest)
            performed = None
            if year:
                performed = year.group(1) + (f"-{year.group(2)}" if year.group(2) else "")
            return ProcedureEntity(text=text, coding=coding, performed=performed)
        return self._observation(text, concept, rest)

    def _observation(self, text: str, concept: Concept, rest: str) -> ObservationEntity | None:
        if concept.panel:
            pair = _PAIR.match(rest)
            if not pair:
                return None
            unit = self._unit_after(rest[pair.end() :]) or concept.unit
            components = [
                ObservationComponent(coding=Coding(system=s, code=c, display=d), value=float(v), unit=unit)
                for (s, c, d), v in zip(concept.panel, (pair.group(1), pair.group(2)), strict=True)
            ]
            return ObservationEntity(text=text, coding=_coding(concept), components=components)
        number = _NUMBER.match(rest)
        if not number:
            return None
        unit = self._unit_after(rest[number.end() :]) or concept.unit
        return ObservationEntity(text=text, coding=_coding(concept), value=float(number.group(1)), unit=unit)

    def _unit_after(self, rest: str) -> str | None:
        found = self.vocabulary.unit_pattern.match(rest)
        return self.vocabulary.unit(found.group(1)) if found else None
