from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from curaway.db import transaction
from curaway.models import CASE_STATUSES, DOCUMENT_STATUSES, Case, Consent, Document, UserRole
from curaway.repositories.demo import load_demo

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)


def test_demo_covers_every_path_and_is_idempotent(session_factory):
    with transaction(session_factory) as s:
        first = load_demo(s, now=NOW)
    with transaction(session_factory) as s:
        second = load_demo(s, now=NOW + timedelta(hours=1))
    assert first.total > 40
    assert second.total == 0
    with transaction(session_factory) as s:
        statuses = set(s.scalars(select(Case.status)))
        assert statuses == set(CASE_STATUSES)
        doc_statuses = set(s.scalars(select(Document.status)))
        assert doc_statuses == set(DOCUMENT_STATUSES) - {"failed"} | {"failed"}
        stuck = s.scalar(
            select(func.count())
            .select_from(Case)
            .where(Case.status == "intake", Case.last_message_at < NOW - timedelta(hours=24))
        )
        under = s.scalar(
            select(func.count())
            .select_from(Case)
            .where(Case.status == "intake", Case.last_message_at >= NOW - timedelta(hours=24))
        )
        assert stuck >= 3 and under >= 1
        grantors = set(s.scalars(select(UserRole.granted_by)))
        assert "system:clerk_jwt" in grantors and len(grantors) > 1
        soon = s.scalar(select(func.count()).select_from(Consent).where(Consent.expires_at <= NOW + timedelta(days=30)))
        assert soon >= 2
        awaiting = s.scalar(
            select(func.count())
            .select_from(Document)
            .where(
                Document.status == "extracted",
                Document.fhir_status == "pending",
                Document.extracted_text.is_not(None),
            )
        )
        assert awaiting >= 2
