"""Public-endpoint identity: Clerk session tokens → a ``Principal`` (user, org, tenant, roles).

Clerk session tokens are RS256 JWTs signed by the instance's key, published as a JWKS document
(``CURAWAY_CLERK_JWKS_URL``, fetched once and cached; an unknown ``kid`` triggers a rate-limited refetch, which is how
key rotation is picked up). Claims checked: signature, ``alg`` = RS256 only, ``iss`` = ``CURAWAY_CLERK_ISSUER``,
``exp``/``nbf``/``iat`` against the injected clock with a small skew allowance, ``sub`` present. The active
organisation comes in two shapes: v1 (``org_id``, ``org_role``) and v2 (``"v": 2`` with ``o = {"id", "rol"}``, the role
without its ``org:`` prefix).

The org maps to a tenant through ``tenant_org_mappings``. The first authenticated request of a member grants the auto
role row (``granted_by='system:clerk_jwt'``); a deactivated auto row is re-activated only by a token issued after the
deactivation (a fresh membership); an operator's revocation is sticky; manual rows are never touched.

Development: outside prod, with ``CURAWAY_CLERK_JWKS_URL`` unset, the service trusts a local dev key stored once under
the data dir (``dev-clerk-key.pem``); ``curaway dev token`` mints tokens with it. Prod refuses to start without a JWKS
URL and issuer (settings), so the dev key is never trusted there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx
import jwt
from fastapi import Request
from starlette.exceptions import HTTPException

from curaway.clock import Clock
from curaway.db import SessionFactory, transaction
from curaway.errors import AuthenticationError, ConfigurationError, RetryableError
from curaway.integrations.jwks import KeySetCache, KeysUnavailable, parse_key_document
from curaway.logging import get_logger
from curaway.repositories.identity import RoleGrant, active_roles, ensure_auto_role, tenant_for_org
from curaway.settings import Settings

log = get_logger("curaway.identity")

DEV_ISSUER = "https://clerk.curaway.localhost"
DEV_KEY_FILENAME = "dev-clerk-key.pem"
CLOCK_SKEW_S = 5.0
MAX_TOKEN_BYTES = 8192
ALGORITHMS = ("RS256",)


# -- claims and principal ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionClaims:
    """The verified parts of a Clerk session token we use."""

    user_id: str
    org_id: str | None
    org_role: str | None
    session_id: str | None
    issued_at: datetime
    expires_at: datetime
    claims_version: int


@dataclass(frozen=True)
class Principal:
    """An authenticated member acting in one tenant."""

    user_id: str
    org_id: str
    tenant_id: str
    org_role: str
    roles: tuple[str, ...]
    session_id: str | None = None
    claims_version: int = 1
    role_outcome: str = "active"
    issued_at: datetime | None = field(default=None, compare=False)

    def has_role(self, role: str) -> bool:
        return role in self.roles


def normalise_role(role: str) -> str:
    """v2 tokens carry ``admin``; v1 tokens and the webhook carry ``org:admin``."""
    role = role.strip()
    return role if ":" in role else f"org:{role}"


def _reject(reason: str) -> AuthenticationError:
    log.info("auth.rejected", verifier="clerk_jwt", reason=reason)
    return AuthenticationError(f"session token rejected: {reason}", code=reason)


def _epoch(claims: Mapping[str, Any], name: str, *, required: bool) -> datetime | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise _reject(f"missing_{name}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _reject(f"malformed_{name}")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise _reject(f"malformed_{name}") from exc


def _org_claims(claims: Mapping[str, Any]) -> tuple[str | None, str | None, int]:
    version = claims.get("v")
    org = claims.get("o")
    if version == 2 or isinstance(org, Mapping):
        if org is None:
            return None, None, 2
        if not isinstance(org, Mapping):
            raise _reject("malformed_org_claim")
        org_id, role = org.get("id"), org.get("rol")
        version_no = 2
    else:
        org_id, role = claims.get("org_id"), claims.get("org_role")
        version_no = 1
    if org_id is None:
        return None, None, version_no
    if not isinstance(org_id, str) or not org_id or not isinstance(role, str) or not role:
        raise _reject("malformed_org_claim")
    return org_id, normalise_role(role), version_no


# -- key sources ------------------------------------------------------------------------------------------------


class KeySource(Protocol):
    def key_for(self, kid: str | None) -> Any:
        """The public key for ``kid``; raises ``AuthenticationError`` (unknown kid) or ``RetryableError``."""
        ...


class StaticKeys:
    """Keys known in-process (the dev key)."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._keys = parse_key_document(jwks)

    def key_for(self, kid: str | None) -> Any:
        if kid in self._keys:
            return self._keys[kid]
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        raise _reject("unknown_kid")


