"""Frankfurter client contract (real client against a local HTTP server, and the shipped fake) and the
exchange-rate-refresh handler on both databases."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select

from curaway.db import transaction
from curaway.errors import RetryableError, ValidationFailed
from curaway.integrations.rates import FakeRatesClient, FrankfurterClient, RatesInvalid, RatesUnavailable
from curaway.models import ExchangeRate
from curaway.repositories.crons import exchange_rate_freshness
from curaway.tasks.crons import exchange_rate_refresh
from tests.support.crons_frankfurter import DEFAULT_RATES, frankfurter_server

QUOTES = ["USD", "GBP", "INR"]

GARBAGE = {
    "html": "rates_not_json",
    "missing": "rates_missing_currency",
    "zero": "rates_non_positive",
    "negative": "rates_non_positive",
    "nan": "rates_non_finite",
    "inf": "rates_non_finite",
    "string": "rates_not_numeric",
    "wrong_base": "rates_wrong_base",
    "error_404": "rates_http_404",
}
OUTAGE = {"error_500": "rates_http_500", "error_503": "rates_http_503", "error_429": "rates_http_429"}


@pytest.fixture
def server():
    with frankfurter_server() as srv:
        yield srv


@pytest.fixture
def real_client():
    """Real clients for the test, closed afterwards."""
    made: list[FrankfurterClient] = []

    def build(url: str, **kwargs) -> FrankfurterClient:
        made.append(FrankfurterClient(url, **kwargs))
        return made[-1]

    yield build
    for client in made:
        client.close()


def _fake_for(mode: str, on: date = date(2026, 12, 3)) -> FakeRatesClient:
    """The shipped fake, told to answer like the server in ``mode`` (same validation path)."""

    def answer(base, wanted):
        rates = {q: Decimal(DEFAULT_RATES[q]) for q in wanted}
        if mode == "missing":
            rates.pop("GBP")
        bad = {"zero": 0, "negative": -1.25, "nan": float("nan"), "inf": float("inf"), "string": "1.08"}
        if mode in bad:
            rates["USD"] = bad[mode]
        return {"amount": 1, "base": "USD" if mode == "wrong_base" else base, "date": on.isoformat(), "rates": rates}

    errors = {
        "html": RatesInvalid("rates API did not answer JSON", code="rates_not_json"),
        "error_404": RatesInvalid("rates API answered 404", code="rates_http_404"),
        **{m: RatesUnavailable(f"rates API answered {c[-3:]}", code=c) for m, c in OUTAGE.items()},
    }
    return FakeRatesClient(answer=answer, error=errors.get(mode))


@pytest.fixture(params=["frankfurter", "fake"])
def client_for(request, server, real_client):
    def build(mode: str):
        if request.param == "fake":
            return _fake_for(mode)
        server.state.mode = mode
        return real_client(server.url, timeout_s=2.0)

    return build


def test_contract_good_answer(client_for, server):
    snap = client_for("good").latest("eur", ["usd", "GBP", "INR", "EUR"])
    assert snap.base == "EUR" and snap.date == date(2026, 12, 3)
    assert snap.rates == {q: Decimal(DEFAULT_RATES[q]) for q in QUOTES}


@pytest.mark.parametrize("mode", sorted(GARBAGE))
def test_contract_garbage_is_rejected_whole(client_for, mode):
    with pytest.raises(RatesInvalid) as err:
        client_for(mode).latest("EUR", QUOTES)
    assert err.value.code == GARBAGE[mode]
    assert isinstance(err.value, ValidationFailed)


@pytest.mark.parametrize("mode", sorted(OUTAGE))
def test_contract_outage_is_retryable(client_for, mode):
    with pytest.raises(RatesUnavailable) as err:
        client_for(mode).latest("EUR", QUOTES)
    assert err.value.code == OUTAGE[mode]
    assert isinstance(err.value, RetryableError)


def test_real_client_sends_base_and_symbols(server, real_client):
    real_client(server.url).latest("EUR", ["USD", "GBP"])
    assert server.requests[-1] == {"path": "/latest", "query": {"base": "EUR", "symbols": "GBP,USD"}}


def test_real_client_timeout_and_connection_errors_are_retryable(server, real_client):
    server.state.mode = "slow"
    server.state.slow_s = 1.0
    with pytest.raises(RatesUnavailable) as err:
        real_client(server.url, timeout_s=0.2).latest("EUR", QUOTES)
    assert err.value.code == "rates_timeout"
    server.state.mode = "reset"
    with pytest.raises(RatesUnavailable):
        real_client(server.url).latest("EUR", QUOTES)


def test_real_client_server_gone_is_retryable(real_client):
    with frankfurter_server() as srv:
        url = srv.url
    with pytest.raises(RatesUnavailable) as err:
        real_client(url, timeout_s=1.0).latest("EUR", QUOTES)
    assert err.value.code == "rates_unreachable"


def test_mock_transport_can_be_injected(real_client):
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params["symbols"] == "USD"
        return httpx.Response(200, json={"amount": 1.0, "base": "EUR", "date": "2026-12-01", "rates": {"USD": 1.1}})

    snap = real_client("http://fx.test", transport=httpx.MockTransport(handler)).latest("EUR", ["USD"])
    assert snap.rates == {"USD": Decimal("1.1")}


# -- the handler --------------------------------------------------------------------------------------------


@pytest.fixture
def fx_settings(make_settings, database_url, server):
    return make_settings(database_url=database_url, frankfurter_url=server.url, fx_currencies="USD,GBP,INR")


def _rows(session_factory):
    with transaction(session_factory) as s:
        return {(r.date, r.quote): (r.rate, r.fetched_at) for r in s.scalars(select(ExchangeRate))}


@pytest.fixture
def fx_ctx(ctx_for, fx_settings, server, real_client):
    def build():
        return ctx_for("exchange-rate-refresh", settings=fx_settings, rates=real_client(server.url, timeout_s=2))

    return build


def test_refresh_upserts_then_unchanged_weekend_is_a_noop(fx_ctx, server, session_factory, clock):
    first = exchange_rate_refresh(fx_ctx(), {})
    assert first.status == "succeeded"
    assert first.data["rates_written"] == 3 and first.data["date"] == "2026-12-03"
    rows = _rows(session_factory)
    assert {q for _d, q in rows} == set(QUOTES)
    assert rows[(date(2026, 12, 3), "USD")][0] == Decimal("1.0812")

    clock.advance(days=2)  # the weekend: the API still answers Thursday's date with the same rates
    second = exchange_rate_refresh(fx_ctx(), {})
    assert second.status == "skipped" and second.data["changed"] is False and second.data["rates_written"] == 0
    after = _rows(session_factory)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in rows.items()}
    with transaction(session_factory) as s:
        fresh = exchange_rate_freshness(s, base="EUR")
    assert fresh.latest_date == date(2026, 12, 3) and fresh.fetched_at == clock.now() and fresh.quotes == 3
    assert not fresh.is_stale(clock.now(), max_age=timedelta(hours=26))

    clock.advance(days=2)  # Monday
    server.state.date = date(2026, 12, 7)
    server.state.rates["USD"] = "1.0901"
    third = exchange_rate_refresh(fx_ctx(), {})
    assert third.data["changed"] is True and third.data["previous_date"] == "2026-12-03"
    assert _rows(session_factory)[(date(2026, 12, 7), "USD")][0] == Decimal("1.0901")
    assert len(_rows(session_factory)) == 6


@pytest.mark.parametrize("mode", ["html", "missing", "zero", "negative", "nan", "string"])
def test_garbage_keeps_previous_rates(fx_ctx, server, session_factory, clock, mode):
    exchange_rate_refresh(fx_ctx(), {})
    before = _rows(session_factory)
    server.state.mode = mode
    server.state.date = date(2026, 12, 4)
    clock.advance(days=1)
    with pytest.raises(ValidationFailed):
        exchange_rate_refresh(fx_ctx(), {})
    assert _rows(session_factory) == before


def test_date_older_than_stored_is_rejected(fx_ctx, server, session_factory):
    exchange_rate_refresh(fx_ctx(), {})
    before = _rows(session_factory)
    server.state.date = date(2026, 12, 2)
    with pytest.raises(RatesInvalid) as err:
        exchange_rate_refresh(fx_ctx(), {})
    assert err.value.code == "rates_stale_date" and "older than the stored" in err.value.message
    assert _rows(session_factory) == before


def test_future_date_is_rejected(fx_ctx, server, session_factory):
    server.state.date = date(2027, 1, 1)
    with pytest.raises(RatesInvalid) as err:
        exchange_rate_refresh(fx_ctx(), {})
    assert err.value.code == "rates_future_date"
    assert _rows(session_factory) == {}


@pytest.mark.parametrize("mode", ["error_500", "error_503", "reset"])
def test_api_down_is_retryable_and_previous_rates_are_kept(fx_ctx, server, session_factory, mode):
    exchange_rate_refresh(fx_ctx(), {})
    before = _rows(session_factory)
    server.state.mode = mode
    with pytest.raises(RetryableError):
        exchange_rate_refresh(fx_ctx(), {})
    assert _rows(session_factory) == before


def test_freshness_without_rates_is_stale(session_factory, clock):
    with transaction(session_factory) as s:
        fresh = exchange_rate_freshness(s, base="EUR")
    assert fresh.latest_date is None and fresh.is_stale(clock.now(), max_age=timedelta(hours=26))


def test_handler_builds_the_client_from_settings_when_none_is_injected(ctx_for, fx_settings, session_factory):
    result = exchange_rate_refresh(ctx_for("exchange-rate-refresh", settings=fx_settings), {})
    assert result.data["rates_written"] == 3


def test_raw_nan_on_the_wire_is_rejected(server, real_client):
    server.state.mode = "nan"
    with pytest.raises(RatesInvalid) as err:
        real_client(server.url).latest("EUR", ["USD"])
    assert err.value.code == "rates_non_finite"
