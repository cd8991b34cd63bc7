"""Data access for uploads, documents, OCR jobs and FHIR rows (the spec's ``DocumentRepository``).

Sweep candidates are documents with ``status='extracted'`` and no FHIR rows that are not already complete, still
within their attempt budget and not leased by another sweep. Concurrency (DESIGN §4 "Advisory locks"):
- a sweep *claims* its documents first (lease owner + expiry, in one short transaction; ``FOR UPDATE SKIP LOCKED``
  on Postgres, ``BEGIN IMMEDIATE`` on SQLite) so parallel sweeps call the LLM about once per document;
- the write transaction takes ``pg_advisory_xact_lock`` on the case (Postgres) *in the same transaction* as the
  re-check ("still no FHIR rows?") and the insert; SQLite's ``BEGIN IMMEDIATE`` is the equivalent;
- ``fhir_resources`` has ``UNIQUE (document_id, fingerprint)``, so duplicates are impossible even without locks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import exists, func, insert, or_, select, text, update
from sqlalchemy.orm import Session

from curaway.models import Case, Document, FhirResource, OcrJob, Upload, new_id

CASE_FORWARD_FROM = ("intake", "documents_pending")


@dataclass(frozen=True)
class SweepCandidate:
    document_id: str
    case_id: str
    fhir_status: str
    fhir_attempts: int
    leased: bool


@dataclass(frozen=True)
class ClaimedDocument:
    document_id: str
    case_id: str
    text: str | None
    attempts: int


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


# -- uploads and documents ------------------------------------------------------------------------------------


def create_upload(
    session: Session,
    *,
    tenant_id: str,
    user_id: str | None,
    filename: str,
    content_type: str,
    size_bytes: int,
    sha256: str,
    storage_key: str,
    upload_id: str,
    now: datetime,
) -> Upload:
    upload = Upload(
        id=upload_id,
        tenant_id=tenant_id,
        user_id=user_id,
        filename=filename,
        content_type=content_type,
        size_bytes=size_bytes,
        sha256=sha256,
        storage_key=storage_key,
        created_at=now,
        updated_at=now,
    )
    session.add(upload)
    session.flush()
    return upload


def get_upload_for_tenant(session: Session, upload_id: str, *, tenant_id: str) -> Upload | None:
    """Locked for the rest of the transaction (Postgres), so the cleanup cron cannot delete it while it is being
    confirmed: its conditional delete waits and then sees ``confirmed_at`` set."""
    return session.scalar(
        select(Upload)
        .where(Upload.id == upload_id, Upload.tenant_id == tenant_id, Upload.deleted_at.is_(None))
        .with_for_update()
    )


def get_case_for_tenant(session: Session, case_id: str, *, tenant_id: str) -> Case | None:
    return session.scalar(select(Case).where(Case.id == case_id, Case.tenant_id == tenant_id))


def document_for_upload(session: Session, upload_id: str) -> Document | None:
    return session.scalar(select(Document).where(Document.upload_id == upload_id))


def create_document_from_upload(session: Session, *, upload: Upload, case: Case, now: datetime) -> Document:
    """The document for a confirmed upload (status ``queued``); the case waits for its documents."""
    document = Document(
        case_id=case.id,
        upload_id=upload.id,
        filename=upload.filename,
        content_type=upload.content_type,
        storage_key=upload.storage_key,
        status="queued",
        fhir_status="pending",
        created_at=now,
        updated_at=now,
    )
    session.add(document)
    upload.confirmed_at = now
    if case.status == "intake":
        case.status = "documents_pending"
    session.flush()
    return document


def case_exists(session: Session, case_id: str) -> bool:
    return session.get(Case, case_id) is not None


def get_document(session: Session, document_id: str, *, for_update: bool = False) -> Document | None:
    stmt = select(Document).where(Document.id == document_id)
    if for_update and _is_postgres(session):
        stmt = stmt.with_for_update()
    return session.scalar(stmt)


def mark_extracted(
    session: Session, document: Document, *, text_content: str, entities: dict[str, Any], now: datetime
) -> None:
    document.status = "extracted"
    document.extracted_text = text_content
    document.entities = entities
    document.extracted_at = now
    document.error_class = None
    document.updated_at = now
    session.flush()


def complete_case_if_extracted(session: Session, case_id: str, *, now: datetime) -> str | None:
    """Move the case to ``extraction_complete`` when every one of its documents is extracted; the new status."""
    case = session.get(Case, case_id)
    if case is None:
        return None
    pending = session.scalar(
        select(func.count()).select_from(Document).where(Document.case_id == case_id, Document.status != "extracted")
    )
    if not pending and case.status in CASE_FORWARD_FROM:
        case.status = "extraction_complete"
        case.updated_at = now
    return case.status


# -- OCR jobs -------------------------------------------------------------------------------------------------


def start_ocr_job(session: Session, *, document_id: str, now: datetime) -> OcrJob:
    """Reuse the document's unfinished OCR job (or create one) and mark it processing."""
    job = session.scalar(
        select(OcrJob)
        .where(OcrJob.document_id == document_id, OcrJob.status.in_(("queued", "processing", "failed")))
        .order_by(OcrJob.created_at.desc())
        .limit(1)
    )
    if job is None:
        job = OcrJob(document_id=document_id, status="queued", attempts=0, created_at=now, updated_at=now)
        session.add(job)
    job.status = "processing"
    job.attempts = (job.attempts or 0) + 1
    job.started_at = now
    job.finished_at = None
    job.error_class = None
    job.updated_at = now
    session.flush()
    return job


