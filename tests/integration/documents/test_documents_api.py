"""Public endpoints: upload → confirm (enqueue ``extract:{document_id}``) → extract → sweep, tenant isolation."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from curaway.api.app import create_app
from curaway.api.identity import mint_dev_token
from curaway.clock import FrozenClock
from curaway.db import transaction
from curaway.integrations import Integrations
from curaway.integrations.llm import FakeLlmGateway
from curaway.integrations.storage import InMemoryStorage
from curaway.models import QueuedTask, TenantOrgMapping, Upload
from curaway.tasks import extraction, fhir_sweep
from tests.support.documents_world import (
    OTHER_TENANT,
    SAMPLE_NOTE,
    TENANT,
    RecordingEnqueuer,
    case_status,
    document,
    fhir_rows,
    make_ctx,
    make_text_pdf,
    seed_case,
    seed_tenants,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ORGS = {TENANT: "org_docs_a", OTHER_TENANT: "org_docs_b"}


class Api:
    def __init__(self, client: TestClient, settings: Any, storage: InMemoryStorage, enqueuer: Any) -> None:
        self.client = client
        self.settings = settings
        self.storage = storage
        self.enqueuer = enqueuer
        self.sf = client.app.state.services.session_factory  # type: ignore[attr-defined]

    def headers(self, tenant: str = TENANT, **extra: str) -> dict[str, str]:
        token = mint_dev_token(
            self.settings, user_id="user_docs_1", org_id=ORGS[tenant], role="org:member", ttl_s=600, now=T0
        )
        return {"Authorization": f"Bearer {token}", **extra}

    def upload(self, data: bytes, content_type: str, *, tenant: str = TENANT, filename: str = "note.txt") -> Any:
        return self.client.post(
            "/api/v1/uploads",
            params={"filename": filename},
            content=data,
            headers=self.headers(tenant, **{"Content-Type": content_type}),
        )

    def confirm(self, upload_id: str, case_id: str, *, tenant: str = TENANT) -> Any:
        return self.client.post(
            "/api/v1/documents/confirm",
            json={"upload_id": upload_id, "case_id": case_id},
            headers=self.headers(tenant),
        )


def _app(make_settings: Any, database_url: str, *, enqueuer: Any = None, max_bytes: int | None = None) -> Any:
    extra = {"upload_max_bytes": max_bytes} if max_bytes else {}
    settings = make_settings(database_url=database_url, **extra)
    storage = InMemoryStorage()
    overrides: dict[str, Any] = {"enqueuer": enqueuer} if enqueuer is not None else {}
    app = create_app(
        settings, clock=FrozenClock(T0), integrations=Integrations(storage=storage, llm=FakeLlmGateway()), **overrides
    )
    sf = app.state.services.session_factory
    seed_tenants(sf)
    with transaction(sf) as s:
        for tenant, org in ORGS.items():
            s.add(TenantOrgMapping(clerk_org_id=org, tenant_id=tenant))
    return app, settings, storage


@pytest.fixture
def api(database_url: str, make_settings: Any) -> Iterator[Api]:
    enqueuer = RecordingEnqueuer()
    app, settings, storage = _app(make_settings, database_url, enqueuer=enqueuer)
    with TestClient(app) as client:
        yield Api(client, settings, storage, enqueuer)


def test_upload_confirm_extract_sweep_end_to_end(api: Api) -> None:
    seed_case(api.sf, "case_api", status="intake")
    up = api.upload(make_text_pdf(SAMPLE_NOTE), "application/pdf", filename="../../summary.pdf")
    assert up.status_code == 201, up.text
    upload_id = up.json()["upload_id"]
    with transaction(api.sf) as s:
        row = s.get(Upload, upload_id)
        assert row is not None and row.tenant_id == TENANT and row.filename == "summary.pdf"
        assert api.storage.get(row.storage_key).startswith(b"%PDF-")

    confirmed = api.confirm(upload_id, "case_api")
    assert confirmed.status_code == 202, confirmed.text
    document_id = confirmed.json()["document_id"]
    assert api.enqueuer.calls == [("extract", {"document_id": document_id}, f"extract:{document_id}")]
    assert case_status(api.sf, "case_api") == "documents_pending"

    # Confirming again is idempotent: same document, same dedup key.
    again = api.confirm(upload_id, "case_api")
    assert again.json()["document_id"] == document_id and again.json()["enqueued"] is False

    services = api.client.app.state.services  # type: ignore[attr-defined]
    llm = services.integrations.llm
    ctx = make_ctx(api.sf, api.settings, llm=llm, storage=api.storage, task="extract")
    _, payload, _ = api.enqueuer.calls[0]
    assert extraction.extract(ctx, payload).data["case_status"] == "extraction_complete"
    result = fhir_sweep.sweep(make_ctx(api.sf, api.settings, llm=llm), {"case_id": "case_api"})
    assert result.data["processed_count"] == 1
    assert len(fhir_rows(api.sf, document_id=document_id)) == 9
    assert document(api.sf, document_id).fhir_status == "complete"


def test_confirm_enqueues_through_the_active_local_backend(database_url: str, make_settings: Any) -> None:
    app, settings, _ = _app(make_settings, database_url)
    with TestClient(app) as client:
        api = Api(client, settings, InMemoryStorage(), None)
        seed_case(api.sf, "case_local")
        upload_id = api.upload(SAMPLE_NOTE.encode(), "text/plain").json()["upload_id"]
        document_id = api.confirm(upload_id, "case_local").json()["document_id"]
        with transaction(api.sf) as s:
            rows = list(s.scalars(select(QueuedTask).where(QueuedTask.task == "extract")))
            assert [(r.dedup_key, r.payload) for r in rows] == [
                (f"extract:{document_id}", {"document_id": document_id})
            ]


def test_wrong_tenant_and_unknown_ids_are_404(api: Api) -> None:
    seed_case(api.sf, "case_a")
    seed_case(api.sf, "case_b", tenant_id=OTHER_TENANT)
    upload_a = api.upload(b"hello", "text/plain").json()["upload_id"]
    upload_b = api.upload(b"hello", "text/plain", tenant=OTHER_TENANT).json()["upload_id"]
    assert api.confirm(upload_a, "case_b").status_code == 404  # the case belongs to another tenant
    assert api.confirm(upload_b, "case_a").status_code == 404  # the upload belongs to another tenant
    assert api.confirm("upl_missing", "case_a").status_code == 404
    assert api.confirm(upload_a, "case_missing").status_code == 404
    response = api.confirm(upload_b, "case_a")
    assert response.json()["error"]["code"] == "not_found"
    assert api.enqueuer.calls == []


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"GIF89a....", "image/gif", 415),
        (b"{}", "application/json", 415),
        (b"hello", "application/pdf", 415),  # declared PDF, is not
        (b"\x89PNG\r\n\x1a\n....", "image/jpeg", 415),
        (b"\xff\xfe\x00\x00", "text/plain", 415),
        (b"", "text/plain", 400),
    ],
)
def test_bad_uploads(api: Api, data: bytes, content_type: str, status: int) -> None:
    response = api.upload(data, content_type)
    assert response.status_code == status, response.text
    assert "error" in response.json()


def test_oversize_upload_is_413(database_url: str, make_settings: Any) -> None:
    app, settings, storage = _app(make_settings, database_url, enqueuer=RecordingEnqueuer(), max_bytes=1024)
    with TestClient(app) as client:
        api = Api(client, settings, storage, None)
        response = api.upload(b"a" * 2048, "text/plain")
        assert response.status_code == 413
        assert storage.keys() == []


def test_endpoints_need_a_session(api: Api) -> None:
    assert api.client.post("/api/v1/uploads", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 401
    confirm = api.client.post("/api/v1/documents/confirm", json={"upload_id": "u", "case_id": "c"})
    assert confirm.status_code == 401
    bad_body = api.client.post("/api/v1/documents/confirm", json={"upload_id": 1}, headers=api.headers())
    assert bad_body.status_code == 422
