"""Clerk webhook events: what a verified delivery does to role rows (DESIGN §3, issue 6).

Handled types:
- ``organizationMembership.deleted`` → deactivate the user's auto role row in the org's tenant (rows changed after
  the event's occurrence stay active; manual rows and other tenants are untouched): ``{"event":"deactivated",
  "count":N}``. An unmapped org → ``{"event":"ignored","reason":"unmapped_org"}``, recorded in the inbox.
- ``organizationMembership.created`` → grant or re-activate the auto row (never a revoked one).
- ``organizationMembership.updated`` → follow a role change on an existing auto row.
- ``user.deleted`` → deactivate the user's auto rows in every tenant and mark the user deleted.
- anything else → ``{"event":"ignored","reason":"unhandled_event_type"}`` (2xx: a 4xx makes Svix retry for a day).
A signed payload that does not match the schema → 2xx ``dead_lettered`` + a dead letter holding ids only.

The inbox claim, the effects and the inbox outcome are one transaction; a redelivery of the same ``svix-id`` is
answered with the stored result and ``"status":"duplicate"`` and changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session

from curaway.db import SessionFactory, engine_of, transaction
from curaway.logging import get_logger
from curaway.repositories.identity import (
    deactivate_auto_roles,
    ensure_auto_role,
    mark_user_deleted,
    tenant_for_org,
)
from curaway.repositories.runtime import record_dead_letter
from curaway.repositories.webhooks import find_inbox, record_inbox
from curaway.webhooks.svix import VerifiedWebhook

log = get_logger("curaway.webhooks.clerk")

SOURCE = "clerk"
DEAD_LETTER_TASK = "clerk-webhook"
_TYPE_OK = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,99}")
_MAX_EPOCH_MS = 10**14  # year 5138: anything larger is not a real event time


# -- payload schema (only the fields we read; extra fields are ignored, never stored) ---------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


IdStr = Annotated[str, Field(min_length=1, max_length=64)]


class Envelope(_Model):
    type: str = Field(min_length=1, max_length=100, pattern=_TYPE_OK.pattern)
    data: dict[str, Any]
    timestamp: int | None = Field(default=None, ge=0, lt=_MAX_EPOCH_MS)


class OrgRef(_Model):
    id: IdStr


class PublicUserData(_Model):
    user_id: IdStr


class MembershipData(_Model):
    organization: OrgRef
    public_user_data: PublicUserData
    role: str | None = Field(default=None, min_length=1, max_length=64)
    updated_at: int | None = Field(default=None, ge=0, lt=_MAX_EPOCH_MS)


class UserDeletedData(_Model):
    id: IdStr


class SchemaInvalid(Exception):
    def __init__(self, code: str, fields: list[str]) -> None:
        super().__init__(code)
        self.code = code
        self.fields = fields


# -- outcome ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClerkOutcome:
    """What to answer (always 2xx) and how to count it."""

    body: dict[str, Any]
    event_type: str
    outcome: str  # processed | ignored | duplicate | dead_lettered


def metric_event_type(value: object) -> str:
    return value if isinstance(value, str) and _TYPE_OK.fullmatch(value) else "invalid"


def _from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


def _fields(exc: ValidationError, prefix: str) -> list[str]:
    # Field paths only: pydantic's messages quote the input, which may hold PHI.
    return sorted({prefix + ".".join(str(p) for p in err.get("loc", ())) for err in exc.errors()})[:10]


def parse_envelope(body: bytes) -> Envelope:
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise SchemaInvalid("invalid_json", []) from exc
    if not isinstance(raw, dict):
        raise SchemaInvalid("not_an_object", [])
    try:
        return Envelope.model_validate(raw)
    except ValidationError as exc:
        raise SchemaInvalid("schema_invalid", _fields(exc, "")) from exc


def _data(model: type[_Model], envelope: Envelope) -> Any:
    try:
        return model.model_validate(envelope.data)
    except ValidationError as exc:
        raise SchemaInvalid("schema_invalid", _fields(exc, "data.")) from exc


# -- handlers: parse first (pure, may raise SchemaInvalid), then apply (writes) -----------------------------------

Apply = Callable[[Session, datetime], tuple[str, dict[str, Any]]]


def _occurred_at(envelope: Envelope, fallback: datetime, updated_at_ms: int | None = None) -> datetime:
    if envelope.timestamp is not None:
        return _from_ms(envelope.timestamp)
    if updated_at_ms is not None:
        return _from_ms(updated_at_ms)
    return fallback


def _unmapped(org_id: str, user_id: str) -> tuple[str, dict[str, Any]]:
    log.warning("webhook.unmapped_org", source=SOURCE, org_id=org_id, user_id=user_id)
    return "ignored", {"event": "ignored", "reason": "unmapped_org"}


def _membership_deleted(envelope: Envelope, sent_at: datetime) -> Apply:
    data: MembershipData = _data(MembershipData, envelope)
    org_id, user_id = data.organization.id, data.public_user_data.user_id
    occurred_at = _occurred_at(envelope, sent_at, data.updated_at)

    def apply(session: Session, now: datetime) -> tuple[str, dict[str, Any]]:
        tenant_id = tenant_for_org(session, org_id)
        if tenant_id is None:
            return _unmapped(org_id, user_id)
        count = deactivate_auto_roles(session, user_id=user_id, tenant_id=tenant_id, occurred_at=occurred_at, now=now)
        return "deactivated", {"event": "deactivated", "count": count}

    return apply


def _membership_upsert(create: bool) -> Callable[[Envelope, datetime], Apply]:
    def parse(envelope: Envelope, sent_at: datetime) -> Apply:
        data: MembershipData = _data(MembershipData, envelope)
        if data.role is None:
            raise SchemaInvalid("schema_invalid", ["data.role"])
        role = data.role
        org_id, user_id = data.organization.id, data.public_user_data.user_id
        seen_at = _occurred_at(envelope, sent_at, data.updated_at)

        def apply(session: Session, now: datetime) -> tuple[str, dict[str, Any]]:
            tenant_id = tenant_for_org(session, org_id)
            if tenant_id is None:
                return _unmapped(org_id, user_id)
            grant = ensure_auto_role(
                session,
                user_id=user_id,
                tenant_id=tenant_id,
                role=role,
                membership_seen_at=seen_at,
                now=now,
                create=create,
            )
            if grant is None:
                return "ignored", {"event": "ignored", "reason": "no_auto_role"}
            changed = grant.outcome in {"granted", "reactivated", "role_changed"}
            event = "activated" if create else "updated"
            return event, {"event": event, "count": int(changed), "outcome": grant.outcome}

        return apply

    return parse


def _user_deleted(envelope: Envelope, sent_at: datetime) -> Apply:
    data: UserDeletedData = _data(UserDeletedData, envelope)
    occurred_at = _occurred_at(envelope, sent_at)

    def apply(session: Session, now: datetime) -> tuple[str, dict[str, Any]]:
        count = deactivate_auto_roles(session, user_id=data.id, tenant_id=None, occurred_at=occurred_at, now=now)
        mark_user_deleted(session, user_id=data.id, occurred_at=occurred_at)
        return "deactivated", {"event": "deactivated", "count": count}

    return apply


def _ignore(envelope: Envelope, sent_at: datetime) -> Apply:
    def apply(session: Session, now: datetime) -> tuple[str, dict[str, Any]]:
        return "ignored", {"event": "ignored", "reason": "unhandled_event_type"}

    return apply


HANDLERS: dict[str, Callable[[Envelope, datetime], Apply]] = {
    "organizationMembership.deleted": _membership_deleted,
    "organizationMembership.created": _membership_upsert(create=True),
    "organizationMembership.updated": _membership_upsert(create=False),
    "user.deleted": _user_deleted,
}

_PROCESSED = {"deactivated", "activated", "updated"}


# -- the delivery -----------------------------------------------------------------------------------------------


_SQLITE_WRITERS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_SQLITE_WRITERS_GUARD = threading.Lock()


def _writer_slot(session_factory: SessionFactory) -> contextlib.AbstractContextManager[Any]:
    """SQLite has one writer: queue this process's deliveries on a lock instead of SQLite's sleeping busy handler
    (which backs off 1, 2, 5, 10 ms… while the holder needs well under a millisecond). Postgres: no lock."""
    engine = engine_of(session_factory)
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    with _SQLITE_WRITERS_GUARD:
        lock = _SQLITE_WRITERS.get(engine)
        if lock is None:
            lock = _SQLITE_WRITERS[engine] = threading.Lock()
    return lock


class _Duplicate(Exception):
    """The inbox already holds this id: roll the transaction (and its effects) back."""


def handle_clerk_delivery(session_factory: SessionFactory, delivery: VerifiedWebhook, *, now: datetime) -> ClerkOutcome:
    """Apply one verified delivery exactly once: effects + inbox row (with the outcome) in one transaction.

    The payload is parsed and validated before any write, so a schema-invalid payload writes only its dead letter and
    its inbox row. When the inbox insert finds the id already recorded (a redelivery, or a concurrent duplicate that
    committed first) the transaction is rolled back and the stored result is answered with ``"status":"duplicate"``.
    """
    svix_id = delivery.msg_id
    event_type: str | None = None
    apply: Apply | None = None
    invalid: SchemaInvalid | None = None
    try:
        envelope = parse_envelope(delivery.body)
        event_type = envelope.type
        apply = HANDLERS.get(envelope.type, _ignore)(envelope, delivery.timestamp)
    except SchemaInvalid as exc:
        invalid = exc

    try:
        with _writer_slot(session_factory), transaction(session_factory) as session:
            if apply is not None:
                outcome, body = apply(session, now)
            else:
                assert invalid is not None
                record_dead_letter(
                    session,
                    task=DEAD_LETTER_TASK,
                    run_key=f"{SOURCE}:{svix_id}",
                    payload={"svix_id": svix_id, "event_type": event_type, "fields": invalid.fields},
                    source=SOURCE,
                    attempts=1,
                    last_status=200,
                    error_class="ValidationFailed",
                    error_code=invalid.code,
                )
                outcome, body = "dead_lettered", {"event": "ignored", "status": "dead_lettered", "reason": invalid.code}
            inserted = record_inbox(
                session,
                source=SOURCE,
                event_id=svix_id,
                event_type=event_type,
                outcome=outcome,
                result=body,
                received_at=now,
            )
            if not inserted:
                raise _Duplicate
    except _Duplicate:
        with transaction(session_factory) as session:
            row = find_inbox(session, source=SOURCE, event_id=svix_id)
            stored_type = row.event_type if row is not None else event_type
            stored = dict(row.result or {"event": row.outcome}) if row is not None else {"event": "unknown"}
        log.info("webhook.duplicate", source=SOURCE, svix_id=svix_id, event_type=stored_type)
        return ClerkOutcome(
            body={**stored, "status": "duplicate"}, event_type=metric_event_type(stored_type), outcome="duplicate"
        )

    if outcome == "dead_lettered":
        log.warning(
            "webhook.dead_lettered", source=SOURCE, svix_id=svix_id, event_type=event_type, reason=body["reason"]
        )
    log.info(
        "webhook.processed",
        source=SOURCE,
        svix_id=svix_id,
        event_type=event_type,
        status=outcome,
        count=body.get("count"),
        reason=body.get("reason"),
    )
    return ClerkOutcome(
        body=body, event_type=metric_event_type(event_type), outcome="processed" if outcome in _PROCESSED else outcome
    )
