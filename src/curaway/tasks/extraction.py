"""Task ``extract`` (``POST /api/v1/internal/extract`` ``{"document_id"}``): text, then entities, per document.

1. Load the document (unknown → permanent). Already ``extracted`` → a no-op answer (idempotent per document).
2. Text: PDFs through pypdf's text layer, ``text/plain`` decoded as UTF-8, PNG/JPEG through an ``ocr_jobs`` row and
   the OCR engine (Tesseract when installed, otherwise a clear permanent ``ocr_unavailable``).
3. Entities through the LLM gateway — outside any database transaction.
4. One short transaction: ``documents.status='extracted'``, text and entities stored; when every document of the
   case is extracted the case moves to ``extraction_complete``.
Permanent failures mark the document ``failed`` with an error class and re-raise (the runtime dead-letters);
retryable ones put it back to ``queued`` (``failed`` on the final attempt) and re-raise. Logs carry ids only.
"""

from __future__ import annotations

import io
from typing import Any

from curaway.errors import CurawayError, NotFoundError, PermanentError, RetryableError, ValidationFailed
from curaway.integrations.ocr import OcrEngine, build_ocr
from curaway.repositories import documents as repo
from curaway.tasks.base import Result, TaskContext, llm_gateway

PDF_TYPES = frozenset({"application/pdf"})
TEXT_TYPES = frozenset({"text/plain"})
IMAGE_TYPES = frozenset({"image/png", "image/jpeg"})
SUPPORTED_TYPES = PDF_TYPES | TEXT_TYPES | IMAGE_TYPES
MAX_TEXT_CHARS = 500_000
MAX_PDF_PAGES = 500


def _document_id(payload: dict[str, Any]) -> str:
    document_id = payload.get("document_id") if isinstance(payload, dict) else None
    if not isinstance(document_id, str) or not document_id.strip() or len(document_id) > 64:
        raise ValidationFailed("payload needs a 'document_id' string", code="invalid_payload")
    return document_id.strip()


