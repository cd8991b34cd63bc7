"""Public document endpoints (Clerk session auth): upload a file, confirm it as a case document.

``POST /api/v1/uploads`` — the raw file is the request body (``Content-Type`` = its type: ``application/pdf``,
``text/plain``, ``image/png`` or ``image/jpeg``), the original name in ``?filename=``. The bytes must match the
declared type (magic bytes; UTF-8 for text). Answers 201 ``{"upload_id", …}``; 415 for any other type, 413 over
``CURAWAY_UPLOAD_MAX_BYTES``, 400 for an empty body.

``POST /api/v1/documents/confirm`` ``{"upload_id", "case_id"}`` — creates the document for a case of the caller's
tenant and enqueues ``extract`` with key ``extract:{document_id}`` through the active backend; answers 202. An
upload or case of another tenant is indistinguishable from a missing one: 404. Confirming twice is idempotent
(same document, the dedup key stops a second extraction); if the enqueue fails the answer is 503 and a retry of
the confirm enqueues again, so a task is never lost.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from curaway.api.identity import Principal, require_principal
from curaway.db import transaction
from curaway.errors import CurawayError, RetryableError, ValidationFailed
from curaway.logging import get_logger
from curaway.models import new_id
from curaway.repositories import documents as repo

router = APIRouter(prefix="/api/v1", tags=["documents"])
log = get_logger("curaway.documents")

ALLOWED_TYPES = ("application/pdf", "text/plain", "image/png", "image/jpeg")
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]+")


class ConfirmRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    upload_id: str = Field(min_length=1, max_length=64)
    case_id: str = Field(min_length=1, max_length=64)


def _content_type(request: Request) -> str:
    return (request.headers.get("content-type") or "").split(";")[0].strip().lower()


def _matches(content_type: str, data: bytes) -> bool:
    if content_type == "application/pdf":
        return data.startswith(b"%PDF-")
    if content_type == "image/png":
        return data.startswith(b"\x89PNG\r\n\x1a\n")
    if content_type == "image/jpeg":
        return data.startswith(b"\xff\xd8\xff")
    if b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _safe_filename(name: str | None, content_type: str) -> str:
    last = (name or "").replace("\\", "/").rsplit("/", 1)[-1]  # the base name only, never a path
    base = _UNSAFE_NAME.sub("_", last)[-200:].strip(" .")
    if base:
        return base
    return "upload." + {"application/pdf": "pdf", "text/plain": "txt", "image/png": "png"}.get(content_type, "jpg")


def _services(request: Request) -> Any:
    return request.app.state.services


@router.post("/uploads", status_code=201)
async def upload(
    request: Request, filename: str | None = None, principal: Principal = Depends(require_principal)
) -> JSONResponse:
    services = _services(request)
    settings = services.settings
    content_type = _content_type(request)
    if content_type not in ALLOWED_TYPES:
        raise HTTPException(415, "unsupported file type: send application/pdf, text/plain, image/png or image/jpeg")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.upload_max_bytes:
        raise HTTPException(413, f"file exceeds {settings.upload_max_bytes} bytes")
    data = await request.body()
    if len(data) > settings.upload_max_bytes:
        raise HTTPException(413, f"file exceeds {settings.upload_max_bytes} bytes")
    if not data:
        raise HTTPException(400, "the request body (the file) is empty")
    if not _matches(content_type, data):
        raise HTTPException(415, "file content does not match its declared type")
    storage = services.integrations.storage
    if storage is None:
        raise HTTPException(503, "storage is not configured")

    upload_id = new_id("upl")
    key = f"uploads/{upload_id}"
    digest = hashlib.sha256(data).hexdigest()
    name = _safe_filename(filename, content_type)

    def store() -> None:
        storage.put(key, data)
        with transaction(services.session_factory) as session:
            repo.create_upload(
                session,
                tenant_id=principal.tenant_id,
                user_id=principal.user_id,
                filename=name,
                content_type=content_type,
                size_bytes=len(data),
                sha256=digest,
                storage_key=key,
                upload_id=upload_id,
                now=services.clock.now(),
            )

    try:
        await run_in_threadpool(store)
    except RetryableError as exc:
        raise HTTPException(503, "storage is unavailable, retry later", headers={"Retry-After": "5"}) from exc
    except ValidationFailed as exc:
        raise HTTPException(400, "upload could not be stored") from exc
    log.info(
        "upload.stored",
        upload_id=upload_id,
        tenant_id=principal.tenant_id,
        content_type=content_type,
        body_bytes=len(data),
    )
    return JSONResponse(
        {"upload_id": upload_id, "content_type": content_type, "size_bytes": len(data), "sha256": digest},
        status_code=201,
    )


@router.post("/documents/confirm", status_code=202)
def confirm(body: ConfirmRequest, request: Request, principal: Principal = Depends(require_principal)) -> JSONResponse:
    services = _services(request)
    with transaction(services.session_factory) as session:
        upload_row = repo.get_upload_for_tenant(session, body.upload_id, tenant_id=principal.tenant_id)
        if upload_row is None:
            raise HTTPException(404, "upload not found")
        case = repo.get_case_for_tenant(session, body.case_id, tenant_id=principal.tenant_id)
        if case is None:
            raise HTTPException(404, "case not found")
        existing = repo.document_for_upload(session, upload_row.id)
        if existing is not None and existing.case_id != case.id:
            raise HTTPException(409, "upload is already confirmed for another case")
        document = existing or repo.create_document_from_upload(
            session, upload=upload_row, case=case, now=services.clock.now()
        )
        document_id, case_id = document.id, document.case_id
    dedup_key = f"extract:{document_id}"
    try:
        receipt = services.enqueuer.enqueue("extract", {"document_id": document_id}, dedup_key=dedup_key)
    except CurawayError as exc:
        log.warning("document.enqueue_failed", document_id=document_id, error_code=exc.code)
        raise HTTPException(
            503, "could not enqueue extraction, retry the confirm", headers={"Retry-After": "5"}
        ) from exc
    log.info("document.confirmed", document_id=document_id, case_id=case_id, enqueued=receipt.created)
    return JSONResponse(
        {
            "document_id": document_id,
            "case_id": case_id,
            "status": "queued",
            "task": "extract",
            "dedup_key": dedup_key,
            "enqueued": receipt.created,
        },
        status_code=202,
    )
