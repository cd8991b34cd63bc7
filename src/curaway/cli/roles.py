"""Operator role actions behind ``curaway roles list|revoke|restore`` (CLI only)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from curaway.db import create_db_engine, create_session_factory, transaction
from curaway.errors import NotFoundError
from curaway.logging import get_logger
from curaway.models import Tenant
from curaway.repositories.identity import list_roles, restore_roles, revoke_roles, role_as_dict
from curaway.settings import Settings

log = get_logger("curaway.roles")


def _with_session(settings: Settings, work: Callable[[Session], Any]) -> Any:
    engine = create_db_engine(settings.resolved_database_url)
    try:
        with transaction(create_session_factory(engine)) as session:
            return work(session)
    finally:
        engine.dispose()


def list_role_rows(settings: Settings, *, user_id: str | None, tenant_id: str | None) -> list[dict[str, Any]]:
    return _with_session(
        settings, lambda s: [role_as_dict(r) for r in list_roles(s, user_id=user_id, tenant_id=tenant_id)]
    )


def revoke_role_rows(
    settings: Settings, *, user_id: str, tenant_id: str, role: str | None, revoked_by: str, now: datetime
) -> list[dict[str, Any]]:
    """Sticky revoke: the JWT path and membership webhooks never re-activate these rows."""

    def work(session: Session) -> list[dict[str, Any]]:
        if session.get(Tenant, tenant_id) is None:
            raise NotFoundError(f"no tenant {tenant_id}")
        rows = revoke_roles(session, user_id=user_id, tenant_id=tenant_id, role=role, revoked_by=revoked_by, now=now)
        return [role_as_dict(r) for r in rows]

    rows: list[dict[str, Any]] = _with_session(settings, work)
    log.info("roles.revoked", user_id=user_id, tenant_id=tenant_id, count=len(rows))
    return rows


def restore_role_rows(
    settings: Settings, *, user_id: str, tenant_id: str, role: str | None, now: datetime
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = _with_session(
        settings,
        lambda s: [role_as_dict(r) for r in restore_roles(s, user_id=user_id, tenant_id=tenant_id, role=role, now=now)],
    )
    log.info("roles.restored", user_id=user_id, tenant_id=tenant_id, count=len(rows))
    return rows
