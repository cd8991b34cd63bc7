"""`curaway dev token` and `curaway roles list|revoke|restore` (in-process Typer runner, real database)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import structlog
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from curaway.api.app import create_app
from curaway.api.identity import DEV_KEY_FILENAME, build_token_verifier, dev_key_trusted, mint_dev_token
from curaway.cli.main import app as cli
from curaway.clock import SystemClock
from curaway.db import create_db_engine, create_session_factory
from curaway.errors import ConfigurationError
from curaway.settings import Settings
from tests.support.clerk_app import add_role, add_whoami, roles_of, seed_tenants

_runner = CliRunner()


class _Runner:
    """The CLI configures logging onto the runner's (soon closed) streams: reset structlog after each call."""

    def invoke(self, app: Any, args: list[str]) -> Any:
        try:
            return _runner.invoke(app, args)
        finally:
            structlog.reset_defaults()


runner = _Runner()


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    data_dir = tmp_path / "cli-data"
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CURAWAY_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CURAWAY_ENV", "dev")
    engine = create_db_engine(database_url)
    sf = create_session_factory(engine)
    seed_tenants(sf)
    yield {"sf": sf, "data_dir": data_dir, "database_url": database_url}
    engine.dispose()


def test_dev_token_is_trusted_by_the_dev_server(cli_env: dict[str, Any], make_settings: Any) -> None:
    result = runner.invoke(cli, ["dev", "token", "--user", "user_dev", "--org", "org_one", "--role", "org:admin"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert (cli_env["data_dir"] / DEV_KEY_FILENAME).stat().st_mode & 0o777 == 0o600
    settings = make_settings(env="dev", database_url=cli_env["database_url"], data_dir=cli_env["data_dir"])
    assert dev_key_trusted(settings)
    app = add_whoami(create_app(settings))
    with TestClient(app) as client:
        response = client.get("/test/whoami", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        assert (response.json()["tenant_id"], response.json()["org_role"]) == ("ten_a", "org:admin")
    v2 = runner.invoke(cli, ["dev", "token", "--org", "org_two", "--claims-version", "2"])
    claims = build_token_verifier(settings, clock=SystemClock()).verify(v2.stdout.strip())
    assert (claims.org_id, claims.org_role, claims.claims_version) == ("org_two", "org:member", 2)


def test_dev_key_is_created_once(tmp_path: Path, make_settings: Any) -> None:
    settings = make_settings(data_dir=tmp_path / "d")
    now = SystemClock().now()
    first = mint_dev_token(settings, user_id="u", org_id="o", role="org:member", ttl_s=60, now=now)
    pem = (tmp_path / "d" / DEV_KEY_FILENAME).read_bytes()
    second = mint_dev_token(settings, user_id="u", org_id="o", role="org:member", ttl_s=60, now=now)
    assert (tmp_path / "d" / DEV_KEY_FILENAME).read_bytes() == pem
    verifier = build_token_verifier(settings, clock=SystemClock())
    assert verifier.verify(first).user_id == verifier.verify(second).user_id == "u"


def test_dev_key_is_never_trusted_in_prod(tmp_path: Path) -> None:
    prod = Settings(
        env="prod",
        data_dir=tmp_path,
        database_url="postgresql://curaway@db.internal/curaway",
        internal_secret="3f9c0a7e5b1d4c2a9e8f7a6b5c4d3e2f",
        clerk_webhook_secret="whsec_c2VjcmV0LWZvci10ZXN0cy1vbmx5LTEyMw==",
        clerk_jwks_url="https://clerk.curaway.health/.well-known/jwks.json",
        clerk_issuer="https://clerk.curaway.health",
    )
    assert not dev_key_trusted(prod)
    with pytest.raises(ConfigurationError):
        mint_dev_token(prod, user_id="u", org_id="o", role="org:member", ttl_s=60, now=SystemClock().now())
    assert not (tmp_path / DEV_KEY_FILENAME).exists()


def test_roles_revoke_list_and_restore(cli_env: dict[str, Any]) -> None:
    sf = cli_env["sf"]
    at = SystemClock().now()
    add_role(sf, user_id="user_x", tenant_id="ten_a", at=at)
    add_role(sf, user_id="user_x", tenant_id="ten_a", role="case:reviewer", granted_by="admin:ops", at=at)
    add_role(sf, user_id="user_x", tenant_id="ten_b", at=at)

    listed = runner.invoke(cli, ["roles", "list", "--user", "user_x", "--json"])
    assert listed.exit_code == 0, listed.output
    assert len(json.loads(listed.stdout)) == 3

    revoked = runner.invoke(cli, ["roles", "revoke", "user_x", "--tenant", "ten_a", "--json"])
    assert revoked.exit_code == 0, revoked.output
    data = json.loads(revoked.stdout)
    assert {(r["granted_by"], r["is_active"], r["revoked_by"]) for r in data} == {
        ("system:clerk_jwt", False, "operator:cli"),
        ("admin:ops", False, "operator:cli"),
    }
    rows = roles_of(sf, "user_x")
    assert [r["is_active"] for r in rows if r["tenant_id"] == "ten_b"] == [True]

    restored = runner.invoke(cli, ["roles", "restore", "user_x", "--tenant", "ten_a", "--json"])
    assert restored.exit_code == 0, restored.output
    after = {
        (r["granted_by"], r["is_active"], r["revoked"]) for r in roles_of(sf, "user_x") if r["tenant_id"] == "ten_a"
    }
    # The manual row comes back; the auto row waits for a fresh membership.
    assert after == {("system:clerk_jwt", False, False), ("admin:ops", True, False)}

    table = runner.invoke(cli, ["roles", "list", "--tenant", "ten_a"])
    assert table.exit_code == 0 and "user_x" in table.stdout

    missing = runner.invoke(cli, ["roles", "revoke", "user_x", "--tenant", "ten_nope"])
    assert missing.exit_code == 1
    assert "no tenant ten_nope" in missing.output
