"""The run ledger: claim a run key before acting (DESIGN §2 "Run keys"; idempotency is a database constraint)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from curaway.db import rowcount
from curaway.models import RunLedger

ClaimKind = Literal["acquired", "duplicate", "busy"]
TERMINAL_OK = ("succeeded", "skipped")


@dataclass(frozen=True)
class Claim:
    kind: ClaimKind
    row: RunLedger
    retry_after_s: float = 0.0


def claim(
    session: Session,
    *,
    run_key: str,
    task: str,
    owner: str,
    now: datetime,
    lease_s: float,
    slot: datetime | None = None,
    trigger: str | None = None,
    verifier: str | None = None,
    key_id: str | None = None,
) -> Claim:
    """Insert the key as ``running``; if it exists, report duplicate/busy or take it over (failed, dead, or a
    running row whose lease expired — a crashed worker). The take-over is a conditional UPDATE, so two claimants
    racing for the same key cannot both win."""
    lease = now + timedelta(seconds=lease_s)
    row = RunLedger(
        run_key=run_key,
        task=task,
        status="running",
        attempts=1,
        slot=slot,
        trigger=trigger,
        verifier=verifier,
        key_id=key_id,
        owner=owner,
        lease_expires_at=lease,
        started_at=now,
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
        return Claim("acquired", row)
    except IntegrityError:
        pass
    existing = session.scalars(select(RunLedger).where(RunLedger.run_key == run_key)).one()
    if existing.status in TERMINAL_OK:
        return Claim("duplicate", existing)
    if existing.status == "running" and existing.lease_expires_at and existing.lease_expires_at > now:
        return Claim("busy", existing, retry_after_s=max(1.0, (existing.lease_expires_at - now).total_seconds()))
    taken = rowcount(
        session.execute(
            update(RunLedger)
            .where(
                RunLedger.run_key == run_key,
                or_(
                    RunLedger.status.in_(("failed", "dead")),
                    and_(RunLedger.status == "running", RunLedger.lease_expires_at <= now),
                ),
            )
            .values(
                status="running",
                owner=owner,
                lease_expires_at=lease,
                attempts=RunLedger.attempts + 1,
                started_at=now,
                finished_at=None,
                error_class=None,
                error_code=None,
                trigger=trigger,
                verifier=verifier,
                key_id=key_id,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
    )
    session.expire(existing)
    refreshed = session.scalars(select(RunLedger).where(RunLedger.run_key == run_key)).one()
    if taken == 1:
        return Claim("acquired", refreshed)
    if refreshed.status in TERMINAL_OK:
        return Claim("duplicate", refreshed)
    return Claim("busy", refreshed, retry_after_s=5.0)


def heartbeat(session: Session, *, run_key: str, owner: str, now: datetime, lease_s: float) -> bool:
    result = session.execute(
        update(RunLedger)
        .where(RunLedger.run_key == run_key, RunLedger.owner == owner, RunLedger.status == "running")
        .values(lease_expires_at=now + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    return bool(rowcount(result))


def finish(
    session: Session,
    *,
    run_key: str,
    owner: str,
    now: datetime,
    status: str,
    result: dict[str, Any] | None = None,
    error_class: str | None = None,
    error_code: str | None = None,
) -> bool:
    """Record the outcome if we still own the key (a stale owner whose lease was taken over writes nothing)."""
    updated = session.execute(
        update(RunLedger)
        .where(RunLedger.run_key == run_key, RunLedger.owner == owner, RunLedger.status == "running")
        .values(
            status=status,
            result=result,
            error_class=error_class,
            error_code=error_code,
            finished_at=now,
            lease_expires_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(rowcount(updated))


def other_live_run(session: Session, *, task: str, run_key: str, now: datetime, claimed_after: int) -> RunLedger | None:
    """An earlier-claimed run of ``task`` still holding a live lease (the ``skip_if_running`` overlap policy).

    Only runs claimed before ours count (``id < claimed_after``), so two runs racing past each other cannot both
    skip: the older one always proceeds."""
    return session.scalars(
        select(RunLedger)
        .where(
            RunLedger.task == task,
            RunLedger.run_key != run_key,
            RunLedger.id < claimed_after,
            RunLedger.status == "running",
            RunLedger.lease_expires_at > now,
        )
        .limit(1)
    ).first()


def get(session: Session, run_key: str) -> RunLedger | None:
    return session.scalars(select(RunLedger).where(RunLedger.run_key == run_key)).first()


def last_success(session: Session, task: str) -> RunLedger | None:
    """The latest finished run that did its job (``skipped`` counts: "nothing to do" is fresh too)."""
    return session.scalars(
        select(RunLedger)
        .where(RunLedger.task == task, RunLedger.status.in_(TERMINAL_OK))
        .order_by(RunLedger.finished_at.desc())
        .limit(1)
    ).first()
