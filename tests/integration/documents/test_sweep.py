"""Task ``fhir-sweep`` on SQLite and Postgres: the sequence diagram, garbage output, budgets, fan-out, PHI."""

from __future__ import annotations

import json

import pytest
from structlog.testing import capture_logs

from curaway.errors import NotFoundError, RetryableError, ValidationFailed
from curaway.integrations.llm import FakeLlmGateway, LlmOutputError, build_llm_gateway, fake_context
from curaway.integrations.llm_local import LocalClinicalExtractor
from curaway.integrations.storage import InMemoryStorage
from curaway.tasks import extraction, fhir_sweep
from curaway.tasks.fhir_mapping import patient_reference
from tests.support.documents_anthropic import API_KEY, fake_anthropic
from tests.support.documents_world import (
    SAMPLE_NOTE,
    RecordingEnqueuer,
    dead_letters,
    document,
    duplicate_fingerprints,
    fhir_rows,
    make_ctx,
    seed_case,
    seed_extracted,
    seed_stored,
)

SAMPLE_RESOURCES = 9  # 2 conditions, 2 medications, 1 allergy, 1 procedure, 3 observations


def _sweep(session_factory, settings, llm, payload=None, **kw):
    return fhir_sweep.sweep(make_ctx(session_factory, settings, llm=llm, **kw), payload or {})


def test_extract_then_sweep_end_to_end_with_the_local_provider(session_factory, make_settings):
    settings = make_settings()
    storage = InMemoryStorage()
    llm = build_llm_gateway(settings)
    seed_case(session_factory, "case_e2e")
    seed_stored(session_factory, storage, "case_e2e", "doc_e2e", SAMPLE_NOTE.encode(), "text/plain")
    extraction.extract(
        make_ctx(session_factory, settings, llm=llm, storage=storage, task="extract"), {"document_id": "doc_e2e"}
    )

    result = _sweep(session_factory, settings, llm, {"case_id": "case_e2e"})
    assert result.data["processed_count"] == 1 and result.data["failed_count"] == 0
    assert result.data["dry_run"] is False
    assert result.data["outcomes"] == [
        {"document_id": "doc_e2e", "case_id": "case_e2e", "status": "complete", "resources": 9, "attempts": 1}
    ]
    rows = fhir_rows(session_factory, document_id="doc_e2e")
    assert len(rows) == SAMPLE_RESOURCES
    assert {r.fhir_version for r in rows} == {"4.3.0"}
    assert sorted({r.resource_type for r in rows}) == [
        "AllergyIntolerance",
        "Condition",
        "MedicationStatement",
        "Observation",
        "Procedure",
    ]
    ref = patient_reference("case_e2e")
    for row in rows:
        key = "patient" if row.resource_type == "AllergyIntolerance" else "subject"
        assert row.resource[key] == {"reference": ref}
        assert row.case_id == "case_e2e"
    doc = document(session_factory, "doc_e2e")
    assert (doc.fhir_status, doc.fhir_lease_owner, doc.fhir_lease_expires_at) == ("complete", None, None)


def test_end_to_end_with_the_fake_anthropic_server(session_factory, make_settings):
    storage = InMemoryStorage()
    seed_case(session_factory, "case_anth")
    seed_stored(session_factory, storage, "case_anth", "doc_anth", SAMPLE_NOTE.encode(), "text/plain")
    with fake_anthropic() as server:
        settings = make_settings(
            llm_provider="anthropic", anthropic_api_key=API_KEY, anthropic_base_url=server.base_url, llm_max_retries=2
        )
        llm = build_llm_gateway(settings)
        server.push(("status", 529, 1), ("status", 429, 1))  # retried inside the SDK, then success
        extraction.extract(
            make_ctx(session_factory, settings, llm=llm, storage=storage, task="extract"), {"document_id": "doc_anth"}
        )
        server.push(("status", 500, 1))
        result = _sweep(session_factory, settings, llm, {"case_id": "case_anth"})
        assert result.data["processed_count"] == 1
        assert server.request_count == 5
        assert {h["authorization"] for h in server.headers} == {f"Bearer {API_KEY}"}
        tools = [r["tool_choice"] for r in server.requests]
        assert tools[0] == {"type": "tool", "name": "record_clinical_entities"}
        assert tools[-1] == {"type": "tool", "name": "emit_fhir_resources"}
    assert len(fhir_rows(session_factory, document_id="doc_anth")) == SAMPLE_RESOURCES
    assert document(session_factory, "doc_anth").entities["provider"] == "anthropic"


