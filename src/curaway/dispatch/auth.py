"""Internal-caller verification: shared secret, QStash HS256 JWT, Google OIDC ID token (DESIGN §3, §4).

Any configured verifier may accept a call; every failure is an ``AuthenticationError`` whose ``code`` is a reason
(logged, counted, never the credential). Which verifier and which key accepted is returned for rotation telemetry.
Time comes from the injected clock, so expiry is checked explicitly (PyJWT's own checks use the wall clock).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt

from curaway.clock import Clock
from curaway.errors import AuthenticationError
from curaway.integrations.jwks import KeySetCache, KeysUnavailable
from curaway.settings import Settings

GOOGLE_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
QSTASH_LEEWAY_S = 30
OIDC_LEEWAY_S = 60
MAX_TOKEN_LENGTH = 8192


@dataclass(frozen=True)
class Caller:
    verifier: str  # internal_secret | qstash | oidc
    key_id: str  # which key accepted: secret#0 (current), qstash#current, oidc kid …
    subject: str | None = None  # service-account email for OIDC


def _reject(code: str) -> AuthenticationError:
    return AuthenticationError("caller not verified", code=code)


def _b64url_sha256(body: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).decode().rstrip("=")


def _check_times(claims: Mapping[str, Any], now: datetime, leeway_s: int, prefix: str, *, require_nbf: bool) -> None:
    ts = now.timestamp()
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if not isinstance(exp, int | float):
        raise _reject(f"{prefix}_missing_exp")
    if ts > exp + leeway_s:
        raise _reject(f"{prefix}_expired")
    if require_nbf and not isinstance(nbf, int | float):
        raise _reject(f"{prefix}_missing_nbf")
    if isinstance(nbf, int | float) and ts + leeway_s < nbf:
        raise _reject(f"{prefix}_not_yet_valid")
    iat = claims.get("iat")
    if isinstance(iat, int | float) and ts + leeway_s < iat:
        raise _reject(f"{prefix}_issued_in_future")


class InternalSecretVerifier:
    name = "internal_secret"

    def __init__(self, secrets: list[str]) -> None:
        self._secrets = [s.encode() for s in secrets if s]

    def verify(self, presented: str) -> Caller:
        if not self._secrets:
            raise _reject("secret_not_configured")
        match = -1
        candidate = presented.encode()
        for index, secret in enumerate(self._secrets):  # compare all: no early exit on the first match
            if hmac.compare_digest(candidate, secret) and match < 0:
                match = index
        if match < 0:
            raise _reject("secret_mismatch")
        return Caller(self.name, f"secret#{match}")


class QStashVerifier:
    """``Upstash-Signature``: HS256, iss=Upstash, sub = exact URL, exp/nbf with leeway, body = b64url(sha256)."""

    name = "qstash"

    def __init__(self, *, current_key: str, next_key: str, clock: Clock, leeway_s: int = QSTASH_LEEWAY_S) -> None:
        self._keys = [(label, key) for label, key in (("current", current_key), ("next", next_key)) if key]
        self._clock = clock
        self._leeway_s = leeway_s

    def verify(self, token: str, *, url: str, body: bytes) -> Caller:
        if not self._keys:
            raise _reject("qstash_not_configured")
        if len(token) > MAX_TOKEN_LENGTH:
            raise _reject("qstash_malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _reject("qstash_malformed") from None
        if header.get("alg") != "HS256":
            raise _reject("qstash_bad_algorithm")
        claims: dict[str, Any] | None = None
        accepted = ""
        for label, key in self._keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=["HS256"],
                    options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False},
                )
                accepted = label
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError:
                raise _reject("qstash_malformed") from None
        if claims is None:
            raise _reject("qstash_bad_signature")
        if claims.get("iss") != "Upstash":
            raise _reject("qstash_wrong_issuer")
        _check_times(claims, self._clock.now(), self._leeway_s, "qstash", require_nbf=True)
        if claims.get("sub") != url:
            raise _reject("qstash_wrong_sub")
        body_claim = claims.get("body")
        if not isinstance(body_claim, str):
            raise _reject("qstash_missing_body_claim")
        if not hmac.compare_digest(body_claim.rstrip("="), _b64url_sha256(body)):
            raise _reject("qstash_body_mismatch")
        return Caller(self.name, f"qstash#{accepted}")


class JwksCache(KeySetCache):
    """Google's certs (``CURAWAY_OIDC_CERTS_URL``), cached; an outage is a 401 reason, not a crash."""

    def key(self, kid: str) -> Any:
        try:
            return self.get(kid)
        except KeysUnavailable as exc:
            raise _reject("certs_unavailable") from exc


