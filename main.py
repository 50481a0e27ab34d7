"""Entry points, one per Cloud Function. Serve any of them with
`functions-framework --target NAME --source main.py`.

This file is a manifest: each function imports its handler on first call, so a process loads only
what its own path needs (no stripe in `generate`, no google.genai in `stripe_webhook`), and
importing it does no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from functions.lib.config import refuse_unsafe_environment

if TYPE_CHECKING:
    import flask

refuse_unsafe_environment()


def generate(request: flask.Request) -> flask.Response:
    """HTTPS POST: charge, generate, save a version; refund on failure."""
    from functions.generate import handle

    return handle(request)


def consent(request: flask.Request) -> flask.Response:
    """HTTPS GET/POST: read or accept the current terms."""
    from functions.consent_api import handle

    return handle(request)


def credits(request: flask.Request) -> flask.Response:
    """HTTPS GET: balance and recent ledger entries."""
    from functions.credits_api import handle

    return handle(request)


def checkout(request: flask.Request) -> flask.Response:
    """HTTPS POST: create a Stripe Checkout Session for a credit pack."""
    from functions.checkout import handle

    return handle(request)


def stripe_webhook(request: flask.Request) -> flask.Response:
    """HTTPS POST from Stripe: verify the signature; credit a paid session exactly once; reverse refunds and disputes."""
    from functions.stripe_webhook import handle

    return handle(request)


def retention_sweep(request: flask.Request) -> flask.Response:
    """Cloud Scheduler, nightly (HTTP POST with OIDC): delete expired projects in chunks; refund stale charges."""
    from functions.retention import handle

    return handle(request)
