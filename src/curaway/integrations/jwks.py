"""Signing keys fetched over HTTP and cached — Google's certs for OIDC and Clerk's JWKS share this one cache.

Accepts a JWKS document (``{"keys": [...]}``, RSA signing keys) or Google's PEM map (``{kid: certificate}``).
Keys live for ``Cache-Control: max-age`` (bounded) or ``ttl_s``; an unknown ``kid`` refetches, and so does an
expired set, but never more often than every ``min_refetch_s`` — also after a failed fetch, so an outage does not
turn every request into another slow fetch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import jwt

from curaway.errors import RetryableError

MAX_TTL_S = 24 * 3600


class KeysUnavailable(RetryableError):
    code = "keys_unavailable"


def parse_key_document(document: Any) -> dict[str | None, Any]:
    """Public keys by ``kid`` from a JWKS or a PEM map; entries that cannot be used are skipped, not fatal."""
    keys: dict[str | None, Any] = {}
    if isinstance(document, Mapping) and isinstance(document.get("keys"), list):
        for entry in document["keys"]:
            if not isinstance(entry, Mapping) or entry.get("kty") != "RSA" or entry.get("use", "sig") != "sig":
                continue
            try:
                keys[entry.get("kid")] = jwt.PyJWK(dict(entry), algorithm="RS256").key
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue  # one broken key must not hide the others
        return keys
    if isinstance(document, Mapping):
        from cryptography.x509 import load_pem_x509_certificate

        for kid, pem in document.items():
            try:
                keys[str(kid)] = load_pem_x509_certificate(str(pem).encode()).public_key()
            except ValueError:
                continue
        return keys
    raise ValueError("not a key document")


class KeySetCache:
    def __init__(
        self,
        url: str,
        *,
        client: httpx.Client | None = None,
        ttl_s: float = 3600.0,
        min_refetch_s: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._client = client or httpx.Client(timeout=httpx.Timeout(5.0))
        self._ttl_s = ttl_s
        self._min_refetch_s = min_refetch_s
        self._monotonic = monotonic
        self._keys: dict[str | None, Any] = {}
        self._expires = 0.0
        self._attempted: float | None = None
        self._lock = threading.Lock()
        self.fetch_count = 0

    def _fetch(self, now: float) -> None:
        self._attempted = now
        try:
            response = self._client.get(self.url)
            response.raise_for_status()
            keys = parse_key_document(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            raise KeysUnavailable("signing keys are unavailable", code="keys_unavailable") from exc
        ttl = self._ttl_s
        for part in response.headers.get("cache-control", "").split(","):
            name, _, value = part.strip().partition("=")
            if name == "max-age" and value.isdigit():
                ttl = min(float(value), MAX_TTL_S)
        self._keys, self._expires = keys, now + ttl
        self.fetch_count += 1

    def get(self, kid: str | None) -> Any | None:
        """The key for ``kid`` (or the only key when the token names none); ``None`` if unknown.

        Raises ``KeysUnavailable`` when no usable key set could be had."""
        with self._lock:
            now = self._monotonic()
            stale = now >= self._expires or kid not in self._keys
            may_fetch = self._attempted is None or now - self._attempted >= self._min_refetch_s
            if stale and may_fetch:
                try:
                    self._fetch(now)
                except KeysUnavailable:
                    if not self._keys:
                        raise
                    # Keep serving the keys we had through an outage of the key endpoint.
            elif not self._keys and self._attempted is not None:
                raise KeysUnavailable("signing keys are unavailable", code="keys_unavailable")
            if kid in self._keys:
                return self._keys[kid]
            if kid is None and len(self._keys) == 1:
                return next(iter(self._keys.values()))
            return None

    def close(self) -> None:
        self._client.close()
