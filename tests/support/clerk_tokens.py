"""Clerk-shaped session tokens signed by a local RSA key, and a local HTTP server publishing its JWKS.

The server binds 127.0.0.1 on a free port, counts fetches, can rotate keys, and is stopped by the test.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://clerk.test.example"


@dataclass
class RsaKey:
    kid: str
    private: rsa.RSAPrivateKey = field(repr=False)

    @classmethod
    def generate(cls, kid: str) -> RsaKey:
        return cls(kid=kid, private=rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @property
    def pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def jwk(self) -> dict[str, Any]:
        data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        data.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return data


def mint(
    key: RsaKey,
    *,
    now: datetime,
    sub: str = "user_alice",
    org_id: str | None = "org_one",
    role: str = "org:member",
    ttl_s: int = 60,
    issuer: str = ISSUER,
    version: int = 1,
    iat_offset_s: int = 0,
    extra: dict[str, Any] | None = None,
    headers: dict[str, Any] | None = None,
    algorithm: str = "RS256",
) -> str:
    issued = int(now.timestamp()) + iat_offset_s
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": sub,
        "sid": "sess_1",
        "iat": issued,
        "nbf": issued - 10,
        "exp": issued + ttl_s,
    }
    if org_id is not None:
        if version == 2:
            claims.update({"v": 2, "o": {"id": org_id, "rol": role.removeprefix("org:"), "slg": "acme"}})
        else:
            claims.update({"org_id": org_id, "org_role": role, "org_slug": "acme"})
    claims.update(extra or {})
    return jwt.encode(claims, key.pem, algorithm=algorithm, headers={"kid": key.kid, **(headers or {})})


class JwksServer:
    def __init__(self, keys: list[RsaKey]) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.fail = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                if server.fail:
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps({"keys": [k.jwk for k in server.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> JwksServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@contextmanager
def jwks_server(keys: list[RsaKey]) -> Iterator[JwksServer]:
    server = JwksServer(keys).start()
    try:
        yield server
    finally:
        server.stop()