def base_content_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def pdf_text(data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise PermanentError("PDF is encrypted", code="pdf_encrypted")
        if len(reader.pages) > MAX_PDF_PAGES:
            raise PermanentError("PDF has too many pages", code="pdf_too_large")
        parts = [page.extract_text() or "" for page in reader.pages]
    except PermanentError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PermanentError("PDF could not be read", code="pdf_unreadable") from exc
    text = "\n".join(p for p in parts if p).strip()
    if not text:
        raise PermanentError("PDF has no text layer (scanned PDFs are not supported yet)", code="pdf_no_text_layer")
    return text


def plain_text(data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PermanentError("text document is not valid UTF-8", code="text_not_utf8") from exc
    if not text.strip():
        raise PermanentError("text document is empty", code="empty_document")
    return text


def _ocr_text(ctx: TaskContext, document_id: str, data: bytes, content_type: str) -> str:
    engine: OcrEngine = ctx.integrations.ocr or build_ocr(ctx.settings)
    with ctx.transaction() as session:
        job_id = repo.start_ocr_job(session, document_id=document_id, now=ctx.clock.now()).id
    ctx.log.info("extraction.ocr_started", document_id=document_id, ocr_job_id=job_id, engine=engine.name)
    try:
        text = engine.image_to_text(data, content_type=content_type)
        if not text.strip():
            raise PermanentError("OCR found no text in the image", code="ocr_no_text")
    except CurawayError as exc:
        with ctx.transaction() as session:
            repo.finish_ocr_job(session, job_id=job_id, ok=False, error_class=exc.code, now=ctx.clock.now())
        ctx.log.warning("extraction.ocr_failed", document_id=document_id, ocr_job_id=job_id, error_code=exc.code)
        raise
    with ctx.transaction() as session:
        repo.finish_ocr_job(session, job_id=job_id, ok=True, error_class=None, now=ctx.clock.now())
    return text


def _text_for(ctx: TaskContext, document_id: str, storage_key: str | None, content_type: str) -> str:
    if content_type not in SUPPORTED_TYPES:
        raise PermanentError("unsupported document type", code="unsupported_type")
    if not storage_key:
        raise PermanentError("document has no stored file", code="file_missing")
    storage = ctx.integrations.storage
    if storage is None:
        raise PermanentError("no storage is configured", code="storage_not_configured")
    try:
        data: bytes = storage.get(storage_key)
    except NotFoundError as exc:
        raise PermanentError("document file is missing from storage", code="file_missing") from exc
    if content_type in PDF_TYPES:
        text = pdf_text(data)
    elif content_type in TEXT_TYPES:
        text = plain_text(data)
    else:
        text = _ocr_text(ctx, document_id, data, content_type)
    # NUL cannot be stored in Postgres text columns (pypdf can emit it); it carries no meaning here.
    return text.replace("\x00", "")[:MAX_TEXT_CHARS]


def _fail(ctx: TaskContext, document_id: str, exc: CurawayError) -> None:
    permanent = not isinstance(exc, RetryableError) or ctx.final_attempt
    with ctx.transaction() as session:
        document = repo.get_document(session, document_id, for_update=True)
        if document is None or document.status == "extracted":
            return
        document.status = "failed" if permanent else "queued"
        document.error_class = exc.code
        document.updated_at = ctx.clock.now()
    ctx.log.warning(
        "extraction.failed",
        document_id=document_id,
        error_code=exc.code,
        retryable=not permanent,
        attempt=ctx.attempt,
    )


def extract(ctx: TaskContext, payload: dict[str, Any]) -> Result:
    document_id = _document_id(payload)
    with ctx.transaction() as session:
        document = repo.get_document(session, document_id, for_update=True)
        if document is None:
            raise NotFoundError("document not found", code="document_not_found")
        case_id = document.case_id
        if document.status == "extracted":
            ctx.log.info("extraction.already_done", document_id=document_id, case_id=case_id)
            return Result(
                {"document_id": document_id, "case_id": case_id, "status": "already_extracted"}, status="skipped"
            )
        document.status = "extracting"
        document.updated_at = ctx.clock.now()
        storage_key = document.storage_key
        content_type = base_content_type(document.content_type)

    ctx.log.info("extraction.started", document_id=document_id, case_id=case_id, content_type=content_type)
    try:
        text = _text_for(ctx, document_id, storage_key, content_type)
        extraction = llm_gateway(ctx).extract_entities(text, document_ref=document_id)
    except CurawayError as exc:
        _fail(ctx, document_id, exc)
        raise
    except Exception as exc:
        wrapped = RetryableError("extraction failed unexpectedly", code="extraction_unexpected")
        _fail(ctx, document_id, wrapped)
        raise wrapped from exc

    entities = {
        "provider": extraction.call.provider,
        "model": extraction.call.model,
        "prompt_version": extraction.call.prompt_version,
        "entities": extraction.entities.model_dump(mode="json", exclude_none=True),
    }
    counts = extraction.entities.counts()
    with ctx.transaction() as session:
        document = repo.get_document(session, document_id, for_update=True)
        if document is None:
            raise NotFoundError("document disappeared during extraction", code="document_not_found")
        if document.status == "extracted":  # a concurrent delivery finished first: keep its result
            return Result(
                {"document_id": document_id, "case_id": case_id, "status": "already_extracted"}, status="skipped"
            )
        now = ctx.clock.now()
        repo.mark_extracted(session, document, text_content=text, entities=entities, now=now)
        case_status = repo.complete_case_if_extracted(session, case_id, now=now)

    ctx.log.info(
        "extraction.succeeded",
        document_id=document_id,
        case_id=case_id,
        provider=extraction.call.provider,
        entity_counts=counts,
        case_status=case_status,
    )
    return Result(
        {
            "document_id": document_id,
            "case_id": case_id,
            "status": "extracted",
            "text_chars": len(text),
            "entity_counts": counts,
            "provider": extraction.call.provider,
            "case_status": case_status,
        }
    )