class JwksCache(KeySetCache):
    """Clerk's JWKS (``CURAWAY_CLERK_JWKS_URL``), cached; an unknown ``kid`` refetches at most every
    ``min_refresh_s``; an unreachable JWKS is a 503 (retry), an unknown key a 401."""

    def __init__(self, url: str, *, ttl_s: float = 600.0, min_refresh_s: float = 30.0, **kwargs: Any) -> None:
        super().__init__(url, ttl_s=ttl_s, min_refetch_s=min_refresh_s, **kwargs)

    def key_for(self, kid: str | None) -> Any:
        try:
            key = self.get(kid)
        except KeysUnavailable as exc:
            log.warning("auth.jwks_unavailable", verifier="clerk_jwt", error_class=type(exc.__cause__).__name__)
            raise RetryableError("the Clerk JWKS document is unavailable", code="jwks_unavailable") from exc
        if key is None:
            raise _reject("unknown_kid")
        return key


# -- verification -----------------------------------------------------------------------------------------------


class SessionTokenVerifier:
    def __init__(
        self, keys: KeySource, *, issuer: str | None, clock: Clock, clock_skew_s: float = CLOCK_SKEW_S
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.clock = clock
        self.clock_skew_s = clock_skew_s

    def verify(self, token: str) -> SessionClaims:
        if not token or len(token) > MAX_TOKEN_BYTES or not token.isascii():
            raise _reject("malformed_token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _reject("malformed_token") from exc
        if header.get("alg") not in ALGORITHMS:
            raise _reject("bad_algorithm")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _reject("malformed_token")
        key = self.keys.key_for(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise _reject("bad_signature") from exc
        except jwt.PyJWTError as exc:
            raise _reject("malformed_token") from exc
        if not isinstance(claims, dict):
            raise _reject("malformed_token")  # pragma: no cover - PyJWT always returns a dict
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise _reject("bad_issuer")
        now = self.clock.now()
        skew = timedelta(seconds=self.clock_skew_s)
        expires_at = _epoch(claims, "exp", required=True)
        issued_at = _epoch(claims, "iat", required=True)
        not_before = _epoch(claims, "nbf", required=False)
        assert expires_at is not None and issued_at is not None
        if now >= expires_at + skew:
            raise _reject("expired")
        if not_before is not None and now + skew < not_before:
            raise _reject("not_yet_valid")
        if now + skew < issued_at:
            raise _reject("issued_in_future")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 64:
            raise _reject("missing_sub")
        org_id, org_role, version = _org_claims(claims)
        if org_id is not None and len(org_id) > 64:
            raise _reject("malformed_org_claim")
        sid = claims.get("sid")
        return SessionClaims(
            user_id=sub,
            org_id=org_id,
            org_role=org_role,
            session_id=sid if isinstance(sid, str) else None,
            issued_at=issued_at,
            expires_at=expires_at,
            claims_version=version,
        )


def authorize(session_factory: SessionFactory, claims: SessionClaims, *, now: datetime) -> tuple[Principal, RoleGrant]:
    """Map the token's org to a tenant, apply the auto-role rules and return the principal (or raise 403)."""
    if claims.org_id is None or claims.org_role is None:
        raise HTTPException(403, "the session has no active organization")
    with transaction(session_factory) as session:
        tenant_id = tenant_for_org(session, claims.org_id)
        if tenant_id is None:
            log.warning("auth.unmapped_org", verifier="clerk_jwt", org_id=claims.org_id)
            raise HTTPException(403, "the organization is not mapped to a tenant")
        grant = ensure_auto_role(
            session,
            user_id=claims.user_id,
            tenant_id=tenant_id,
            role=claims.org_role,
            membership_seen_at=claims.issued_at,
            now=now,
        )
        assert grant is not None
        roles = tuple(active_roles(session, user_id=claims.user_id, tenant_id=tenant_id))
    if grant.outcome in {"granted", "reactivated", "role_changed"}:
        log.info("auth.role_" + grant.outcome, user_id=claims.user_id, tenant_id=tenant_id, role_id=grant.role_id)
    if not roles:
        log.info("auth.no_active_role", user_id=claims.user_id, tenant_id=tenant_id, reason=grant.outcome)
        raise HTTPException(403, "no active role in this tenant")
    principal = Principal(
        user_id=claims.user_id,
        org_id=claims.org_id,
        tenant_id=tenant_id,
        org_role=claims.org_role,
        roles=roles,
        session_id=claims.session_id,
        claims_version=claims.claims_version,
        role_outcome=grant.outcome,
        issued_at=claims.issued_at,
    )
    return principal, grant


# -- wiring -----------------------------------------------------------------------------------------------------


def dev_key_trusted(settings: Settings) -> bool:
    """The dev key is trusted only outside prod and only when no JWKS URL is configured."""
    return settings.env != "prod" and not settings.clerk_jwks_url


def expected_issuer(settings: Settings) -> str | None:
    if settings.clerk_issuer:
        return settings.clerk_issuer
    return DEV_ISSUER if dev_key_trusted(settings) else None


def build_token_verifier(
    settings: Settings, *, clock: Clock, client: httpx.Client | None = None
) -> SessionTokenVerifier:
    keys: KeySource
    if settings.clerk_jwks_url:
        keys = JwksCache(settings.clerk_jwks_url, client=client)
    elif dev_key_trusted(settings):
        keys = StaticKeys(load_or_create_dev_key(settings.data_dir).jwks)
        log.info("auth.dev_key_trusted", verifier="clerk_jwt")
    else:
        raise ConfigurationError("CURAWAY_CLERK_JWKS_URL is not set")
    return SessionTokenVerifier(keys, issuer=expected_issuer(settings), clock=clock)


_VERIFIER_LOCK = threading.Lock()


def token_verifier_for(services: Any) -> SessionTokenVerifier:
    """The app's verifier, built once per ``Services`` (tests may pre-set ``extras["clerk_token_verifier"]``)."""
    extras: dict[str, Any] = services.extras
    verifier = extras.get("clerk_token_verifier")
    if verifier is None:
        with _VERIFIER_LOCK:
            verifier = extras.get("clerk_token_verifier")
            if verifier is None:
                verifier = build_token_verifier(services.settings, clock=services.clock)
                extras["clerk_token_verifier"] = verifier
    assert isinstance(verifier, SessionTokenVerifier)
    return verifier


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _reject("malformed_authorization")
        return value.strip()
    cookie = request.cookies.get("__session")
    if cookie:
        return cookie
    raise _reject("missing_token")


def require_principal(request: Request) -> Principal:
    """FastAPI dependency for public endpoints: ``principal: Principal = Depends(require_principal)``.

    401 for a missing or invalid token, 403 when the org is absent/unmapped or the member has no active role, 503
    when the JWKS document cannot be fetched.
    """
    services = request.app.state.services
    token = bearer_token(request)
    claims = token_verifier_for(services).verify(token)
    principal, _grant = authorize(services.session_factory, claims, now=services.clock.now())
    request.state.principal = principal
    return principal


# -- the dev signing key ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DevKey:
    private_pem: bytes
    kid: str
    jwk: dict[str, Any]

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}


def _dev_key_from_pem(pem: bytes) -> DevKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    private = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(private, RSAPrivateKey):
        raise ConfigurationError(f"{DEV_KEY_FILENAME} does not hold an RSA key")
    public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    kid = "dev-" + hashlib.sha256(der).hexdigest()[:16]
    public_jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
    return DevKey(private_pem=pem, kid=kid, jwk=public_jwk)


def load_or_create_dev_key(data_dir: Path) -> DevKey:
    """Read ``<data_dir>/dev-clerk-key.pem``, creating it once (0600, atomic: concurrent creators agree)."""
    path = Path(data_dir) / DEV_KEY_FILENAME
    if not path.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        path.parent.mkdir(parents=True, exist_ok=True)
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = path.with_name(f".{DEV_KEY_FILENAME}.{os.getpid()}.{threading.get_ident()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # the first creator wins; the others read its key
        finally:
            tmp.unlink(missing_ok=True)
    return _dev_key_from_pem(path.read_bytes())


def mint_dev_token(
    settings: Settings,
    *,
    user_id: str,
    org_id: str | None,
    role: str,
    ttl_s: int,
    now: datetime,
    claims_version: int = 1,
) -> str:
    """A Clerk-shaped session token signed by the dev key (dev/test only)."""
    if settings.env == "prod":
        raise ConfigurationError("dev tokens are refused with CURAWAY_ENV=prod")
    key = load_or_create_dev_key(settings.data_dir)
    issued = int(now.timestamp())
    claims: dict[str, Any] = {
        "iss": expected_issuer(settings) or DEV_ISSUER,
        "sub": user_id,
        "sid": f"sess_dev_{issued}",
        "iat": issued,
        "nbf": issued - 5,
        "exp": issued + ttl_s,
        "azp": settings.public_url,
    }
    if org_id is not None:
        if claims_version == 2:
            claims["v"] = 2
            claims["o"] = {"id": org_id, "rol": role.removeprefix("org:")}
        else:
            claims["org_id"] = org_id
            claims["org_role"] = normalise_role(role)
    elif claims_version == 2:
        claims["v"] = 2
    return jwt.encode(claims, key.private_pem, algorithm="RS256", headers={"kid": key.kid})
