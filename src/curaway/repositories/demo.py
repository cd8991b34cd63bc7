"""Demo data that exercises every path (DESIGN §3 "Demo data"). Idempotent: rows with fixed ids are only added
when missing, so ``curaway demo`` can run on every ``make run``. All patients are obviously fictional."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from curaway.models import (
    AUTO_GRANTOR,
    Base,
    Case,
    Consent,
    Document,
    Notification,
    OcrJob,
    Tenant,
    TenantOrgMapping,
    Upload,
    User,
    UserRole,
)

UNMAPPED_ORG = "org_demo_unmapped"

SAMPLE_NOTE = (
    "Clinical summary (fictional demo patient).\n"
    "Diagnoses: type 2 diabetes mellitus; essential hypertension.\n"
    "Medications: metformin 500 mg twice daily; lisinopril 10 mg daily.\n"
    "Allergies: penicillin.\n"
    "Procedures: knee arthroscopy (2019).\n"
    "Observations: HbA1c 7.2 %; blood pressure 138/86 mmHg; weight 82 kg.\n"
)


@dataclass
class DemoSummary:
    added: dict[str, int] = field(default_factory=dict)

    def count(self, table: str) -> None:
        self.added[table] = self.added.get(table, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.added.values())


def _add_missing(session: Session, rows: Iterable[Base], summary: DemoSummary) -> None:
    for row in rows:
        pk = row.__mapper__.primary_key_from_instance(row)
        if session.get(type(row), pk[0] if len(pk) == 1 else tuple(pk)) is None:
            session.add(row)
            summary.count(row.__tablename__)
    session.flush()


def load_demo(session: Session, *, now: datetime) -> DemoSummary:
    """Insert the demo world relative to ``now``; rows already present are left alone."""
    s = DemoSummary()
    h = timedelta(hours=1)
    d = timedelta(days=1)

    _add_missing(
        session,
        [
            Tenant(id="ten_demo_sunrise", name="Sunrise Medical Travel (demo)", slug="sunrise-demo"),
            Tenant(id="ten_demo_bosphorus", name="Bosphorus Care Partners (demo)", slug="bosphorus-demo"),
            Tenant(id="ten_demo_lanna", name="Lanna Health Journeys (demo)", slug="lanna-demo"),
        ],
        s,
    )
    for org, tenant in (
        ("org_demo_sunrise", "ten_demo_sunrise"),
        ("org_demo_bosphorus", "ten_demo_bosphorus"),
        ("org_demo_lanna", "ten_demo_lanna"),
    ):
        if session.scalar(select(TenantOrgMapping).where(TenantOrgMapping.clerk_org_id == org)) is None:
            session.add(TenantOrgMapping(clerk_org_id=org, tenant_id=tenant, created_at=now - 90 * d))
            s.count("tenant_org_mappings")

    users = [
        User(id="user_demo_coordinator", email="coordinator@sunrise.example", display_name="Demo Coordinator"),
        User(id="user_demo_multi", email="ops@curaway.example", display_name="Demo Operator"),
        User(id="user_demo_doctor", email="doctor@bosphorus.example", display_name="Dr. Demo Example"),
        User(id="user_demo_patient_1", email="ada.placeholder@patients.example", display_name="Ada Placeholder"),
        User(id="user_demo_patient_2", email="bo.sample@patients.example", display_name="Bo Sample"),
    ]
    _add_missing(session, users, s)

    roles = [
        ("user_demo_coordinator", "ten_demo_sunrise", "org:member", AUTO_GRANTOR),
        ("user_demo_coordinator", "ten_demo_sunrise", "case_manager", "user_demo_multi"),
        ("user_demo_multi", "ten_demo_sunrise", "org:admin", AUTO_GRANTOR),
        ("user_demo_multi", "ten_demo_bosphorus", "org:admin", AUTO_GRANTOR),
        ("user_demo_multi", "ten_demo_lanna", "auditor", "operator:demo"),
        ("user_demo_doctor", "ten_demo_bosphorus", "org:member", AUTO_GRANTOR),
        ("user_demo_doctor", "ten_demo_bosphorus", "clinician", "operator:demo"),
    ]
    for user_id, tenant_id, role, grantor in roles:
        exists = session.scalar(
            select(UserRole).where(
                UserRole.user_id == user_id,
                UserRole.tenant_id == tenant_id,
                UserRole.role == role,
                UserRole.granted_by == grantor,
            )
        )
        if exists is None:
            session.add(
                UserRole(
                    user_id=user_id,
                    tenant_id=tenant_id,
                    role=role,
                    granted_by=grantor,
                    is_active=True,
                    created_at=now - 30 * d,
                    updated_at=now - 30 * d,
                )
            )
            s.count("user_roles")

    def case(cid: str, tenant: str, status: str, last_message_ago: timedelta, n: int) -> Case:
        return Case(
            id=cid,
            tenant_id=tenant,
            status=status,
            patient_user_id=f"user_demo_patient_{n % 2 + 1}",
            patient_name=f"Demo Patient {n:02d}",
            patient_email=f"demo.patient{n:02d}@patients.example",
            patient_birth_date=date(1970 + n, 1 + n % 12, 1 + n % 28),
            last_message_at=now - last_message_ago,
            created_at=now - last_message_ago - 2 * d,
            updated_at=now - last_message_ago,
        )

    cases = [
        # stuck in intake for more than 24 h → reminders
        case("case_demo_stuck_1", "ten_demo_sunrise", "intake", 30 * h, 1),
        case("case_demo_stuck_2", "ten_demo_sunrise", "intake", 3 * d, 2),
        case("case_demo_stuck_3", "ten_demo_bosphorus", "intake", 26 * h, 3),
        case("case_demo_stuck_4", "ten_demo_lanna", "intake", 8 * d, 4),
        # just under the threshold → no reminder yet
        case("case_demo_fresh_1", "ten_demo_sunrise", "intake", 23 * h, 5),
        case("case_demo_fresh_2", "ten_demo_bosphorus", "intake", 2 * h, 6),
        # every other status
        case("case_demo_docs", "ten_demo_sunrise", "documents_pending", 5 * h, 7),
        case("case_demo_extracted", "ten_demo_sunrise", "extraction_complete", 6 * h, 8),
        case("case_demo_extracted_2", "ten_demo_bosphorus", "extraction_complete", 9 * h, 9),
        case("case_demo_review", "ten_demo_bosphorus", "in_review", 1 * d, 10),
        case("case_demo_matched", "ten_demo_lanna", "matched", 2 * d, 11),
        case("case_demo_scheduled", "ten_demo_lanna", "treatment_scheduled", 4 * d, 12),
        case("case_demo_closed", "ten_demo_sunrise", "closed", 40 * d, 13),
    ]
    _add_missing(session, cases, s)

    def upload(uid: str, tenant: str, age: timedelta, confirmed: bool, name: str = "report.txt") -> Upload:
        return Upload(
            id=uid,
            tenant_id=tenant,
            user_id="user_demo_coordinator",
            filename=name,
            content_type="text/plain",
            size_bytes=len(SAMPLE_NOTE),
            sha256="0" * 64,
            storage_key=f"demo/{uid}",
            created_at=now - age,
            updated_at=now - age,
            confirmed_at=(now - age + h) if confirmed else None,
        )

    _add_missing(
        session,
        [
            upload("upl_demo_confirmed_1", "ten_demo_sunrise", 7 * h, True),
            upload("upl_demo_confirmed_2", "ten_demo_bosphorus", 10 * h, True),
            upload("upl_demo_orphan", "ten_demo_sunrise", 3 * d, False, "abandoned-scan.txt"),
            upload("upl_demo_recent", "ten_demo_lanna", 2 * h, False, "in-progress.txt"),
        ],
        s,
    )

    def doc(
        did: str,
        cid: str,
        status: str,
        fhir: str,
        *,
        text: str | None = None,
        upl: str | None = None,
        ctype: str = "text/plain",
    ) -> Document:
        return Document(
            id=did,
            case_id=cid,
            upload_id=upl,
            filename=f"{did}.txt",
            content_type=ctype,
            storage_key=f"demo/{upl}" if upl else None,
            status=status,
            fhir_status=fhir,
            extracted_text=text,
            extracted_at=(now - 5 * h) if status == "extracted" else None,
            created_at=now - 8 * h,
            updated_at=now - 5 * h,
        )

    _add_missing(
        session,
        [
            doc("doc_demo_uploaded", "case_demo_docs", "uploaded", "pending"),
            doc("doc_demo_queued", "case_demo_docs", "queued", "pending"),
            doc("doc_demo_ocr_stuck", "case_demo_docs", "extracting", "pending", ctype="image/png"),
            doc("doc_demo_failed", "case_demo_docs", "failed", "pending"),
            # extracted, awaiting FHIR (sweep candidates), with stored text
            doc(
                "doc_demo_awaiting_fhir_1",
                "case_demo_extracted",
                "extracted",
                "pending",
                text=SAMPLE_NOTE,
                upl="upl_demo_confirmed_1",
            ),
            doc(
                "doc_demo_awaiting_fhir_2",
                "case_demo_extracted_2",
                "extracted",
                "pending",
                text=SAMPLE_NOTE,
                upl="upl_demo_confirmed_2",
            ),
            doc("doc_demo_fhir_done", "case_demo_review", "extracted", "complete", text=SAMPLE_NOTE),
            doc("doc_demo_fhir_failed", "case_demo_matched", "extracted", "failed", text=SAMPLE_NOTE),
        ],
        s,
    )
    _add_missing(
        session,
        [
            OcrJob(
                id="ocr_demo_stuck",
                document_id="doc_demo_ocr_stuck",
                status="processing",
                attempts=1,
                started_at=now - 6 * h,
                created_at=now - 6 * h,
                updated_at=now - 6 * h,
            ),
            OcrJob(
                id="ocr_demo_done",
                document_id="doc_demo_fhir_done",
                status="succeeded",
                attempts=1,
                started_at=now - 2 * d,
                finished_at=now - 2 * d,
                created_at=now - 2 * d,
            ),
        ],
        s,
    )
    _add_missing(
        session,
        [
            Consent(
                id="cons_demo_soon_1",
                case_id="case_demo_review",
                kind="data_processing",
                granted_at=now - 335 * d,
                expires_at=now + 12 * d,
            ),
            Consent(
                id="cons_demo_soon_2",
                case_id="case_demo_matched",
                kind="records_sharing",
                granted_at=now - 300 * d,
                expires_at=now + 29 * d,
            ),
            Consent(
                id="cons_demo_later",
                case_id="case_demo_scheduled",
                kind="data_processing",
                granted_at=now - 30 * d,
                expires_at=now + 200 * d,
            ),
            Consent(
                id="cons_demo_just_over",
                case_id="case_demo_docs",
                kind="telehealth",
                granted_at=now - 300 * d,
                expires_at=now + 31 * d,
            ),
        ],
        s,
    )
    notifications: list[dict[str, Any]] = [
        {"user_id": "user_demo_coordinator", "kind": "case_update", "title": "New document on a case"},
        {"user_id": "user_demo_coordinator", "kind": "message", "title": "Patient replied"},
        {"user_id": "user_demo_doctor", "kind": "review_request", "title": "Review requested"},
        {"user_id": "user_demo_multi", "kind": "case_update", "title": "Case matched", "read": True},
    ]
    for n in notifications:
        seen = session.scalar(
            select(Notification).where(Notification.user_id == n["user_id"], Notification.title == n["title"])
        )
        if seen is None:
            session.add(
                Notification(
                    user_id=n["user_id"],
                    kind=n["kind"],
                    title=n["title"],
                    created_at=now - 10 * h,
                    read_at=(now - h) if n.get("read") else None,
                )
            )
            s.count("notifications")
    session.flush()
    return s
