"""Delivering the transactional email outbox (shared by the email-sending crons).

Rows are leased in a short transaction, sent with no transaction open, and marked in another short transaction
right after each send, so a crash loses at most the one message in flight (its lease expires and a later run
re-sends it) and a delivered row is never sent again. Provider failures are recorded per message: temporary ones
back off (``next_attempt_at``), permanent ones (and the last attempt) end in ``failed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from curaway.errors import CurawayError, PermanentError
from curaway.integrations.email import EmailBackend, OutgoingEmail, build_email_backend
from curaway.repositories import crons as repo
from curaway.tasks.base import TaskContext

OUTBOX_LEASE_S = 300.0  # well above the SMTP timeout, so a live send never loses its lease
OUTBOX_BATCH = 50


@dataclass
class DeliveryReport:
    sent: int = 0
    failed_temporary: int = 0
    failed_permanent: int = 0
    lost_race: int = 0
    sent_keys: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {
            "emails_sent": self.sent,
            "delivery_retry_scheduled": self.failed_temporary,
            "delivery_failed": self.failed_permanent,
        }


def email_backend(ctx: TaskContext) -> EmailBackend:
    """The injected backend, else the configured one (``CURAWAY_EMAIL_BACKEND``)."""
    backend: Any = ctx.integrations.email
    if backend is None:
        return build_email_backend(ctx.settings)
    return backend


def deliver_due(
    ctx: TaskContext,
    *,
    templates: tuple[str, ...],
    max_messages: int = 1000,
    batch: int = OUTBOX_BATCH,
) -> DeliveryReport:
    """Send due outbox rows of ``templates`` until none is left (or ``max_messages`` were attempted)."""
    backend = email_backend(ctx)
    report = DeliveryReport()
    attempted = 0
    while attempted < max_messages:
        now = ctx.clock.now()
        with ctx.transaction() as session:
            items = repo.claim_due_emails(
                session,
                now=now,
                lease_s=OUTBOX_LEASE_S,
                limit=min(batch, max_messages - attempted),
                templates=templates,
            )
        if not items:
            break
        pending_ids = [item.id for item in items]
        try:
            for item in items:
                pending_ids.remove(item.id)
                attempted += 1
                _deliver_one(ctx, backend, item, report)
        except BaseException:
            # Crash mid-batch: the message in flight keeps its lease (its fate is unknown), the ones never
            # attempted are handed back at once so a redelivery picks them up without waiting for the lease.
            if pending_ids:
                with ctx.transaction() as session:
                    repo.release_email_leases(session, email_ids=pending_ids, now=ctx.clock.now())
            raise
    return report


def _deliver_one(ctx: TaskContext, backend: EmailBackend, item: repo.OutboxItem, report: DeliveryReport) -> None:
    message = OutgoingEmail(
        idempotency_key=item.dedup_key,
        to=item.to_address,
        subject=item.subject,
        text=item.body_text,
        html=item.body_html,
        from_addr=ctx.settings.email_from,
    )
    try:
        receipt = backend.send(message)
    except CurawayError as exc:
        permanent = isinstance(exc, PermanentError)
        with ctx.transaction() as session:
            status = repo.mark_email_failed(
                session, email_id=item.id, error_code=exc.code, now=ctx.clock.now(), permanent=permanent
            )
        if status == "failed":
            report.failed_permanent += 1
        else:
            report.failed_temporary += 1
        ctx.log.warning(
            "email.send_failed",
            task=ctx.task,
            outbox_id=item.id,
            template=item.template,
            error_code=exc.code,
            outcome=status,
            attempt=item.attempts + 1,
        )
        return
    with ctx.transaction() as session:
        marked = repo.mark_email_sent(
            session, email_id=item.id, provider_message_id=receipt.provider_message_id, now=ctx.clock.now()
        )
    if marked:
        report.sent += 1
        report.sent_keys.append(item.dedup_key)
        ctx.log.info("email.sent", task=ctx.task, outbox_id=item.id, template=item.template, backend=backend.name)
    else:
        report.lost_race += 1
        ctx.log.warning("email.already_marked", task=ctx.task, outbox_id=item.id, template=item.template)