class OidcVerifier:
    """Google-signed ID tokens (Cloud Tasks / Cloud Scheduler ``oidc_token``): RS256 via cached certs, ``aud``,
    ``iss`` ∈ Google issuers, ``email`` in the allow-list, ``email_verified``."""

    name = "oidc"

    def __init__(self, *, certs: JwksCache, audience: str | None, allowed_emails: list[str], clock: Clock) -> None:
        self._certs = certs
        self._audience = audience
        self._allowed = {e.lower() for e in allowed_emails}
        self._clock = clock

    def verify(self, token: str, *, url: str) -> Caller:
        if not self._allowed:
            raise _reject("oidc_not_configured")
        if len(token) > MAX_TOKEN_LENGTH:
            raise _reject("oidc_malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _reject("oidc_malformed") from None
        if header.get("alg") != "RS256":
            raise _reject("oidc_bad_algorithm")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _reject("oidc_unknown_kid")
        key = self._certs.key(kid)
        if key is None:
            raise _reject("oidc_unknown_kid")
        audience = self._audience or url
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=audience,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.InvalidAudienceError:
            raise _reject("oidc_wrong_audience") from None
        except jwt.InvalidSignatureError:
            raise _reject("oidc_bad_signature") from None
        except jwt.MissingRequiredClaimError:
            raise _reject("oidc_missing_claim") from None
        except jwt.PyJWTError:
            raise _reject("oidc_malformed") from None
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise _reject("oidc_wrong_issuer")
        _check_times(claims, self._clock.now(), OIDC_LEEWAY_S, "oidc", require_nbf=False)
        email = str(claims.get("email", "")).lower()
        if email not in self._allowed:
            raise _reject("oidc_email_not_allowed")
        if claims.get("email_verified") is not True:
            raise _reject("oidc_email_unverified")
        return Caller(self.name, f"oidc:{kid}"[:64], subject=email)


class InternalAuth:
    """The verifier chain for ``/api/v1/internal/*``."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock,
        certs: JwksCache | None = None,
    ) -> None:
        self.secret = InternalSecretVerifier(settings.internal_secrets)
        self.qstash = QStashVerifier(
            current_key=settings.qstash_current_signing_key, next_key=settings.qstash_next_signing_key, clock=clock
        )
        self.oidc = OidcVerifier(
            certs=certs or JwksCache(settings.oidc_certs_url),
            audience=settings.oidc_audience or None,
            allowed_emails=settings.oidc_service_account_list,
            clock=clock,
        )

    def verify(self, headers: Mapping[str, str], *, url: str, body: bytes) -> Caller:
        """Try each credential the request carries; the first that verifies wins. If none does, the most specific
        failure is raised (a bad token beats "no secret")."""
        failures: list[AuthenticationError] = []
        authorization = headers.get("authorization", "")
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                try:
                    return self.oidc.verify(token.strip(), url=url)
                except AuthenticationError as exc:
                    failures.append(exc)
            else:
                failures.append(_reject("authorization_not_bearer"))
        signature = headers.get("upstash-signature")
        if signature:
            try:
                return self.qstash.verify(signature, url=url, body=body)
            except AuthenticationError as exc:
                failures.append(exc)
        presented = headers.get("x-internal-secret")
        if presented is not None:
            try:
                return self.secret.verify(presented)
            except AuthenticationError as exc:
                failures.append(exc)
        if failures:
            raise failures[0]
        raise _reject("no_credentials")
