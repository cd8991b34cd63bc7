"""The one execution path: claim the run key, run the handler, map the outcome onto the retry protocol.

| outcome | local / Cloud Tasks | QStash |
|---|---|---|
| success, duplicate, skipped | 200 | 200 |
| running elsewhere (live lease) | 409 + Retry-After | same |
| retryable failure | 503 (500 if unexpected) + Retry-After; dead letter first on the final attempt | same |
| permanent failure | dead letter, 200 ``dead_lettered`` | dead letter, 489 + ``Upstash-NonRetryable-Error`` |
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from curaway.clock import Clock
from curaway.db import SessionFactory, transaction
from curaway.dispatch.auth import Caller
from curaway.dispatch.delivery import Delivery
from curaway.errors import CurawayError, PermanentError, RetryableError, ValidationFailed
from curaway.integrations import Integrations
from curaway.logging import get_logger
from curaway.repositories import ledger
from curaway.repositories.runtime import record_dead_letter, scalar_references
from curaway.schedules import TaskSpec
from curaway.settings import Settings
from curaway.tasks.base import Enqueuer, Handler, Result, TaskContext

log = get_logger("curaway.runner")

DEFAULT_RETRY_AFTER_S = 10
RUN_KEY_SAFE = re.compile(r"^[A-Za-z0-9._:@#/+=-]{1,200}$")


@dataclass(frozen=True)
class Outcome:
    """An HTTP answer, independent of the web framework."""

    status_code: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class RunnerConfig:
    lease_s: float = 60.0  # the ledger lease, kept alive by a heartbeat while the handler runs
    owner_prefix: str = field(default_factory=lambda: f"w-{secrets.token_hex(4)}")


class LeaseKeeper:
    """One background thread keeps every running key's ledger lease alive (a beat every ``lease_s / 3``), so a
    crashed process's runs can be taken over once its leases lapse, and a long run is never taken over early."""

    def __init__(self, *, session_factory: SessionFactory, clock: Clock, lease_s: float) -> None:
        self.session_factory = session_factory
        self.clock = clock
        self.lease_s = lease_s
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, run_key: str, owner: str) -> None:
        with self._lock:
            self._held[run_key] = owner
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="curaway-leases", daemon=True)
                self._thread.start()

    def release(self, run_key: str) -> None:
        with self._lock:
            self._held.pop(run_key, None)

    def _loop(self) -> None:
        interval = max(0.05, self.lease_s / 3)
        while True:
            self._wake.wait(interval)
            with self._lock:
                held = dict(self._held)
                if not held:
                    self._thread = None
                    return
            try:
                with transaction(self.session_factory) as session:
                    for run_key, owner in held.items():
                        if not ledger.heartbeat(
                            session, run_key=run_key, owner=owner, now=self.clock.now(), lease_s=self.lease_s
                        ):
                            log.warning("task.lease_lost", run_key=run_key)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried at the next interval
                log.warning("task.heartbeat_failed", error_class=type(exc).__name__)


