"""Start ``curaway`` subprocesses on a free loopback port and stop them (acceptance tier)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

CURAWAY = [sys.executable, "-m", "curaway"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(data_dir: Path, **extra: str) -> dict[str, str]:
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CURAWAY_", "QSTASH_", "ANTHROPIC_", "LANGFUSE_", "OTEL_"))
        and k not in {"DATABASE_URL", "INTERNAL_SECRET", "CLERK_WEBHOOK_SECRET"}
    }
    keep.update({"CURAWAY_DATA_DIR": str(data_dir), "CURAWAY_ENV": "dev", "PYTHONUNBUFFERED": "1"})
    keep.update(extra)
    return keep


def run_cli(*args: str, env: Mapping[str, str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CURAWAY, *args], env=dict(env), capture_output=True, text=True, timeout=timeout_s)


def wait_http(url: str, *, timeout_s: float = 30, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


@contextmanager
def running(args: list[str], *, env: Mapping[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*CURAWAY, *args], env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)


@contextmanager
def serving(data_dir: Path, *extra_args: str, env_extra: Mapping[str, str] | None = None) -> Iterator[str]:
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = base_env(data_dir, **dict(env_extra or {}))
    with running(["serve", "--port", str(port), *extra_args], env=env, log_path=data_dir / "serve.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz", proc=proc, timeout_s=60)
        yield url
