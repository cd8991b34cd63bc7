"""Test helpers for the task runtime: credential minting, a JWKS server, an app with injected handlers."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from curaway.tasks.base import Result, TaskContext

QSTASH_CURRENT = "sig_current_" + "c" * 32
QSTASH_NEXT = "sig_next_" + "n" * 32
SERVICE_ACCOUNT = "tasks-invoker@curaway-prod.iam.gserviceaccount.com"


def b64url_sha256(body: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).decode()


def qstash_token(
    key: str, *, url: str, body: bytes, now: datetime, pad: bool = True, drop: tuple[str, ...] = (), **overrides: Any
) -> str:
    ts = int(now.timestamp())
    digest = b64url_sha256(body)
    claims: dict[str, Any] = {
        "iss": "Upstash",
        "sub": url,
        "iat": ts,
        "nbf": ts,
        "exp": ts + 300,
        "jti": f"jwt_{uuid.uuid4().hex}",
        "body": digest if pad else digest.rstrip("="),
    }
    claims.update(overrides)
    for name in drop:
        claims.pop(name, None)
    return jwt.encode(claims, key, algorithm="HS256")


@dataclass
class RsaKey:
    kid: str
    private: Any = field(default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def jwk(self) -> dict[str, Any]:
        data = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        data.update({"kid": self.kid, "alg": "RS256", "use": "sig"})
        return data

    def sign(self, claims: dict[str, Any], *, kid: str | None = None, alg: str = "RS256") -> str:
        return jwt.encode(claims, self.private, algorithm=alg, headers={"kid": kid or self.kid})


def google_claims(*, aud: str, now: datetime, email: str = SERVICE_ACCOUNT, **overrides: Any) -> dict[str, Any]:
    ts = int(now.timestamp())
    claims: dict[str, Any] = {
        "iss": "https://accounts.google.com",
        "aud": aud,
        "azp": "1234",
        "sub": "1234",
        "email": email,
        "email_verified": True,
        "iat": ts,
        "exp": ts + 3600,
    }
    for k, v in overrides.items():
        if v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    return claims


class JwksServer:
    """Serves ``{"keys": [...]}`` at ``/certs`` on a free loopback port and counts fetches."""

    def __init__(self, keys: list[RsaKey]) -> None:
        self.keys = keys
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps({"keys": [k.jwk() for k in outer.keys]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("cache-control", "public, max-age=3600")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


class CountingHandlers:
    """Handlers that record every execution (by run key) and can be told to fail or to block."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.behaviour: dict[str, Callable[[TaskContext, dict[str, Any]], Result]] = {}
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def handler(self, name: str) -> Callable[[TaskContext, dict[str, Any]], Result]:
        def run(ctx: TaskContext, payload: dict[str, Any]) -> Result:
            with self.lock:
                self.calls.append((name, ctx.run_key))
            self.started.set()
            self.release.wait(timeout=30)
            custom = self.behaviour.get(name)
            if custom is not None:
                return custom(ctx, payload)
            return Result({"ran": name, "attempt": ctx.attempt})

        return run

    def table(self, names: list[str]) -> dict[str, Callable[[TaskContext, dict[str, Any]], Result]]:
        return {n: self.handler(n) for n in names}

    def count(self, name: str | None = None) -> int:
        with self.lock:
            return sum(1 for n, _ in self.calls if name is None or n == name)


@contextmanager
def serving_app(app: Any) -> Iterator[str]:
    """Run an ASGI app under uvicorn in a thread on a free loopback port."""
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
