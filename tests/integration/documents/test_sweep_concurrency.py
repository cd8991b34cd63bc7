"""Eight sweeps at once on the same candidates: zero duplicate FHIR rows, about one LLM call per document.

Runs on SQLite (BEGIN IMMEDIATE) and Postgres (SKIP LOCKED claim + pg_advisory_xact_lock with the re-check).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from curaway.clock import FrozenClock
from curaway.db import transaction
from curaway.integrations.llm import FakeLlmGateway
from curaway.integrations.llm_local import LocalClinicalExtractor
from curaway.repositories import documents as repo
from curaway.tasks import fhir_sweep
from curaway.tasks.fhir_mapping import patient_reference, validate_resources
from tests.support.documents_world import (
    NOW,
    SAMPLE_NOTE,
    document,
    duplicate_fingerprints,
    fhir_rows,
    make_ctx,
    seed_case,
    seed_extracted,
)

SWEEPS = 8
CASES = 3
DOCS_PER_CASE = 6
PER_DOC = 9


def test_eight_parallel_sweeps_write_each_document_once(session_factory, make_settings):
    for n in range(CASES):
        seed_case(session_factory, f"case_race{n}")
        seed_extracted(session_factory, f"case_race{n}", DOCS_PER_CASE)
    total_docs = CASES * DOCS_PER_CASE
    llm = FakeLlmGateway(latency_s=0.02)
    settings = make_settings()
    barrier = threading.Barrier(SWEEPS)

    def run(i: int) -> dict:
        ctx = make_ctx(session_factory, settings, llm=llm, run_key=f"fhir-sweep@manual:race{i}")
        barrier.wait(timeout=30)
        # No case_id and fan-out off: every sweep competes for every document.
        return fhir_sweep.sweep(ctx, {"fan_out": False, "concurrency": 4, "limit": 100}).data

    with ThreadPoolExecutor(max_workers=SWEEPS) as pool:
        results = list(pool.map(run, range(SWEEPS)))

    assert sum(r["processed_count"] for r in results) == total_docs
    assert sum(r["failed_count"] for r in results) == 0
    assert len(fhir_rows(session_factory)) == total_docs * PER_DOC
    assert duplicate_fingerprints(session_factory) == 0
    # Claims make it exactly one LLM call per document here (leases cannot expire within the test).
    assert llm.calls["clinical_context"] == total_docs
    assert max(llm.documents.values()) == 1
    for n in range(CASES):
        for i in range(DOCS_PER_CASE):
            assert document(session_factory, f"doc_case_race{n}_{i:03d}").fhir_status == "complete"


def test_the_write_path_alone_never_duplicates(session_factory, make_settings):
    """Even when two sweeps both hold model output for the same document (e.g. an expired lease), the advisory
    lock + re-check in the insert transaction and the unique fingerprint let exactly one write."""
    seed_case(session_factory, "case_wr")
    (doc_id,) = seed_extracted(session_factory, "case_wr", 1)
    ref = patient_reference("case_wr")
    mapped = validate_resources(
        LocalClinicalExtractor().clinical_context(SAMPLE_NOTE, document_ref=doc_id, patient_reference=ref).resources,
        patient_ref=ref,
    )
    claim = repo.ClaimedDocument(document_id=doc_id, case_id="case_wr", text=SAMPLE_NOTE, attempts=1)
    settings = make_settings()
    barrier = threading.Barrier(SWEEPS)

    def write(i: int) -> str:
        ctx = make_ctx(session_factory, settings, llm=None, clock=FrozenClock(NOW))
        sweeper = fhir_sweep._Sweeper(ctx, LocalClinicalExtractor(), owner=f"owner{i}")
        barrier.wait(timeout=30)
        return str(sweeper._write(claim, mapped, provider="local")["status"])

    with ThreadPoolExecutor(max_workers=SWEEPS) as pool:
        statuses = list(pool.map(write, range(SWEEPS)))
    assert sorted(statuses) == ["complete"] + ["skipped"] * (SWEEPS - 1)
    assert len(fhir_rows(session_factory, document_id=doc_id)) == PER_DOC
    with transaction(session_factory) as s:
        assert repo.fhir_row_count(s, document_id=doc_id) == PER_DOC
