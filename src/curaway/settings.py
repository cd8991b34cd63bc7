"""All configuration, read once into one typed object (DESIGN §3 "Environment").

``Settings()`` reads the process environment; tests build ``Settings(_env_file=None, **values)`` from a scrubbed
environment. ``CURAWAY_ENV=prod`` refuses missing or placeholder secrets, naming the variable.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from curaway.errors import ConfigurationError

DEV_INTERNAL_SECRET = "dev-internal-secret-not-for-production"
PLACEHOLDER_PATTERN = re.compile(
    r"(change.?me|placeholder|not.for.production|^x+$|^todo$|^secret$|^dev-|example)", re.I
)

Backend = Literal["local", "qstash", "cloudtasks"]


def _split(value: str | None, *, seps: str = ",") -> list[str]:
    if not value:
        return []
    pattern = "[" + re.escape(seps) + "]+"
    return [part.strip() for part in re.split(pattern, value) if part.strip()]


def _alias(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True, frozen=True)

    env: Literal["dev", "test", "prod"] = Field("dev", validation_alias=_alias("CURAWAY_ENV", "env"))
    database_url: str = Field("", validation_alias=_alias("DATABASE_URL", "database_url"))
    dispatch_backend: Backend = Field("local", validation_alias=_alias("CURAWAY_DISPATCH_BACKEND", "dispatch_backend"))
    public_url: str = Field("http://127.0.0.1:8000", validation_alias=_alias("CURAWAY_PUBLIC_URL", "public_url"))
    internal_secret: str = Field("", validation_alias=_alias("INTERNAL_SECRET", "internal_secret"))

    qstash_token: str = Field("", validation_alias=_alias("QSTASH_TOKEN", "qstash_token"))
    qstash_url: str = Field("https://qstash.upstash.io", validation_alias=_alias("QSTASH_URL", "qstash_url"))
    qstash_current_signing_key: str = Field(
        "", validation_alias=_alias("QSTASH_CURRENT_SIGNING_KEY", "qstash_current_signing_key")
    )
    qstash_next_signing_key: str = Field(
        "", validation_alias=_alias("QSTASH_NEXT_SIGNING_KEY", "qstash_next_signing_key")
    )

    oidc_audience: str = Field("", validation_alias=_alias("CURAWAY_OIDC_AUDIENCE", "oidc_audience"))
    oidc_service_accounts: str = Field(
        "", validation_alias=_alias("CURAWAY_OIDC_SERVICE_ACCOUNTS", "oidc_service_accounts")
    )
    oidc_certs_url: str = Field(
        "https://www.googleapis.com/oauth2/v3/certs",
        validation_alias=_alias("CURAWAY_OIDC_CERTS_URL", "oidc_certs_url"),
    )

    google_cloud_project: str = Field("", validation_alias=_alias("GOOGLE_CLOUD_PROJECT", "google_cloud_project"))
    gcp_location: str = Field("", validation_alias=_alias("CURAWAY_GCP_LOCATION", "gcp_location"))
    gcp_service_account: str = Field("", validation_alias=_alias("CURAWAY_GCP_SERVICE_ACCOUNT", "gcp_service_account"))
    cloud_tasks_emulator_host: str = Field(
        "", validation_alias=_alias("CLOUD_TASKS_EMULATOR_HOST", "cloud_tasks_emulator_host")
    )

    clerk_webhook_secret: str = Field("", validation_alias=_alias("CLERK_WEBHOOK_SECRET", "clerk_webhook_secret"))
    clerk_jwks_url: str = Field("", validation_alias=_alias("CURAWAY_CLERK_JWKS_URL", "clerk_jwks_url"))
    clerk_issuer: str = Field("", validation_alias=_alias("CURAWAY_CLERK_ISSUER", "clerk_issuer"))

    frankfurter_url: str = Field(
        "https://api.frankfurter.app", validation_alias=_alias("CURAWAY_FRANKFURTER_URL", "frankfurter_url")
    )
    fx_base: str = Field("EUR", validation_alias=_alias("CURAWAY_FX_BASE", "fx_base"))
    fx_currencies: str = Field(
        "USD,GBP,INR,TRY,THB,AED,MXN,KRW", validation_alias=_alias("CURAWAY_FX_CURRENCIES", "fx_currencies")
    )

    email_backend: Literal["outbox", "smtp", "console"] = Field(
        "outbox", validation_alias=_alias("CURAWAY_EMAIL_BACKEND", "email_backend")
    )
    smtp_url: str = Field("", validation_alias=_alias("CURAWAY_SMTP_URL", "smtp_url"))
    email_from: str = Field(
        "Curaway <no-reply@curaway.example>", validation_alias=_alias("CURAWAY_EMAIL_FROM", "email_from")
    )

    llm_provider: Literal["local", "anthropic"] = Field(
        "local", validation_alias=_alias("CURAWAY_LLM_PROVIDER", "llm_provider")
    )
    anthropic_api_key: str = Field("", validation_alias=_alias("ANTHROPIC_API_KEY", "anthropic_api_key"))
    anthropic_base_url: str = Field("", validation_alias=_alias("ANTHROPIC_BASE_URL", "anthropic_base_url"))
    anthropic_model: str = Field(
        "claude-sonnet-4-5", validation_alias=_alias("CURAWAY_ANTHROPIC_MODEL", "anthropic_model")
    )
    llm_timeout_s: float = Field(60.0, gt=0, validation_alias=_alias("CURAWAY_LLM_TIMEOUT_S", "llm_timeout_s"))
    llm_max_retries: int = Field(2, ge=0, le=10, validation_alias=_alias("CURAWAY_LLM_MAX_RETRIES", "llm_max_retries"))
    # Off by default: LLM spans never carry document text, prompts or outputs unless this is set explicitly.
    llm_trace_content: bool = Field(False, validation_alias=_alias("CURAWAY_LLM_TRACE_CONTENT", "llm_trace_content"))

    langfuse_public_key: str = Field("", validation_alias=_alias("LANGFUSE_PUBLIC_KEY", "langfuse_public_key"))
    langfuse_secret_key: str = Field("", validation_alias=_alias("LANGFUSE_SECRET_KEY", "langfuse_secret_key"))
    langfuse_host: str = Field("", validation_alias=_alias("LANGFUSE_HOST", "langfuse_host"))
    otel_exporter_otlp_endpoint: str = Field(
        "", validation_alias=_alias("OTEL_EXPORTER_OTLP_ENDPOINT", "otel_exporter_otlp_endpoint")
    )

    data_dir: Path = Field(Path("./.curaway"), validation_alias=_alias("CURAWAY_DATA_DIR", "data_dir"))
    log_level: str = Field("INFO", validation_alias=_alias("CURAWAY_LOG_LEVEL", "log_level"))
    log_format: Literal["json", "console"] = Field("json", validation_alias=_alias("CURAWAY_LOG_FORMAT", "log_format"))
    max_body_bytes: int = Field(1_048_576, validation_alias=_alias("CURAWAY_MAX_BODY_BYTES", "max_body_bytes"))
    webhook_max_body_bytes: int = Field(
        262_144, validation_alias=_alias("CURAWAY_WEBHOOK_MAX_BODY_BYTES", "webhook_max_body_bytes")
    )
    upload_max_bytes: int = Field(
        20 * 1_048_576, validation_alias=_alias("CURAWAY_UPLOAD_MAX_BYTES", "upload_max_bytes")
    )

    # Local dispatcher tuning (defaults suit production; tests shrink them).
    dispatch_concurrency: int = Field(
        4, ge=1, le=64, validation_alias=_alias("CURAWAY_DISPATCH_CONCURRENCY", "dispatch_concurrency")
    )
    dispatch_poll_s: float = Field(
        0.5, gt=0, le=60, validation_alias=_alias("CURAWAY_DISPATCH_POLL_S", "dispatch_poll_s")
    )
    dispatch_lease_s: float = Field(30.0, gt=0, validation_alias=_alias("CURAWAY_DISPATCH_LEASE_S", "dispatch_lease_s"))
    run_lease_s: float = Field(60.0, gt=0, validation_alias=_alias("CURAWAY_RUN_LEASE_S", "run_lease_s"))
    retry_backoff_scale: float = Field(
        1.0, ge=0, le=10, validation_alias=_alias("CURAWAY_RETRY_BACKOFF_SCALE", "retry_backoff_scale")
    )

    @model_validator(mode="after")
    def _check_prod(self) -> Settings:
        if self.env == "prod":
            problems = self.prod_problems()
            if problems:
                raise ConfigurationError("refusing to start with CURAWAY_ENV=prod: " + "; ".join(problems))
        return self

    # -- derived values ---------------------------------------------------------------------------------------
    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'curaway.db').as_posix()}"

    @cached_property
    def internal_secrets(self) -> list[str]:
        """Rotation list; the first one is sent, all are accepted. A dev default exists outside prod only."""
        secrets = _split(self.internal_secret)
        if not secrets and self.env != "prod":
            return [DEV_INTERNAL_SECRET]
        return secrets

    @cached_property
    def oidc_service_account_list(self) -> list[str]:
        return [s.lower() for s in _split(self.oidc_service_accounts)]

    @cached_property
    def clerk_webhook_secrets(self) -> list[str]:
        return _split(self.clerk_webhook_secret, seps=", ")

    @cached_property
    def fx_currency_list(self) -> list[str]:
        return [c.upper() for c in _split(self.fx_currencies)]

    @property
    def qstash_signing_keys(self) -> list[str]:
        return [k for k in (self.qstash_current_signing_key, self.qstash_next_signing_key) if k]

    def endpoint_url(self, path: str) -> str:
        """The exact URL a backend calls for ``path`` (QStash ``sub`` and the default OIDC ``aud``)."""
        return self.public_url.rstrip("/") + "/" + path.lstrip("/")

    def prod_problems(self) -> list[str]:
        problems: list[str] = []

        def need(name: str, value: str) -> None:
            if not value:
                problems.append(f"{name} is not set")
            elif any(PLACEHOLDER_PATTERN.search(part) for part in _split(value, seps=", ")):
                problems.append(f"{name} holds a placeholder value")

        need("DATABASE_URL", self.database_url)
        need("INTERNAL_SECRET", self.internal_secret)
        need("CLERK_WEBHOOK_SECRET", self.clerk_webhook_secret)
        need("CURAWAY_CLERK_JWKS_URL", self.clerk_jwks_url)
        need("CURAWAY_CLERK_ISSUER", self.clerk_issuer)
        if self.dispatch_backend == "qstash":
            need("QSTASH_TOKEN", self.qstash_token)
            need("QSTASH_CURRENT_SIGNING_KEY", self.qstash_current_signing_key)
            need("QSTASH_NEXT_SIGNING_KEY", self.qstash_next_signing_key)
        if self.dispatch_backend == "cloudtasks":
            need("GOOGLE_CLOUD_PROJECT", self.google_cloud_project)
            need("CURAWAY_GCP_LOCATION", self.gcp_location)
            need("CURAWAY_GCP_SERVICE_ACCOUNT", self.gcp_service_account)
            need("CURAWAY_OIDC_SERVICE_ACCOUNTS", self.oidc_service_accounts)
        if self.llm_provider == "anthropic":
            need("ANTHROPIC_API_KEY", self.anthropic_api_key)
        if self.email_backend == "smtp":
            need("CURAWAY_SMTP_URL", self.smtp_url)
        return problems


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; ``overrides`` win (CLI flags)."""
    return Settings(**overrides)  # type: ignore[arg-type]
