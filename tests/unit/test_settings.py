from __future__ import annotations

import pytest

from curaway.errors import ConfigurationError
from curaway.settings import DEV_INTERNAL_SECRET, Settings


def test_defaults_are_the_embedded_local_setup(make_settings):
    s = make_settings()
    assert s.dispatch_backend == "local"
    assert s.resolved_database_url.startswith("sqlite:///")
    assert s.resolved_database_url.endswith("curaway.db")
    assert s.internal_secrets == [DEV_INTERNAL_SECRET]
    assert s.email_backend == "outbox"
    assert s.llm_provider == "local"


def test_environment_is_read_by_the_documented_names(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("CURAWAY_DISPATCH_BACKEND", "qstash")
    monkeypatch.setenv("INTERNAL_SECRET", "new-one, old-one")
    monkeypatch.setenv("CLERK_WEBHOOK_SECRET", "whsec_a whsec_b,whsec_c")
    monkeypatch.setenv("CURAWAY_OIDC_SERVICE_ACCOUNTS", "Tasks@proj.iam.gserviceaccount.com")
    s = Settings()
    assert s.database_url == "postgresql://u@h/db"
    assert s.dispatch_backend == "qstash"
    assert s.internal_secrets == ["new-one", "old-one"]
    assert s.clerk_webhook_secrets == ["whsec_a", "whsec_b", "whsec_c"]
    assert s.oidc_service_account_list == ["tasks@proj.iam.gserviceaccount.com"]


def test_a_developer_shell_does_not_leak_into_tests():
    # scrub_env (autouse) removed anything Settings reads.
    assert Settings().dispatch_backend == "local"


def test_prod_refuses_missing_secrets_naming_the_variable():
    with pytest.raises(ConfigurationError) as info:
        Settings(env="prod")
    message = str(info.value)
    for name in ("DATABASE_URL", "INTERNAL_SECRET", "CLERK_WEBHOOK_SECRET", "CURAWAY_CLERK_JWKS_URL"):
        assert name in message


def _prod_values(**extra):
    values = dict(
        env="prod",
        database_url="postgresql://app@db/curaway",
        internal_secret="9f2c61c0b7d44c2e8e1a7f3b5d6e4a21",
        clerk_webhook_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        clerk_jwks_url="https://clerk.curaway.app/.well-known/jwks.json",
        clerk_issuer="https://clerk.curaway.app",
    )
    values.update(extra)
    return values


def test_prod_accepts_real_looking_secrets():
    assert Settings(**_prod_values()).env == "prod"


@pytest.mark.parametrize("placeholder", ["changeme", "CHANGE_ME", "my-placeholder-1", "xxxx", DEV_INTERNAL_SECRET])
def test_prod_refuses_placeholder_secrets(placeholder):
    with pytest.raises(ConfigurationError) as info:
        Settings(**_prod_values(internal_secret=placeholder))
    assert "INTERNAL_SECRET holds a placeholder value" in str(info.value)
    assert placeholder not in str(info.value).replace("INTERNAL_SECRET", "")


def test_prod_requires_backend_specific_secrets():
    with pytest.raises(ConfigurationError) as info:
        Settings(**_prod_values(dispatch_backend="qstash"))
    assert "QSTASH_CURRENT_SIGNING_KEY" in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        Settings(**_prod_values(dispatch_backend="cloudtasks"))
    assert "CURAWAY_OIDC_SERVICE_ACCOUNTS" in str(info.value)


def test_prod_has_no_dev_internal_secret_fallback():
    s = Settings(**_prod_values())
    assert DEV_INTERNAL_SECRET not in s.internal_secrets


def test_endpoint_url_is_exact():
    s = Settings(public_url="https://api.curaway.app/")
    assert s.endpoint_url("/api/v1/internal/extract") == "https://api.curaway.app/api/v1/internal/extract"
