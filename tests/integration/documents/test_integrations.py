"""Storage contract (filesystem + fake), the Anthropic provider against the fake server, Langfuse OTLP export."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from curaway.errors import NotFoundError, PermanentError, RetryableError, ValidationFailed
from curaway.integrations.llm import LlmOutputError, build_llm_gateway
from curaway.integrations.llm_anthropic import AnthropicGateway
from curaway.integrations.storage import InMemoryStorage, LocalFileStorage, build_storage
from curaway.integrations.tracing import build_tracer_provider
from curaway.repositories.demo import SAMPLE_NOTE
from tests.support.documents_anthropic import API_KEY, fake_anthropic


@pytest.fixture(params=["local", "memory"])
def storage(request, tmp_path):
    return LocalFileStorage(tmp_path / "uploads") if request.param == "local" else InMemoryStorage()


def test_storage_contract(storage):
    assert not storage.exists("t/ten_1/upl_1")
    storage.put("t/ten_1/upl_1", b"one")
    storage.put("t/ten_1/upl_1", b"two")
    assert storage.exists("t/ten_1/upl_1") and storage.get("t/ten_1/upl_1") == b"two"
    assert storage.delete("t/ten_1/upl_1") is True and storage.delete("t/ten_1/upl_1") is False
    with pytest.raises(NotFoundError):
        storage.get("t/ten_1/upl_1")


@pytest.mark.parametrize(
    "key", ["", "../etc/passwd", "a/../../b", "/abs", "a//b", "a\\b", ".hidden", "a/..", "x" * 500]
)
def test_unsafe_keys_are_refused(storage, key):
    with pytest.raises(ValidationFailed):
        storage.put(key, b"x")
    with pytest.raises(ValidationFailed):
        storage.get(key)


def test_local_storage_lives_under_the_data_dir(make_settings, tmp_path):
    settings = make_settings(data_dir=tmp_path / "d")
    store = build_storage(settings)
    store.put("a/b", b"z")
    assert (tmp_path / "d" / "uploads" / "a" / "b").read_bytes() == b"z"


def _gateway(server, **kw):
    return AnthropicGateway(api_key=API_KEY, model="claude-test", base_url=server.base_url, **kw)


def test_anthropic_forced_tool_use_and_usage():
    with fake_anthropic() as server:
        result = _gateway(server).extract_entities(SAMPLE_NOTE, document_ref="doc_1")
        body = server.requests[0]
    assert result.call.provider == "anthropic" and result.call.usage.input_tokens == 321
    assert result.entities.counts()["medications"] == 2
    assert body["tool_choice"] == {"type": "tool", "name": "record_clinical_entities"}
    assert body["model"] == "claude-test" and body["tools"][0]["name"] == "record_clinical_entities"


@pytest.mark.parametrize(
    ("reply", "error", "code"),
    [
        (("garbage",), LlmOutputError, "llm_output_garbage"),
        (("truncated_json",), LlmOutputError, "llm_output_garbage"),
        (("max_tokens",), LlmOutputError, "llm_output_truncated"),
        (("no_tool",), LlmOutputError, "llm_output_no_tool"),
        (("tool_input", {"conditions": "nope"}), LlmOutputError, "llm_output_invalid"),
        (("status", 429, 1), RetryableError, "llm_rate_limited"),
        (("status", 529, 1), RetryableError, "llm_overloaded"),
        (("status", 500, 1), RetryableError, "llm_server_error"),
    ],
)
def test_anthropic_errors_are_translated(reply, error, code):
    with fake_anthropic() as server:
        server.push(reply)
        with pytest.raises(error) as info:
            _gateway(server, max_retries=0).extract_entities(SAMPLE_NOTE, document_ref="doc_1")
    assert info.value.code == code
    assert "metformin" not in str(info.value).lower()


def test_anthropic_retries_429_529_5xx_then_succeeds():
    with fake_anthropic() as server:
        server.push(("status", 429, 1), ("status", 529, 1), ("status", 500, 1))
        result = _gateway(server, max_retries=3).clinical_context(
            SAMPLE_NOTE, document_ref="d", patient_reference="Patient/p"
        )
        assert server.request_count == 4
        assert [h.get("x-stainless-retry-count") for h in server.headers] == ["0", "1", "2", "3"]
    assert len(result.resources) == 9


def test_anthropic_timeout_is_retryable():
    with fake_anthropic() as server:
        server.push(("timeout", 5))
        with pytest.raises(RetryableError) as info:
            _gateway(server, timeout_s=0.2, max_retries=0).extract_entities("x", document_ref="d")
    assert info.value.code == "llm_timeout"


def test_wrong_key_is_permanent_and_base_url_comes_from_settings(make_settings):
    with fake_anthropic() as server:
        settings = make_settings(
            llm_provider="anthropic", anthropic_api_key="sk-wrong", anthropic_base_url=server.base_url
        )
        with pytest.raises(PermanentError) as info:
            build_llm_gateway(settings).extract_entities("x", document_ref="d")
        assert server.request_count == 1
    assert info.value.code == "llm_rejected"


def test_missing_api_key_is_a_clear_permanent_error():
    with pytest.raises(PermanentError) as info:
        AnthropicGateway(api_key="", model="m").extract_entities("x", document_ref="d")
    assert info.value.code == "llm_not_configured"


class _OtlpSink:
    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], int]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):
                return

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.posts.append((self.path, {k.lower(): v for k, v in self.headers.items()}, len(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_spans_are_exported_to_langfuse_over_otlp_when_keys_are_set(make_settings):
    sink = _OtlpSink()
    try:
        settings = make_settings(
            langfuse_public_key="pk-lf-test", langfuse_secret_key="sk-lf-test", langfuse_host=sink.url
        )
        provider = build_tracer_provider(settings)
        gateway = build_llm_gateway(settings, tracer_provider=provider)
        gateway.extract_entities(SAMPLE_NOTE, document_ref="doc_1")
        assert provider.force_flush(timeout_millis=5000)
        provider.shutdown()
    finally:
        sink.stop()
    (path, headers, size) = sink.posts[0]
    assert path == "/api/public/otel/v1/traces" and size > 0
    assert headers["authorization"].startswith("Basic ")
    assert headers["content-type"] == "application/x-protobuf"
