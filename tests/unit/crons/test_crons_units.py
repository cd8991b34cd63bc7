"""Pure pieces of the crons: keys and windows, backoff, templates, rate parsing, SMTP URLs, view SQL."""

from __future__ import annotations

import importlib.util
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from curaway.db import migrations_dir
from curaway.errors import ConfigurationError, ValidationFailed
from curaway.integrations.email import EmailRejectedError, OutgoingEmail, SmtpConfig, build_mime, message_id_for
from curaway.integrations.rates import RatesInvalid, normalise_request, parse_snapshot
from curaway.integrations.templates import render
from curaway.repositories.crons import ANALYTICS_SQL, outbox_backoff_s
from curaway.tasks.crons import reminder_key

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def test_reminder_key_windows_and_episodes():
    key, episode, window = reminder_key("case_x", T0, T0 + timedelta(hours=24, seconds=1))
    assert window == 1 and episode == int(T0.timestamp()) and key == f"intake-reminder:case_x:{episode}:1"
    assert reminder_key("case_x", T0, T0 + timedelta(hours=47, minutes=59))[0] == key  # same 24 h window
    assert reminder_key("case_x", T0, T0 + timedelta(hours=48))[2] == 2
    moved = T0 + timedelta(hours=5)
    assert reminder_key("case_x", moved, moved + timedelta(hours=25))[0] != key  # new episode, new key


def test_outbox_backoff_doubles_and_caps():
    assert [outbox_backoff_s(n) for n in (1, 2, 3)] == [60.0, 120.0, 240.0]
    assert outbox_backoff_s(30) == 6 * 3600.0


def test_templates_have_text_and_escaped_html():
    out = render("intake_reminder", {"patient_name": "<Ada>", "case_link": "https://x/c?a=1&b=2", "reminder_number": 2})
    assert "Hello <Ada>," in out.text and "&lt;Ada&gt;" in out.html and "<Ada>" not in out.html
    assert "https://x/c?a=1&amp;b=2" in out.html and "Reminder 2 of 3" in out.text
    digest = render("notification_digest", {"display_name": None, "day": "2026-12-03", "items": [{"title": "A"}]})
    assert digest.subject.endswith("1 unread notification") and "- A" in digest.text
    with pytest.raises(ValidationFailed) as err:
        render("consent_expiry", {"patient_name": "x"})
    assert "consent_kind" in err.value.message
    with pytest.raises(ValidationFailed):
        render("nope", {})


def test_parse_snapshot_is_all_or_nothing():
    doc = {"amount": 1.0, "base": "EUR", "date": "2026-12-03", "rates": {"USD": 1.08, "GBP": 0.85, "JPY": 160}}
    snap = parse_snapshot(doc, base="EUR", quotes=["GBP", "USD"])
    assert snap.rates == {"GBP": Decimal("0.85"), "USD": Decimal("1.08")} and snap.date == date(2026, 12, 3)
    for broken, code in [
        ({**doc, "date": "03/12/2026"}, "rates_date"),
        ({**doc, "amount": 100}, "rates_amount"),
        ({**doc, "rates": []}, "rates_shape"),
        ({**doc, "rates": {"USD": True, "GBP": 0.85}}, "rates_not_numeric"),
        ({**doc, "rates": {"USD": 1e12, "GBP": 0.85}}, "rates_out_of_range"),
        ([doc], "rates_shape"),
    ]:
        with pytest.raises(RatesInvalid) as err:
            parse_snapshot(broken, base="EUR", quotes=["GBP", "USD"])
        assert err.value.code == code


def test_normalise_request_rejects_bad_configuration():
    assert normalise_request("eur", ["usd", "EUR", "USD", "gbp"]) == ("EUR", ["GBP", "USD"])
    for base, quotes in [("EURO", ["USD"]), ("EUR", ["US"]), ("EUR", ["EUR"])]:
        with pytest.raises(ConfigurationError):
            normalise_request(base, quotes)


def test_smtp_url_parsing():
    cfg = SmtpConfig.from_url("smtp://user:p%3Ass@mail.example:2525?starttls=true&timeout_s=7")
    assert (cfg.hostname, cfg.port, cfg.username, cfg.password) == ("mail.example", 2525, "user", "p:ss")
    assert cfg.start_tls and not cfg.use_tls and cfg.timeout_s == 7.0
    assert "p:ss" not in repr(cfg)
    assert SmtpConfig.from_url("smtp://mail.example").port == 25
    assert SmtpConfig.from_url("smtp://mail.example?starttls=1").port == 587
    with pytest.raises(ConfigurationError) as err:
        SmtpConfig.from_url("smtp://user:hunter2@mail.example:bad")
    assert "hunter2" not in err.value.message


def test_mime_refuses_header_injection():
    ok = OutgoingEmail(idempotency_key="k", to="a@b.example", subject="Hi", text="t", html="<p>t</p>")
    mime = build_mime(ok)
    assert mime["Message-ID"] == message_id_for("k") and mime.is_multipart()
    with pytest.raises(EmailRejectedError):
        build_mime(OutgoingEmail(idempotency_key="k", to="a@b.example", subject="Hi\r\nBcc: x@y.z", text="t"))


def test_migration_holds_the_same_view_sql_as_the_repository():
    path = migrations_dir() / "versions" / "0002_analytics_views.py"
    spec = importlib.util.spec_from_file_location("migration_0002", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert {name: sql for name, (sql, _cols) in module.VIEWS_PG.items()} == ANALYTICS_SQL["postgresql"]
    assert set(module.TABLES_SQLITE) == set(ANALYTICS_SQL["sqlite"])