@pytest.mark.parametrize(
    ("reply", "error_class"),
    [
        (("garbage",), "llm_output_garbage"),
        (("truncated_json",), "llm_output_garbage"),
        (("max_tokens",), "llm_output_truncated"),
        (("no_tool",), "llm_output_no_tool"),
        (("invalid_fhir",), "fhir_subject_mismatch"),
        (("tool_input", {"resources": "not a list"}), "llm_output_invalid"),
        (("tool_input", {"resources": [{"resourceType": "Patient", "id": "p"}]}), "fhir_type_not_allowed"),
        (
            (
                "tool_input",
                {
                    "resources": [
                        {
                            "resourceType": "Observation",
                            "status": "final",
                            "code": {"text": "x"},
                            "valueQuantity": {"value": "seven"},
                        }
                    ]
                },
            ),
            "fhir_schema_invalid",
        ),
        (
            ("tool_input", {"resources": [{"resourceType": "Condition", "onsetDateTime": "2024-13-45"}]}),
            "fhir_schema_invalid",
        ),
    ],
)
def test_garbage_output_fails_the_document_and_writes_nothing(session_factory, make_settings, reply, error_class):
    seed_case(session_factory, "case_bad")
    seed_extracted(session_factory, "case_bad", 1)
    with fake_anthropic() as server:
        settings = make_settings(
            llm_provider="anthropic", anthropic_api_key=API_KEY, anthropic_base_url=server.base_url
        )
        server.push(reply)
        result = _sweep(session_factory, settings, build_llm_gateway(settings), {"case_id": "case_bad"})
    assert result.data["failed_count"] == 1 and result.data["processed_count"] == 0
    outcome = result.data["outcomes"][0]
    assert outcome["status"] == "failed" and outcome["error_class"] == error_class
    assert fhir_rows(session_factory) == []
    doc = document(session_factory, "doc_case_bad_000")
    assert (doc.fhir_status, doc.fhir_error_class, doc.fhir_lease_owner) == ("failed", error_class, None)
    assert dead_letters(session_factory) == []  # one attempt of three


def test_schema_invalid_fhir_with_the_right_subject(session_factory, make_settings):
    seed_case(session_factory, "case_inv")
    seed_extracted(session_factory, "case_inv", 1)
    bad = {
        "resourceType": "Condition",
        "subject": {"reference": patient_reference("case_inv")},
        "onsetDateTime": "2024-13-45",
    }
    llm = FakeLlmGateway(script={"clinical_context": [fake_context([bad])]})
    result = _sweep(session_factory, make_settings(), llm, {"case_id": "case_inv"})
    assert result.data["outcomes"][0]["error_class"] == "fhir_schema_invalid"
    assert fhir_rows(session_factory) == []


def test_llm_timeouts_defer_the_document(session_factory, make_settings):
    seed_case(session_factory, "case_slow")
    seed_extracted(session_factory, "case_slow", 1)
    with fake_anthropic() as server:
        settings = make_settings(
            llm_provider="anthropic",
            anthropic_api_key=API_KEY,
            anthropic_base_url=server.base_url,
            llm_timeout_s=0.2,
            llm_max_retries=0,
        )
        server.push(("timeout", 5))
        result = _sweep(session_factory, settings, build_llm_gateway(settings), {"case_id": "case_slow"})
    outcome = result.data["outcomes"][0]
    assert (outcome["status"], outcome["error_class"]) == ("deferred", "llm_timeout")
    doc = document(session_factory, "doc_case_slow_000")
    assert (doc.fhir_status, doc.fhir_error_class, doc.fhir_lease_owner) == ("pending", "llm_timeout", None)
    # The next sweep picks it up again and succeeds.
    again = _sweep(session_factory, make_settings(), LocalClinicalExtractor(), {"case_id": "case_slow"})
    assert again.data["processed_count"] == 1


