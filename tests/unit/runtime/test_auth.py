"""The internal-caller verifier matrix for the shared secret and QStash signatures (OIDC: integration tier)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from curaway.clock import FrozenClock
from curaway.dispatch.auth import InternalAuth, InternalSecretVerifier, QStashVerifier
from curaway.errors import AuthenticationError
from curaway.settings import Settings
from tests.support.runtime import QSTASH_CURRENT, QSTASH_NEXT, qstash_token

NOW = datetime(2026, 12, 3, 16, 0, 5, tzinfo=UTC)
URL = "https://api.curaway.app/api/v1/internal/tasks/intake-reminders"
BODY = b'{"hello": "world"}'


def verifier(clock=None) -> QStashVerifier:
    return QStashVerifier(current_key=QSTASH_CURRENT, next_key=QSTASH_NEXT, clock=clock or FrozenClock(NOW))


def reason(fn) -> str:
    with pytest.raises(AuthenticationError) as info:
        fn()
    return info.value.code


def test_secret_rotation_list_accepts_every_secret_and_reports_which():
    v = InternalSecretVerifier(["new-secret-value", "old-secret-value"])
    assert v.verify("new-secret-value").key_id == "secret#0"
    assert v.verify("old-secret-value").key_id == "secret#1"
    assert reason(lambda: v.verify("guess")) == "secret_mismatch"
    assert reason(lambda: v.verify("")) == "secret_mismatch"


@pytest.mark.parametrize("pad", [True, False])
def test_qstash_current_key_with_or_without_body_padding(pad):
    caller = verifier().verify(qstash_token(QSTASH_CURRENT, url=URL, body=BODY, now=NOW, pad=pad), url=URL, body=BODY)
    assert (caller.verifier, caller.key_id) == ("qstash", "qstash#current")


def test_qstash_next_key_is_accepted_during_rotation():
    caller = verifier().verify(qstash_token(QSTASH_NEXT, url=URL, body=BODY, now=NOW), url=URL, body=BODY)
    assert caller.key_id == "qstash#next"


@pytest.mark.parametrize(
    ("token_kwargs", "expected"),
    [
        ({"key": "some-other-key-" + "z" * 32}, "qstash_bad_signature"),
        ({"now": NOW - timedelta(minutes=10)}, "qstash_expired"),  # exp = now-5min, beyond leeway
        ({"now": NOW + timedelta(minutes=2)}, "qstash_not_yet_valid"),  # nbf 2 min ahead
        ({"url": URL + "?x=1"}, "qstash_wrong_sub"),
        ({"url": "https://evil.example/api/v1/internal/tasks/intake-reminders"}, "qstash_wrong_sub"),
        ({"iss": "NotUpstash"}, "qstash_wrong_issuer"),
        ({"drop": ("body",)}, "qstash_missing_body_claim"),
        ({"drop": ("exp",)}, "qstash_missing_exp"),
        ({"drop": ("nbf",)}, "qstash_missing_nbf"),
    ],
)
def test_qstash_rejections(token_kwargs, expected):
    kwargs = {"key": QSTASH_CURRENT, "url": URL, "body": BODY, "now": NOW}
    kwargs.update(token_kwargs)
    key = kwargs.pop("key")
    token = qstash_token(key, **kwargs)
    assert reason(lambda: verifier().verify(token, url=URL, body=BODY)) == expected


def test_qstash_small_clock_skew_is_tolerated():
    token = qstash_token(QSTASH_CURRENT, url=URL, body=BODY, now=NOW + timedelta(seconds=20))
    assert verifier().verify(token, url=URL, body=BODY).verifier == "qstash"
    expired_a_bit = qstash_token(QSTASH_CURRENT, url=URL, body=BODY, now=NOW - timedelta(seconds=310))
    assert verifier().verify(expired_a_bit, url=URL, body=BODY).verifier == "qstash"


def test_qstash_tampered_body_is_rejected():
    token = qstash_token(QSTASH_CURRENT, url=URL, body=BODY, now=NOW)
    assert reason(lambda: verifier().verify(token, url=URL, body=BODY + b" ")) == "qstash_body_mismatch"


def test_qstash_alg_none_and_garbage_are_rejected():
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).decode().rstrip("=")
    claims = jwt.decode(qstash_token(QSTASH_CURRENT, url=URL, body=BODY, now=NOW), options={"verify_signature": False})
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    assert reason(lambda: verifier().verify(f"{header}.{payload}.", url=URL, body=BODY)) == "qstash_bad_algorithm"
    assert reason(lambda: verifier().verify("garbage", url=URL, body=BODY)) == "qstash_malformed"
    assert reason(lambda: verifier().verify("a.b.c", url=URL, body=BODY)) == "qstash_malformed"
    assert reason(lambda: verifier().verify("x" * 10_000, url=URL, body=BODY)) == "qstash_malformed"


def test_qstash_hs384_is_refused():
    token = jwt.encode({"iss": "Upstash"}, QSTASH_CURRENT + "x" * 32, algorithm="HS384")
    assert reason(lambda: verifier().verify(token, url=URL, body=BODY)) == "qstash_bad_algorithm"


def test_chain_prefers_a_valid_credential_and_reports_the_specific_failure():
    settings = Settings(
        env="test",
        internal_secret="s3cret-value-1",
        qstash_current_signing_key=QSTASH_CURRENT,
        qstash_next_signing_key=QSTASH_NEXT,
    )
    chain = InternalAuth(settings, clock=FrozenClock(NOW))
    good = qstash_token(QSTASH_CURRENT, url=URL, body=BODY, now=NOW)
    # QStash forwards the secret too; either may accept.
    assert (
        chain.verify({"upstash-signature": good, "x-internal-secret": "wrong"}, url=URL, body=BODY).verifier == "qstash"
    )
    assert chain.verify({"x-internal-secret": "s3cret-value-1"}, url=URL, body=BODY).verifier == "internal_secret"
    bad = qstash_token(QSTASH_CURRENT, url=URL, body=b"other", now=NOW)
    assert reason(lambda: chain.verify({"upstash-signature": bad}, url=URL, body=BODY)) == "qstash_body_mismatch"
    assert reason(lambda: chain.verify({}, url=URL, body=BODY)) == "no_credentials"
    assert (
        reason(lambda: chain.verify({"authorization": "Basic abc"}, url=URL, body=BODY)) == "authorization_not_bearer"
    )


def test_the_error_never_carries_the_credential():
    settings = Settings(env="test", internal_secret="s3cret-value-1")
    chain = InternalAuth(settings, clock=FrozenClock(NOW))
    with pytest.raises(AuthenticationError) as info:
        chain.verify({"x-internal-secret": "leaked-guess-123"}, url=URL, body=BODY)
    assert "leaked-guess-123" not in repr(info.value) and "s3cret" not in repr(info.value)
