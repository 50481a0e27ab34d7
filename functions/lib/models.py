"""Model providers behind one interface: `gemini` (google-genai) and `offline` (deterministic, local).

Providers are called outside any Firestore transaction or commit, with a timeout well under the
function's; every failure surfaces as `ModelError` with a short, client-safe reason.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Protocol

from functions.lib.config import Settings, get_settings
from functions.lib.once import once

log = logging.getLogger(__name__)


# Why the model gave no usable output (each has a refund policy: lib/generations.py, REFUND_POLICY).
BLOCKED = "blocked"  # the prompt or the answer broke the model's safety rules
OUTPUT_LIMIT = "output_limit"  # the output cap was reached before any text
TIMEOUT = "timeout"
UPSTREAM_RATE_LIMITED = "rate_limited"  # the model answered 429 (the project's quota)
UPSTREAM_UNAVAILABLE = "model_unavailable"  # 5xx or a transport failure
REJECTED = "model_rejected"  # another 4xx: the request was refused as sent
EMPTY = "empty_output"
# The model's own health: these count toward the circuit breaker (lib/breaker.py); nothing a
# user's prompt can provoke does.
UPSTREAM_FAILURES = frozenset({UPSTREAM_RATE_LIMITED, UPSTREAM_UNAVAILABLE})
# Candidate finish reasons that mean the content was refused (google-genai's FinishReason names).
_REFUSED = frozenset({"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION", "IMAGE_SAFETY"})


class ModelError(Exception):
    """The provider gave no usable output. `reason` is safe to store and show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Provider(Protocol):
    def generate(self, prompt: str) -> str: ...


class OfflineProvider:
    """Deterministic output for local runs without keys.

    A prompt containing `#fail` fails (`#blocked`: as a blocked prompt), so the local journey can
    show a refund end to end.
    """

    def generate(self, prompt: str) -> str:
        if "#blocked" in prompt:
            raise ModelError(BLOCKED)
        if "#fail" in prompt:
            raise ModelError("model_error")
        digest = hashlib.sha256(prompt.encode()).hexdigest()[:12]
        return f"[offline {digest}] {prompt.strip()}"


class GeminiProvider:
    """The Gemini API through google-genai; `GEMINI_BASE_URL` points it at a local double in tests."""

    def __init__(
        self,
        api_key: str,
        model: str,
        timeout_s: float,
        base_url: str | None = None,
        *,
        max_output_tokens: int,
        thinking_budget: int,
    ) -> None:
        # Built here, not on first use: the provider itself is built once per process (`get_provider`),
        # so racing first generations share one client instead of each building its own.
        from google import genai
        from google.genai import types

        self.model = model
        timeout_ms = max(1, int(timeout_s * 1000))
        options = (
            types.HttpOptions(timeout=timeout_ms, base_url=base_url)
            if base_url
            else types.HttpOptions(timeout=timeout_ms)
        )
        self._client = genai.Client(api_key=api_key, http_options=options)
        # No tools are passed, so automatic function calling has nothing to do; left on, google-genai
        # logs "AFC is enabled with max remote calls: 10" at INFO on every generation.
        # The output cap and thinking budget bound what one call can bill: without them a prompt asking
        # for a very long answer runs to the timeout and is refunded while its tokens are billed.
        self._config = types.GenerateContentConfig(
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
            max_output_tokens=max_output_tokens,
            thinking_config=types.ThinkingConfig(thinking_budget=thinking_budget),
        )

    def generate(self, prompt: str) -> str:
        from google.genai import errors

        try:
            response = self._client.models.generate_content(
                model=self.model, contents=prompt, config=self._config
            )
        except errors.APIError as exc:
            reason = (
                UPSTREAM_RATE_LIMITED
                if exc.code == 429
                else UPSTREAM_UNAVAILABLE
                if (exc.code or 0) >= 500
                else REJECTED
            )
            log.warning("gemini answered %s", exc.code)
            raise ModelError(reason) from exc
        except Exception as exc:
            # google-genai's transport (httpx or its httpx2 fork, by version) raises its own
            # TimeoutException / HTTPError classes; match them by name, not by one module.
            kinds = {cls.__name__ for cls in type(exc).__mro__}
            if "TimeoutException" in kinds:
                raise ModelError(TIMEOUT) from exc
            if "HTTPError" in kinds:
                log.warning("gemini transport error: %s", type(exc).__name__)
                raise ModelError(UPSTREAM_UNAVAILABLE) from exc
            raise
        return _text_of(response)


def _text_of(response: Any) -> str:
    """The answer's text, or ModelError saying why there is none: a blocked prompt or answer, the
    output cap reached before any text, or nothing. A capped answer with text is an answer."""
    feedback = getattr(response, "prompt_feedback", None)
    if feedback is not None and getattr(feedback, "block_reason", None):
        raise ModelError(BLOCKED)
    candidates = getattr(response, "candidates", None) or []
    finish = getattr(getattr(candidates[0], "finish_reason", None), "name", "") if candidates else ""
    parts = (getattr(getattr(candidates[0], "content", None), "parts", None) or []) if candidates else []
    text = "".join(p.text for p in parts if getattr(p, "text", None) and not getattr(p, "thought", False))
    if finish in _REFUSED:
        raise ModelError(BLOCKED)
    if not text:
        raise ModelError(OUTPUT_LIMIT if finish == "MAX_TOKENS" else EMPTY)
    return text


def provider_for(settings: Settings) -> Provider:
    if settings.generator == "offline":
        return OfflineProvider()
    return GeminiProvider(
        settings.require("GEMINI_API_KEY"),
        settings.gemini_model,
        settings.generation_timeout_s,
        settings.gemini_base_url,
        max_output_tokens=settings.max_output_tokens,
        thinking_budget=settings.thinking_budget,
    )


@once
def get_provider() -> Provider:
    """The process's provider, built on first use. Tests call `get_provider.cache_clear()`."""
    return provider_for(get_settings())
