"""`curaway` as a user runs it: subprocesses against a temp data dir, a free port, real HTTP."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx
import pytest

from tests.support.proc import base_env, run_cli, serving

pytestmark = pytest.mark.slow


def test_help_is_fast_and_lists_the_commands(tmp_path):
    started = time.monotonic()
    result = run_cli("--help", env=base_env(tmp_path))
    assert result.returncode == 0
    for command in ("serve", "worker", "db", "demo", "schedules", "tasks", "fhir", "dlq", "dev"):
        assert command in result.stdout
    assert time.monotonic() - started < 10  # measured properly in bench/; here only a sanity bound


def test_serve_migrates_loads_demo_and_answers(tmp_path):
    data = tmp_path / "data"
    env = base_env(data)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    demo = run_cli("demo", "--json", env=env)
    assert demo.returncode == 0, demo.stderr
    with serving(data) as url:
        assert httpx.get(url + "/healthz").json()["status"] == "ok"
        ready = httpx.get(url + "/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["database"]["status"] == "ok"
    with sqlite3.connect(data / "curaway.db") as conn:
        (cases,) = conn.execute("SELECT count(*) FROM cases").fetchone()
        (journal,) = conn.execute("PRAGMA journal_mode").fetchone()
    assert cases >= 10
    assert journal == "wal"


def test_prod_without_secrets_refuses_to_start_and_names_the_variable(tmp_path):
    result = run_cli("serve", "--port", "1", env=base_env(tmp_path, CURAWAY_ENV="prod"))
    assert result.returncode != 0
    assert "INTERNAL_SECRET is not set" in result.stderr


def test_embedded_dispatcher_delivers_queued_work_and_registers_schedules(tmp_path):
    data = tmp_path / "data"
    env = base_env(data, CURAWAY_DISPATCH_POLL_S="0.1")
    with serving(data, env_extra={"CURAWAY_DISPATCH_POLL_S": "0.1"}) as url:
        queued = run_cli("tasks", "run", "analytics-refresh", "--no-wait", "--json", env=env)
        assert queued.returncode == 0, queued.stderr
        item = json.loads(queued.stdout)["queue_item"]
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline:
            with sqlite3.connect(data / "curaway.db") as conn:
                (status,) = conn.execute("SELECT status FROM task_queue WHERE id = ?", (item,)).fetchone()
            if status == "done":
                break
            time.sleep(0.2)
        assert status == "done"
        checks = httpx.get(url + "/readyz").json()["checks"]
        assert checks["schedules"]["schedules"]["analytics-refresh"]["status"] == "ok"
    with sqlite3.connect(data / "curaway.db") as conn:
        (registered,) = conn.execute("SELECT count(*) FROM schedule_states").fetchone()
    assert registered == 6
