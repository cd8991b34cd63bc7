"""The ``local`` backend: a durable queue in the database, a cron loop, and delivery through the same HTTP path.

- ``LocalEnqueuer`` puts work in ``task_queue`` (unique ``dedup_key``: enqueue is idempotent).
- ``LocalDispatcher`` turns due cron slots into queued tasks (``cron:{schedule}@{slot}`` — N schedulers produce one
  task per slot, no leader election), claims due items with a lease kept alive by a heartbeat (a killed worker's
  items are redelivered once the lease lapses), delivers them through a ``Deliverer`` (in-process ASGI or HTTP) and
  applies the answer: 2xx done; 409 requeue at ``Retry-After`` without spending an attempt; 429/5xx/transport errors
  retry with exponential backoff honouring ``Retry-After`` until the policy's attempts are spent, then dead; other
  4xx (and 489) dead at once. The runner writes dead letters it knows about; the dispatcher fills in the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx

from curaway.clock import Clock
from curaway.db import SessionFactory, transaction
from curaway.dispatch.delivery import H_QUEUE_ITEM, H_RETRY_COUNT, H_RUN_KEY, H_SLOT
from curaway.errors import NotFoundError
from curaway.logging import get_logger
from curaway.models import QueuedTask
from curaway.repositories import queue as queue_repo
from curaway.repositories.runtime import advance_last_slot, record_dead_letter, scalar_references, schedule_states
from curaway.schedules import (
    SCHEDULES,
    CatchUp,
    Schedule,
    get_task,
    latest_slot,
    parse_slot,
    slot_key,
    slots_between,
)
from curaway.schedules.slots import format_slot
from curaway.settings import Settings
from curaway.tasks.base import EnqueueReceipt

log = get_logger("curaway.dispatcher")

ON_TIME_GRACE = timedelta(minutes=5)


# -- enqueue ------------------------------------------------------------------------------------------------


class LocalEnqueuer:
    """``Enqueuer`` for the local backend."""

    def __init__(self, *, session_factory: SessionFactory, clock: Clock) -> None:
        self.session_factory = session_factory
        self.clock = clock

    def enqueue(self, task: str, payload: Any, *, dedup_key: str | None = None, delay_s: float = 0.0) -> EnqueueReceipt:
        key = dedup_key or f"{task}@manual:{secrets.token_hex(8)}"
        return self._put(task, dict(payload), dedup_key=key, headers={H_RUN_KEY: key}, delay_s=delay_s)

    def enqueue_slot(self, schedule: Schedule, slot: datetime) -> EnqueueReceipt:
        key = slot_key(schedule.name, slot)
        return self._put(schedule.name, {}, dedup_key=f"cron:{key}", headers={H_SLOT: format_slot(slot)})

    def _put(
        self, task: str, payload: dict[str, Any], *, dedup_key: str, headers: dict[str, str], delay_s: float = 0.0
    ) -> EnqueueReceipt:
        spec = get_task(task)
        if spec is None:
            raise NotFoundError(f"unknown task {task!r}")
        now = self.clock.now()
        with transaction(self.session_factory) as session:
            item, created = queue_repo.enqueue(
                session,
                task=task,
                queue=spec.queue,
                dedup_key=dedup_key,
                payload=payload,
                headers=headers,
                scheduled_for=now + timedelta(seconds=max(0.0, delay_s)),
                max_attempts=spec.retry.max_attempts,
                now=now,
            )
        log.info("task.enqueued" if created else "task.enqueue_deduplicated", task=task, queue_item=item.id)
        return EnqueueReceipt(task=task, dedup_key=dedup_key, created=created, message_id=str(item.id))


# -- delivery -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryResult:
    status_code: int | None  # None: the request never got an answer (transport error, timeout)
    body: dict[str, Any] | None = None
    retry_after_s: float | None = None
    error_class: str | None = None


class Deliverer(Protocol):
    async def deliver(self, item: QueuedTask) -> DeliveryResult: ...

    async def aclose(self) -> None: ...


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


class HttpxDeliverer:
    """POSTs a queue item to its endpoint with the internal secret; in-process (ASGI) or over HTTP."""

    def __init__(self, *, settings: Settings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.client = client

    @classmethod
    def in_process(cls, app: Any, settings: Settings) -> HttpxDeliverer:
        # An exception escaping the app becomes a 500 answer (retried), not a crash of the dispatcher.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        return cls(settings=settings, client=httpx.AsyncClient(transport=transport, base_url="http://curaway.local"))

    @classmethod
    def over_http(cls, settings: Settings, *, base_url: str | None = None) -> HttpxDeliverer:
        client = httpx.AsyncClient(base_url=(base_url or settings.public_url).rstrip("/"))
        return cls(settings=settings, client=client)

    async def deliver(self, item: QueuedTask) -> DeliveryResult:
        spec = get_task(item.task)
        if spec is None:
            return DeliveryResult(404, {"error": {"code": "not_found"}}, error_class="UnknownTask")
        headers = {
            "content-type": "application/json",
            "x-internal-secret": self.settings.internal_secrets[0],
            H_QUEUE_ITEM: str(item.id),
            H_RETRY_COUNT: str(max(0, item.attempts - 1)),
            **{k.lower(): str(v) for k, v in (item.headers or {}).items()},
        }
        try:
            response = await self.client.post(
                spec.endpoint, json=item.payload or {}, headers=headers, timeout=spec.timeout_s + 10
            )
        except Exception as exc:  # noqa: BLE001 - any transport failure is a retryable, unanswered delivery
            return DeliveryResult(None, error_class=type(exc).__name__)
        try:
            body = response.json()
        except ValueError:
            body = None
        return DeliveryResult(
            response.status_code,
            body if isinstance(body, dict) else None,
            retry_after_s=_retry_after(response.headers.get("retry-after")),
        )

    async def aclose(self) -> None:
        await self.client.aclose()


# -- the dispatcher -----------------------------------------------------------------------------------------


@dataclass
class DispatcherConfig:
    concurrency: int = 4
    poll_interval_s: float = 0.5
    lease_s: float = 30.0
    backoff_scale: float = 1.0  # tests shrink the retry delays; production keeps the policy's
    cron: bool = True
    queues: Sequence[str] | None = None
    worker_id: str = ""


def item_run_key(item: QueuedTask) -> str:
    """The run key the service derives for a queue item (so a dispatcher-written dead letter replays that run)."""
    headers = item.headers or {}
    if headers.get(H_RUN_KEY):
        return str(headers[H_RUN_KEY])
    if headers.get(H_SLOT):
        return slot_key(item.task, parse_slot(str(headers[H_SLOT])))
    return item.dedup_key


def choose_slots(policy: CatchUp, due: list[datetime], now: datetime) -> list[datetime]:
    """Apply the catch-up policy to the slots due since the last one enqueued (oldest first)."""
    on_time = [s for s in due if now - s <= ON_TIME_GRACE]
    late = [s for s in due if now - s > ON_TIME_GRACE]
    if not late:
        return on_time
    if policy.mode == "skip":
        return on_time
    if policy.mode == "latest":
        return on_time or late[-1:]
    within = policy.within or timedelta(0)
    return [s for s in late if now - s <= within] + on_time


class LocalDispatcher:
    def __init__(
        self,
        *,
        session_factory: SessionFactory,
        clock: Clock,
        deliverer: Deliverer,
        enqueuer: LocalEnqueuer,
        config: DispatcherConfig | None = None,
        schedules: Sequence[Schedule] = SCHEDULES,
    ) -> None:
        self.session_factory = session_factory
        self.clock = clock
        self.deliverer = deliverer
        self.enqueuer = enqueuer
        self.config = config or DispatcherConfig()
        self.worker_id = self.config.worker_id or f"dispatcher-{secrets.token_hex(4)}"
        self.schedules = {s.name: s for s in schedules}
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()

    # -- cron ----------------------------------------------------------------------------------------------
    def tick_cron(self) -> int:
        """Enqueue the due slots of every registered, enabled schedule. Returns how many were enqueued."""
        now = self.clock.now()
        with transaction(self.session_factory) as session:
            states = {name: (row.cron, row.enabled, row.last_slot) for name, row in schedule_states(session).items()}
        enqueued = 0
        for name, (cron, enabled, last_slot) in states.items():
            schedule = self.schedules.get(name)
            if schedule is None or not enabled:
                continue
            if last_slot is None:
                # Newly registered: start from the current slot; nothing was missed before it existed.
                with transaction(self.session_factory) as session:
                    advance_last_slot(session, schedule=name, slot=latest_slot(cron, now))
                continue
            due = list(slots_between(cron, last_slot, now, limit=1000))
            if not due:
                continue
            chosen = choose_slots(schedule.catch_up, due, now)
            for slot in chosen:
                if self.enqueuer.enqueue_slot(schedule, slot).created:
                    enqueued += 1
            skipped = len(due) - len(chosen)
            if skipped:
                log.info("cron.slots_skipped", schedule=name, count=skipped, catch_up=schedule.catch_up.describe())
            with transaction(self.session_factory) as session:
                advance_last_slot(session, schedule=name, slot=due[-1])
        return enqueued

    # -- queue ---------------------------------------------------------------------------------------------
    def _claim(self, item_id: int | None = None) -> QueuedTask | None:
        with transaction(self.session_factory) as session:
            return queue_repo.claim(
                session,
                worker=self.worker_id,
                now=self.clock.now(),
                lease_s=self.config.lease_s,
                queues=self.config.queues,
                item_id=item_id,
            )

    async def process(self, item: QueuedTask) -> str:
        """Deliver one claimed item and settle it. Returns the item's new status."""
        if item.attempts > item.max_attempts:
            # Reclaimed after its final delivery's worker died: the attempts are spent, dead-letter it.
            exhausted = DeliveryResult(None, error_class="LeaseLapsedAfterFinalAttempt")
            return await asyncio.to_thread(self._settle, item, exhausted)
        result = await self.deliverer.deliver(item)
        return await asyncio.to_thread(self._settle, item, result)

    def _settle(self, item: QueuedTask, result: DeliveryResult) -> str:
        now = self.clock.now()
        code = result.status_code
        spec = get_task(item.task)
        bound = log.bind(task=item.task, queue_item=item.id, attempt=item.attempts, status_code=code)
        with transaction(self.session_factory) as session:

            def settle(status: str, *, retry_at: datetime | None = None) -> None:
                queue_repo.settle(
                    session,
                    item_id=item.id,
                    worker=self.worker_id,
                    now=now,
                    status=status,
                    last_status=code,
                    last_error=result.error_class or f"http_{code}",
                    retry_at=retry_at,
                )

            if code is not None and 200 <= code < 300:
                queue_repo.settle(
                    session, item_id=item.id, worker=self.worker_id, now=now, status="done", last_status=code
                )
                bound.info("dispatch.delivered", outcome=(result.body or {}).get("status"))
                return "done"
            if code == 409:
                delay = (result.retry_after_s or 5.0) * self.config.backoff_scale
                # Busy elsewhere (the same run key is running under a live lease) is not a failed attempt.
                queue_repo.settle(
                    session,
                    item_id=item.id,
                    worker=self.worker_id,
                    now=now,
                    status="queued",
                    last_status=code,
                    last_error="busy",
                    retry_at=now + timedelta(seconds=delay),
                    refund_attempt=True,
                )
                bound.info("dispatch.busy_requeued", delay_s=delay)
                return "queued"
            retryable = code is None or code == 429 or code >= 500
            if retryable and item.attempts < item.max_attempts:
                policy = spec.retry if spec else None
                backoff = (policy.delay_s(item.attempts - 1) if policy else 10.0) * self.config.backoff_scale
                delay = max(backoff, (result.retry_after_s or 0.0) * self.config.backoff_scale)
                settle("queued", retry_at=now + timedelta(seconds=delay))
                bound.info("dispatch.retry_scheduled", delay_s=round(delay, 3))
                return "queued"
            # Permanent (4xx other than 409/429, 489) or attempts spent: dead.
            body = result.body or {}
            run_key = str(body.get("run_key") or item_run_key(item))
            runner_dead_lettered = body.get("status") == "dead_lettered" or (
                isinstance(body.get("error"), dict) and body["error"].get("dead_letter_id")
            )
            if not runner_dead_lettered:
                record_dead_letter(
                    session,
                    task=item.task,
                    run_key=run_key,
                    payload=scalar_references(item.payload),
                    source="local",
                    attempts=item.attempts,
                    last_status=code,
                    error_class=result.error_class or f"http_{code}",
                    error_code=f"http_{code}" if code is not None else "transport",
                )
            settle("dead")
            bound.warning("dispatch.dead", final_attempt=item.attempts >= item.max_attempts)
            return "dead"

    async def run_item(self, item_id: int) -> str | None:
        """Claim and deliver one specific item if it is due (``tasks run``). None if someone else holds it."""
        item = await asyncio.to_thread(self._claim, item_id)
        if item is None:
            return None
        return await self._guarded(item)

    async def drain(self, *, max_items: int = 10_000) -> int:
        """Deliver due items until none is due (tests and one-shot runs). Returns how many were processed."""
        done = 0
        while done < max_items:
            batch: list[QueuedTask] = []
            for _ in range(self.config.concurrency):
                item = await asyncio.to_thread(self._claim)
                if item is None:
                    break
                batch.append(item)
            if not batch:
                return done
            await asyncio.gather(*(self._guarded(i) for i in batch))
            done += len(batch)
        return done

    async def _guarded(self, item: QueuedTask) -> str:
        beat = asyncio.create_task(self._beat_one(item.id))
        try:
            return await self.process(item)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _beat_one(self, item_id: int) -> None:
        interval = max(0.05, self.config.lease_s / 3)
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self._extend, [item_id])

    def _extend(self, ids: list[int]) -> None:
        try:
            with transaction(self.session_factory) as session:
                queue_repo.extend_leases(
                    session, worker=self.worker_id, ids=ids, now=self.clock.now(), lease_s=self.config.lease_s
                )
        except Exception as exc:  # noqa: BLE001 - a missed beat is retried at the next interval
            log.warning("dispatch.heartbeat_failed", error_class=type(exc).__name__)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """The loop: cron tick, claim up to ``concurrency`` items, deliver them concurrently, repeat."""
        stop = stop or self._stopping
        log.info(
            "dispatcher.started", worker=self.worker_id, concurrency=self.config.concurrency, cron=self.config.cron
        )
        tasks: set[asyncio.Task[str]] = set()
        try:
            while not stop.is_set():
                try:
                    if self.config.cron:
                        await asyncio.to_thread(self.tick_cron)
                    claimed = 0
                    while not stop.is_set() and len(tasks) < self.config.concurrency:
                        item = await asyncio.to_thread(self._claim)
                        if item is None:
                            break
                        task = asyncio.create_task(self._guarded(item))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                        claimed += 1
                except Exception as exc:  # noqa: BLE001 - the loop survives a DB hiccup and tries again
                    log.warning("dispatcher.loop_error", error_class=type(exc).__name__)
                    claimed = 0
                if claimed == 0 or len(tasks) >= self.config.concurrency:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=self.config.poll_interval_s)
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            log.info("dispatcher.stopped", worker=self.worker_id)

    def stop(self) -> None:
        self._stopping.set()
