"""Task name → handler, declared explicitly. Every name in ``curaway.schedules.all_tasks()`` has an entry."""

from __future__ import annotations

from curaway.tasks import crons, extraction, fhir_sweep
from curaway.tasks.base import Handler

HANDLERS: dict[str, Handler] = {
    "exchange-rate-refresh": crons.exchange_rate_refresh,
    "intake-reminders": crons.intake_reminders,
    "stale-session-cleanup": crons.stale_session_cleanup,
    "consent-expiry-check": crons.consent_expiry_check,
    "notification-digest": crons.notification_digest,
    "analytics-refresh": crons.analytics_refresh,
    "extract": extraction.extract,
    "fhir-sweep": fhir_sweep.sweep,
}


def get_handler(name: str) -> Handler | None:
    return HANDLERS.get(name)