class TaskRunner:
    def __init__(
        self,
        *,
        settings: Settings,
        session_factory: SessionFactory,
        clock: Clock,
        integrations: Integrations,
        enqueuer: Enqueuer,
        handlers: Mapping[str, Handler],
        config: RunnerConfig | None = None,
        observe: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.clock = clock
        self.integrations = integrations
        self.enqueuer = enqueuer
        self.handlers = handlers
        self.config = config or RunnerConfig()
        self._observe = observe or (lambda task, outcome, seconds: None)
        self._leases = LeaseKeeper(session_factory=session_factory, clock=clock, lease_s=self.config.lease_s)

    # ------------------------------------------------------------------------------------------------------
    def execute(self, spec: TaskSpec, payload: dict[str, Any], delivery: Delivery, caller: Caller) -> Outcome:
        handler = self.handlers.get(spec.name)
        if handler is None:
            return Outcome(404, {"error": {"code": "not_found", "message": f"no handler for task {spec.name!r}"}})
        run_key, slot = delivery.run_key(spec, payload)
        owner = f"{self.config.owner_prefix}-{secrets.token_hex(4)}"
        now = self.clock.now()
        with transaction(self.session_factory) as session:
            claim = ledger.claim(
                session,
                run_key=run_key,
                task=spec.name,
                owner=owner,
                now=now,
                lease_s=self.config.lease_s,
                slot=slot,
                trigger=delivery.trigger,
                verifier=caller.verifier,
                key_id=caller.key_id,
            )
            attempts = claim.row.attempts
            stored = claim.row.result
            ledger_id = claim.row.id
        bound = log.bind(task=spec.name, run_key=run_key, trigger=delivery.trigger, verifier=caller.verifier)
        if claim.kind == "duplicate":
            bound.info("task.duplicate")
            self._observe(spec.name, "duplicate", 0.0)
            return Outcome(200, self._body(spec, run_key, "duplicate", stored))
        if claim.kind == "busy":
            bound.info("task.busy", retry_after_s=int(claim.retry_after_s))
            self._observe(spec.name, "busy", 0.0)
            return Outcome(
                409,
                self._body(spec, run_key, "in_progress", None),
                headers={"Retry-After": str(max(1, int(claim.retry_after_s)))},
            )

        retry_count = delivery.retry_count if delivery.retry_count is not None else attempts - 1
        final = spec.retry.is_final(retry_count)

        if spec.overlap == "skip_if_running":
            with transaction(self.session_factory) as session:
                other = ledger.other_live_run(
                    session, task=spec.name, run_key=run_key, now=now, claimed_after=ledger_id
                )
                if other is not None:
                    skipped = {"skipped": "overlap", "running_run_key": other.run_key}
                    ledger.finish(session, run_key=run_key, owner=owner, now=now, status="skipped", result=skipped)
            if other is not None:
                bound.info("task.skipped_overlap", running_run_key=other.run_key)
                self._observe(spec.name, "skipped", 0.0)
                return Outcome(200, self._body(spec, run_key, "skipped", skipped))

        ctx = TaskContext(
            task=spec.name,
            run_key=run_key,
            session_factory=self.session_factory,
            clock=self.clock,
            settings=self.settings,
            integrations=self.integrations,
            enqueuer=self.enqueuer,
            log=bound,
            slot=slot,
            attempt=retry_count,
            final_attempt=final,
            trigger=delivery.trigger,
        )
        bound.info("task.started", attempt=retry_count, final_attempt=final)
        run = _Run(spec, payload, delivery, run_key, owner, attempts, final, bound, time.monotonic())
        self._leases.hold(run_key, owner)
        try:
            result = handler(ctx, payload)
        except PermanentError as exc:
            return self._dead(run, exc)
        except RetryableError as exc:
            return self._failed(run, exc, status=503, retry_after_s=exc.retry_after_s)
        except Exception as exc:  # noqa: BLE001 - any unexpected failure is retryable; class only, no message
            return self._failed(run, exc, status=500, retry_after_s=None)
        finally:
            self._leases.release(run_key)
        return self._succeeded(run, result)

    def reject(self, spec: TaskSpec, headers: Mapping[str, str], caller: Caller, exc: ValidationFailed) -> Outcome:
        """A delivery too malformed to run (bad JSON, bad delivery headers): dead-letter it so nothing is lost."""
        qstash = "upstash-signature" in headers or "upstash-message-id" in headers
        message_id = headers.get("upstash-message-id") or headers.get("x-cloudtasks-taskname")
        suffix = message_id if message_id and RUN_KEY_SAFE.match(message_id) else secrets.token_hex(8)
        run_key = f"{spec.name}:invalid:{suffix}"
        with transaction(self.session_factory) as session:
            letter = record_dead_letter(
                session,
                task=spec.name,
                run_key=run_key,
                payload={},
                source="qstash" if qstash else caller.verifier,
                attempts=1,
                last_status=400,
                error_class=type(exc).__name__,
                error_code="bad_request",
            )
            letter_id = letter.id
        log.warning("task.rejected_invalid", task=spec.name, run_key=run_key, dead_letter_id=letter_id)
        self._observe(spec.name, "rejected", 0.0)
        body = {"task": spec.name, "run_key": run_key, "status": "dead_lettered", "dead_letter_id": letter_id}
        if qstash:
            return Outcome(489, body, headers={"Upstash-NonRetryable-Error": "true"})
        return Outcome(400, body)

    # ------------------------------------------------------------------------------------------------------
    @staticmethod
    def _body(spec: TaskSpec, run_key: str, status: str, result: Any) -> dict[str, Any]:
        return {"task": spec.name, "run_key": run_key, "status": status, "result": result}

    def _succeeded(self, run: _Run, result: Result) -> Outcome:
        status = "skipped" if result.status == "skipped" else "succeeded"
        with transaction(self.session_factory) as session:
            owned = ledger.finish(
                session, run_key=run.run_key, owner=run.owner, now=self.clock.now(), status=status, result=result.data
            )
        seconds = time.monotonic() - run.started
        if not owned:
            run.log.warning("task.finished_without_lease")
        run.log.info("task.succeeded" if status == "succeeded" else "task.skipped", duration_s=round(seconds, 3))
        self._observe(run.spec.name, status, seconds)
        return Outcome(200, self._body(run.spec, run.run_key, status, result.data))

    def _close_failed(self, run: _Run, exc: Exception, *, dead: bool, last_status: int | None) -> int | None:
        """Record the failure on the ledger and, when it is the end of the line, the dead letter (one transaction)."""
        code = exc.code if isinstance(exc, CurawayError) else "unexpected"
        with transaction(self.session_factory) as session:
            ledger.finish(
                session,
                run_key=run.run_key,
                owner=run.owner,
                now=self.clock.now(),
                status="dead" if dead else "failed",
                error_class=type(exc).__name__,
                error_code=code,
            )
            if not dead:
                return None
            return record_dead_letter(
                session,
                task=run.spec.name,
                run_key=run.run_key,
                payload=scalar_references(run.payload),
                source=run.delivery.trigger,
                attempts=run.attempts,
                last_status=last_status,
                error_class=type(exc).__name__,
                error_code=code,
            ).id

    def _dead(self, run: _Run, exc: PermanentError) -> Outcome:
        letter_id = self._close_failed(run, exc, dead=True, last_status=None)
        run.log.warning(
            "task.dead_lettered", error_class=type(exc).__name__, error_code=exc.code, dead_letter_id=letter_id
        )
        self._observe(run.spec.name, "dead_lettered", time.monotonic() - run.started)
        body = self._body(run.spec, run.run_key, "dead_lettered", None)
        body["error"] = {"code": exc.code, "message": exc.message, "dead_letter_id": letter_id}
        if run.delivery.trigger == "qstash":
            return Outcome(489, body, headers={"Upstash-NonRetryable-Error": "true"})
        return Outcome(200, body)

    def _failed(self, run: _Run, exc: Exception, *, status: int, retry_after_s: float | None) -> Outcome:
        code = exc.code if isinstance(exc, CurawayError) else "unexpected"
        letter_id = self._close_failed(run, exc, dead=run.final, last_status=status)
        run.log.warning(
            "task.failed",
            error_class=type(exc).__name__,
            error_code=code,
            final_attempt=run.final,
            dead_letter_id=letter_id,
        )
        self._observe(run.spec.name, "dead_lettered" if run.final else "failed", time.monotonic() - run.started)
        body = self._body(run.spec, run.run_key, "failed", None)
        message = exc.message if isinstance(exc, CurawayError) else "unexpected error"
        body["error"] = {"code": code, "message": message, "final_attempt": run.final, "dead_letter_id": letter_id}
        retry_after = int(retry_after_s) if retry_after_s else DEFAULT_RETRY_AFTER_S
        return Outcome(status, body, headers={"Retry-After": str(max(1, retry_after))})


@dataclass(frozen=True)
class _Run:
    """One claimed run, as the outcome paths need it."""

    spec: TaskSpec
    payload: dict[str, Any]
    delivery: Delivery
    run_key: str
    owner: str
    attempts: int
    final: bool
    log: Any
    started: float
