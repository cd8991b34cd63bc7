"""A real local HTTP server standing in for the Frankfurter API (127.0.0.1, free port), with garbage modes.

``mode`` decides the next answers: ``good`` (JSON for the requested symbols), ``html`` (an HTML error page with
200), ``missing`` (drops ``missing_currency``), ``zero`` / ``negative`` / ``nan`` / ``string`` (one bad rate),
``wrong_base``, ``error_500`` / ``error_503`` / ``error_429`` / ``error_404``, ``slow`` (answers after
``slow_s``), ``reset`` (closes the connection without answering). ``date`` sets the answered date.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

DEFAULT_RATES = {
    "USD": "1.0812",
    "GBP": "0.8521",
    "INR": "90.1234",
    "TRY": "35.4321",
    "THB": "37.891",
    "AED": "3.9712",
    "MXN": "18.7654",
    "KRW": "1450.12",
}


class FrankfurterState:
    def __init__(self) -> None:
        self.mode = "good"
        self.date = date(2026, 12, 3)
        self.rates: dict[str, str] = dict(DEFAULT_RATES)
        self.missing_currency = "GBP"
        self.bad_currency = "USD"
        self.slow_s = 2.0
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()


def _handler(state: FrankfurterState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            with state.lock:
                state.requests.append({"path": parts.path, "query": query})
                mode = state.mode
            if parts.path != "/latest":
                self._send(404, b'{"message":"not found"}')
                return
            if mode == "reset":
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if mode == "slow":
                time.sleep(state.slow_s)
            if mode.startswith("error_"):
                status = int(mode.split("_", 1)[1])
                self._send(status, json.dumps({"message": "upstream trouble"}).encode())
                return
            if mode == "html":
                self._send(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html; charset=utf-8")
                return
            base = query.get("base", "EUR")
            symbols = [s for s in query.get("symbols", "").split(",") if s]
            rates: dict[str, Any] = {s: f"@@{state.rates[s]}@@" for s in symbols if s in state.rates}
            if mode == "missing":
                rates.pop(state.missing_currency, None)
            bad = {"zero": "0", "negative": "-1.25", "nan": "NaN", "inf": "Infinity"}
            if mode in bad:
                rates[state.bad_currency] = f"@@{bad[mode]}@@"
            if mode == "string":
                rates[state.bad_currency] = "1.08"  # a JSON string, not a number
            doc = {
                "amount": 1.0,
                "base": "USD" if mode == "wrong_base" else base,
                "date": state.date.isoformat(),
                "rates": rates,
            }
            # Numbers are spliced in raw so the wire format carries exactly what a real server would send.
            body = json.dumps(doc).replace('"@@', "").replace('@@"', "")
            self._send(200, body.encode())

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a client that hung up (timeout tests) is expected, not news


class FrankfurterServer:
    def __init__(self) -> None:
        self.state = FrankfurterState()
        self.httpd = _QuietServer(("127.0.0.1", 0), _handler(self.state))
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FrankfurterServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self.state.lock:
            return list(self.state.requests)


@contextmanager
def frankfurter_server() -> Iterator[FrankfurterServer]:
    server = FrankfurterServer().start()
    try:
        yield server
    finally:
        server.stop()
