"""Sign Clerk webhook deliveries with the ``standardwebhooks`` reference library and build Clerk-shaped events."""

from __future__ import annotations

import base64
import json
import secrets
from datetime import datetime
from typing import Any

import standardwebhooks

# The shared Standard Webhooks test vector (standard-webhooks spec / reference libraries).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, msg_id: str, at: datetime, body: bytes) -> str:
    return standardwebhooks.Webhook(secret).sign(msg_id, at, body.decode("utf-8"))


def signed_headers(
    secret: str | list[str],
    body: bytes,
    *,
    at: datetime,
    msg_id: str | None = None,
    style: str = "svix",
) -> dict[str, str]:
    """Headers of one delivery; several secrets → several space-separated signatures (rotation dual-signing)."""
    msg_id = msg_id or f"msg_{secrets.token_hex(12)}"
    secret_list = [secret] if isinstance(secret, str) else secret
    signature = " ".join(sign(s, msg_id, at, body) for s in secret_list)
    return {
        f"{style}-id": msg_id,
        f"{style}-timestamp": str(int(at.timestamp())),
        f"{style}-signature": signature,
        "content-type": "application/json",
    }


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def membership_event(kind: str, *, org_id: str, user_id: str, at: datetime, role: str = "org:member") -> bytes:
    """``organizationMembership.{created,updated,deleted}`` as Clerk sends it (trimmed to the fields we read)."""
    event = {
        "object": "event",
        "type": f"organizationMembership.{kind}",
        "timestamp": _ms(at),
        "instance_id": "ins_test",
        "data": {
            "object": "organization_membership",
            "id": f"orgmem_{secrets.token_hex(6)}",
            "role": role,
            "created_at": _ms(at),
            "updated_at": _ms(at),
            "organization": {"object": "organization", "id": org_id, "name": "Acme Clinic", "slug": "acme"},
            "public_user_data": {
                "user_id": user_id,
                "identifier": "someone@example.com",
                "first_name": "Some",
                "last_name": "One",
            },
        },
    }
    return json.dumps(event).encode()


def user_deleted_event(*, user_id: str, at: datetime) -> bytes:
    event = {
        "object": "event",
        "type": "user.deleted",
        "timestamp": _ms(at),
        "data": {"object": "user", "id": user_id, "deleted": True},
    }
    return json.dumps(event).encode()


def event(type_: str, data: Any, *, at: datetime) -> bytes:
    return json.dumps({"object": "event", "type": type_, "timestamp": _ms(at), "data": data}).encode()
