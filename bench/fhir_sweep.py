"""FHIR sweep throughput with a fake LLM of fixed latency, against the ideal ``concurrency / latency``.

    python -m bench.fhir_sweep [--rounds 6] [--latency-ms 500] [--concurrency 1,4,8,16] [--database-url URL]

Each run seeds ``rounds * concurrency`` documents in a fresh database (a temporary SQLite file, or with
``--database-url`` a dedicated, migrated Postgres database: rows get unique ids and nothing is deleted), then times
one ``fhir-sweep`` (fan-out off) over every candidate. Concurrency 1 is the serial baseline in the same run. The
fake LLM answers a fixed, pre-computed reply after ``latency`` (so only the sweep's own work is measured), and the
FHIR models are imported once before timing (a one-off ~0.3 s per process).
Output: one JSON object; ``efficiency`` = measured docs/s ÷ ideal docs/s (target ≥ 0.85).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from curaway.clock import SystemClock
from curaway.db import create_db_engine, create_session_factory, transaction, upgrade
from curaway.integrations import Integrations
from curaway.integrations.llm import ClinicalContext, FakeLlmGateway
from curaway.integrations.llm_local import LocalClinicalExtractor
from curaway.models import Case, Document, Tenant
from curaway.repositories.demo import SAMPLE_NOTE
from curaway.settings import Settings
from curaway.tasks import fhir_sweep
from curaway.tasks.base import EnqueueReceipt, TaskContext
from curaway.tasks.fhir_mapping import patient_reference, validate_resources

TARGET = 0.85


class _NoEnqueue:
    def enqueue(self, task: str, payload: Any, *, dedup_key: str | None = None, delay_s: float = 0.0) -> Any:
        return EnqueueReceipt(task=task, dedup_key=dedup_key or "", created=False)


def _seed(factory: Any, docs: int, cases: int) -> str:
    tag = secrets.token_hex(4)
    now = datetime.now(UTC)
    with transaction(factory) as s:
        tenant = f"ten_bench_{tag}"
        s.add(Tenant(id=tenant, name="bench", slug=f"bench-{tag}"))
        s.flush()
        for c in range(cases):
            s.add(Case(id=f"case_b{tag}_{c}", tenant_id=tenant, status="extraction_complete"))
        s.flush()
        for d in range(docs):
            s.add(
                Document(
                    id=f"doc_b{tag}_{d:05d}",
                    case_id=f"case_b{tag}_{d % cases}",
                    content_type="text/plain",
                    status="extracted",
                    fhir_status="pending",
                    extracted_text=SAMPLE_NOTE,
                    extracted_at=now,
                )
            )
    return tag


def _rebind(reply: ClinicalContext) -> Any:
    def answer(_text: str) -> ClinicalContext:
        return reply

    return answer


def _warm_up() -> None:
    ref = patient_reference("case_warm")
    resources = LocalClinicalExtractor().clinical_context(SAMPLE_NOTE, document_ref="w", patient_reference=ref)
    validate_resources(resources.resources, patient_ref=ref)


def run_once(url: str, *, docs: int, cases: int, latency_s: float, concurrency: int) -> dict[str, Any]:
    engine = create_db_engine(url, pool_size=max(10, concurrency + 2))
    try:
        factory = create_session_factory(engine)
        _seed(factory, docs, cases)
        full = LocalClinicalExtractor().clinical_context(SAMPLE_NOTE, document_ref="x", patient_reference="Patient/x")
        # Without subject/patient: the sweep binds every resource to its own case's Patient.
        reply = full.model_copy(
            update={
                "resources": [{k: v for k, v in r.items() if k not in {"subject", "patient"}} for r in full.resources]
            }
        )
        llm = FakeLlmGateway(latency_s=latency_s)
        llm.push("clinical_context", *[_rebind(reply) for _ in range(docs)])
        ctx = TaskContext(
            task="fhir-sweep",
            run_key=f"fhir-sweep@bench:{secrets.token_hex(4)}",
            session_factory=factory,
            clock=SystemClock(),
            settings=Settings(_env_file=None, env="test"),  # type: ignore[call-arg]
            integrations=Integrations(llm=llm),
            enqueuer=_NoEnqueue(),
            log=structlog.get_logger("bench"),
        )
        started = time.perf_counter()
        result = fhir_sweep.sweep(ctx, {"fan_out": False, "limit": docs, "concurrency": concurrency})
        elapsed = time.perf_counter() - started
    finally:
        engine.dispose()
    processed = int(result.data["processed_count"])
    measured = processed / elapsed if elapsed else 0.0
    ideal = concurrency / latency_s
    return {
        "concurrency": concurrency,
        "documents": docs,
        "processed": processed,
        "llm_calls": llm.calls["clinical_context"],
        "elapsed_s": round(elapsed, 3),
        "docs_per_s": round(measured, 2),
        "ideal_docs_per_s": round(ideal, 2),
        "efficiency": round(measured / ideal, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fhir_sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="documents per worker")
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=500.0)
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--database-url", default="")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # quiet: warnings and up
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    latency_s = args.latency_ms / 1000.0
    runs = []
    _warm_up()
    with tempfile.TemporaryDirectory(prefix="curaway-bench-") as tmp:
        for level in levels:
            url = args.database_url
            if not url:
                url = f"sqlite:///{Path(tmp) / f'bench-{level}.db'}"
                upgrade(url)
            docs = args.rounds * level
            runs.append(run_once(url, docs=docs, cases=args.cases, latency_s=latency_s, concurrency=level))
    worst = min(r["efficiency"] for r in runs)
    report = {
        "benchmark": "fhir_sweep",
        "database": "postgres" if args.database_url.startswith("postgres") else "sqlite",
        "llm_latency_ms": args.latency_ms,
        "target_efficiency": TARGET,
        "runs": runs,
        "min_efficiency": worst,
        "meets_target": worst >= TARGET,
    }
    print(json.dumps(report, indent=2))
    return 0 if report["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
