"""External seams (email, exchange rates, LLM, storage): small protocols, a real client and a shipped fake each.

Integrations never import SQLAlchemy or the models (enforced by import-linter). The composition root builds one
``Integrations`` from settings; tests pass fakes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Integrations:
    email: Any = None
    rates: Any = None
    llm: Any = None
    storage: Any = None
    ocr: Any = None  # curaway.integrations.ocr.OcrEngine; None → build_ocr() (Tesseract if on PATH)
    tracer_provider: Any = None  # owned here so shutdown flushes spans

    def close(self) -> None:
        """Release clients and flush traces (entrypoints call this on exit)."""
        for member in (self.rates, self.email, self.llm, self.storage):
            close = getattr(member, "close", None)
            if callable(close):
                close()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
