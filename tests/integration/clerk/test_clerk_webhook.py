"""POST /api/v1/webhooks/clerk end to end on SQLite and Postgres: verification, inbox dedup, role lifecycle."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from structlog.testing import capture_logs

from curaway.api.app import create_app
from curaway.clock import FrozenClock
from curaway.db import transaction
from curaway.models import DeadLetter, User, WebhookInbox
from curaway.repositories.identity import revoke_roles
from curaway.repositories.webhooks import INBOX_RETENTION, prune_inbox
from tests.support.clerk_app import UNMAPPED_ORG, add_role, roles_of, seed_tenants
from tests.support.clerk_webhooks import event, membership_event, new_secret, signed_headers, user_deleted_event

T0 = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
PATH = "/api/v1/webhooks/clerk"
SECRET = new_secret()


class Hook:
    def __init__(self, client: TestClient, clock: FrozenClock, sf: Any) -> None:
        self.client = client
        self.clock = clock
        self.sf = sf

    def deliver(self, body: bytes, *, msg_id: str | None = None, secret: str | list[str] = SECRET, **kw: Any) -> Any:
        headers = signed_headers(secret, body, at=self.clock.now(), msg_id=msg_id, **kw)
        return self.client.post(PATH, content=body, headers=headers)

    def inbox(self) -> list[tuple[str, str | None, str]]:
        with transaction(self.sf) as s:
            return [
                (r.event_id, r.event_type, r.outcome) for r in s.scalars(select(WebhookInbox).order_by(WebhookInbox.id))
            ]

    def dead_letters(self) -> list[DeadLetter]:
        with transaction(self.sf) as s:
            return list(s.scalars(select(DeadLetter)))

    def metric(self, event_type: str, outcome: str) -> float:
        text = self.client.get("/metrics").text
        needle = f'curaway_webhooks_total{{event_type="{event_type}",outcome="{outcome}",source="clerk"}}'
        for line in text.splitlines():
            if line.startswith(needle):
                return float(line.split()[-1])
        return 0.0


@pytest.fixture
def hook(database_url: str, make_settings: Any) -> Iterator[Hook]:
    clock = FrozenClock(T0)
    app = create_app(make_settings(database_url=database_url, clerk_webhook_secret=SECRET), clock=clock)
    sf = app.state.services.session_factory
    seed_tenants(sf)
    with TestClient(app) as client:
        yield Hook(client, clock, sf)


def _deleted(at: datetime, user: str = "user_alice", org: str = "org_one") -> bytes:
    return membership_event("deleted", org_id=org, user_id=user, at=at)


def test_membership_deleted_deactivates_only_the_auto_row_in_that_tenant(hook: Hook) -> None:
    before = T0 - timedelta(days=3)
    add_role(hook.sf, user_id="user_alice", tenant_id="ten_a", at=before)
    add_role(hook.sf, user_id="user_alice", tenant_id="ten_a", role="case:reviewer", granted_by="admin:ops", at=before)
    add_role(hook.sf, user_id="user_alice", tenant_id="ten_b", at=before)
    add_role(hook.sf, user_id="user_bob", tenant_id="ten_a", at=before)
    hook.clock.advance(minutes=1)
    response = hook.deliver(_deleted(T0), msg_id="msg_del_1")
    assert response.status_code == 200, response.text
    assert response.json() == {"event": "deactivated", "count": 1}
    rows = {(r["tenant_id"], r["granted_by"]): r for r in roles_of(hook.sf, "user_alice")}
    assert rows[("ten_a", "system:clerk_jwt")]["is_active"] is False
    assert rows[("ten_a", "system:clerk_jwt")]["updated_at"] == hook.clock.now()
    assert rows[("ten_a", "admin:ops")]["is_active"] is True
    assert rows[("ten_a", "admin:ops")]["updated_at"] == before
    assert rows[("ten_b", "system:clerk_jwt")]["is_active"] is True
    assert roles_of(hook.sf, "user_bob")[0]["is_active"] is True
    assert hook.inbox() == [("msg_del_1", "organizationMembership.deleted", "deactivated")]
    assert hook.metric("organizationMembership.deleted", "processed") == 1


@pytest.mark.parametrize("later", [timedelta(minutes=3), timedelta(hours=26)])
def test_redelivery_is_a_duplicate_and_changes_nothing(hook: Hook, later: timedelta) -> None:
    add_role(hook.sf, user_id="user_alice", tenant_id="ten_a", at=T0 - timedelta(days=1))
    body = _deleted(T0)
    assert hook.deliver(body, msg_id="msg_dup").json() == {"event": "deactivated", "count": 1}
    # The user is re-added and signs in again: a new active auto row state.
    hook.clock.advance(minutes=1)
    with transaction(hook.sf) as s:
        from curaway.repositories.identity import ensure_auto_role

        ensure_auto_role(
            s,
            user_id="user_alice",
            tenant_id="ten_a",
            role="org:member",
            membership_seen_at=hook.clock.now(),
            now=hook.clock.now(),
        )
    hook.clock.advance(seconds=later.total_seconds())
    again = hook.deliver(body, msg_id="msg_dup")  # Svix retry: same id, fresh timestamp and signature
    assert again.status_code == 200
    assert again.json() == {"event": "deactivated", "count": 1, "status": "duplicate"}
    assert roles_of(hook.sf, "user_alice")[0]["is_active"] is True
    assert hook.inbox() == [("msg_dup", "organizationMembership.deleted", "deactivated")]
    assert hook.metric("organizationMembership.deleted", "duplicate") == 1


def test_a_role_granted_after_the_event_stays_active(hook: Hook) -> None:
    # The removal happened at T0, but the webhook arrives late; the user was re-added (row changed) at T0 + 2 min.
    add_role(hook.sf, user_id="user_alice", tenant_id="ten_a", at=T0 + timedelta(minutes=2))
    hook.clock.advance(minutes=10)
    response = hook.deliver(_deleted(T0))
    assert response.json() == {"event": "deactivated", "count": 0}
    assert roles_of(hook.sf, "user_alice")[0]["is_active"] is True


def test_event_time_falls_back_to_data_updated_at(hook: Hook) -> None:
    add_role(hook.sf, user_id="user_alice", tenant_id="ten_a", at=T0 + timedelta(minutes=2))
    payload = json.loads(_deleted(T0))
    del payload["timestamp"]  # only data.updated_at (T0) is left
    hook.clock.advance(minutes=10)
    assert hook.deliver(json.dumps(payload).encode()).json() == {"event": "deactivated", "count": 0}


def test_unmapped_org_is_ignored_and_recorded(hook: Hook) -> None:
    add_role(hook.sf, user_id="user_alice", tenant_id="ten_a", at=T0 - timedelta(days=1))
    with capture_logs() as logs:
        response = hook.deliver(_deleted(T0, org=UNMAPPED_ORG), msg_id="msg_unmapped")
    assert response.status_code == 200
    assert response.json() == {"event": "ignored", "reason": "unmapped_org"}
    assert hook.inbox() == [("msg_unmapped", "organizationMembership.deleted", "ignored")]
    assert any(e["event"] == "webhook.unmapped_org" and e["org_id"] == UNMAPPED_ORG for e in logs)
    assert roles_of(hook.sf, "user_alice")[0]["is_active"] is True


def test_unknown_event_types_are_ignored_and_counted(hook: Hook) -> None:
    for i in range(2):
        response = hook.deliver(event("session.created", {"id": "sess_1"}, at=T0), msg_id=f"msg_unknown_{i}")
        assert response.status_code == 200
        assert response.json() == {"event": "ignored", "reason": "unhandled_event_type"}
    assert hook.metric("session.created", "ignored") == 2
    assert [o for _, _, o in hook.inbox()] == ["ignored", "ignored"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json at all", "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (json.dumps({"type": "organizationMembership.deleted"}).encode(), "schema_invalid"),
        (
            event(
                "organizationMembership.deleted",
                {"organization": {"id": "org_one"}, "public_user_data": {"user_id": 5}},
                at=T0,
            ),
            "schema_invalid",
        ),
        (
            event(
                "organizationMembership.created",
                {"organization": {"id": "org_one"}, "public_user_data": {"user_id": "user_alice"}},
                at=T0,
            ),
            "schema_invalid",
        ),
        (event("user.deleted", {"deleted": True, "email": "someone@example.com"}, at=T0), "schema_invalid"),
    ],
)
def test_signed_but_schema_invalid_is_2xx_and_dead_lettered(hook: Hook, body: bytes, code: str) -> None:
    add_role(hook.sf, user_id="user_alice", tenant_id="ten_a", at=T0 - timedelta(days=1))
    response = hook.deliver(body, msg_id="msg_bad")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "dead_lettered"
    assert response.json()["reason"] == code
    [letter] = hook.dead_letters()
    assert (letter.task, letter.run_key, letter.source, letter.error_code) == (
        "clerk-webhook",
        "clerk:msg_bad",
        "clerk",
        code,
    )
    assert letter.payload["svix_id"] == "msg_bad"
    assert "example.com" not in json.dumps(letter.payload)
    assert roles_of(hook.sf, "user_alice")[0]["is_active"] is True
    assert [o for _, _, o in hook.inbox()] == ["dead_lettered"]
    # A redelivery is a duplicate and writes no second dead letter.
    assert hook.deliver(body, msg_id="msg_bad").json()["status"] == "duplicate"
    assert len(hook.dead_letters()) == 1


def test_membership_created_grants_and_reactivates_but_respects_revoke(hook: Hook) -> None:
    created = membership_event("created", org_id="org_one", user_id="user_carol", at=T0, role="org:admin")
    assert hook.deliver(created).json() == {"event": "activated", "count": 1, "outcome": "granted"}
    assert [(r["role"], r["is_active"]) for r in roles_of(hook.sf, "user_carol")] == [("org:admin", True)]
    # Removed, then added again later: the fresh membership re-activates the auto row.
    hook.clock.advance(minutes=1)
    assert hook.deliver(_deleted(hook.clock.now(), user="user_carol")).json()["count"] == 1
    hook.clock.advance(minutes=1)
    readded = membership_event("created", org_id="org_one", user_id="user_carol", at=hook.clock.now())
    assert hook.deliver(readded).json()["outcome"] == "reactivated"
    assert [(r["role"], r["is_active"]) for r in roles_of(hook.sf, "user_carol")] == [("org:member", True)]
    # An old "created" redelivered under a new id (older than the row's last change) changes nothing.
    assert hook.deliver(created).json()["outcome"] == "active"
    # After an operator revoke, a membership webhook never re-activates.
    with transaction(hook.sf) as s:
        revoke_roles(
            s, user_id="user_carol", tenant_id="ten_a", role=None, revoked_by="operator:test", now=hook.clock.now()
        )
    hook.clock.advance(minutes=1)
    again = membership_event("created", org_id="org_one", user_id="user_carol", at=hook.clock.now())
    assert hook.deliver(again).json() == {"event": "activated", "count": 0, "outcome": "revoked"}
    assert roles_of(hook.sf, "user_carol")[0]["is_active"] is False


def test_membership_updated_follows_the_role(hook: Hook) -> None:
    none_yet = membership_event("updated", org_id="org_one", user_id="user_dan", at=T0, role="org:admin")
    assert hook.deliver(none_yet).json() == {"event": "ignored", "reason": "no_auto_role"}
    add_role(hook.sf, user_id="user_dan", tenant_id="ten_a", at=T0 - timedelta(hours=1))
    updated = membership_event("updated", org_id="org_one", user_id="user_dan", at=T0, role="org:admin")
    assert hook.deliver(updated).json() == {"event": "updated", "count": 1, "outcome": "role_changed"}
    assert roles_of(hook.sf, "user_dan")[0]["role"] == "org:admin"


def test_user_deleted_deactivates_auto_rows_everywhere(hook: Hook) -> None:
    before = T0 - timedelta(days=1)
    add_role(hook.sf, user_id="user_eve", tenant_id="ten_a", at=before)
    add_role(hook.sf, user_id="user_eve", tenant_id="ten_b", at=before)
    add_role(hook.sf, user_id="user_eve", tenant_id="ten_b", role="case:reviewer", granted_by="admin:ops", at=before)
    with transaction(hook.sf) as s:
        s.add(User(id="user_eve"))
    assert hook.deliver(user_deleted_event(user_id="user_eve", at=T0)).json() == {"event": "deactivated", "count": 2}
    assert [(r["granted_by"], r["is_active"]) for r in roles_of(hook.sf, "user_eve")] == [
        ("system:clerk_jwt", False),
        ("system:clerk_jwt", False),
        ("admin:ops", True),
    ]
    with transaction(hook.sf) as s:
        assert s.get(User, "user_eve").deleted_at == T0


def test_concurrent_duplicate_deliveries_apply_once(hook: Hook) -> None:
    add_role(hook.sf, user_id="user_alice", tenant_id="ten_a", at=T0 - timedelta(days=1))
    body = _deleted(T0)
    headers = signed_headers(SECRET, body, at=T0, msg_id="msg_race")
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: hook.client.post(PATH, content=body, headers=headers), range(6)))
    assert [a.status_code for a in answers] == [200] * 6
    statuses = sorted(a.json().get("status", "applied") for a in answers)
    assert statuses == ["applied"] + ["duplicate"] * 5
    assert all(a.json()["count"] == 1 for a in answers)
    assert len(hook.inbox()) == 1


def test_rotation_overlap_end_to_end(database_url: str, make_settings: Any) -> None:
    old, new = new_secret(), new_secret()
    clock = FrozenClock(T0)
    app = create_app(make_settings(database_url=database_url, clerk_webhook_secret=f"{old}, {new}"), clock=clock)
    with TestClient(app) as client:
        body = event("session.created", {"id": "sess_1"}, at=T0)
        for i, secrets in enumerate(([old], [old, new], [new])):
            headers = signed_headers(secrets, body, at=T0, msg_id=f"msg_rot_{i}")
            assert client.post(PATH, content=body, headers=headers).status_code == 200
        headers = signed_headers(new_secret(), body, at=T0, msg_id="msg_rot_x")
        assert client.post(PATH, content=body, headers=headers).status_code == 401


def test_inbox_pruning_keeps_recent_ids(hook: Hook) -> None:
    body = event("session.created", {"id": "sess_1"}, at=T0)
    hook.deliver(body, msg_id="msg_old")
    hook.clock.advance(days=3, hours=1)
    hook.deliver(event("session.created", {"id": "sess_1"}, at=hook.clock.now()), msg_id="msg_new")
    with transaction(hook.sf) as s:
        assert prune_inbox(s, older_than=hook.clock.now() - INBOX_RETENTION) == 1
    assert [i for i, _, _ in hook.inbox()] == ["msg_new"]
    assert timedelta(days=3) <= INBOX_RETENTION
