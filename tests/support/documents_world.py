"""Shared helpers for the documents/extraction/FHIR tests: seed rows, build a TaskContext, make small files."""

from __future__ import annotations

import hashlib
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import func, select

from curaway.clock import Clock, FrozenClock
from curaway.db import SessionFactory, transaction
from curaway.integrations import Integrations
from curaway.integrations.storage import InMemoryStorage, Storage
from curaway.models import Case, DeadLetter, Document, FhirResource, Tenant
from curaway.repositories.demo import SAMPLE_NOTE
from curaway.settings import Settings
from curaway.tasks.base import EnqueueReceipt, TaskContext

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
TENANT = "ten_docs_a"
OTHER_TENANT = "ten_docs_b"

__all__ = ["NOW", "OTHER_TENANT", "SAMPLE_NOTE", "TENANT"]


@dataclass
class RecordingEnqueuer:
    """An ``Enqueuer`` that records calls and deduplicates by key like a real backend."""

    calls: list[tuple[str, dict[str, Any], str | None]] = field(default_factory=list)
    _keys: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def enqueue(
        self, task: str, payload: Mapping[str, Any], *, dedup_key: str | None = None, delay_s: float = 0.0
    ) -> EnqueueReceipt:
        with self._lock:
            key = dedup_key or f"{task}#{len(self.calls)}"
            created = key not in self._keys
            self._keys.add(key)
            self.calls.append((task, dict(payload), dedup_key))
            return EnqueueReceipt(task=task, dedup_key=key, created=created, message_id=f"msg-{len(self.calls)}")


def make_ctx(
    session_factory: SessionFactory,
    settings: Settings,
    *,
    llm: Any,
    task: str = "fhir-sweep",
    run_key: str = "fhir-sweep@manual:test",
    storage: Storage | None = None,
    ocr: Any = None,
    clock: Clock | None = None,
    enqueuer: Any = None,
    final_attempt: bool = False,
    attempt: int = 0,
) -> TaskContext:
    return TaskContext(
        task=task,
        run_key=run_key,
        session_factory=session_factory,
        clock=clock or FrozenClock(NOW),
        settings=settings,
        integrations=Integrations(llm=llm, storage=storage or InMemoryStorage(), ocr=ocr),
        enqueuer=enqueuer or RecordingEnqueuer(),
        log=structlog.get_logger("tests.documents"),
        attempt=attempt,
        final_attempt=final_attempt,
    )


def seed_tenants(session_factory: SessionFactory) -> None:
    with transaction(session_factory) as s:
        for tid in (TENANT, OTHER_TENANT):
            if s.get(Tenant, tid) is None:
                s.add(Tenant(id=tid, name=f"Tenant {tid}", slug=tid.replace("_", "-")))


def seed_case(
    session_factory: SessionFactory, case_id: str, *, tenant_id: str = TENANT, status: str = "documents_pending"
) -> str:
    seed_tenants(session_factory)
    with transaction(session_factory) as s:
        s.add(
            Case(
                id=case_id,
                tenant_id=tenant_id,
                status=status,
                patient_name="Fictional Patientname",
                patient_email="fictional.patient@patients.example",
            )
        )
    return case_id


def seed_extracted(
    session_factory: SessionFactory, case_id: str, n: int, *, text: str = SAMPLE_NOTE, prefix: str | None = None
) -> list[str]:
    ids = []
    with transaction(session_factory) as s:
        for i in range(n):
            doc_id = f"{prefix or 'doc_' + case_id}_{i:03d}"
            s.add(
                Document(
                    id=doc_id,
                    case_id=case_id,
                    filename=f"{doc_id}.txt",
                    content_type="text/plain",
                    status="extracted",
                    fhir_status="pending",
                    extracted_text=text,
                    extracted_at=NOW,
                    created_at=NOW,
                )
            )
            ids.append(doc_id)
    return ids


def seed_stored(
    session_factory: SessionFactory,
    storage: Storage,
    case_id: str,
    doc_id: str,
    data: bytes,
    content_type: str,
    *,
    status: str = "queued",
) -> str:
    key = f"tests/{doc_id}"
    storage.put(key, data)
    with transaction(session_factory) as s:
        s.add(
            Document(
                id=doc_id,
                case_id=case_id,
                filename=f"{doc_id}.bin",
                content_type=content_type,
                storage_key=key,
                status=status,
                fhir_status="pending",
                created_at=NOW,
            )
        )
    return doc_id


def fhir_rows(session_factory: SessionFactory, **where: str) -> list[FhirResource]:
    with transaction(session_factory) as s:
        stmt = select(FhirResource)
        for key, value in where.items():
            stmt = stmt.where(getattr(FhirResource, key) == value)
        return list(s.scalars(stmt))


def duplicate_fingerprints(session_factory: SessionFactory) -> int:
    with transaction(session_factory) as s:
        rows = s.execute(
            select(FhirResource.document_id, FhirResource.fingerprint, func.count())
            .group_by(FhirResource.document_id, FhirResource.fingerprint)
            .having(func.count() > 1)
        ).all()
    return len(rows)


def document(session_factory: SessionFactory, doc_id: str) -> Document:
    with transaction(session_factory) as s:
        doc = s.get(Document, doc_id)
        assert doc is not None
        s.expunge(doc)
        return doc


def case_status(session_factory: SessionFactory, case_id: str) -> str:
    with transaction(session_factory) as s:
        case = s.get(Case, case_id)
        assert case is not None
        return case.status


def dead_letters(session_factory: SessionFactory) -> list[DeadLetter]:
    with transaction(session_factory) as s:
        rows = list(s.scalars(select(DeadLetter)))
        for r in rows:
            s.expunge(r)
        return rows


def make_text_pdf(text: str) -> bytes:
    """A minimal one-page PDF with a real text layer (Helvetica), built by hand with a correct xref table."""

    def esc(line: str) -> str:
        return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    ops = ["BT", "/F1 11 Tf", "14 TL", "50 780 Td"]
    for line in text.splitlines():
        ops.append(f"({esc(line)}) Tj T*")
    ops.append("ET")
    stream = zlib.compress("\n".join(ops).encode("latin-1"))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" /Filter /FlateDecode >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6300010000050001"
    "0d0a2db40000000049454e44ae426082"
)
