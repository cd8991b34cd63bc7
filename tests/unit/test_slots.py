from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from curaway.errors import ValidationFailed
from curaway.schedules import SCHEDULES, latest_slot, next_slots, parse_slot, slot_key, slots_between
from curaway.schedules.slots import is_slot, validate_cron


def dt(*a):
    return datetime(*a, tzinfo=UTC)


def test_latest_slot_is_the_instant_being_served():
    assert latest_slot("0 * * * *", dt(2026, 12, 3, 15, 41)) == dt(2026, 12, 3, 15)
    assert latest_slot("0 * * * *", dt(2026, 12, 3, 16, 0, 0)) == dt(2026, 12, 3, 16)
    assert latest_slot("0 */2 * * *", dt(2026, 12, 3, 15, 59, 59)) == dt(2026, 12, 3, 14)
    assert latest_slot("0 0 * * *", dt(2026, 12, 3, 0, 0, 30)) == dt(2026, 12, 3)


def test_next_slots_match_the_research_table():
    base = dt(2026, 12, 3, 15, 41)
    assert next_slots("0 */2 * * *", base, 3) == [
        dt(2026, 12, 3, 16),
        dt(2026, 12, 3, 18),
        dt(2026, 12, 3, 20),
    ]
    assert next_slots("0 9 * * *", base) == [dt(2026, 12, 4, 9)]


def test_slots_between_is_half_open():
    got = list(slots_between("0 * * * *", dt(2026, 1, 1, 10), dt(2026, 1, 1, 13)))
    assert got == [dt(2026, 1, 1, 11), dt(2026, 1, 1, 12), dt(2026, 1, 1, 13)]


def test_slot_key_and_parse():
    assert slot_key("intake-reminders", dt(2026, 12, 3, 16)) == "intake-reminders@2026-12-03T16:00:00Z"
    assert parse_slot("2026-12-03T16:00:00Z") == dt(2026, 12, 3, 16)
    assert parse_slot("2026-12-03T17:00:00+01:00") == dt(2026, 12, 3, 16)
    with pytest.raises(ValidationFailed):
        parse_slot("2026-12-03T16:00:00")
    with pytest.raises(ValidationFailed):
        parse_slot("yesterday")


def test_registry_crons_are_valid_and_unique():
    names = [s.name for s in SCHEDULES]
    assert len(names) == len(set(names)) == 6
    for s in SCHEDULES:
        validate_cron(s.cron)
        assert s.endpoint == f"/api/v1/internal/tasks/{s.name}"


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)))
def test_latest_slot_is_a_slot_not_after_the_instant(at):
    for s in SCHEDULES:
        slot = latest_slot(s.cron, at)
        assert slot <= at
        assert is_slot(s.cron, slot)
        assert next_slots(s.cron, slot)[0] > at
