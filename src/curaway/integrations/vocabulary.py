"""The shipped clinical vocabulary: terms → SNOMED CT / RxNorm / LOINC codings, plus UCUM unit spellings.

The data lives in ``curaway/data/clinical_vocabulary.json`` so it can grow without code changes. Matching is
case-insensitive on word boundaries, longest term first, so "essential hypertension" wins over "hypertension".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

CATEGORIES = ("conditions", "medications", "allergies", "procedures", "observations")


@dataclass(frozen=True)
class Concept:
    category: str
    system: str
    code: str
    display: str
    unit: str | None = None
    panel: tuple[tuple[str, str, str], ...] = ()  # (system, code, display) of components, e.g. systolic/diastolic


@dataclass(frozen=True)
class TermMatch:
    concept: Concept
    start: int
    end: int


class Vocabulary:
    def __init__(self, data: dict[str, Any]) -> None:
        systems: dict[str, str] = data["systems"]
        self.version: str = str(data.get("version", "unknown"))
        self.units: dict[str, str] = {k.lower(): v for k, v in data.get("units", {}).items()}
        self._patterns: dict[str, re.Pattern[str]] = {}
        self._by_term: dict[str, dict[str, Concept]] = {}
        for category in CATEGORIES:
            by_term: dict[str, Concept] = {}
            for entry in data.get(category, []):
                concept = Concept(
                    category=category,
                    system=systems[entry["system"]],
                    code=str(entry["code"]),
                    display=str(entry["display"]),
                    unit=entry.get("unit"),
                    panel=tuple(
                        (systems[c["system"]], str(c["code"]), str(c["display"])) for c in entry.get("panel", [])
                    ),
                )
                for term in entry["terms"]:
                    by_term[term.lower()] = concept
            self._by_term[category] = by_term
            terms = sorted(by_term, key=len, reverse=True)
            alternation = "|".join(re.escape(t) for t in terms)
            self._patterns[category] = re.compile(rf"(?<![A-Za-z0-9])(?:{alternation})(?![A-Za-z0-9])", re.I)
        unit_terms = sorted(self.units, key=len, reverse=True)
        self.unit_pattern = re.compile(r"\s*(" + "|".join(re.escape(u) for u in unit_terms) + r")(?![A-Za-z0-9])", re.I)

    def find(self, category: str, text: str) -> list[TermMatch]:
        """Non-overlapping matches of ``category`` terms in ``text``, leftmost-longest."""
        by_term = self._by_term[category]
        return [
            TermMatch(concept=by_term[m.group(0).lower()], start=m.start(), end=m.end())
            for m in self._patterns[category].finditer(text)
        ]

    def unit(self, spelling: str) -> str | None:
        return self.units.get(spelling.lower().strip())


@lru_cache(maxsize=1)
def default_vocabulary() -> Vocabulary:
    raw = (resources.files("curaway") / "data" / "clinical_vocabulary.json").read_text(encoding="utf-8")
    return Vocabulary(json.loads(raw))
