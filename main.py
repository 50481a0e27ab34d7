"""Entry points, one per Cloud Function, declared with the firebase-functions decorators.

The Firebase CLI discovers them from this file (firebase-functions' admin server answers
`/__/functions.yaml`), `firebase deploy` deploys them and `firebase emulators:start` serves them;
each also runs under plain `functions-framework --target NAME --source main.py`.

This file is a manifest: each function imports its handler on first call, so a process loads only
what its own path needs (no stripe in `generate`, no google.genai in `stripe_webhook`), and
importing it does no I/O. Who each function runs as and which secrets it reads come from one
table, `functions/lib/deployment.py`, which deploy.sh reads too. CORS stays in `functions/edge.py`
(no `cors=` option here), so preflights and error answers carry the same headers everywhere.

Timeouts: generate's 120 s (`generate_timeout_s`: less when STALE_CHARGE_AFTER_S is set below 121 s)
stays below STALE_CHARGE_AFTER_S (settings refuse less than GENERATION_TIMEOUT_S + 30), so a live
generation is never settled as a crashed one, and above GENERATION_TIMEOUT_S plus the Firestore work
and refund (defaults: docs/CONFIGURATION.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from firebase_functions import https_fn, options, scheduler_fn, tasks_fn

from functions.lib.config import (
    ACCOUNT_CONCURRENCY,
    deploy_project,
    deploy_region,
    generate_timeout_s,
    refuse_unsafe_environment,
)
from functions.lib.deployment import PURGE_FUNCTION, SWEEP_FUNCTION, invokers_of, runs_as

if TYPE_CHECKING:
    import flask

refuse_unsafe_environment()

MB = options.MemoryOption
options.set_global_options(region=deploy_region(), cpu=1)
PUBLIC = "public"
PROJECT = deploy_project()


@https_fn.on_request(
    memory=MB.MB_512,
    timeout_sec=generate_timeout_s(),
    max_instances=100,
    concurrency=20,
    invoker=PUBLIC,
    **runs_as("generate", PROJECT),
)
def generate(request: flask.Request) -> flask.Response:
    """HTTPS POST: charge, generate, save a version; refund on failure."""
    from functions.handlers.generate import handle

    return handle(request)


@https_fn.on_request(
    memory=MB.MB_256,
    timeout_sec=30,
    max_instances=50,
    concurrency=80,
    invoker=PUBLIC,
    **runs_as("consent", PROJECT),
)
def consent(request: flask.Request) -> flask.Response:
    """HTTPS GET/POST: read or accept the current terms."""
    from functions.handlers.consent import handle

    return handle(request)


@https_fn.on_request(
    memory=MB.MB_256,
    timeout_sec=30,
    max_instances=50,
    concurrency=80,
    invoker=PUBLIC,
    **runs_as("credits", PROJECT),
)
def credits(request: flask.Request) -> flask.Response:
    """HTTPS GET: balance and recent ledger entries."""
    from functions.handlers.credits import handle

    return handle(request)


@https_fn.on_request(
    memory=MB.MB_256,
    timeout_sec=60,
    max_instances=50,
    concurrency=40,
    invoker=PUBLIC,
    **runs_as("checkout", PROJECT),
)
def checkout(request: flask.Request) -> flask.Response:
    """HTTPS POST: create a Stripe Checkout Session for a credit pack or a subscription plan."""
    from functions.handlers.checkout import handle

    return handle(request)


@https_fn.on_request(
    memory=MB.MB_256,
    timeout_sec=60,
    max_instances=20,
    concurrency=40,
    invoker=PUBLIC,
    **runs_as("billing_portal", PROJECT),
)
def billing_portal(request: flask.Request) -> flask.Response:
    """HTTPS POST: a Stripe Customer Portal session for the caller (manage or cancel the subscription)."""
    from functions.handlers.billing_portal import handle

    return handle(request)


@https_fn.on_request(
    memory=MB.MB_256,
    timeout_sec=30,
    max_instances=20,
    concurrency=80,
    invoker=PUBLIC,
    **runs_as("catalog", PROJECT),
)
def catalog(request: flask.Request) -> flask.Response:
    """HTTPS GET, no token: the packs and plans on sale with their Stripe prices (cacheable)."""
    from functions.handlers.catalog import handle

    return handle(request)


@https_fn.on_request(
    memory=MB.MB_256,
    timeout_sec=60,
    max_instances=50,
    concurrency=40,
    invoker=PUBLIC,
    **runs_as("stripe_webhook", PROJECT),
)
def stripe_webhook(request: flask.Request) -> flask.Response:
    """HTTPS POST from Stripe: verify the signature; credit a paid session exactly once; reverse refunds
    and disputes."""
    from functions.handlers.stripe_webhook import handle

    return handle(request)


# Called by Cloud Scheduler with an OIDC token (deploy.sh upserts the job): only the scheduler's
# account may invoke it, one call at a time.
@https_fn.on_request(
    memory=MB.MB_512,
    timeout_sec=540,
    max_instances=1,
    concurrency=1,
    invoker=invokers_of(SWEEP_FUNCTION, PROJECT),
    **runs_as(SWEEP_FUNCTION, PROJECT),
)
def retention_sweep(request: flask.Request) -> flask.Response:
    """Cloud Scheduler, nightly (HTTP POST with OIDC): delete expired projects, fanning out to
    purgeProject when the night is large."""
    from functions.handlers.retention_sweep import handle

    return handle(request)


# Erasure is resumable, so a timeout mid-way loses nothing; 540 s covers thousands of versions.
@https_fn.on_request(
    memory=MB.MB_512,
    timeout_sec=540,
    max_instances=20,
    concurrency=ACCOUNT_CONCURRENCY,
    invoker=PUBLIC,
    **runs_as("account", PROJECT),
)
def account(request: flask.Request) -> flask.Response:
    """HTTPS GET/DELETE: export everything kept about the caller, or erase the caller."""
    from functions.handlers.account import handle

    return handle(request)


# The settlement job: Firebase creates its Cloud Scheduler job on deploy (private; the scheduler
# calls it as the function's own account). Every 10 minutes, so a crashed charge waits at most
# STALE_CHARGE_AFTER_S + 10 minutes when its user does not come back first.
@scheduler_fn.on_schedule(
    schedule="every 10 minutes",
    timezone=options.Timezone("Etc/UTC"),
    memory=MB.MB_256,
    timeout_sec=300,
    max_instances=1,
    concurrency=1,
    **runs_as("settle_charges", PROJECT),
)
def settle_charges(event: scheduler_fn.ScheduledEvent) -> None:
    """Every 10 minutes: refund generations left `charged` by a killed process, exactly once each."""
    from functions.handlers.settle_charges import run

    run()


# The sweep's fan-out: one task per expired project. Private (Cloud Tasks calls it with the sweep's
# OIDC token). Its name is its queue's id, which takes letters, digits and hyphens only. A failed
# or unfinished task is retried with backoff and resumes the marked project. At most 6 tasks run at
# once (one per instance), which bounds the purge's share of Firestore's write rate
# (docs/OPERATIONS.md, "Capacity model").
@tasks_fn.on_task_dispatched(
    retry_config=options.RetryConfig(
        max_attempts=10, min_backoff_seconds=30, max_backoff_seconds=600, max_doublings=4
    ),
    rate_limits=options.RateLimits(max_concurrent_dispatches=6, max_dispatches_per_second=5),
    memory=MB.MB_512,
    timeout_sec=540,
    max_instances=6,
    concurrency=1,
    **runs_as(PURGE_FUNCTION, PROJECT),
)
def purgeProject(request: https_fn.CallableRequest[object]) -> dict[str, object]:
    """Cloud Tasks: delete one expired project and its versions, under the sweep's rules."""
    from functions.handlers.purge_project import handle

    return handle(request.data)
