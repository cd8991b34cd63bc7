"""Task ``fhir-sweep`` (``POST /api/v1/internal/fhir/sweep?dry_run&case_id&limit``): the spec's sequence diagram.

Candidates are documents with ``status='extracted'`` and no FHIR rows (``repositories.documents``).
- Dry run: list the candidates, log "would extract" per document, write nothing.
- Otherwise, without ``case_id`` and with many candidates across cases: fan out one ``fhir-sweep`` task per case
  (Cloud Scheduler/Tasks deadlines; dedup key ``fhir-sweep:{case_id}:{run}``) and return.
- Otherwise: claim the candidates (a lease in one short transaction, so parallel sweeps skip them), then with
  bounded concurrency per document: the ``clinical_context`` agent re-extracts FHIR with the current prompt
  (the LLM call is outside any transaction), the output is validated with ``fhir.resources`` R4B, and ONE short
  transaction takes the case's advisory lock, re-checks "still no FHIR rows?", inserts the rows (unique fingerprint
  per document) and sets ``fhir_status='complete'``.
Invalid or garbage output → ``fhir_status='failed'`` + ``fhir_error_class``, no rows; transient LLM trouble →
the document is released for the next sweep. Each claim counts an attempt; at the budget the document is failed
and dead-lettered (``run_key = fhir-sweep:document:{id}``; replaying it retries that document once more).
Re-running on a completed case is a no-op. Logs and dead letters carry ids and error codes only.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from sqlalchemy.exc import IntegrityError

from curaway.errors import CurawayError, NotFoundError, PermanentError, RetryableError, ValidationFailed
from curaway.integrations.llm import ClinicalContext, LlmGateway
from curaway.repositories import documents as repo
from curaway.repositories.runtime import record_dead_letter
from curaway.tasks.base import Result, TaskContext, llm_gateway
from curaway.tasks.fhir_mapping import FHIR_VERSION, MappedResource, patient_reference, validate_resources
from curaway.values import parse_bool

TASK = "fhir-sweep"
ATTEMPT_BUDGET = 3
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
DEFAULT_CONCURRENCY = 4
WRITE_CONCURRENCY = 4  # validation + write workers behind the LLM workers
MAX_CONCURRENCY = 32
LEASE_S = 900.0  # longer than the task deadline (600 s): a crashed sweep frees its documents after this
FANOUT_MIN_CASES = 2
FANOUT_MIN_CANDIDATES = 20


@dataclass(frozen=True)
class SweepOptions:
    dry_run: bool = False
    case_id: str | None = None
    document_id: str | None = None
    limit: int = DEFAULT_LIMIT
    concurrency: int = DEFAULT_CONCURRENCY
    fan_out: bool | None = None  # None: automatic (many candidates across cases, no case_id)


def _flag(payload: dict[str, Any], key: str, default: bool | None) -> bool | None:
    value = payload.get(key)
    if value is None:
        return default
    if isinstance(value, str) and not value.strip():
        return default
    parsed = parse_bool(value)
    if parsed is None:
        raise ValidationFailed(f"'{key}' must be a boolean", code="invalid_payload")
    return parsed


def _bounded_int(payload: dict[str, Any], key: str, default: int, high: int) -> int:
    value = payload.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        raise ValidationFailed(f"'{key}' must be an integer", code="invalid_payload")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValidationFailed(f"'{key}' must be an integer", code="invalid_payload") from None
    if isinstance(value, float) and value != number:
        raise ValidationFailed(f"'{key}' must be an integer", code="invalid_payload")
    if not 1 <= number <= high:
        raise ValidationFailed(f"'{key}' must be between 1 and {high}", code="invalid_payload")
    return number


def _opt_id(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise ValidationFailed(f"'{key}' must be an id string", code="invalid_payload")
    return value


def parse_options(payload: Any) -> SweepOptions:
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise ValidationFailed("payload must be an object", code="invalid_payload")
    return SweepOptions(
        dry_run=bool(_flag(payload, "dry_run", False)),
        case_id=_opt_id(payload, "case_id"),
        document_id=_opt_id(payload, "document_id"),
        limit=_bounded_int(payload, "limit", DEFAULT_LIMIT, MAX_LIMIT),
        concurrency=_bounded_int(payload, "concurrency", DEFAULT_CONCURRENCY, MAX_CONCURRENCY),
        fan_out=_flag(payload, "fan_out", None),
    )


def _summary(outcomes: list[dict[str, Any]], *, dry_run: bool, **extra: Any) -> dict[str, Any]:
    def count(status: str) -> int:
        return sum(1 for o in outcomes if o["status"] == status)

    return {
        "processed_count": count("complete"),
        "failed_count": count("failed"),
        "deferred_count": count("deferred"),
        "skipped_count": count("skipped"),
        "dry_run": dry_run,
        **extra,
        "outcomes": outcomes,
    }


class _Sweeper:
    def __init__(self, ctx: TaskContext, gateway: LlmGateway, owner: str) -> None:
        self.ctx = ctx
        self.gateway = gateway
        self.owner = owner

    def call_llm(self, claim: repo.ClaimedDocument) -> ClinicalContext:
        """Stage 1 (an LLM worker; no transaction is open here)."""
        if not claim.text or not claim.text.strip():
            raise PermanentError("document has no extracted text", code="no_extracted_text")
        return self.gateway.clinical_context(
            claim.text, document_ref=claim.document_id, patient_reference=patient_reference(claim.case_id)
        )

    def complete(self, claim: repo.ClaimedDocument, context_of: Callable[[], ClinicalContext]) -> dict[str, Any]:
        """Stage 2 (a writer): validate the model output and write the outcome in one short transaction."""
        try:
            context = context_of()
            mapped = validate_resources(context.resources, patient_ref=patient_reference(claim.case_id))
        except RetryableError as exc:
            return self._failure(claim, exc, retryable=True)
        except CurawayError as exc:
            return self._failure(claim, exc, retryable=False)
        except Exception as exc:  # noqa: BLE001 - an unexpected bug must not lose the other documents' work
            self.ctx.log.error(
                "fhir_sweep.unexpected_error", document_id=claim.document_id, error_type=type(exc).__name__
            )
            return self._failure(claim, PermanentError("unexpected error", code="internal_error"), retryable=False)
        return self._write(claim, mapped, provider=context.call.provider)

    def process(self, claim: repo.ClaimedDocument) -> dict[str, Any]:
        return self.complete(claim, lambda: self.call_llm(claim))

    def run_all(self, claimed: list[repo.ClaimedDocument], *, concurrency: int) -> list[dict[str, Any]]:
        """At most ``concurrency`` LLM calls in flight; validation and writes run on a small writer pool, so an LLM
        worker takes its next document as soon as the model answers (throughput ≈ concurrency / latency)."""
        workers = min(concurrency, len(claimed))
        if workers <= 1:
            return [self.process(c) for c in claimed]
        results: dict[int, Future[dict[str, Any]]] = {}
        lock = threading.Lock()
        with ThreadPoolExecutor(max_workers=min(WRITE_CONCURRENCY, workers), thread_name_prefix="fhir-write") as wp:

            def hand_over(index: int, claim: repo.ClaimedDocument, done: Future[ClinicalContext]) -> None:
                written = wp.submit(self.complete, claim, done.result)
                with lock:
                    results[index] = written

            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fhir-llm") as llm_pool:
                for index, claim in enumerate(claimed):
                    llm_pool.submit(self.call_llm, claim).add_done_callback(partial(hand_over, index, claim))
            # The LLM pool has joined, so every hand-over has been submitted.
            return [results[i].result() for i in range(len(claimed))]

    def _write(self, claim: repo.ClaimedDocument, mapped: list[MappedResource], *, provider: str) -> dict[str, Any]:
        base = {"document_id": claim.document_id, "case_id": claim.case_id}
        try:
            with self.ctx.transaction() as session:
                repo.lock_case_for_fhir_write(session, claim.case_id)
                if repo.has_fhir_rows(session, claim.document_id):
                    repo.release_lease(session, document_id=claim.document_id, owner=self.owner)
                    return {**base, "status": "skipped", "reason": "already_has_fhir"}
                now = self.ctx.clock.now()
                count = repo.insert_fhir_resources(
                    session,
                    case_id=claim.case_id,
                    document_id=claim.document_id,
                    resources=[(m.resource_type, m.resource, m.fingerprint) for m in mapped],
                    fhir_version=FHIR_VERSION,
                    now=now,
                )
                repo.mark_fhir_complete(session, document_id=claim.document_id, now=now)
        except IntegrityError:
            # Only possible if another writer bypassed the lock; the unique fingerprint kept the data whole.
            self.ctx.log.warning("fhir_sweep.duplicate_rejected", document_id=claim.document_id)
            return {**base, "status": "skipped", "reason": "duplicate_rejected"}
        self.ctx.log.info(
            "fhir_sweep.document_complete",
            document_id=claim.document_id,
            case_id=claim.case_id,
            resources=count,
            provider=provider,
        )
        return {**base, "status": "complete", "resources": count, "attempts": claim.attempts}

    def _failure(self, claim: repo.ClaimedDocument, exc: CurawayError, *, retryable: bool) -> dict[str, Any]:
        base = {"document_id": claim.document_id, "case_id": claim.case_id}
        exhausted = claim.attempts >= ATTEMPT_BUDGET
        status = "deferred" if retryable and not exhausted else "failed"
        with self.ctx.transaction() as session:
            repo.lock_case_for_fhir_write(session, claim.case_id)
            if repo.has_fhir_rows(session, claim.document_id):
                repo.release_lease(session, document_id=claim.document_id, owner=self.owner)
                return {**base, "status": "skipped", "reason": "already_has_fhir"}
            now = self.ctx.clock.now()
            if status == "deferred":
                repo.note_fhir_retry(
                    session, document_id=claim.document_id, owner=self.owner, error_class=exc.code, now=now
                )
            else:
                repo.mark_fhir_failed(
                    session, document_id=claim.document_id, owner=self.owner, error_class=exc.code, now=now
                )
            if exhausted:
                record_dead_letter(
                    session,
                    task=TASK,
                    run_key=f"{TASK}:document:{claim.document_id}",
                    payload={"case_id": claim.case_id, "document_id": claim.document_id},
                    source=self.ctx.trigger,
                    attempts=claim.attempts,
                    last_status=None,
                    error_class=type(exc).__name__,
                    error_code=exc.code,
                )
        self.ctx.log.warning(
            "fhir_sweep.document_failed" if status == "failed" else "fhir_sweep.document_deferred",
            document_id=claim.document_id,
            case_id=claim.case_id,
            error_code=exc.code,
            attempts=claim.attempts,
            dead_lettered=exhausted,
        )
        return {
            **base,
            "status": status,
            "error_class": exc.code,
            "attempts": claim.attempts,
            "dead_lettered": exhausted,
        }


def _run_digest(run_key: str) -> str:
    return hashlib.sha256(run_key.encode()).hexdigest()[:16]


def sweep(ctx: TaskContext, payload: dict[str, Any]) -> Result:
    opts = parse_options(payload)
    now = ctx.clock.now()
    budget = None if opts.document_id else ATTEMPT_BUDGET  # an explicit document (a replay) gets one more try
    if opts.case_id is not None:
        with ctx.transaction() as session:
            if not repo.case_exists(session, opts.case_id):
                raise NotFoundError("case not found", code="case_not_found")

    if opts.dry_run:
        with ctx.transaction() as session:
            candidates = repo.find_sweep_candidates(
                session,
                now=now,
                limit=opts.limit,
                case_id=opts.case_id,
                document_id=opts.document_id,
                attempt_budget=budget,
            )
        for c in candidates:
            ctx.log.info("fhir_sweep.would_extract", document_id=c.document_id, case_id=c.case_id)
        listed = [
            {
                "document_id": c.document_id,
                "case_id": c.case_id,
                "fhir_status": c.fhir_status,
                "attempts": c.fhir_attempts,
                "leased": c.leased,
            }
            for c in candidates
        ]
        return Result(_summary([], dry_run=True, candidate_count=len(listed), candidates=listed))

    gateway = llm_gateway(ctx)
    if opts.case_id is None and opts.document_id is None and opts.fan_out is not False:
        with ctx.transaction() as session:
            cases = repo.candidate_case_ids(session, now=now, limit=opts.limit, attempt_budget=budget)
        total = sum(n for _, n in cases)
        if cases and (opts.fan_out or (len(cases) >= FANOUT_MIN_CASES and total >= FANOUT_MIN_CANDIDATES)):
            digest = _run_digest(ctx.run_key)
            fanned = []
            for case_id, n in cases:
                receipt = ctx.enqueuer.enqueue(
                    TASK,
                    {"case_id": case_id, "concurrency": opts.concurrency},
                    dedup_key=f"{TASK}:{case_id}:{digest}",
                )
                fanned.append({"case_id": case_id, "candidates": n, "enqueued": receipt.created})
            ctx.log.info("fhir_sweep.fanned_out", cases=len(fanned), candidates=total, run_key=ctx.run_key)
            return Result(_summary([], dry_run=False, fanned_out=fanned))

    owner = f"{_run_digest(ctx.run_key)}:{secrets.token_hex(6)}"
    with ctx.transaction() as session:
        claimed = repo.claim_for_sweep(
            session,
            owner=owner,
            now=now,
            lease_until=now + timedelta(seconds=LEASE_S),
            limit=opts.limit,
            case_id=opts.case_id,
            document_id=opts.document_id,
            attempt_budget=budget,
        )
    if not claimed:
        ctx.log.info("fhir_sweep.nothing_to_do", case_id=opts.case_id, run_key=ctx.run_key)
        return Result(_summary([], dry_run=False), status="skipped")

    ctx.log.info("fhir_sweep.claimed", documents=len(claimed), case_id=opts.case_id, run_key=ctx.run_key)
    outcomes = _Sweeper(ctx, gateway, owner).run_all(claimed, concurrency=opts.concurrency)
    summary = _summary(outcomes, dry_run=False)
    ctx.log.info(
        "fhir_sweep.finished",
        run_key=ctx.run_key,
        processed_count=summary["processed_count"],
        failed_count=summary["failed_count"],
        deferred_count=summary["deferred_count"],
    )
    return Result(summary)