def finish_ocr_job(session: Session, *, job_id: str, ok: bool, error_class: str | None, now: datetime) -> None:
    job = session.get(OcrJob, job_id)
    if job is None:
        return
    job.status = "succeeded" if ok else "failed"
    job.error_class = error_class
    job.finished_at = now
    job.updated_at = now


# -- FHIR sweep -----------------------------------------------------------------------------------------------


def _no_fhir_rows() -> Any:
    return ~exists().where(FhirResource.document_id == Document.id)


def _candidate_filter(*, case_id: str | None, document_id: str | None, attempt_budget: int | None) -> list[Any]:
    clauses: list[Any] = [Document.status == "extracted", Document.fhir_status != "complete", _no_fhir_rows()]
    if case_id is not None:
        clauses.append(Document.case_id == case_id)
    if document_id is not None:
        clauses.append(Document.id == document_id)
    if attempt_budget is not None:
        clauses.append(Document.fhir_attempts < attempt_budget)
    return clauses


def _lease_free(now: datetime) -> Any:
    return or_(Document.fhir_lease_expires_at.is_(None), Document.fhir_lease_expires_at <= now)


def find_sweep_candidates(
    session: Session,
    *,
    now: datetime,
    limit: int,
    case_id: str | None = None,
    document_id: str | None = None,
    attempt_budget: int | None = None,
) -> list[SweepCandidate]:
    """Read only (the dry run): candidates in a stable order, with whether another sweep holds them."""
    rows = session.execute(
        select(
            Document.id, Document.case_id, Document.fhir_status, Document.fhir_attempts, Document.fhir_lease_expires_at
        )
        .where(*_candidate_filter(case_id=case_id, document_id=document_id, attempt_budget=attempt_budget))
        .order_by(Document.created_at, Document.id)
        .limit(limit)
    ).all()
    return [
        SweepCandidate(
            document_id=r[0],
            case_id=r[1],
            fhir_status=r[2],
            fhir_attempts=r[3] or 0,
            leased=r[4] is not None and r[4] > now,
        )
        for r in rows
    ]


def candidate_case_ids(
    session: Session, *, now: datetime, limit: int, attempt_budget: int | None
) -> list[tuple[str, int]]:
    """Cases with unleased candidates and how many (for fan-out), oldest first."""
    rows = session.execute(
        select(Document.case_id, func.count(), func.min(Document.created_at))
        .where(*_candidate_filter(case_id=None, document_id=None, attempt_budget=attempt_budget), _lease_free(now))
        .group_by(Document.case_id)
        .order_by(func.min(Document.created_at), Document.case_id)
        .limit(limit)
    ).all()
    return [(r[0], int(r[1])) for r in rows]


