"""Sweep payload parsing (query strings arrive as strings)."""

from __future__ import annotations

import pytest

from curaway.errors import ValidationFailed
from curaway.tasks.fhir_sweep import DEFAULT_LIMIT, SweepOptions, parse_options


def test_defaults_and_string_values():
    assert parse_options({}) == SweepOptions()
    assert parse_options(None).limit == DEFAULT_LIMIT
    opts = parse_options({"dry_run": "true", "case_id": "case_1", "limit": "5", "fan_out": "0"})
    assert (opts.dry_run, opts.case_id, opts.limit, opts.fan_out) == (True, "case_1", 5, False)
    assert parse_options({"dry_run": False, "case_id": ""}).case_id is None


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"limit": 0},
        {"limit": 10_001},
        {"limit": 2.5},
        {"limit": True},
        {"dry_run": "sometimes"},
        {"dry_run": 2},
        {"case_id": 7},
        {"case_id": "c" * 65},
        {"concurrency": 0},
    ],
)
def test_bad_payloads_are_validation_failures(payload):
    with pytest.raises(ValidationFailed):
        parse_options(payload)
