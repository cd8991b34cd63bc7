"""Provider ``anthropic``: the official SDK (imported lazily), forced tool use for structured output.

- ``tool_choice={"type": "tool", …}`` makes the model answer through one tool whose ``input`` is the result.
- The SDK's own retry loop handles 408/409/429/5xx/529 with backoff and honours ``retry-after``
  (``max_retries`` from settings); ``timeout`` bounds every attempt; ``ANTHROPIC_BASE_URL`` is honoured.
- Errors are translated at this boundary: rate limits, overload, 5xx, timeouts and connection failures →
  ``RetryableError``; rejected requests (401/403/400/404/422) → ``PermanentError``; garbage, truncated or
  tool-less replies → ``LlmOutputError`` (permanent). Messages carry status codes and error codes only.
"""

from __future__ import annotations

import json
from typing import Any

from curaway.errors import PermanentError, RetryableError
from curaway.integrations.llm import (
    CLINICAL_CONTEXT_PROMPT_VERSION,
    CLINICAL_CONTEXT_SYSTEM_PROMPT,
    ENTITY_PROMPT_VERSION,
    ENTITY_SYSTEM_PROMPT,
    ENTITY_TOOL_NAME,
    FHIR_TOOL_NAME,
    ClinicalContext,
    EntityExtraction,
    LlmCall,
    LlmOutputError,
    LlmUsage,
    entity_tool,
    fhir_tool,
    parse_entities,
    parse_resources,
)
from curaway.settings import Settings

DEFAULT_MAX_TOKENS = 8192
MAX_INPUT_CHARS = 150_000


class AnthropicGateway:
    provider = "anthropic"

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        base_url: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 2,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        client: Any = None,
    ) -> None:
        self.model = model
        self._api_key = api_key
        self._base_url = base_url or None
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._max_tokens = max_tokens
        self._client = client

    @classmethod
    def from_settings(cls, settings: Settings, *, client: Any = None) -> AnthropicGateway:
        return cls(
            api_key=settings.anthropic_api_key,
            model=settings.anthropic_model,
            base_url=settings.anthropic_base_url or None,
            timeout_s=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
            client=client,
        )

    def _sdk_client(self) -> Any:
        if self._client is None:
            try:
                import anthropic
            except ImportError as exc:  # the optional extra is not installed
                raise PermanentError(
                    "CURAWAY_LLM_PROVIDER=anthropic needs the 'anthropic' package (pip install curaway[anthropic])",
                    code="llm_sdk_missing",
                ) from exc
            if not self._api_key:
                raise PermanentError("ANTHROPIC_API_KEY is not set", code="llm_not_configured")
            self._client = anthropic.Anthropic(
                api_key=self._api_key,
                base_url=self._base_url,
                timeout=self._timeout_s,
                max_retries=self._max_retries,
            )
        return self._client

    # -- operations ------------------------------------------------------------------------------------------
    def extract_entities(self, text: str, *, document_ref: str) -> EntityExtraction:
        message = self._call(
            system=ENTITY_SYSTEM_PROMPT,
            tool=entity_tool(),
            user=f"Document {document_ref}:\n\n{text[:MAX_INPUT_CHARS]}",
        )
        payload, call = self._tool_input(message, ENTITY_TOOL_NAME, ENTITY_PROMPT_VERSION)
        return EntityExtraction(entities=parse_entities(payload), call=call)

    def clinical_context(self, text: str, *, document_ref: str, patient_reference: str) -> ClinicalContext:
        message = self._call(
            system=CLINICAL_CONTEXT_SYSTEM_PROMPT,
            tool=fhir_tool(),
            user=f"Patient reference: {patient_reference}\nDocument {document_ref}:\n\n{text[:MAX_INPUT_CHARS]}",
        )
        payload, call = self._tool_input(message, FHIR_TOOL_NAME, CLINICAL_CONTEXT_PROMPT_VERSION)
        return ClinicalContext(resources=parse_resources(payload), call=call)

    # -- plumbing --------------------------------------------------------------------------------------------
    def _call(self, *, system: str, tool: dict[str, Any], user: str) -> Any:
        client = self._sdk_client()
        import anthropic

        try:
            return client.messages.create(
                model=self.model,
                max_tokens=self._max_tokens,
                system=system,
                tools=[tool],
                tool_choice={"type": "tool", "name": tool["name"]},
                messages=[{"role": "user", "content": user}],
            )
        except anthropic.APITimeoutError as exc:
            raise RetryableError("LLM request timed out", code="llm_timeout") from exc
        except anthropic.APIConnectionError as exc:
            raise RetryableError("LLM endpoint unreachable", code="llm_unreachable") from exc
        except anthropic.APIStatusError as exc:
            raise _translate_status(exc) from exc
        except anthropic.APIResponseValidationError as exc:
            raise LlmOutputError("LLM reply did not match the Messages API shape", code="llm_output_garbage") from exc
        except (json.JSONDecodeError, ValueError) as exc:
            raise LlmOutputError("LLM reply was not valid JSON", code="llm_output_garbage") from exc
        except anthropic.AnthropicError as exc:
            raise RetryableError("LLM call failed", code="llm_error") from exc

    def _tool_input(self, message: Any, tool_name: str, prompt_version: str) -> tuple[Any, LlmCall]:
        content = getattr(message, "content", None)
        if not isinstance(content, list):
            raise LlmOutputError("LLM reply has no content list", code="llm_output_garbage")
        usage = getattr(message, "usage", None)
        stop_reason = getattr(message, "stop_reason", None)
        call = LlmCall(
            provider=self.provider,
            model=str(getattr(message, "model", None) or self.model),
            prompt_version=prompt_version,
            usage=LlmUsage(
                input_tokens=_int_or_none(getattr(usage, "input_tokens", None)),
                output_tokens=_int_or_none(getattr(usage, "output_tokens", None)),
            ),
            stop_reason=str(stop_reason) if stop_reason is not None else None,
        )
        if stop_reason == "max_tokens":
            raise LlmOutputError("LLM output was truncated at max_tokens", code="llm_output_truncated")
        block = next(
            (b for b in content if getattr(b, "type", None) == "tool_use" and getattr(b, "name", None) == tool_name),
            None,
        )
        if block is None:
            raise LlmOutputError("LLM reply holds no call of the forced tool", code="llm_output_no_tool")
        payload = getattr(block, "input", None)
        if isinstance(payload, str):  # some gateways pass tool input through as a JSON string
            try:
                payload = json.loads(payload)
            except ValueError as exc:
                raise LlmOutputError("tool input is truncated or not JSON", code="llm_output_truncated") from exc
        return payload, call


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _translate_status(exc: Any) -> Exception:
    status = int(getattr(exc, "status_code", 0) or 0)
    retry_after = _retry_after_s(getattr(exc, "response", None))
    if status == 429:
        return RetryableError("LLM rate limited (429)", code="llm_rate_limited", retry_after_s=retry_after)
    if status == 529:
        return RetryableError("LLM overloaded (529)", code="llm_overloaded", retry_after_s=retry_after)
    if status >= 500 or status in {408, 409}:
        return RetryableError(f"LLM server error ({status})", code="llm_server_error", retry_after_s=retry_after)
    return PermanentError(f"LLM request rejected ({status})", code="llm_rejected")


def _retry_after_s(response: Any) -> float | None:
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw:
            try:
                return max(0.0, float(raw) * scale)
            except ValueError:
                continue
    return None