def test_after_the_attempt_budget_the_document_is_dead_lettered(session_factory, make_settings):
    seed_case(session_factory, "case_dl")
    (doc_id,) = seed_extracted(session_factory, "case_dl", 1)
    llm = FakeLlmGateway(
        script={
            "clinical_context": [
                LlmOutputError("garbage", code="llm_output_garbage"),
                RetryableError("overloaded", code="llm_overloaded"),
                LlmOutputError("garbage", code="llm_output_garbage"),
            ]
        }
    )
    statuses = []
    for _ in range(fhir_sweep.ATTEMPT_BUDGET):
        result = _sweep(session_factory, make_settings(), llm, {"case_id": "case_dl"})
        statuses.append(result.data["outcomes"][0]["status"])
    assert statuses == ["failed", "deferred", "failed"]
    (letter,) = dead_letters(session_factory)
    assert letter.task == "fhir-sweep" and letter.run_key == f"fhir-sweep:document:{doc_id}"
    assert letter.payload == {"case_id": "case_dl", "document_id": doc_id}
    assert letter.error_code == "llm_output_garbage" and letter.attempts == 3
    # Exhausted: later sweeps leave it alone (no LLM call).
    calls = llm.calls["clinical_context"]
    assert _sweep(session_factory, make_settings(), llm, {"case_id": "case_dl"}).status == "skipped"
    assert llm.calls["clinical_context"] == calls
    # Replaying the dead letter's payload retries that document once more.
    replay = _sweep(session_factory, make_settings(), llm, dict(letter.payload))
    assert replay.data["processed_count"] == 1
    assert len(fhir_rows(session_factory, document_id=doc_id)) == SAMPLE_RESOURCES


def test_dry_run_lists_candidates_and_writes_nothing(session_factory, make_settings):
    seed_case(session_factory, "case_dry")
    ids = seed_extracted(session_factory, "case_dry", 3)
    llm = FakeLlmGateway()
    before = [document(session_factory, d) for d in ids]
    result = _sweep(session_factory, make_settings(), llm, {"dry_run": "true", "case_id": "case_dry", "limit": 2})
    assert result.data["dry_run"] is True
    assert (result.data["processed_count"], result.data["failed_count"]) == (0, 0)
    assert [c["document_id"] for c in result.data["candidates"]] == ids[:2]
    assert llm.calls["clinical_context"] == 0
    assert fhir_rows(session_factory) == []
    after = [document(session_factory, d) for d in ids]
    for b, a in zip(before, after, strict=True):
        assert (a.fhir_status, a.fhir_attempts, a.fhir_lease_owner, a.updated_at) == (
            b.fhir_status,
            b.fhir_attempts,
            b.fhir_lease_owner,
            b.updated_at,
        )


def test_completed_case_is_a_no_op(session_factory, make_settings):
    seed_case(session_factory, "case_done")
    seed_extracted(session_factory, "case_done", 2)
    llm = FakeLlmGateway()
    first = _sweep(session_factory, make_settings(), llm, {"case_id": "case_done"})
    assert first.data["processed_count"] == 2
    rows = len(fhir_rows(session_factory))
    second = _sweep(session_factory, make_settings(), llm, {"case_id": "case_done"})
    assert second.status == "skipped" and second.data["processed_count"] == 0 and second.data["outcomes"] == []
    assert llm.calls["clinical_context"] == 2 and len(fhir_rows(session_factory)) == rows == 2 * SAMPLE_RESOURCES
    assert duplicate_fingerprints(session_factory) == 0


