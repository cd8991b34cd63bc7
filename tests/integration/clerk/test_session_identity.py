"""Clerk session tokens on public endpoints: JWKS from a local server, claim shapes, auto-role lifecycle."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from curaway.api.app import create_app
from curaway.api.identity import JwksCache, SessionTokenVerifier
from curaway.clock import FrozenClock
from curaway.db import transaction
from curaway.repositories.identity import revoke_roles
from tests.support.clerk_app import UNMAPPED_ORG, add_role, add_whoami, roles_of, seed_tenants
from tests.support.clerk_tokens import ISSUER, JwksServer, RsaKey, jwks_server, mint

T0 = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def key() -> RsaKey:
    return RsaKey.generate("kid-1")


@pytest.fixture(scope="module")
def other_key() -> RsaKey:
    return RsaKey.generate("kid-2")


@pytest.fixture
def jwks(key: RsaKey) -> Iterator[JwksServer]:
    with jwks_server([key]) as server:
        yield server


class Env:
    def __init__(self, client: TestClient, clock: FrozenClock, session_factory: Any, key: RsaKey) -> None:
        self.client = client
        self.clock = clock
        self.sf = session_factory
        self.key = key

    def get(self, token: str | None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return self.client.get("/test/whoami", headers=headers)

    def token(self, **kw: Any) -> str:
        return mint(self.key, now=self.clock.now(), **kw)


@pytest.fixture
def env(database_url: str, make_settings: Any, jwks: JwksServer, key: RsaKey) -> Iterator[Env]:
    clock = FrozenClock(T0)
    settings = make_settings(database_url=database_url, clerk_jwks_url=jwks.url, clerk_issuer=ISSUER)
    app = add_whoami(create_app(settings, clock=clock))
    sf = app.state.services.session_factory
    seed_tenants(sf)
    with TestClient(app) as client:
        yield Env(client, clock, sf, key)


def test_first_request_grants_the_auto_role(env: Env) -> None:
    response = env.get(env.token())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_id"] == "user_alice"
    assert body["tenant_id"] == "ten_a"
    assert body["org_role"] == "org:member"
    assert body["roles"] == ["org:member"]
    assert body["role_outcome"] == "granted"
    rows = roles_of(env.sf, "user_alice")
    assert [(r["tenant_id"], r["granted_by"], r["is_active"]) for r in rows] == [("ten_a", "system:clerk_jwt", True)]
    # A second request changes nothing.
    again = env.get(env.token())
    assert again.json()["role_outcome"] == "active"
    assert len(roles_of(env.sf, "user_alice")) == 1


def test_v2_claim_shape(env: Env) -> None:
    response = env.get(env.token(version=2, role="org:admin", org_id="org_two"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["tenant_id"], body["org_role"], body["claims_version"]) == ("ten_b", "org:admin", 2)


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "garbage",
        "basic_scheme",
        "expired",
        "issuer",
        "hs256",
        "none_alg",
        "not_yet_valid",
        "issued_in_future",
        "no_sub",
        "bad_org_claim",
        "wrong_key_same_kid",
        "unknown_kid",
    ],
)
def test_bad_tokens_are_401(env: Env, other_key: RsaKey, case: str) -> None:
    now = env.clock.now()
    headers: dict[str, str] = {}
    if case == "missing":
        pass
    elif case == "garbage":
        headers["Authorization"] = "Bearer garbage"
    elif case == "basic_scheme":
        headers["Authorization"] = "Basic dXNlcjpwYXNz"
    else:
        token = {
            "expired": lambda: mint(env.key, now=now - timedelta(seconds=120), ttl_s=60),
            "issuer": lambda: mint(env.key, now=now, issuer="https://evil.example"),
            "hs256": lambda: __import__("jwt").encode(
                {"sub": "user_alice", "iss": ISSUER, "iat": int(now.timestamp()), "exp": int(now.timestamp()) + 60},
                "x" * 32,
                algorithm="HS256",
                headers={"kid": "kid-1"},
            ),
            "none_alg": lambda: __import__("jwt").encode({"sub": "user_alice", "iss": ISSUER}, None, algorithm="none"),
            "not_yet_valid": lambda: mint(env.key, now=now, extra={"nbf": int(now.timestamp()) + 60}),
            "issued_in_future": lambda: mint(env.key, now=now, iat_offset_s=60),
            "no_sub": lambda: mint(env.key, now=now, extra={"sub": ""}),
            "bad_org_claim": lambda: mint(env.key, now=now, extra={"org_role": 7}),
            "wrong_key_same_kid": lambda: mint(RsaKey(kid="kid-1", private=other_key.private), now=now),
            "unknown_kid": lambda: mint(other_key, now=now),
        }[case]()
        headers["Authorization"] = f"Bearer {token}"
    response = env.client.get("/test/whoami", headers=headers)
    assert response.status_code == 401, (case, response.text)
    assert response.json()["error"]["code"] == "unauthenticated"
    assert roles_of(env.sf, "user_alice") == []


def test_clock_skew_is_tolerated(env: Env) -> None:
    # Issued 3 s "in the future" (the issuer's clock runs ahead) and expired 3 s ago: both inside the skew.
    assert env.get(env.token(iat_offset_s=3)).status_code == 200
    assert env.get(env.token(iat_offset_s=-63, ttl_s=60)).status_code == 200


def test_session_cookie_is_accepted(env: Env) -> None:
    env.client.cookies.set("__session", env.token())
    try:
        assert env.client.get("/test/whoami").status_code == 200
    finally:
        env.client.cookies.clear()


def test_org_problems_are_403(env: Env) -> None:
    no_org = env.get(env.token(org_id=None))
    assert no_org.status_code == 403
    unmapped = env.get(env.token(org_id=UNMAPPED_ORG))
    assert unmapped.status_code == 403
    assert "not mapped" in unmapped.json()["error"]["message"]
    assert roles_of(env.sf, "user_alice") == []


def test_deactivated_auto_row_needs_a_fresh_membership(env: Env) -> None:
    # The row was deactivated (membership deleted) at T0.
    add_role(env.sf, user_id="user_alice", tenant_id="ten_a", is_active=False, at=T0)
    # A token issued before the deactivation (still within its lifetime) does not re-activate it.
    stale = env.get(env.token(iat_offset_s=-30))
    assert stale.status_code == 403
    assert roles_of(env.sf, "user_alice")[0]["is_active"] is False
    # A token issued after it (the user was re-added) does.
    env.clock.advance(seconds=30)
    fresh = env.get(env.token())
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["role_outcome"] == "reactivated"
    assert roles_of(env.sf, "user_alice")[0]["is_active"] is True


def test_manual_rows_are_never_touched_and_sticky_revoke_holds(env: Env) -> None:
    manual = add_role(
        env.sf, user_id="user_alice", tenant_id="ten_a", role="case:reviewer", granted_by="admin:ops", at=T0
    )
    assert env.get(env.token()).status_code == 200
    rows = roles_of(env.sf, "user_alice")
    assert {(r["granted_by"], r["is_active"]) for r in rows} == {("admin:ops", True), ("system:clerk_jwt", True)}
    assert any(r["role"] == "case:reviewer" and r["updated_at"] == T0 for r in rows)
    assert manual

    # The operator revokes the auto role only: the JWT path must not re-grant it.
    with transaction(env.sf) as session:
        revoke_roles(
            session, user_id="user_alice", tenant_id="ten_a", role="org:member", revoked_by="operator:cli", now=T0
        )
    env.clock.advance(minutes=5)
    response = env.get(env.token())
    assert response.status_code == 200
    assert response.json()["roles"] == ["case:reviewer"]
    assert response.json()["role_outcome"] == "revoked"

    # Revoking everything in the tenant leaves no role: 403, even with a fresh token.
    with transaction(env.sf) as session:
        revoke_roles(session, user_id="user_alice", tenant_id="ten_a", role=None, revoked_by="operator:cli", now=T0)
    env.clock.advance(minutes=5)
    assert env.get(env.token()).status_code == 403
    assert not any(r["is_active"] for r in roles_of(env.sf, "user_alice"))


def test_sticky_revoke_before_first_sign_in(env: Env) -> None:
    with transaction(env.sf) as session:
        revoke_roles(session, user_id="user_bob", tenant_id="ten_a", role=None, revoked_by="operator:cli", now=T0)
    env.clock.advance(minutes=1)
    assert env.get(env.token(sub="user_bob")).status_code == 403
    rows = roles_of(env.sf, "user_bob")
    assert [(r["is_active"], r["revoked"]) for r in rows] == [(False, True)]


def test_role_change_follows_a_fresh_token(env: Env) -> None:
    assert env.get(env.token()).status_code == 200
    env.clock.advance(minutes=1)
    response = env.get(env.token(role="org:admin"))
    assert response.json()["roles"] == ["org:admin"]
    assert len(roles_of(env.sf, "user_alice")) == 1


def test_jwks_rotation_and_outage(database_url: str, make_settings: Any, key: RsaKey, other_key: RsaKey) -> None:
    clock = FrozenClock(T0)
    with jwks_server([key]) as server:
        settings = make_settings(database_url=database_url, clerk_jwks_url=server.url, clerk_issuer=ISSUER)
        app = add_whoami(create_app(settings, clock=clock))
        seed_tenants(app.state.services.session_factory)
        cache = JwksCache(server.url, min_refresh_s=0)
        app.state.services.extras["clerk_token_verifier"] = SessionTokenVerifier(cache, issuer=ISSUER, clock=clock)
        with TestClient(app) as client:

            def call(k: RsaKey) -> int:
                token = mint(k, now=clock.now())
                return client.get("/test/whoami", headers={"Authorization": f"Bearer {token}"}).status_code

            assert call(key) == 200
            assert call(key) == 200
            assert server.fetches == 1  # cached
            server.keys = [key, other_key]  # Clerk publishes the new key
            assert call(other_key) == 200  # unknown kid → one refetch
            assert server.fetches == 2
            server.fail = True
            fresh_cache = JwksCache(server.url)
            app.state.services.extras["clerk_token_verifier"] = SessionTokenVerifier(
                fresh_cache, issuer=ISSUER, clock=clock
            )
            assert call(key) == 503


def test_concurrent_first_requests_grant_one_row(
    database_url: str, make_settings: Any, jwks: JwksServer, key: RsaKey
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    clock = FrozenClock(T0)
    settings = make_settings(database_url=database_url, clerk_jwks_url=jwks.url, clerk_issuer=ISSUER)
    app = add_whoami(create_app(settings, clock=clock))
    sf = app.state.services.session_factory
    seed_tenants(sf)
    token = mint(key, now=T0, sub="user_race")
    with TestClient(app) as client, ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(
                lambda _: client.get("/test/whoami", headers={"Authorization": f"Bearer {token}"}).status_code,
                range(8),
            )
        )
        assert codes == [200] * 8
        assert len(roles_of(sf, "user_race")) == 1
