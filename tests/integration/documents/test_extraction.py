"""Task ``extract`` on SQLite and Postgres: text, PDF and image documents, idempotency, case completion."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from curaway.db import transaction
from curaway.errors import NotFoundError, PermanentError, RetryableError, ValidationFailed
from curaway.integrations.llm import FakeLlmGateway
from curaway.integrations.llm_local import LocalClinicalExtractor
from curaway.integrations.ocr import FakeOcr, UnavailableOcr
from curaway.integrations.storage import InMemoryStorage
from curaway.models import OcrJob
from curaway.tasks import extraction
from tests.support.documents_world import (
    PNG_1PX,
    SAMPLE_NOTE,
    case_status,
    document,
    make_ctx,
    make_text_pdf,
    seed_case,
    seed_stored,
)


@pytest.fixture
def storage() -> InMemoryStorage:
    return InMemoryStorage()


def _ctx(session_factory, make_settings, storage, *, llm=None, ocr=None, **kw):
    return make_ctx(
        session_factory,
        make_settings(),
        llm=llm or LocalClinicalExtractor(),
        storage=storage,
        ocr=ocr,
        task="extract",
        run_key="extract:test",
        **kw,
    )


def test_text_document_is_extracted_and_completes_the_case(session_factory, make_settings, storage):
    seed_case(session_factory, "case_x1")
    seed_stored(session_factory, storage, "case_x1", "doc_x1_a", SAMPLE_NOTE.encode(), "text/plain")
    seed_stored(session_factory, storage, "case_x1", "doc_x1_b", SAMPLE_NOTE.encode(), "text/plain; charset=utf-8")
    ctx = _ctx(session_factory, make_settings, storage)

    first = extraction.extract(ctx, {"document_id": "doc_x1_a"})
    assert first.status == "succeeded"
    assert first.data["entity_counts"] == {
        "conditions": 2,
        "medications": 2,
        "allergies": 1,
        "procedures": 1,
        "observations": 3,
    }
    doc = document(session_factory, "doc_x1_a")
    assert doc.status == "extracted" and doc.extracted_text == SAMPLE_NOTE and doc.extracted_at is not None
    assert doc.entities is not None and doc.entities["provider"] == "local"
    codes = {c["coding"]["code"] for c in doc.entities["entities"]["conditions"]}
    assert codes == {"44054006", "59621000"}
    # One document of two extracted: the case waits.
    assert case_status(session_factory, "case_x1") == "documents_pending"

    second = extraction.extract(ctx, {"document_id": "doc_x1_b"})
    assert second.data["case_status"] == "extraction_complete"
    assert case_status(session_factory, "case_x1") == "extraction_complete"


def test_extract_is_idempotent_per_document(session_factory, make_settings, storage):
    seed_case(session_factory, "case_x2")
    seed_stored(session_factory, storage, "case_x2", "doc_x2", SAMPLE_NOTE.encode(), "text/plain")
    llm = FakeLlmGateway()
    ctx = _ctx(session_factory, make_settings, storage, llm=llm)
    extraction.extract(ctx, {"document_id": "doc_x2"})
    before = document(session_factory, "doc_x2")
    again = extraction.extract(ctx, {"document_id": "doc_x2"})
    assert again.status == "skipped" and again.data["status"] == "already_extracted"
    assert llm.calls["extract_entities"] == 1
    assert document(session_factory, "doc_x2").extracted_at == before.extracted_at


def test_pdf_text_layer_is_read(session_factory, make_settings, storage):
    seed_case(session_factory, "case_x3")
    seed_stored(session_factory, storage, "case_x3", "doc_x3", make_text_pdf(SAMPLE_NOTE), "application/pdf")
    result = extraction.extract(_ctx(session_factory, make_settings, storage), {"document_id": "doc_x3"})
    assert result.data["entity_counts"]["medications"] == 2
    assert "metformin" in (document(session_factory, "doc_x3").extracted_text or "")


@pytest.mark.parametrize(
    ("data", "content_type", "code"),
    [
        (b"%PDF-1.4 this is not really a pdf", "application/pdf", "pdf_unreadable"),
        (make_text_pdf(""), "application/pdf", "pdf_no_text_layer"),
        (b"\xff\xfe\x00bad utf8 \xc3\x28", "text/plain", "text_not_utf8"),
        (b"   \n ", "text/plain", "empty_document"),
        (b"GIF89a", "image/gif", "unsupported_type"),
    ],
)
def test_unusable_files_fail_permanently_with_an_error_class(
    session_factory, make_settings, storage, data, content_type, code
):
    seed_case(session_factory, "case_x4")
    seed_stored(session_factory, storage, "case_x4", "doc_x4", data, content_type)
    with pytest.raises(PermanentError) as info:
        extraction.extract(_ctx(session_factory, make_settings, storage), {"document_id": "doc_x4"})
    assert info.value.code == code
    doc = document(session_factory, "doc_x4")
    assert doc.status == "failed" and doc.error_class == code


def test_image_without_tesseract_is_a_clear_permanent_failure_with_an_ocr_job(session_factory, make_settings, storage):
    seed_case(session_factory, "case_x5")
    seed_stored(session_factory, storage, "case_x5", "doc_x5", PNG_1PX, "image/png")
    ctx = _ctx(session_factory, make_settings, storage, ocr=UnavailableOcr())
    with pytest.raises(PermanentError, match="tesseract") as info:
        extraction.extract(ctx, {"document_id": "doc_x5"})
    assert info.value.code == "ocr_unavailable"
    with transaction(session_factory) as s:
        jobs = list(s.scalars(select(OcrJob).where(OcrJob.document_id == "doc_x5")))
        assert [(j.status, j.error_class, j.attempts) for j in jobs] == [("failed", "ocr_unavailable", 1)]
    assert document(session_factory, "doc_x5").status == "failed"


def test_image_goes_through_the_ocr_engine(session_factory, make_settings, storage):
    seed_case(session_factory, "case_x6")
    seed_stored(session_factory, storage, "case_x6", "doc_x6", PNG_1PX, "image/jpeg")
    ocr = FakeOcr(SAMPLE_NOTE)
    result = extraction.extract(_ctx(session_factory, make_settings, storage, ocr=ocr), {"document_id": "doc_x6"})
    assert ocr.calls == 1 and result.data["entity_counts"]["allergies"] == 1
    with transaction(session_factory) as s:
        job = s.scalar(select(OcrJob).where(OcrJob.document_id == "doc_x6"))
        assert job is not None and job.status == "succeeded" and job.finished_at is not None


def test_unknown_document_and_bad_payload(session_factory, make_settings, storage):
    ctx = _ctx(session_factory, make_settings, storage)
    with pytest.raises(NotFoundError):
        extraction.extract(ctx, {"document_id": "doc_missing"})
    for payload in ({}, {"document_id": 12}, {"document_id": ""}, {"document_id": "x" * 100}):
        with pytest.raises(ValidationFailed):
            extraction.extract(ctx, payload)


def test_missing_stored_file_is_permanent(session_factory, make_settings, storage):
    seed_case(session_factory, "case_x7")
    seed_stored(session_factory, storage, "case_x7", "doc_x7", b"x", "text/plain")
    storage.delete("tests/doc_x7")
    with pytest.raises(PermanentError) as info:
        extraction.extract(_ctx(session_factory, make_settings, storage), {"document_id": "doc_x7"})
    assert info.value.code == "file_missing"


def test_retryable_llm_failure_requeues_then_fails_on_the_final_attempt(session_factory, make_settings, storage):
    seed_case(session_factory, "case_x8")
    seed_stored(session_factory, storage, "case_x8", "doc_x8", SAMPLE_NOTE.encode(), "text/plain")
    llm = FakeLlmGateway(script={"extract_entities": [RetryableError("overloaded", code="llm_overloaded")] * 2})
    with pytest.raises(RetryableError):
        extraction.extract(_ctx(session_factory, make_settings, storage, llm=llm), {"document_id": "doc_x8"})
    doc = document(session_factory, "doc_x8")
    assert (doc.status, doc.error_class) == ("queued", "llm_overloaded")
    with pytest.raises(RetryableError):
        extraction.extract(
            _ctx(session_factory, make_settings, storage, llm=llm, final_attempt=True), {"document_id": "doc_x8"}
        )
    assert document(session_factory, "doc_x8").status == "failed"
    # A later delivery (e.g. a dead-letter replay) can still extract it.
    extraction.extract(_ctx(session_factory, make_settings, storage, llm=llm), {"document_id": "doc_x8"})
    assert document(session_factory, "doc_x8").status == "extracted"
