"""OCR for image documents: a small protocol, Tesseract (when the ``tesseract`` binary is on PATH) and a fake.

Without Tesseract, ``build_ocr`` returns ``UnavailableOcr``, which fails every image with a clear permanent error
(``ocr_unavailable``) instead of pretending. Image bytes go to Tesseract on stdin; text comes back on stdout.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Protocol

from curaway.errors import PermanentError, RetryableError
from curaway.settings import Settings

OCR_TIMEOUT_S = 120.0


class OcrEngine(Protocol):
    name: str

    def image_to_text(self, data: bytes, *, content_type: str) -> str: ...


class TesseractOcr:
    name = "tesseract"

    def __init__(self, binary: str, *, timeout_s: float = OCR_TIMEOUT_S, language: str = "eng") -> None:
        self.binary = binary
        self.timeout_s = timeout_s
        self.language = language

    def image_to_text(self, data: bytes, *, content_type: str) -> str:
        try:
            done = subprocess.run(
                [self.binary, "stdin", "stdout", "-l", self.language],
                input=data,
                capture_output=True,
                timeout=self.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RetryableError("OCR timed out", code="ocr_timeout") from exc
        except OSError as exc:
            raise PermanentError("OCR engine could not be started", code="ocr_unavailable") from exc
        if done.returncode != 0:
            raise PermanentError(f"OCR failed (exit {done.returncode})", code="ocr_failed")
        return done.stdout.decode("utf-8", errors="replace")


class UnavailableOcr:
    name = "none"

    def image_to_text(self, data: bytes, *, content_type: str) -> str:
        raise PermanentError(
            "image documents need OCR, but the 'tesseract' binary is not installed on this host",
            code="ocr_unavailable",
        )


class FakeOcr:
    """Returns a fixed text for any image (tests)."""

    name = "fake"

    def __init__(self, text: str) -> None:
        self.text = text
        self.calls = 0

    def image_to_text(self, data: bytes, *, content_type: str) -> str:
        self.calls += 1
        return self.text


def build_ocr(settings: Settings | None = None, *, which: str | None = None) -> OcrEngine:
    binary = which if which is not None else shutil.which("tesseract")
    return TesseractOcr(binary) if binary else UnavailableOcr()
