"""Upload → confirm → local dispatcher → extract → FHIR sweep, with no shortcut: every step through its endpoint."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from curaway.api.app import create_app
from curaway.api.bootstrap import build_dispatcher
from curaway.api.identity import mint_dev_token
from curaway.api.services import Services
from curaway.clock import FrozenClock
from curaway.db import transaction
from curaway.dispatch.local import HttpxDeliverer
from curaway.integrations import Integrations
from curaway.integrations.llm import build_llm_gateway
from curaway.integrations.storage import InMemoryStorage
from curaway.models import Case, Document, FhirResource, QueuedTask, RunLedger, TenantOrgMapping
from tests.support.documents_anthropic import API_KEY, FakeAnthropic
from tests.support.documents_world import SAMPLE_NOTE, TENANT, make_text_pdf, seed_case, seed_tenants

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def drain(app, services):
    dispatcher = build_dispatcher(app, services, cron=False)

    async def go():
        dispatcher.deliverer = HttpxDeliverer.in_process(app, services.settings)
        try:
            return await dispatcher.drain()
        finally:
            await dispatcher.deliverer.aclose()

    return asyncio.run(go())


@pytest.fixture(params=["local", "anthropic"])
def llm_settings(request):
    """The embedded local extractor, or the anthropic provider against the fake Anthropic server."""
    if request.param == "local":
        yield {}
        return
    server = FakeAnthropic().start()
    try:
        yield {"llm_provider": "anthropic", "anthropic_api_key": API_KEY, "anthropic_base_url": server.base_url}
    finally:
        server.stop()


def test_documents_flow_through_the_local_dispatcher(make_settings, database_url, llm_settings):
    settings = make_settings(database_url=database_url, **llm_settings)
    services = Services.build(
        settings,
        clock=FrozenClock(T0),
        integrations=Integrations(storage=InMemoryStorage(), llm=build_llm_gateway(settings)),
    )
    app = create_app(settings, services=services)
    sf = services.session_factory
    seed_tenants(sf)
    with transaction(sf) as s:
        s.add(TenantOrgMapping(clerk_org_id="org_e2e", tenant_id=TENANT))
    seed_case(sf, "case_e2e", status="intake")
    token = mint_dev_token(settings, user_id="user_e2e", org_id="org_e2e", role="org:member", ttl_s=600, now=T0)
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as client:
        up = client.post(
            "/api/v1/uploads",
            params={"filename": "summary.pdf"},
            content=make_text_pdf(SAMPLE_NOTE),
            headers={**auth, "Content-Type": "application/pdf"},
        )
        assert up.status_code == 201, up.text
        confirmed = client.post(
            "/api/v1/documents/confirm", json={"upload_id": up.json()["upload_id"], "case_id": "case_e2e"}, headers=auth
        )
        assert confirmed.status_code == 202, confirmed.text
        document_id = confirmed.json()["document_id"]
        with transaction(sf) as s:
            item = s.scalars(select(QueuedTask)).one()
            assert (item.task, item.queue, item.dedup_key) == ("extract", "extraction", f"extract:{document_id}")

        assert drain(app, services) == 1
        with transaction(sf) as s:
            assert s.get(Document, document_id).status == "extracted"
            assert s.get(Case, "case_e2e").status == "extraction_complete"
            run = s.scalars(select(RunLedger).where(RunLedger.run_key == f"extract:{document_id}")).one()
            assert run.status == "succeeded"
            assert run.result["provider"] == settings.llm_provider

        sweep = client.post(
            "/api/v1/internal/fhir/sweep?case_id=case_e2e", headers={"X-Internal-Secret": settings.internal_secrets[0]}
        )
        assert sweep.status_code == 200, sweep.text
        assert sweep.json()["result"]["processed_count"] == 1
        again = client.post(
            "/api/v1/internal/fhir/sweep?case_id=case_e2e", headers={"X-Internal-Secret": settings.internal_secrets[0]}
        )
        assert again.json()["result"]["processed_count"] == 0  # re-running on a completed case is a no-op
    with transaction(sf) as s:
        assert s.get(Document, document_id).fhir_status == "complete"
        types = set(s.scalars(select(FhirResource.resource_type)))
        assert {"Condition", "MedicationStatement", "AllergyIntolerance", "Procedure", "Observation"} <= types
        assert s.scalar(select(func.count()).select_from(QueuedTask).where(QueuedTask.status != "done")) == 0
    services.close()
