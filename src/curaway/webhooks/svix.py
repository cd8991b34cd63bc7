"""Our own Standard Webhooks / Svix signature verifier (no ``svix`` runtime dependency; DESIGN §4).

Signed content is ``"{id}.{timestamp}.{raw body}"``; the key is the base64-decoded part of a ``whsec_…`` secret; the
signature header holds space-separated ``<version>,<base64 HMAC-SHA256>`` entries (any ``v1`` match wins, other
versions are ignored). Both the ``svix-*`` names (Clerk) and the ``webhook-*`` names (Standard Webhooks) are read.
Several secrets may be configured (rotation); the index of the one that matched is reported for rotation telemetry.

Unlike the reference libraries, every malformed input is a ``WebhookRejected`` with a stable reason code (never
``ValueError``/``binascii.Error``): the timestamp must be all ASCII digits, the id may not contain ``.`` or spaces,
header lengths and the number of signatures are capped, and the body must be UTF-8.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from curaway.clock import Clock
from curaway.errors import AuthenticationError, ConfigurationError

TOLERANCE_S = 300
MAX_ID_CHARS = 255
MAX_TIMESTAMP_CHARS = 12
MAX_SIGNATURE_HEADER_CHARS = 4096
MAX_SIGNATURES = 16
SECRET_PREFIX = "whsec_"

_ID_OK = re.compile(r"[A-Za-z0-9_:\-]+")
_DIGITS = re.compile(r"[0-9]+")


class WebhookRejected(AuthenticationError):
    """A delivery failed verification; ``code`` is the reason logged (never the signature or the secret)."""

    code = "webhook_rejected"


@dataclass(frozen=True)
class VerifiedWebhook:
    msg_id: str
    timestamp: datetime
    body: bytes
    secret_index: int
    header_style: str  # "svix" | "webhook"

    @property
    def key_id(self) -> str:
        return f"secret_{self.secret_index}"


def decode_secret(secret: str) -> bytes:
    """``whsec_<base64>`` (prefix optional) → the HMAC key bytes."""
    raw = secret.strip()
    if raw.startswith(SECRET_PREFIX):
        raw = raw[len(SECRET_PREFIX) :]
    if not raw:
        raise ConfigurationError("CLERK_WEBHOOK_SECRET holds an empty secret")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigurationError("CLERK_WEBHOOK_SECRET is not a base64 whsec_ secret") from exc
    if not key:
        raise ConfigurationError("CLERK_WEBHOOK_SECRET holds an empty secret")
    return key


def _header(headers: Mapping[str, str], name: str) -> tuple[str | None, str]:
    """Read ``svix-<name>`` or ``webhook-<name>`` from a mapping with lower-cased names."""
    for style in ("svix", "webhook"):
        value = headers.get(f"{style}-{name}")
        if value is not None:
            return value, style
    return None, ""


class SvixVerifier:
    def __init__(
        self,
        secrets: Sequence[str],
        *,
        clock: Clock,
        tolerance_s: int = TOLERANCE_S,
        max_signatures: int = MAX_SIGNATURES,
        max_signature_header_chars: int = MAX_SIGNATURE_HEADER_CHARS,
    ) -> None:
        self._keys = [decode_secret(s) for s in secrets]
        self.clock = clock
        self.tolerance_s = tolerance_s
        self.max_signatures = max_signatures
        self.max_signature_header_chars = max_signature_header_chars

    @property
    def configured(self) -> bool:
        return bool(self._keys)

    def verify(self, headers: Mapping[str, str], body: bytes) -> VerifiedWebhook:
        """Return the verified delivery or raise ``WebhookRejected(code=<reason>)``."""
        if not self._keys:
            raise WebhookRejected("no webhook secret configured", code="no_secret_configured")
        headers = {str(k).lower(): v for k, v in headers.items()}
        msg_id, id_style = _header(headers, "id")
        timestamp, ts_style = _header(headers, "timestamp")
        signature, sig_style = _header(headers, "signature")
        if msg_id is None:
            raise WebhookRejected("missing id header", code="missing_id")
        if timestamp is None:
            raise WebhookRejected("missing timestamp header", code="missing_timestamp")
        if signature is None:
            raise WebhookRejected("missing signature header", code="missing_signature")
        if len({id_style, ts_style, sig_style}) != 1:
            raise WebhookRejected("mixed svix-/webhook- header names", code="mixed_headers")

        if not msg_id or len(msg_id) > MAX_ID_CHARS or not _ID_OK.fullmatch(msg_id):
            raise WebhookRejected("malformed id", code="malformed_id")
        if len(timestamp) > MAX_TIMESTAMP_CHARS or not _DIGITS.fullmatch(timestamp):
            raise WebhookRejected("malformed timestamp", code="malformed_timestamp")
        if len(signature) > self.max_signature_header_chars or not signature.isascii():
            raise WebhookRejected("signature header too long", code="signature_header_too_long")

        sent_s = int(timestamp)
        now_s = self.clock.now().timestamp()
        if sent_s < now_s - self.tolerance_s:
            raise WebhookRejected("timestamp too old", code="timestamp_too_old")
        if sent_s > now_s + self.tolerance_s:
            raise WebhookRejected("timestamp too new", code="timestamp_too_new")

        entries = signature.split()
        if not entries:
            raise WebhookRejected("empty signature header", code="malformed_signature")
        if len(entries) > self.max_signatures:
            raise WebhookRejected("too many signatures", code="too_many_signatures")
        candidates: list[bytes] = []
        for entry in entries:
            version, sep, encoded = entry.partition(",")
            if not sep or version != "v1" or not encoded:
                continue  # unknown versions and malformed entries never match
            try:
                decoded = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(decoded) == hashlib.sha256().digest_size:
                candidates.append(decoded)
        if not candidates:
            raise WebhookRejected("no usable v1 signature", code="malformed_signature")

        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WebhookRejected("body is not UTF-8", code="body_not_utf8") from exc

        signed = f"{msg_id}.{timestamp}.".encode("ascii") + body
        for index, key in enumerate(self._keys):
            expected = hmac.new(key, signed, hashlib.sha256).digest()
            # Compare with every candidate (no early exit on the candidate list) in constant time each.
            matched = False
            for candidate in candidates:
                matched |= hmac.compare_digest(expected, candidate)
            if matched:
                return VerifiedWebhook(
                    msg_id=msg_id,
                    timestamp=datetime.fromtimestamp(sent_s, UTC),
                    body=body,
                    secret_index=index,
                    header_style=id_style,
                )
        raise WebhookRejected("no matching signature", code="signature_mismatch")
