"""Google OIDC verification against tokens minted with a local RSA key, served as JWKS by a local server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from curaway.clock import FrozenClock
from curaway.dispatch.auth import JwksCache, OidcVerifier
from curaway.errors import AuthenticationError
from tests.support.runtime import SERVICE_ACCOUNT, JwksServer, RsaKey, google_claims

NOW = datetime(2026, 12, 3, 16, 0, tzinfo=UTC)
URL = "https://api.curaway.test/api/v1/internal/tasks/analytics-refresh"


@pytest.fixture
def env():
    key, other = RsaKey("kid-a"), RsaKey("kid-b")
    with JwksServer([key]) as server:
        certs = JwksCache(server.url)
        verifier = OidcVerifier(certs=certs, audience=None, allowed_emails=[SERVICE_ACCOUNT], clock=FrozenClock(NOW))
        yield verifier, key, other, server


def reason(verifier, token):
    with pytest.raises(AuthenticationError) as info:
        verifier.verify(token, url=URL)
    return info.value.code


def test_valid_token_is_accepted_and_certs_are_cached(env):
    verifier, key, _, server = env
    for _ in range(5):
        caller = verifier.verify(key.sign(google_claims(aud=URL, now=NOW)), url=URL)
    assert (caller.verifier, caller.subject) == ("oidc", SERVICE_ACCOUNT)
    assert server.fetches == 1


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"aud": "https://api.curaway.test/other"}, "oidc_wrong_audience"),
        ({"iss": "https://evil.example"}, "oidc_wrong_issuer"),
        ({"email": "someone@evil.iam.gserviceaccount.com"}, "oidc_email_not_allowed"),
        ({"email_verified": False}, "oidc_email_unverified"),
        ({"email_verified": None}, "oidc_email_unverified"),
        ({"exp": int((NOW - timedelta(minutes=5)).timestamp())}, "oidc_expired"),
        ({"iat": int((NOW + timedelta(minutes=10)).timestamp())}, "oidc_issued_in_future"),
    ],
)
def test_claim_checks(env, overrides, expected):
    verifier, key, _, _ = env
    claims = google_claims(aud=URL, now=NOW)
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    assert reason(verifier, key.sign(claims)) == expected


def test_accounts_google_com_issuer_without_scheme_is_accepted(env):
    verifier, key, _, _ = env
    assert verifier.verify(key.sign(google_claims(aud=URL, now=NOW, iss="accounts.google.com")), url=URL)


def test_unknown_kid_and_forged_signature(env):
    verifier, _key, other, _server = env
    assert reason(verifier, other.sign(google_claims(aud=URL, now=NOW))) == "oidc_unknown_kid"
    forged = other.sign(google_claims(aud=URL, now=NOW), kid="kid-a")  # right kid, wrong key
    assert reason(verifier, forged) == "oidc_bad_signature"
    assert reason(verifier, "not-a-jwt") == "oidc_malformed"


def test_hs256_token_with_a_known_kid_is_refused(env):
    verifier, _, _, _ = env
    import jwt

    token = jwt.encode(google_claims(aud=URL, now=NOW), "s" * 64, algorithm="HS256", headers={"kid": "kid-a"})
    assert reason(verifier, token) == "oidc_bad_algorithm"


def test_key_rotation_refetches_on_an_unknown_kid(env):
    verifier, key, other, server = env
    verifier.verify(key.sign(google_claims(aud=URL, now=NOW)), url=URL)
    server.keys.append(other)  # Google publishes a new key
    verifier._certs._min_refetch_s = 0
    assert verifier.verify(other.sign(google_claims(aud=URL, now=NOW)), url=URL).key_id == "oidc:kid-b"
    assert server.fetches == 2


def test_certs_unavailable_is_a_401_reason_not_a_crash():
    verifier = OidcVerifier(
        certs=JwksCache("http://127.0.0.1:9/certs"),
        audience=None,
        allowed_emails=[SERVICE_ACCOUNT],
        clock=FrozenClock(NOW),
    )
    assert reason(verifier, RsaKey("k").sign(google_claims(aud=URL, now=NOW))) == "certs_unavailable"


def test_configured_audience_overrides_the_url(env):
    _, key, _, server = env
    verifier = OidcVerifier(
        certs=JwksCache(server.url),
        audience="curaway-internal",
        allowed_emails=[SERVICE_ACCOUNT],
        clock=FrozenClock(NOW),
    )
    assert verifier.verify(key.sign(google_claims(aud="curaway-internal", now=NOW)), url=URL)
    assert reason(verifier, key.sign(google_claims(aud=URL, now=NOW))) == "oidc_wrong_audience"
