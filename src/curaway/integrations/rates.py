"""Exchange-rate seam: the Frankfurter API client (httpx) and a shipped fake, one protocol (DESIGN §6).

``GET {CURAWAY_FRANKFURTER_URL}/latest?base=EUR&symbols=USD,GBP`` answers
``{"amount": 1.0, "base": "EUR", "date": "2026-12-03", "rates": {"USD": 1.08, "GBP": 0.85}}``.

The client is strict: anything but that shape for exactly the requested currencies — HTML, a missing or extra
currency, a zero/negative/NaN/infinite/non-numeric rate, another base, a malformed date — raises
:class:`RatesInvalid` (a ``ValidationFailed``: retrying the same garbage cannot help), and the caller keeps its
previous rates. Connection errors, timeouts, 429 and 5xx raise :class:`RatesUnavailable` (a ``RetryableError``).
Timeouts are bounded (``timeout_s``); the transport is injectable (``httpx.MockTransport`` or a real local server).
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import httpx

from curaway.errors import ConfigurationError, RetryableError, ValidationFailed
from curaway.settings import Settings

CURRENCY = re.compile(r"^[A-Z]{3}$")
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0
MAX_BODY_BYTES = 256 * 1024


class RatesUnavailable(RetryableError):
    """The rates API is down, slow or throttling; try again later."""

    code = "rates_unavailable"


class RatesInvalid(ValidationFailed):
    """The rates API answered with something that is not a valid, complete set of rates."""

    code = "rates_invalid"


@dataclass(frozen=True)
class RatesSnapshot:
    base: str
    date: date
    rates: Mapping[str, Decimal] = field(default_factory=dict)


class RatesClient(Protocol):
    name: str

    def latest(self, base: str, quotes: Sequence[str]) -> RatesSnapshot:
        """Latest rates of ``quotes`` against ``base``; raises ``RatesUnavailable`` or ``RatesInvalid``."""
        ...


def normalise_request(base: str, quotes: Sequence[str]) -> tuple[str, list[str]]:
    """Upper-case, validate and de-duplicate; the base itself is never a quote."""
    base_u = base.strip().upper()
    if not CURRENCY.match(base_u):
        raise ConfigurationError("CURAWAY_FX_BASE must be a three-letter currency code")
    out: list[str] = []
    for quote in quotes:
        q = quote.strip().upper()
        if not CURRENCY.match(q):
            raise ConfigurationError("CURAWAY_FX_CURRENCIES must hold three-letter currency codes")
        if q != base_u and q not in out:
            out.append(q)
    if not out:
        raise ConfigurationError("CURAWAY_FX_CURRENCIES names no currency other than the base")
    return base_u, sorted(out)


def _reject_constant(name: str) -> Any:
    raise RatesInvalid(f"rates response holds a non-finite number ({name})", code="rates_non_finite")


def parse_rate(quote: str, raw: Any) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, int | float | Decimal):
        raise RatesInvalid(f"rate for {quote} is not a number", code="rates_not_numeric")
    try:
        value = Decimal(str(raw))
    except InvalidOperation as exc:
        raise RatesInvalid(f"rate for {quote} is not a number", code="rates_not_numeric") from exc
    if not value.is_finite() or (isinstance(raw, float) and not math.isfinite(raw)):
        raise RatesInvalid(f"rate for {quote} is not finite", code="rates_non_finite")
    if value <= 0:
        raise RatesInvalid(f"rate for {quote} is zero or negative", code="rates_non_positive")
    if value >= Decimal("1e10"):
        raise RatesInvalid(f"rate for {quote} is implausibly large", code="rates_out_of_range")
    return value


def parse_snapshot(document: Any, *, base: str, quotes: Sequence[str]) -> RatesSnapshot:
    """Validate a decoded Frankfurter document against the request; all-or-nothing."""
    if not isinstance(document, dict):
        raise RatesInvalid("rates response is not a JSON object", code="rates_shape")
    if document.get("base") != base:
        raise RatesInvalid(f"rates response base is not {base}", code="rates_wrong_base")
    amount = document.get("amount", 1)
    if isinstance(amount, bool) or not isinstance(amount, int | float | Decimal) or amount != 1:
        raise RatesInvalid("rates response amount is not 1", code="rates_amount")
    raw_date = document.get("date")
    if not isinstance(raw_date, str):
        raise RatesInvalid("rates response has no date", code="rates_date")
    try:
        on = date.fromisoformat(raw_date)
    except ValueError as exc:
        raise RatesInvalid("rates response date is not YYYY-MM-DD", code="rates_date") from exc
    rates = document.get("rates")
    if not isinstance(rates, dict):
        raise RatesInvalid("rates response has no rates object", code="rates_shape")
    missing = sorted(set(quotes) - set(rates))
    if missing:
        raise RatesInvalid(f"rates response is missing {', '.join(missing)}", code="rates_missing_currency")
    parsed = {q: parse_rate(q, rates[q]) for q in quotes}
    return RatesSnapshot(base=base, date=on, rates=parsed)


class FrankfurterClient:
    """Sync httpx client for the Frankfurter API."""

    name = "frankfurter"

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigurationError("CURAWAY_FRANKFURTER_URL must be an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            headers={"Accept": "application/json", "User-Agent": "curaway-fx/1"},
            follow_redirects=False,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> FrankfurterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def latest(self, base: str, quotes: Sequence[str]) -> RatesSnapshot:
        base_u, wanted = normalise_request(base, quotes)
        url = f"{self.base_url}/latest"
        try:
            response = self._client.get(url, params={"base": base_u, "symbols": ",".join(wanted)})
        except httpx.TimeoutException as exc:
            raise RatesUnavailable("rates API timed out", code="rates_timeout") from exc
        except httpx.HTTPError as exc:
            raise RatesUnavailable(f"rates API unreachable ({type(exc).__name__})", code="rates_unreachable") from exc
        status = response.status_code
        if status == 429 or status >= 500:
            retry_after = _retry_after_s(response.headers.get("Retry-After"))
            raise RatesUnavailable(
                f"rates API answered {status}", code=f"rates_http_{status}", retry_after_s=retry_after
            )
        if status != 200:
            raise RatesInvalid(f"rates API answered {status}", code=f"rates_http_{status}")
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise RatesInvalid("rates API did not answer JSON", code="rates_not_json")
        if len(response.content) > MAX_BODY_BYTES:
            raise RatesInvalid("rates API answer is too large", code="rates_too_large")
        try:
            document = json.loads(response.content, parse_constant=_reject_constant, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError) as exc:
            if isinstance(exc, RatesInvalid):
                raise
            raise RatesInvalid("rates API answer is not valid JSON", code="rates_not_json") from exc
        return parse_snapshot(document, base=base_u, quotes=wanted)


def _retry_after_s(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if 0 <= value <= 3600 else None


class FakeRatesClient:
    """Shipped fake: answers from a table (or a callable), counts calls, can be told to fail. Thread-safe."""

    name = "fake"

    def __init__(
        self,
        rates: Mapping[str, float | str | Decimal] | None = None,
        *,
        on: date | None = None,
        base: str = "EUR",
        error: Exception | None = None,
        answer: Callable[[str, Sequence[str]], Any] | None = None,
    ) -> None:
        self.rates = dict(rates or {})
        self.on = on or date(2026, 12, 3)
        self.base = base
        self.error = error
        self.answer = answer
        self.calls: list[tuple[str, list[str]]] = []
        self._lock = threading.Lock()

    def latest(self, base: str, quotes: Sequence[str]) -> RatesSnapshot:
        base_u, wanted = normalise_request(base, quotes)
        with self._lock:
            self.calls.append((base_u, wanted))
        if self.error is not None:
            raise self.error
        if self.answer is not None:
            document = self.answer(base_u, wanted)
        else:
            document = {
                "amount": 1.0,
                "base": self.base,
                "date": self.on.isoformat(),
                "rates": {q: v for q, v in self.rates.items() if q in wanted},
            }
        # Same validation as the real client: the fake can carry garbage too.
        return parse_snapshot(document, base=base_u, quotes=wanted)


def build_rates_client(settings: Settings, *, transport: httpx.BaseTransport | None = None) -> FrankfurterClient:
    """The Frankfurter client for ``CURAWAY_FRANKFURTER_URL`` (inject ``transport`` in tests)."""
    return FrankfurterClient(settings.frankfurter_url, transport=transport)
