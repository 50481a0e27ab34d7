"""Model providers behind one interface: `gemini` (google-genai) and `offline` (deterministic, local).

Providers are called outside any Firestore transaction or commit, with a timeout well under the
function's; every failure surfaces as `ModelError` with a short, client-safe reason.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Protocol

from functions.lib.config import Settings, get_settings
from functions.lib.once import once

log = logging.getLogger(__name__)


class ModelError(Exception):
    """The provider gave no usable output. `reason` is safe to store and show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Provider(Protocol):
    def generate(self, prompt: str) -> str: ...


class OfflineProvider:
    """Deterministic output for local runs without keys.

    A prompt containing `#fail` fails, so the local journey can show a refund end to end.
    """

    def generate(self, prompt: str) -> str:
        if "#fail" in prompt:
            raise ModelError("model_error")
        digest = hashlib.sha256(prompt.encode()).hexdigest()[:12]
        return f"[offline {digest}] {prompt.strip()}"


class GeminiProvider:
    """The Gemini API through google-genai; `GEMINI_BASE_URL` points it at a local double in tests."""

    def __init__(self, api_key: str, model: str, timeout_s: float, base_url: str | None = None) -> None:
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
        self._config = types.GenerateContentConfig(
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True)
        )

    def generate(self, prompt: str) -> str:
        from google.genai import errors

        try:
            response = self._client.models.generate_content(
                model=self.model, contents=prompt, config=self._config
            )
        except errors.APIError as exc:
            reason = (
                "rate_limited"
                if exc.code == 429
                else "model_unavailable"
                if (exc.code or 0) >= 500
                else "model_rejected"
            )
            log.warning("gemini answered %s", exc.code)
            raise ModelError(reason) from exc
        except Exception as exc:
            # google-genai's transport (httpx or its httpx2 fork, by version) raises its own
            # TimeoutException / HTTPError classes; match them by name, not by one module.
            kinds = {cls.__name__ for cls in type(exc).__mro__}
            if "TimeoutException" in kinds:
                raise ModelError("timeout") from exc
            if "HTTPError" in kinds:
                log.warning("gemini transport error: %s", type(exc).__name__)
                raise ModelError("model_unavailable") from exc
            raise
        text = getattr(response, "text", None)
        if not text:
            raise ModelError("empty_output")
        return str(text)


def provider_for(settings: Settings) -> Provider:
    if settings.generator == "offline":
        return OfflineProvider()
    return GeminiProvider(
        settings.require("GEMINI_API_KEY"),
        settings.gemini_model,
        settings.generation_timeout_s,
        settings.gemini_base_url,
    )


@once
def get_provider() -> Provider:
    """The process's provider, built on first use. Tests call `get_provider.cache_clear()`."""
    return provider_for(get_settings())
