"""A fake Anthropic Messages API on a free loopback port (for the ``anthropic`` provider's tests).

By default it answers like a well-behaved model: a forced ``tool_use`` reply computed by the local extractor from
the document in the request (entities for ``record_clinical_entities``, FHIR for ``emit_fhir_resources``). Queue
other behaviours with ``server.push(...)``; each queued item is consumed by one request:

- ``("tool_input", {...})``   a tool_use reply with this input
- ``("garbage",)``            200 with a non-JSON body
- ``("truncated_json",)``     200 with a JSON body cut in half
- ``("max_tokens",)``         a tool_use reply with ``stop_reason: max_tokens`` (truncated tool input)
- ``("no_tool",)``            a text-only reply
- ``("invalid_fhir",)``       a tool_use reply whose resources fail FHIR R4B validation
- ``("status", 429|529|500, retry_after_ms)``   an error reply (``retry-after-ms`` header)
- ``("timeout", seconds)``    hold the request that long (or until the server stops) before answering normally

The SDK in this venv authenticates with ``Authorization: Bearer <key>``; a request with another key gets 401.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from curaway.integrations.llm import ENTITY_TOOL_NAME, FHIR_TOOL_NAME, entities_to_fhir
from curaway.integrations.llm_local import LocalClinicalExtractor

API_KEY = "sk-ant-test-fake-key"
_PATIENT = re.compile(r"Patient reference: (\S+)")


class FakeAnthropic:
    def __init__(self, *, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._queue: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._extractor = LocalClinicalExtractor()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-anthropic", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def push(self, *items: tuple[Any, ...]) -> None:
        with self._lock:
            self._queue.extend(items)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    # -- replies ------------------------------------------------------------------------------------------
    def _next(self) -> tuple[Any, ...] | None:
        with self._lock:
            return self._queue.pop(0) if self._queue else None

    def _default_input(self, body: dict[str, Any]) -> dict[str, Any]:
        tool = (body.get("tool_choice") or {}).get("name")
        text = ""
        for message in body.get("messages", []):
            content = message.get("content")
            text += content if isinstance(content, str) else json.dumps(content)
        entities = self._extractor.entities(text)
        if tool == FHIR_TOOL_NAME:
            patient = _PATIENT.search(text)
            reference = patient.group(1) if patient else "Patient/unknown"
            return {"resources": entities_to_fhir(entities, patient_reference=reference)}
        return entities.model_dump(mode="json")

    def _message(self, body: dict[str, Any], tool_input: Any, *, stop_reason: str = "tool_use") -> dict[str, Any]:
        tool = (body.get("tool_choice") or {}).get("name") or ENTITY_TOOL_NAME
        return {
            "id": "msg_fake_1",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "claude-fake"),
            "content": [{"type": "tool_use", "id": "toolu_fake_1", "name": tool, "input": tool_input}],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": 321, "output_tokens": 123},
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                with suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(payload)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                with fake._lock:
                    fake.requests.append(body)
                    fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.path.split("?")[0] != "/v1/messages":
                    self._send(404, b'{"type":"error","error":{"type":"not_found_error","message":"no route"}}')
                    return
                if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    self._send(401, b'{"type":"error","error":{"type":"authentication_error","message":"invalid key"}}')
                    return
                item = fake._next()
                kind = item[0] if item else "ok"
                if kind == "timeout":
                    fake._stopping.wait(float(item[1]) if item else 5.0)
                    kind = "ok"
                if kind == "status":
                    status, retry_ms = int(item[1]), int(item[2]) if len(item) > 2 else 1
                    kinds = {429: "rate_limit_error", 529: "overloaded_error"}
                    err = {"type": "error", "error": {"type": kinds.get(status, "api_error"), "message": "fake"}}
                    self._send(status, json.dumps(err).encode(), {"retry-after-ms": str(retry_ms)})
                    return
                if kind == "garbage":
                    self._send(200, b"<html>upstream proxy error \x00\xff not json")
                    return
                if kind == "truncated_json":
                    full = json.dumps(fake._message(body, fake._default_input(body))).encode()
                    self._send(200, full[: len(full) // 2])
                    return
                if kind == "no_tool":
                    reply = fake._message(body, {})
                    reply["content"] = [{"type": "text", "text": "I cannot help with that."}]
                    reply["stop_reason"] = "end_turn"
                    self._send(200, json.dumps(reply).encode())
                    return
                if kind == "max_tokens":
                    self._send(200, json.dumps(fake._message(body, {}, stop_reason="max_tokens")).encode())
                    return
                if kind == "invalid_fhir":
                    bad = {
                        "resources": [
                            {
                                "resourceType": "Condition",
                                "subject": {"reference": "Patient/x"},
                                "onsetDateTime": "2024-13-45",
                            },
                            {"resourceType": "Observation", "status": "final", "unknownField": True},
                        ]
                    }
                    self._send(200, json.dumps(fake._message(body, bad)).encode())
                    return
                tool_input = item[1] if kind == "tool_input" and item else fake._default_input(body)
                self._send(200, json.dumps(fake._message(body, tool_input)).encode())

        return Handler


@contextmanager
def fake_anthropic() -> Iterator[FakeAnthropic]:
    server = FakeAnthropic().start()
    try:
        yield server
    finally:
        server.stop()
