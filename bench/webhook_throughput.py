"""Clerk webhook deliveries per second: the full path beside a bare verify-only endpoint, in the same run.

    python -m bench.webhook_throughput [--count 400] [--rounds 6] [--concurrency 8] [--max-seconds 30]
                                       [--database-url URL]

One uvicorn worker (a subprocess on a free loopback port) serves the real app plus a bare route that only verifies the
Svix signature. The client pre-signs every delivery (so signing is not measured), then alternates bare and full rounds
(``--rounds`` each) with ``--concurrency`` connections. The full path is verify + inbox claim + an
``organizationMembership.deleted`` that deactivates one seeded auto role row + the inbox outcome, in one transaction.
The database is a temporary SQLite file unless ``--database-url`` points at a migrated Postgres (rows get unique ids).
Output: one JSON object; ``ratio`` = median over rounds of full ÷ bare deliveries/s (target ≥ 0.5), beside the
overall rates and ``ratio_of_totals``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse

TARGET = 0.5
PATH = "/api/v1/webhooks/clerk"
BARE_PATH = "/bench/bare"


# -- server side (the subprocess) -------------------------------------------------------------------------------


def serve(port: int, database_url: str, secret: str, data_dir: str) -> None:
    import uvicorn

    from curaway.api.app import create_app
    from curaway.api.webhooks import clerk_verifier
    from curaway.logging import configure_logging
    from curaway.settings import Settings
    from curaway.webhooks.svix import WebhookRejected

    configure_logging(level="INFO", fmt="json", stream=sys.stderr)
    settings = Settings(env="dev", database_url=database_url, clerk_webhook_secret=secret, data_dir=Path(data_dir))
    app = create_app(settings)

    async def bare(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            delivery = clerk_verifier(request.app.state.services).verify(request.headers, body)
        except WebhookRejected:
            return JSONResponse({"error": "unauthenticated"}, status_code=401)
        return JSONResponse({"event": "verified", "id": delivery.msg_id})

    app.add_api_route(BARE_PATH, bare, methods=["POST"])
    uvicorn.run(app, host="127.0.0.1", port=port, workers=1, log_config=None, access_log=False, lifespan="on")


# -- client side ------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seed(database_url: str, users: int, tag: str) -> str:
    from curaway.db import create_db_engine, create_session_factory, transaction
    from curaway.models import AUTO_GRANTOR, Tenant, TenantOrgMapping, UserRole

    engine = create_db_engine(database_url)
    org = f"org_bench_{tag}"
    past = datetime.now(UTC) - timedelta(days=1)
    try:
        with transaction(create_session_factory(engine)) as s:
            s.add(Tenant(id=f"ten_bench_{tag}", name="Bench clinic", slug=f"bench-{tag}"))
            s.flush()
            s.add(TenantOrgMapping(clerk_org_id=org, tenant_id=f"ten_bench_{tag}"))
            s.add_all(
                UserRole(
                    user_id=f"user_bench_{tag}_{i}",
                    tenant_id=f"ten_bench_{tag}",
                    role="org:member",
                    granted_by=AUTO_GRANTOR,
                    is_active=True,
                    created_at=past,
                    updated_at=past,
                )
                for i in range(users)
            )
    finally:
        engine.dispose()
    return org


def _deliveries(secret: str, count: int, *, org: str | None, tag: str, kind: str) -> list[tuple[bytes, dict[str, str]]]:
    import standardwebhooks

    signer = standardwebhooks.Webhook(secret)
    now = datetime.now(UTC)
    out = []
    for i in range(count):
        body = json.dumps(
            {
                "object": "event",
                "type": "organizationMembership.deleted",
                "timestamp": int(now.timestamp() * 1000),
                "data": {
                    "object": "organization_membership",
                    "organization": {"id": org or "org_x"},
                    "public_user_data": {"user_id": f"user_bench_{tag}_{i}"},
                    "role": "org:member",
                },
            }
        )
        msg_id = f"msg_{kind}_{tag}_{i}"
        headers = {
            "svix-id": msg_id,
            "svix-timestamp": str(int(now.timestamp())),
            "svix-signature": signer.sign(msg_id, now, body),
            "content-type": "application/json",
        }
        out.append((body.encode(), headers))
    return out


async def _round(
    base: str, path: str, items: list[tuple[bytes, dict[str, str]]], concurrency: int, max_seconds: float
) -> dict[str, Any]:
    queue: asyncio.Queue[tuple[bytes, dict[str, str]]] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    done = 0
    errors = 0
    deadline = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < deadline:
                try:
                    body, headers = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                response = await client.post(path, content=body, headers=headers)
                if response.status_code == 200:
                    done += 1
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"deliveries": done, "errors": errors, "seconds": round(elapsed, 3), "per_s": done / elapsed}


def _wait_up(base: str, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=400, help="deliveries per round (bounded)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per endpoint, alternating bare/full")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=30.0, help="time bound per round")
    parser.add_argument("--database-url", default="", help="a migrated Postgres database (default: temp SQLite)")
    parser.add_argument("--serve", nargs=4, metavar=("PORT", "DB", "SECRET", "DATA_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(int(args.serve[0]), args.serve[1], args.serve[2], args.serve[3])
        return 0

    import base64

    from curaway.db import upgrade

    tag = secrets.token_hex(3)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    with tempfile.TemporaryDirectory(prefix="curaway-bench-") as tmp:
        database_url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(database_url)
        total = args.count * args.rounds
        org = _seed(database_url, total, tag)
        full_items = _deliveries(secret, total, org=org, tag=tag, kind="full")
        bare_items = _deliveries(secret, total, org=None, tag=tag, kind="bare")
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.webhook_throughput", "--serve", str(port), database_url, secret, tmp],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_up(base, proc)
            # Warm-up (imports, connection pool, first JIT-ish paths): not measured.
            warm = _deliveries(secret, 50, org=None, tag=tag + "w", kind="warm")
            asyncio.run(_round(base, BARE_PATH, warm[:25], args.concurrency, args.max_seconds))
            asyncio.run(_round(base, PATH, warm[25:], args.concurrency, args.max_seconds))
            bare_rounds, full_rounds = [], []
            for r in range(args.rounds):
                chunk = slice(r * args.count, (r + 1) * args.count)
                bare_rounds.append(
                    asyncio.run(_round(base, BARE_PATH, bare_items[chunk], args.concurrency, args.max_seconds))
                )
                full_rounds.append(
                    asyncio.run(_round(base, PATH, full_items[chunk], args.concurrency, args.max_seconds))
                )
            deactivated = _count_inactive(database_url, tag)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def rate(rounds: list[dict[str, Any]]) -> float:
        return sum(r["deliveries"] for r in rounds) / sum(r["seconds"] for r in rounds)

    bare_rate, full_rate = rate(bare_rounds), rate(full_rounds)
    # Each full round is paired with the bare round just before it: the median pair ratio resists load spikes from
    # other processes on the machine better than the ratio of totals.
    pair_ratios = sorted(f["per_s"] / b["per_s"] for b, f in zip(bare_rounds, full_rounds, strict=True) if b["per_s"])
    median_ratio = statistics.median(pair_ratios) if pair_ratios else None
    result = {
        "benchmark": "webhook_throughput",
        "database": "postgres" if database_url.startswith("postgres") else "sqlite",
        "uvicorn_workers": 1,
        "concurrency": args.concurrency,
        "bare_verify_only_per_s": round(bare_rate, 1),
        "full_path_per_s": round(full_rate, 1),
        "ratio": round(median_ratio, 3) if median_ratio is not None else None,
        "ratio_of_totals": round(full_rate / bare_rate, 3) if bare_rate else None,
        "pair_ratios": [round(r, 3) for r in pair_ratios],
        "target_ratio": TARGET,
        "roles_deactivated": deactivated,
        "errors": sum(r["errors"] for r in bare_rounds + full_rounds),
        "rounds": {
            "bare": [{k: round(v, 1) if k == "per_s" else v for k, v in r.items()} for r in bare_rounds],
            "full": [{k: round(v, 1) if k == "per_s" else v for k, v in r.items()} for r in full_rounds],
        },
    }
    print(json.dumps(result, indent=2))
    return 0


def _count_inactive(database_url: str, tag: str) -> int:
    from sqlalchemy import func, select

    from curaway.db import create_db_engine, create_session_factory, transaction
    from curaway.models import UserRole

    engine = create_db_engine(database_url)
    try:
        with transaction(create_session_factory(engine)) as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(UserRole)
                    .where(UserRole.tenant_id == f"ten_bench_{tag}", UserRole.is_active.is_(False))
                )
                or 0
            )
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
