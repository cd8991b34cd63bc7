"""What a delivery says about itself: which backend sent it, which attempt it is, which slot or key it serves."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from curaway.errors import ValidationFailed
from curaway.schedules import Schedule, TaskSpec, latest_slot, parse_slot, slot_key

# Headers the local dispatcher sets on its own deliveries.
H_RETRY_COUNT = "x-curaway-retry-count"
H_SLOT = "x-curaway-slot"
H_RUN_KEY = "x-curaway-run-key"
H_QUEUE_ITEM = "x-curaway-queue-item"

RUN_KEY_PATTERN = re.compile(r"^[A-Za-z0-9._:@#/+=-]{1,255}$")
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
FUTURE_SLOT_TOLERANCE = timedelta(seconds=60)
# A delivery this early still serves the coming slot (a sender's clock a little ahead of ours must not map a daily
# run onto yesterday's, already finished, key).
EARLY_DELIVERY_TOLERANCE = timedelta(seconds=30)


@dataclass(frozen=True)
class Delivery:
    trigger: str  # local | qstash | cloudtasks | cloudscheduler | http
    retry_count: int | None  # retries so far as the backend tells it (0 = first delivery)
    message_id: str | None
    schedule_time: datetime | None
    explicit_run_key: str | None
    force: bool
    received_at: datetime

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], *, force: bool, received_at: datetime) -> Delivery:
        def count(name: str) -> int | None:
            raw = headers.get(name)
            if raw is None:
                return None
            if not raw.strip().isdigit():
                raise ValidationFailed(f"header {name} must be a non-negative integer")
            return int(raw.strip())

        schedule_time: datetime | None = None
        raw_slot = headers.get(H_SLOT) or headers.get("x-cloudscheduler-scheduletime")
        if raw_slot:
            schedule_time = parse_slot(raw_slot)
        run_key = headers.get(H_RUN_KEY)
        if run_key is not None and not RUN_KEY_PATTERN.match(run_key):
            raise ValidationFailed(f"header {H_RUN_KEY} must match {RUN_KEY_PATTERN.pattern}")

        if headers.get(H_QUEUE_ITEM):
            trigger, retry, message = "local", count(H_RETRY_COUNT), headers.get(H_QUEUE_ITEM)
        elif headers.get("upstash-message-id") or headers.get("upstash-signature"):
            trigger, retry, message = "qstash", count("upstash-retried"), headers.get("upstash-message-id")
        elif headers.get("x-cloudtasks-taskname"):
            trigger, retry, message = (
                "cloudtasks",
                count("x-cloudtasks-taskretrycount"),
                headers.get("x-cloudtasks-taskname"),
            )
        elif headers.get("x-cloudscheduler-jobname") or headers.get("x-cloudscheduler"):
            trigger, retry, message = "cloudscheduler", None, None
        else:
            trigger, retry, message = "http", count(H_RETRY_COUNT), None
        return cls(
            trigger=trigger,
            retry_count=retry,
            message_id=message,
            schedule_time=schedule_time,
            explicit_run_key=run_key,
            force=force,
            received_at=received_at,
        )

    def run_key(self, spec: TaskSpec, payload: Mapping[str, Any]) -> tuple[str, datetime | None]:
        """DESIGN §2 "Run keys". Returns (key, slot)."""
        if self.explicit_run_key:
            slot = None
            if isinstance(spec, Schedule) and self.schedule_time is not None and not self.force:
                slot = latest_slot(spec.cron, self.schedule_time)
            return self.explicit_run_key, slot
        if isinstance(spec, Schedule):
            if self.force:
                return f"{spec.name}@manual:{secrets.token_hex(8)}", None
            if self.schedule_time is not None:
                if self.schedule_time > self.received_at + FUTURE_SLOT_TOLERANCE:
                    # A Cloud Scheduler force-run carries the *next* slot: it must not swallow that real run.
                    return f"{spec.name}@manual:{secrets.token_hex(8)}", None
                slot = latest_slot(spec.cron, self.schedule_time)
            else:
                slot = latest_slot(spec.cron, self.received_at + EARLY_DELIVERY_TOLERANCE)
            return slot_key(spec.name, slot), slot
        document_id = payload.get("document_id")
        if spec.name == "extract" and isinstance(document_id, str) and ID_PATTERN.match(document_id):
            return f"extract:{document_id}", None
        if self.message_id:
            return f"{spec.name}:{self.trigger}:{self.message_id}"[:255], None
        return f"{spec.name}@manual:{secrets.token_hex(8)}", None
