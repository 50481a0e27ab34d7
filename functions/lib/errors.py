"""The one error hierarchy. Each error knows its HTTP status and JSON body; handlers map nothing else.

Bodies are {"error": code, "message": sentence, ...details} (docs/API.md, "Errors"). Messages are written
for the client: never str() of a library exception, never internals.
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    status = 500
    code = "internal"
    message = "Something went wrong on our side."
    # A 5xx is logged at ERROR (alertable) unless users can cause it at will: those go to WARNING,
    # so no user can make alert noise.
    alert = True

    def __init__(
        self, message: str | None = None, *, headers: dict[str, str] | None = None, **details: Any
    ) -> None:
        self.message = message or type(self).message
        self.details = details
        self.headers = headers or {}
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.details}


class InvalidRequest(AppError):
    status, code, message = 400, "invalid_request", "The request is not valid."


class InvalidSignature(InvalidRequest):
    code, message = (
        "invalid_signature",
        "The Stripe-Signature header is missing, malformed, stale or does not match the body.",
    )


class Unauthenticated(AppError):
    status, code, message = (
        401,
        "unauthenticated",
        "A valid Firebase ID token is required in the Authorization header.",
    )


class AppCheckRequired(AppError):
    status, code, message = (
        401,
        "app_check_required",
        "This app requires a Firebase App Check token in the X-Firebase-AppCheck header.",
    )


class AppCheckInvalid(AppError):
    status, code, message = (
        403,
        "app_check_invalid",
        "The X-Firebase-AppCheck token is invalid or expired; get a new one and retry.",
    )


class InsufficientCredits(AppError):
    status, code, message = 402, "insufficient_credits", "Not enough credits for this generation."


class ConsentRequired(AppError):
    status, code, message = 403, "consent_required", "Accept the current terms before generating."


class NotFound(AppError):
    status, code, message = 404, "not_found", "Not found."


class ProjectNotFound(NotFound):
    code, message = "project_not_found", "No such project for this user."


class NoCustomer(NotFound):
    code, message = "no_customer", "There is no billing account for this user yet; subscribe or buy first."


class AlreadySubscribed(AppError):
    status, code, message = (
        409,
        "already_subscribed",
        "You already have a subscription; change or cancel it in the billing portal.",
    )


class MethodNotAllowed(AppError):
    status, code, message = 405, "method_not_allowed", "This method is not allowed here."


class InProgress(AppError):
    status, code, message = (
        409,
        "in_progress",
        "A request with this Idempotency-Key is still running; retry later.",
    )


class PayloadTooLarge(AppError):
    status, code, message = 413, "payload_too_large", "The request body is too large."


class UnsupportedMediaType(AppError):
    status, code, message = 415, "unsupported_media_type", "Send the body as application/json."


class IdempotencyKeyReused(AppError):
    status, code, message = (
        422,
        "idempotency_key_reused",
        "This Idempotency-Key was used with a different request body.",
    )


class RateLimited(AppError):
    status, code, message = (
        429,
        "rate_limited",
        "Too many requests; retry after the number of seconds in Retry-After.",
    )

    def __init__(self, message: str | None = None, *, retry_after_s: int, **details: Any) -> None:
        super().__init__(
            message, headers={"Retry-After": str(retry_after_s)}, retryAfterSeconds=retry_after_s, **details
        )


class GenerationFailed(AppError):
    status, code, message = 502, "generation_failed", "The generation failed; your credits were refunded."
    alert = False  # a refunded failure is logged at WARNING with its reason (lib/generations.py)


class UpstreamFailed(AppError):
    status, code, message = 502, "upstream_failed", "A service we depend on failed; nothing was charged."


class Unavailable(AppError):
    status, code, message = 503, "unavailable", "A backend is unavailable right now; retry shortly."

    def __init__(self, message: str | None = None, *, retry_after_s: int = 1, **details: Any) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)}, **details)


class ModelUnavailable(Unavailable):
    """The model's circuit breaker is open (lib/breaker.py): nothing was charged, nothing called."""

    code, message = (
        "model_unavailable",
        "The model is overloaded or failing right now; nothing was charged. Retry after Retry-After seconds.",
    )
    alert = False  # every caller during an outage gets one: the breaker's own WARNING is the signal


class Contention(Unavailable):
    """Optimistic retries ran out: other writes kept winning. Nothing was written."""

    code, message = (
        "busy",
        "Too many simultaneous requests on this account; nothing was charged. Retry shortly.",
    )


class ConfigError(AppError):
    """A missing or malformed setting. Clients see a generic 500; the log names the variable."""

    status, code = 500, "internal"

    def __init__(self, variable: str, detail: str | None = None) -> None:
        super().__init__()
        self.variable = variable
        self.detail = detail or f"{variable} is not set"

    def __str__(self) -> str:
        return self.detail
