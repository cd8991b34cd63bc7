from __future__ import annotations

import io
import json

import structlog

from curaway.logging import REDACTED, configure_logging, get_logger, redact_processor


def test_sensitive_fields_are_redacted():
    event = redact_processor(
        None,
        "info",
        {
            "event": "x",
            "patient_email": "ada@example.org",
            "authorization": "Bearer abc",
            "svix_id": "msg_1",
            "nested": {"birth_date": "1970-01-01", "case_id": "case_1"},
            "document_text": "diabetes",
        },
    )
    assert event["patient_email"] == REDACTED
    assert event["authorization"] == REDACTED
    assert event["document_text"] == REDACTED
    assert event["nested"]["birth_date"] == REDACTED
    assert event["nested"]["case_id"] == "case_1"
    assert event["svix_id"] == "msg_1"


def test_token_shaped_values_are_masked_anywhere():
    jwt_like = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abcdefghijk"
    event = redact_processor(None, "info", {"event": "x", "detail": f"got {jwt_like} and whsec_abc123=="})
    assert jwt_like not in event["detail"]
    assert "whsec_abc123" not in event["detail"]


def test_json_lines_carry_cloud_logging_fields():
    stream = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=stream)
    try:
        structlog.contextvars.bind_contextvars(request_id="r1", trace_id="0" * 32)
        get_logger("t").info("task.succeeded", schedule="intake-reminders", patient_name="Ada")
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["event"] == "task.succeeded"
    assert line["message"] == "task.succeeded"
    assert line["severity"] == "INFO"
    assert line["request_id"] == "r1"
    assert line["logging.googleapis.com/trace"] == "0" * 32
    assert line["patient_name"] == REDACTED