def claim_for_sweep(
    session: Session,
    *,
    owner: str,
    now: datetime,
    lease_until: datetime,
    limit: int,
    case_id: str | None = None,
    document_id: str | None = None,
    attempt_budget: int | None = None,
) -> list[ClaimedDocument]:
    """Lease up to ``limit`` free candidates to ``owner`` and count the attempt. Call inside a short transaction."""
    stmt = (
        select(Document.id)
        .where(
            *_candidate_filter(case_id=case_id, document_id=document_id, attempt_budget=attempt_budget),
            _lease_free(now),
        )
        .order_by(Document.created_at, Document.id)
        .limit(limit)
    )
    if _is_postgres(session):
        stmt = stmt.with_for_update(skip_locked=True, of=Document)
    ids = list(session.scalars(stmt))
    claimed: list[ClaimedDocument] = []
    for doc_id in ids:
        # Conditional update: under READ COMMITTED Postgres re-checks the lease after a concurrent writer commits.
        result = session.execute(
            update(Document)
            .where(Document.id == doc_id, _lease_free(now), Document.fhir_status != "complete")
            .values(
                fhir_lease_owner=owner,
                fhir_lease_expires_at=lease_until,
                fhir_attempts=Document.fhir_attempts + 1,
            )
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) != 1:
            continue
        row = session.execute(
            select(Document.case_id, Document.extracted_text, Document.fhir_attempts).where(Document.id == doc_id)
        ).one()
        claimed.append(ClaimedDocument(document_id=doc_id, case_id=row[0], text=row[1], attempts=int(row[2] or 0)))
    return claimed


def advisory_lock_key(case_id: str) -> int:
    """A signed 64-bit key for ``pg_advisory_xact_lock`` derived from the case id."""
    return int.from_bytes(hashlib.sha256(f"fhir-sweep:{case_id}".encode()).digest()[:8], "big", signed=True)


def lock_case_for_fhir_write(session: Session, case_id: str) -> None:
    """Serialise FHIR writes per case for the rest of this transaction (Postgres); SQLite already holds the
    database write lock since ``BEGIN IMMEDIATE``."""
    if _is_postgres(session):
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_lock_key(case_id)})


def has_fhir_rows(session: Session, document_id: str) -> bool:
    return bool(session.scalar(select(exists().where(FhirResource.document_id == document_id))))


def insert_fhir_resources(
    session: Session,
    *,
    case_id: str,
    document_id: str,
    resources: Sequence[tuple[str, dict[str, Any], str]],
    fhir_version: str,
    now: datetime,
) -> int:
    """Insert ``(resource_type, resource, fingerprint)`` rows; the unique fingerprint rejects duplicates."""
    if resources:
        session.execute(
            insert(FhirResource),
            [
                {
                    "id": new_id("fhir"),
                    "case_id": case_id,
                    "document_id": document_id,
                    "resource_type": resource_type,
                    "fhir_version": fhir_version,
                    "resource": resource,
                    "fingerprint": fp,
                    "created_at": now,
                }
                for resource_type, resource, fp in resources
            ],
        )
    return len(resources)


def mark_fhir_complete(session: Session, *, document_id: str, now: datetime) -> None:
    session.execute(
        update(Document)
        .where(Document.id == document_id)
        .values(
            fhir_status="complete",
            fhir_error_class=None,
            fhir_lease_owner=None,
            fhir_lease_expires_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )


def mark_fhir_failed(session: Session, *, document_id: str, owner: str, error_class: str, now: datetime) -> None:
    session.execute(
        update(Document)
        .where(Document.id == document_id, Document.fhir_status != "complete")
        .values(fhir_status="failed", fhir_error_class=error_class, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    release_lease(session, document_id=document_id, owner=owner)


def note_fhir_retry(session: Session, *, document_id: str, owner: str, error_class: str, now: datetime) -> None:
    """A transient failure: keep the status, remember the error class, free the document for the next sweep."""
    session.execute(
        update(Document)
        .where(Document.id == document_id, Document.fhir_status != "complete")
        .values(fhir_error_class=error_class, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    release_lease(session, document_id=document_id, owner=owner)


def release_lease(session: Session, *, document_id: str, owner: str) -> None:
    session.execute(
        update(Document)
        .where(Document.id == document_id, Document.fhir_lease_owner == owner)
        .values(fhir_lease_owner=None, fhir_lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )


def fhir_row_count(session: Session, *, case_id: str | None = None, document_id: str | None = None) -> int:
    stmt = select(func.count()).select_from(FhirResource)
    if case_id is not None:
        stmt = stmt.where(FhirResource.case_id == case_id)
    if document_id is not None:
        stmt = stmt.where(FhirResource.document_id == document_id)
    return int(session.scalar(stmt) or 0)
