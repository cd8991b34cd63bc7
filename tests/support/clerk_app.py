"""An app under test with Clerk identity wired, plus tenant/org seed data shared by the Clerk tests."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from fastapi import Depends, FastAPI
from sqlalchemy import select

from curaway.api.identity import Principal, require_principal
from curaway.db import SessionFactory, transaction
from curaway.models import AUTO_GRANTOR, Tenant, TenantOrgMapping, UserRole

TENANTS = {"ten_a": "org_one", "ten_b": "org_two"}
UNMAPPED_ORG = "org_unmapped"


def seed_tenants(session_factory: SessionFactory) -> None:
    with transaction(session_factory) as session:
        for tenant_id, org in TENANTS.items():
            session.add(Tenant(id=tenant_id, name=f"Tenant {tenant_id}", slug=tenant_id))
            session.flush()
            session.add(TenantOrgMapping(clerk_org_id=org, tenant_id=tenant_id))


def add_role(
    session_factory: SessionFactory,
    *,
    user_id: str,
    tenant_id: str,
    role: str = "org:member",
    granted_by: str = AUTO_GRANTOR,
    is_active: bool = True,
    at: datetime,
) -> int:
    with transaction(session_factory) as session:
        row = UserRole(
            user_id=user_id,
            tenant_id=tenant_id,
            role=role,
            granted_by=granted_by,
            is_active=is_active,
            created_at=at,
            updated_at=at,
        )
        session.add(row)
        session.flush()
        return row.id


def roles_of(session_factory: SessionFactory, user_id: str) -> list[dict[str, Any]]:
    with transaction(session_factory) as session:
        rows = session.scalars(select(UserRole).where(UserRole.user_id == user_id).order_by(UserRole.id))
        return [
            {
                "tenant_id": r.tenant_id,
                "role": r.role,
                "granted_by": r.granted_by,
                "is_active": r.is_active,
                "revoked": r.revoked_at is not None,
                "updated_at": r.updated_at,
            }
            for r in rows
        ]


def add_whoami(app: FastAPI) -> FastAPI:
    """A protected probe route: what ``require_principal`` resolved."""

    def whoami(principal: Principal = Depends(require_principal)) -> dict[str, Any]:
        data = asdict(principal)
        data["roles"] = list(principal.roles)
        data["issued_at"] = principal.issued_at.isoformat() if principal.issued_at else None
        return data

    app.add_api_route("/test/whoami", whoami, methods=["GET"])
    return app