def test_document_without_entities_completes_with_no_rows_and_is_not_swept_again(session_factory, make_settings):
    seed_case(session_factory, "case_empty")
    seed_extracted(session_factory, "case_empty", 1, text="Administrative letter, nothing clinical here.")
    llm = FakeLlmGateway()
    assert _sweep(session_factory, make_settings(), llm, {"case_id": "case_empty"}).data["processed_count"] == 1
    assert _sweep(session_factory, make_settings(), llm, {"case_id": "case_empty"}).status == "skipped"
    assert llm.calls["clinical_context"] == 1


def test_many_candidates_fan_out_one_task_per_case(session_factory, make_settings):
    for n in range(3):
        seed_case(session_factory, f"case_fan{n}")
        seed_extracted(session_factory, f"case_fan{n}", 8)
    enqueuer = RecordingEnqueuer()
    llm = FakeLlmGateway()
    result = _sweep(session_factory, make_settings(), llm, {}, enqueuer=enqueuer, run_key="fhir-sweep@manual:abc")
    assert result.data["processed_count"] == 0 and llm.calls["clinical_context"] == 0
    assert [f["case_id"] for f in result.data["fanned_out"]] == ["case_fan0", "case_fan1", "case_fan2"]
    assert [(t, p["case_id"]) for t, p, _ in enqueuer.calls] == [("fhir-sweep", f"case_fan{n}") for n in range(3)]
    keys = [k for _, _, k in enqueuer.calls]
    assert all(k and k.startswith(f"fhir-sweep:case_fan{n}:") for n, k in enumerate(keys))
    # The same parent run fans out to the same keys (a retried parent does not duplicate children).
    _sweep(session_factory, make_settings(), llm, {}, enqueuer=enqueuer, run_key="fhir-sweep@manual:abc")
    assert [k for _, _, k in enqueuer.calls[3:]] == keys
    # Each child then processes its case.
    for _, payload, _ in enqueuer.calls[:3]:
        assert _sweep(session_factory, make_settings(), llm, payload).data["processed_count"] == 8
    assert len(fhir_rows(session_factory)) == 24 * SAMPLE_RESOURCES


def test_small_sweeps_run_inline_and_fan_out_can_be_disabled(session_factory, make_settings):
    for n in range(2):
        seed_case(session_factory, f"case_in{n}")
        seed_extracted(session_factory, f"case_in{n}", 2)
    result = _sweep(session_factory, make_settings(), FakeLlmGateway(), {"limit": 10})
    assert result.data["processed_count"] == 4 and "fanned_out" not in result.data


def test_bad_payloads_and_unknown_case(session_factory, make_settings):
    llm = FakeLlmGateway()
    for payload in ({"limit": 0}, {"limit": "many"}, {"dry_run": "maybe"}, {"case_id": 5}, {"concurrency": 99}):
        with pytest.raises(ValidationFailed):
            _sweep(session_factory, make_settings(), llm, payload)
    with pytest.raises(NotFoundError):
        _sweep(session_factory, make_settings(), llm, {"case_id": "case_nope"})


def test_phi_never_reaches_the_logs(session_factory, make_settings):
    seed_case(session_factory, "case_phi")
    seed_extracted(session_factory, "case_phi", 2)
    llm = FakeLlmGateway(script={"clinical_context": [LlmOutputError("bad", code="llm_output_garbage")]})
    storage = InMemoryStorage()
    seed_stored(session_factory, storage, "case_phi", "doc_phi_upload", SAMPLE_NOTE.encode(), "text/plain")
    with capture_logs() as logs:
        extraction.extract(
            make_ctx(session_factory, make_settings(), llm=llm, storage=storage, task="extract"),
            {"document_id": "doc_phi_upload"},
        )
        _sweep(session_factory, make_settings(), llm, {"dry_run": True})
        _sweep(session_factory, make_settings(), llm, {"case_id": "case_phi", "concurrency": 1})
    assert {e["event"] for e in logs} >= {
        "extraction.succeeded",
        "fhir_sweep.would_extract",
        "fhir_sweep.document_complete",
        "fhir_sweep.document_failed",
    }
    dumped = json.dumps(logs, default=str).lower()
    for phi in ("metformin", "penicillin", "diabetes", "fictional patientname", "patients.example", "hba1c"):
        assert phi not in dumped
