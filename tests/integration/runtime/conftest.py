from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from curaway.api.app import create_app
from curaway.api.bootstrap import build_services
from curaway.clock import FrozenClock
from curaway.dispatch.auth import JwksCache
from curaway.dispatch.runner import RunnerConfig
from curaway.schedules import all_tasks
from tests.support.runtime import QSTASH_CURRENT, QSTASH_NEXT, SERVICE_ACCOUNT, CountingHandlers, JwksServer, RsaKey

SECRET = "internal-secret-for-tests-0001"
PUBLIC_URL = "https://api.curaway.test"
NOW = datetime(2026, 12, 3, 16, 0, 5, tzinfo=UTC)


@dataclass
class Runtime:
    client: TestClient
    services: Any
    handlers: CountingHandlers
    clock: FrozenClock
    key: RsaKey
    jwks: JwksServer

    def post(
        self,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        secret: bool = True,
        **kw: Any,
    ) -> Any:
        h = dict(headers or {})
        if secret:
            h.setdefault("X-Internal-Secret", SECRET)
        if content is None and json is None:
            content = b"{}"
        return self.client.post(path, json=json, content=content, headers=h, **kw)


@pytest.fixture
def runtime(make_settings, database_url):
    key = RsaKey("kid-1")
    with JwksServer([key]) as jwks:
        settings = make_settings(
            database_url=database_url,
            internal_secret=f"{SECRET},old-secret-still-valid-0002",
            public_url=PUBLIC_URL,
            qstash_current_signing_key=QSTASH_CURRENT,
            qstash_next_signing_key=QSTASH_NEXT,
            oidc_service_accounts=SERVICE_ACCOUNT,
            oidc_certs_url=jwks.url,
        )
        clock = FrozenClock(NOW)
        handlers = CountingHandlers()
        services = build_services(
            settings,
            clock=clock,
            handlers=handlers.table([t.name for t in all_tasks()]),
            runner_config=RunnerConfig(lease_s=30),
            oidc_certs=JwksCache(jwks.url),
        )
        with TestClient(
            create_app(settings, services=services), raise_server_exceptions=False, base_url=PUBLIC_URL
        ) as client:
            yield Runtime(client, services, handlers, clock, key, jwks)
