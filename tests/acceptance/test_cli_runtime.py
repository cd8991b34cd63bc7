"""The runtime CLI as an operator runs it: schedules plan/sync, tasks run, dlq list/show/replay."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tests.support.proc import base_env, run_cli

pytestmark = pytest.mark.slow


def _json(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_schedules_plan_sync_is_idempotent(tmp_path):
    env = base_env(tmp_path / "data")
    plan = _json(run_cli("schedules", "plan", "--json", env=env))
    assert {c["action"] for c in plan["changes"]} == {"create"} and len(plan["changes"]) == 6
    assert _json(run_cli("schedules", "sync", "--json", env=env))["applied"] == 6
    again = _json(run_cli("schedules", "sync", "--json", env=env))
    assert again["applied"] == 0
    assert {c["action"] for c in again["changes"]} == {"unchanged"}
    listing = _json(run_cli("schedules", "list", "--json", env=env))
    assert {r["name"] for r in listing} == {c["schedule"] for c in plan["changes"]}
    refused = run_cli("schedules", "plan", "--backend", "qstash", env=env)
    assert refused.returncode == 2 and "not available" in refused.stderr


def test_tasks_run_goes_through_the_dispatcher_and_reports_the_outcome(tmp_path):
    env = base_env(tmp_path / "data")
    out = _json(run_cli("tasks", "run", "analytics-refresh", "--json", env=env))
    assert out["status"] == "succeeded"
    assert out["run_key"].startswith("analytics-refresh@manual:")
    assert out["queue_status"] == "done" and out["attempts"] == 1
    with sqlite3.connect(tmp_path / "data" / "curaway.db") as conn:
        rows = conn.execute("SELECT task, status FROM task_queue").fetchall()
        ledger = conn.execute("SELECT run_key, status, trigger FROM run_ledger").fetchall()
    assert rows == [("analytics-refresh", "done")]
    assert ledger == [(out["run_key"], "succeeded", "local")]
    unknown = run_cli("tasks", "run", "nope", env=env)
    assert unknown.returncode == 2 and "unknown task 'nope'" in unknown.stderr
    bad = run_cli("tasks", "run", "extract", "--payload", "{not json", env=env)
    assert bad.returncode == 2 and "--payload is not valid JSON" in bad.stderr


def test_dlq_list_show_replay(tmp_path):
    env = base_env(tmp_path / "data")
    # A permanent failure (unknown document) lands in the DLQ through the normal path.
    failed = run_cli("tasks", "run", "extract", "--payload", '{"document_id": "doc_missing"}', "--json", env=env)
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["status"] == "dead"
    letters = _json(run_cli("dlq", "list", "--json", env=env))
    assert len(letters) == 1 and letters[0]["task"] == "extract"
    assert letters[0]["payload"] == {"document_id": "doc_missing"}
    shown = _json(run_cli("dlq", "show", str(letters[0]["id"]), "--json", env=env))
    assert shown["run_key"] == letters[0]["run_key"]
    first = _json(run_cli("dlq", "replay", str(letters[0]["id"]), "--json", env=env))
    second = _json(run_cli("dlq", "replay", str(letters[0]["id"]), "--json", env=env))
    assert first[0]["replayed"] is True and second[0]["replayed"] is False
    assert _json(run_cli("dlq", "replay", "--all", "--json", env=env)) == []
    missing = run_cli("dlq", "show", "4242", env=env)
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert run_cli("dlq", "replay", env=env).returncode == 2


def test_tasks_run_intake_reminders_on_demo_data_fills_the_outbox(tmp_path):
    env = base_env(tmp_path / "data")
    assert run_cli("demo", env=env).returncode == 0
    first = _json(run_cli("tasks", "run", "intake-reminders", "--json", env=env))
    assert first["status"] == "succeeded"
    assert first["result"]["reminders_sent"] == 4  # the four demo cases stuck in intake for more than 24 h
    outbox = sorted((tmp_path / "data" / "outbox").glob("*.eml"))
    assert len(outbox) == 4
    second = _json(run_cli("tasks", "run", "intake-reminders", "--json", env=env))
    assert second["result"]["reminders_sent"] == 0  # a forced re-run never sends a case two reminders
    assert len(sorted((tmp_path / "data" / "outbox").glob("*.eml"))) == 4


def test_fhir_sweep_cli_dry_run_then_sweep(tmp_path):
    env = base_env(tmp_path / "data")
    assert run_cli("demo", env=env).returncode == 0
    dry = _json(run_cli("fhir", "sweep", "--dry-run", "--json", env=env))
    assert dry["dry_run"] is True and dry["candidate_count"] >= 2
    with sqlite3.connect(tmp_path / "data" / "curaway.db") as conn:
        assert conn.execute("SELECT count(*) FROM fhir_resources").fetchone() == (0,)
    swept = run_cli("fhir", "sweep", "--json", env=env)
    summary = _json(swept)
    assert summary["processed_count"] == dry["candidate_count"]
    assert len(summary["cases"]) == len({c["case_id"] for c in dry["candidates"]})  # one task per case
    assert "FHIR sweep" in swept.stderr  # the progress bar
    again = _json(run_cli("fhir", "sweep", "--json", env=env))
    assert again["processed_count"] == 0 and again["cases"] == []
    with sqlite3.connect(tmp_path / "data" / "curaway.db") as conn:
        (rows,) = conn.execute("SELECT count(*) FROM fhir_resources").fetchone()
    assert rows > 0
