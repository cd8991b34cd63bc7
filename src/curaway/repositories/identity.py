"""Tenants and role rows: the org → tenant map and the lifecycle of the auto role row.

Auto rows (``granted_by='system:clerk_jwt'``, at most one per user and tenant) are created by the first
authenticated request of a member and deactivated by Clerk's ``organizationMembership.deleted`` webhook. Manual rows
(any other ``granted_by``) are never touched by automation. An operator's revocation (``revoked_at`` set) is sticky:
neither the JWT path nor a membership webhook re-activates a revoked row.

Ordering rule shared by every automated change: an event (a membership webhook, a session token's ``iat``) changes an
auto row only when it happened *after* the row last changed (``updated_at``), so a late or redelivered event never
undoes a newer grant, and a token issued before a removal never re-activates the row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from curaway.models import AUTO_GRANTOR, TenantOrgMapping, User, UserRole

GrantOutcome = Literal["granted", "active", "role_changed", "reactivated", "inactive", "revoked"]


@dataclass(frozen=True)
class RoleGrant:
    """What the JWT/membership path did to the auto row of one user in one tenant."""

    outcome: GrantOutcome
    role_id: int
    role: str
    is_active: bool


_TENANT_FOR_ORG = select(TenantOrgMapping.tenant_id).where(TenantOrgMapping.clerk_org_id == bindparam("org_id"))


def tenant_for_org(session: Session, clerk_org_id: str) -> str | None:
    """The tenant mapped to a Clerk organisation id, or ``None`` when the org is unmapped."""
    tenant_id: str | None = session.connection().execute(_TENANT_FOR_ORG, {"org_id": clerk_org_id}).scalar()
    return tenant_id


def auto_role(session: Session, *, user_id: str, tenant_id: str, for_update: bool = False) -> UserRole | None:
    stmt = select(UserRole).where(
        UserRole.user_id == user_id, UserRole.tenant_id == tenant_id, UserRole.granted_by == AUTO_GRANTOR
    )
    if for_update:
        stmt = stmt.with_for_update()
    return session.scalar(stmt)


def active_roles(session: Session, *, user_id: str, tenant_id: str) -> list[str]:
    """Every active role (auto and manual) of a user in a tenant, sorted and de-duplicated."""
    rows = session.scalars(
        select(UserRole.role).where(
            UserRole.user_id == user_id, UserRole.tenant_id == tenant_id, UserRole.is_active.is_(True)
        )
    )
    return sorted(set(rows))


def _insert_auto(session: Session, *, user_id: str, tenant_id: str, role: str, now: datetime) -> UserRole | None:
    """Insert the auto row; ``None`` when a concurrent writer inserted it first (unique partial index)."""
    row = UserRole(
        user_id=user_id,
        tenant_id=tenant_id,
        role=role,
        granted_by=AUTO_GRANTOR,
        is_active=True,
        created_at=now,
        updated_at=now,
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        return None
    return row


def _grant(row: UserRole, outcome: GrantOutcome) -> RoleGrant:
    return RoleGrant(outcome=outcome, role_id=row.id, role=row.role, is_active=row.is_active)


def ensure_auto_role(
    session: Session,
    *,
    user_id: str,
    tenant_id: str,
    role: str,
    membership_seen_at: datetime,
    now: datetime,
    create: bool = True,
) -> RoleGrant | None:
    """Apply evidence that ``user_id`` is a member of the tenant with ``role`` as of ``membership_seen_at``.

    Used by the session-token path (``membership_seen_at`` = the token's ``iat``) and by the membership
    ``created``/``updated`` webhooks (the event time). Returns ``None`` only when no row exists and ``create`` is
    false. Rules: no row → insert an active one; a revoked row → untouched; evidence older than the row's last change
    → untouched; otherwise re-activate an inactive row and follow a role change.
    """
    for _ in range(2):
        row = auto_role(session, user_id=user_id, tenant_id=tenant_id, for_update=True)
        if row is None:
            if not create:
                return None
            inserted = _insert_auto(session, user_id=user_id, tenant_id=tenant_id, role=role, now=now)
            if inserted is not None:
                return _grant(inserted, "granted")
            continue  # lost the race: re-read the winner's row
        if row.revoked_at is not None:
            return _grant(row, "revoked")
        if membership_seen_at <= row.updated_at:
            return _grant(row, "active" if row.is_active else "inactive")
        if not row.is_active:
            row.is_active = True
            row.role = role
            row.updated_at = now
            session.flush()
            return _grant(row, "reactivated")
        if row.role != role:
            row.role = role
            row.updated_at = now
            session.flush()
            return _grant(row, "role_changed")
        return _grant(row, "active")
    raise RuntimeError("auto role row vanished between insert and re-read")  # pragma: no cover - needs a delete race


_DEACTIVATE_ALL = (
    update(UserRole)
    .where(
        UserRole.user_id == bindparam("b_user_id"),
        UserRole.granted_by == AUTO_GRANTOR,
        UserRole.is_active.is_(True),
        UserRole.updated_at <= bindparam("b_occurred_at"),
    )
    .values(is_active=False, updated_at=bindparam("b_now"))
    .execution_options(synchronize_session=False)
)
_DEACTIVATE_IN_TENANT = _DEACTIVATE_ALL.where(UserRole.tenant_id == bindparam("b_tenant_id"))


def deactivate_auto_roles(
    session: Session, *, user_id: str, tenant_id: str | None, occurred_at: datetime, now: datetime
) -> int:
    """``UPDATE user_roles SET is_active=false, updated_at=now`` for the user's active auto rows.

    Limited to one tenant unless ``tenant_id`` is ``None`` (user deleted). Rows changed after ``occurred_at`` (a user
    re-added after the removal) stay active. Manual rows are never touched. Returns the number of rows deactivated.
    """
    if tenant_id is None:
        result = session.connection().execute(
            _DEACTIVATE_ALL, {"b_user_id": user_id, "b_occurred_at": occurred_at, "b_now": now}
        )
    else:
        params = {"b_user_id": user_id, "b_tenant_id": tenant_id, "b_occurred_at": occurred_at, "b_now": now}
        result = session.connection().execute(_DEACTIVATE_IN_TENANT, params)
    return int(getattr(result, "rowcount", 0) or 0)


def mark_user_deleted(session: Session, *, user_id: str, occurred_at: datetime) -> bool:
    user = session.get(User, user_id)
    if user is None or user.deleted_at is not None:
        return False
    user.deleted_at = occurred_at
    session.flush()
    return True


def revoke_roles(
    session: Session, *, user_id: str, tenant_id: str, role: str | None, revoked_by: str, now: datetime
) -> list[UserRole]:
    """An operator's sticky revocation of a user's roles in a tenant (all roles, or only ``role``).

    Revoked rows are deactivated and keep ``revoked_at``/``revoked_by``; the JWT path and membership webhooks never
    re-activate them. When no auto row exists yet (the user never signed in) and the revocation covers it, a revoked
    inactive auto row is created so that a later first sign-in cannot grant one.
    """
    stmt = select(UserRole).where(UserRole.user_id == user_id, UserRole.tenant_id == tenant_id)
    if role is not None:
        stmt = stmt.where(UserRole.role == role)
    rows = list(session.scalars(stmt.with_for_update()))
    for row in rows:
        if row.revoked_at is None or row.is_active:
            row.is_active = False
            row.revoked_at = now
            row.revoked_by = revoked_by
            row.updated_at = now
    has_auto = any(r.granted_by == AUTO_GRANTOR for r in rows) or (
        auto_role(session, user_id=user_id, tenant_id=tenant_id) is not None
    )
    if not has_auto and role is None:
        placeholder = UserRole(
            user_id=user_id,
            tenant_id=tenant_id,
            role="org:member",
            granted_by=AUTO_GRANTOR,
            is_active=False,
            revoked_at=now,
            revoked_by=revoked_by,
            created_at=now,
            updated_at=now,
        )
        session.add(placeholder)
        rows.append(placeholder)
    session.flush()
    return rows


def restore_roles(session: Session, *, user_id: str, tenant_id: str, role: str | None, now: datetime) -> list[UserRole]:
    """Lift an operator revocation. Manual rows become active again; auto rows stay inactive until the next fresh
    membership evidence (a new session token or a membership webhook) re-activates them."""
    stmt = select(UserRole).where(
        UserRole.user_id == user_id, UserRole.tenant_id == tenant_id, UserRole.revoked_at.is_not(None)
    )
    if role is not None:
        stmt = stmt.where(UserRole.role == role)
    rows = list(session.scalars(stmt.with_for_update()))
    for row in rows:
        row.revoked_at = None
        row.revoked_by = None
        row.updated_at = now
        if row.granted_by != AUTO_GRANTOR:
            row.is_active = True
    session.flush()
    return rows


def list_roles(
    session: Session, *, user_id: str | None = None, tenant_id: str | None = None, limit: int = 500
) -> Sequence[UserRole]:
    stmt = select(UserRole).order_by(UserRole.tenant_id, UserRole.user_id, UserRole.id).limit(limit)
    if user_id is not None:
        stmt = stmt.where(UserRole.user_id == user_id)
    if tenant_id is not None:
        stmt = stmt.where(UserRole.tenant_id == tenant_id)
    return list(session.scalars(stmt))


def role_as_dict(row: UserRole) -> dict[str, object]:
    return {
        "id": row.id,
        "user_id": row.user_id,
        "tenant_id": row.tenant_id,
        "role": row.role,
        "granted_by": row.granted_by,
        "is_active": row.is_active,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        "revoked_by": row.revoked_by,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "updated_at": row.updated_at.isoformat() if row.updated_at else None,
    }
