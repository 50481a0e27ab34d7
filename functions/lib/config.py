"""Typed settings from the environment: the one reader of it. The variable names are part of the
contract; every error names the variable. Each setting is declared once, in SETTINGS (name, attribute,
default, meaning, how it is read), and docs/CONFIGURATION.md's table is made from those declarations
(`python -m tools.config_table`)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from functions.lib.deployment import required_secrets
from functions.lib.errors import ConfigError
from functions.lib.once import once

DEFAULT_CREDIT_PACKS: dict[str, dict[str, object]] = {
    "starter": {"credits": 100, "price": "price_starter_100"},
    "creator": {"credits": 500, "price": "price_creator_500"},
    "studio": {"credits": 1500, "price": "price_studio_1500"},
}
# Standard switches that point firebase-admin and the Firestore client at local emulators. With
# FIREBASE_AUTH_EMULATOR_HOST set, firebase-admin accepts unsigned ID tokens: anyone is anyone.
# CLOUD_TASKS_EMULATOR_HOST sends the sweep's purge tasks to a local Cloud Tasks emulator.
EMULATOR_VARIABLES = ("FIRESTORE_EMULATOR_HOST", "FIREBASE_AUTH_EMULATOR_HOST", "CLOUD_TASKS_EMULATOR_HOST")
# Base-URL overrides for local doubles: a deployed process would send its live key to that host.
DOUBLE_VARIABLES = ("STRIPE_API_BASE", "GEMINI_BASE_URL")
# Cloud Run (and so Cloud Functions 2nd gen) sets K_SERVICE; so does the Firebase Functions
# emulator (with a demo- project), plain functions-framework does not.
DEPLOYED_MARKER = "K_SERVICE"
# Firebase's convention for projects that exist only in emulators: no real data, no real credentials.
DEMO_PREFIX = "demo-"
# Stripe's secret (sk_) and restricted (rk_) keys name their mode. A key of the other mode than
# STRIPE_MODE would take payments whose events the webhook then refuses (livemode differs): buyers
# charged, nothing credited. So the settings refuse the pair before anything is served.
STRIPE_KEY_MODES = {"sk_live_": "live", "rk_live_": "live", "sk_test_": "test", "rk_test_": "test"}
# The longest the deployed generate function may run (its timeout is less when STALE_CHARGE_AFTER_S is).
GENERATE_TIMEOUT_CAP_S = 120
# Requests one `account` instance serves at once (main.py declares it with this).
ACCOUNT_CONCURRENCY = 20


@dataclass(frozen=True)
class CreditPack:
    id: str
    credits: int
    price: str
    expires_in_days: int | None = None  # a pack's grant expires this long after the purchase
    # The price as Stripe charges it (minor units, lowercase ISO currency). When set, a Checkout
    # Session credits the pack only when it charged exactly this; None skips that check.
    amount: int | None = None
    currency: str | None = None


@dataclass(frozen=True)
class Plan:
    """A subscription plan: `credits` per period, up to `rollover` unspent period credits carried into
    the next period, `trial_credits` for a trial's $0 first invoice."""

    id: str
    price: str
    credits: int
    rollover: int = 0
    trial_credits: int = 0
    amount: int | None = None
    currency: str | None = None


@dataclass(frozen=True, kw_only=True)
class Settings:
    """This process's settings, typed: one attribute a declaration in SETTINGS (its variable, default
    and meaning are there), set by `settings_from`; the last three are not read from the environment."""

    project: str
    firestore_emulator_host: str | None
    auth_emulator_host: str | None
    stripe_secret_key: str | None
    stripe_webhook_secret: str | None
    stripe_api_base: str | None
    credit_packs: Mapping[str, CreditPack]
    generator: str
    gemini_api_key: str | None
    gemini_model: str
    gemini_base_url: str | None
    generation_timeout_s: float
    stale_charge_after_s: int
    terms_version: str
    retention_days: int
    sweep_budget_s: float
    allowed_origins: tuple[str, ...]
    stripe_mode: str
    problem_retention_days: int
    analytics_retention_days: int
    sweep_inline_projects: int
    cloud_tasks_emulator_host: str | None
    purge_task_url: str | None
    region: str
    auth_state_cache_s: float
    checkout_limit: int
    checkout_window_s: int
    signup_credits: int
    signup_credits_expire_days: int
    # Cost and abuse controls (docs/LIMITS.md): per-user windows, per-user
    # generations in flight, the per-instance model circuit breaker, and what one model call may use.
    generate_concurrency: int
    generate_limit: int
    generate_window_s: int
    generate_failure_limit: int
    generate_failure_window_s: int
    breaker_failures: int
    breaker_window_s: int
    breaker_cooldown_s: int
    max_output_tokens: int
    thinking_budget: int
    export_limit: int
    export_window_s: int
    export_concurrency: int
    credits_limit: int
    credits_window_s: int
    consent_limit: int
    consent_window_s: int
    app_check: bool
    plans: Mapping[str, Plan]
    period_grace_h: int
    # Whether the sweep can fan out to purge tasks: deployed, or the Cloud Tasks emulator is set.
    task_queue: bool
    initial_cost: int = 50
    iteration_cost: int = 25

    def plan_of_price(self, price: str) -> Plan | None:
        """The plan sold at Stripe price `price` (an invoice line names its price, not our plan id)."""
        return next((p for p in self.plans.values() if p.price == price), None)

    @property
    def generate_function_timeout_s(self) -> int:
        """The deployed generate function's timeout (see `generate_timeout_s`): no live request is older."""
        return min(GENERATE_TIMEOUT_CAP_S, self.stale_charge_after_s - 1)

    def require(self, name: str) -> str:
        """The value of a required secret or setting, or a ConfigError naming the variable."""
        value = {
            "STRIPE_SECRET_KEY": self.stripe_secret_key,
            "STRIPE_WEBHOOK_SECRET": self.stripe_webhook_secret,
            "GEMINI_API_KEY": self.gemini_api_key,
        }[name]
        if not value:
            raise ConfigError(name)
        return value


T = TypeVar("T")


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One environment variable, declared once: its name, the `Settings` attribute it fills, its value
    when unset, what it means and how it is read. docs/CONFIGURATION.md's table is made from SETTINGS
    (`python -m tools.config_table`)."""

    name: str
    attribute: str
    default: T
    meaning: str
    # How `settings_from` reads it; None: by code of its own (a catalog, a rule across variables).
    read: Callable[[Mapping[str, str], Setting[T]], T] | None = None
    # A whole number's bounds, and why when the reason is not plain (`_int` says it in its error).
    minimum: int = 0
    maximum: int | None = None
    why: str = ""
    # The table's default when the value does not say it ("required", whose default it is, ...).
    shown: str = ""


def _int(env: Mapping[str, str], s: Setting[int]) -> int:
    raw = env.get(s.name, "").strip()
    if not raw:
        return s.default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(s.name, f"{s.name} must be a whole number, got {raw!r}") from None
    because = f" ({s.why})" if s.why else ""
    if value < s.minimum:
        raise ConfigError(s.name, f"{s.name} must be at least {s.minimum}{because}, got {value}")
    if s.maximum is not None and value > s.maximum:
        raise ConfigError(s.name, f"{s.name} must be at most {s.maximum}{because}, got {value}")
    return value


def _float(env: Mapping[str, str], s: Setting[float]) -> float:
    raw = env.get(s.name, "").strip()
    if not raw:
        return s.default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(s.name, f"{s.name} must be a number of seconds, got {raw!r}") from None
    if value < 0:
        raise ConfigError(s.name, f"{s.name} must not be negative, got {value}")
    return value


def _text(env: Mapping[str, str], s: Setting[str]) -> str:
    """The value, stripped; the default when blank."""
    return env.get(s.name, "").strip() or s.default


def _optional(env: Mapping[str, str], s: Setting[str | None]) -> str | None:
    """The value as it is, or None when unset or empty (a host, a key, a base URL)."""
    return env.get(s.name) or None


def _switch(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (the first is the default); anything else is refused, never guessed."""
    value = env.get(name, "").strip().lower() or choices[0]
    if value not in choices:
        raise ConfigError(name, f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _enforced(env: Mapping[str, str], s: Setting[bool]) -> bool:
    """`off` (the default) or `enforce`."""
    return _switch(env, s.name, ("off", "enforce")) == "enforce"


def _url(env: Mapping[str, str], s: Setting[str | None]) -> str | None:
    """An absolute http(s) URL, or None when unset."""
    raw = env.get(s.name, "").strip()
    if not raw:
        return None
    if not raw.startswith(("https://", "http://")) or len(raw.split("/")) < 4 or not raw.split("/")[2]:
        raise ConfigError(s.name, f"{s.name} must be a URL like https://host/path, got {raw!r}")
    return raw


# Every setting, in the order of docs/CONFIGURATION.md's table (made from this). The ones with a
# `read` are parsed by it; the others by `settings_from` itself (or `deploy_region`).
SETTINGS: tuple[Setting[Any], ...] = (
    Setting(
        "GOOGLE_CLOUD_PROJECT",
        "project",
        "",
        "project id (`demo-...` locally); `GCLOUD_PROJECT` (set by Firebase) is read when it is absent",
        shown="required",
    ),
    Setting(
        "FUNCTIONS_REGION",
        "region",
        "us-central1",
        "the region every function is declared in (read when the Firebase CLI discovers them; "
        "`deploy.sh` sets it)",
    ),
    Setting(
        "FIRESTORE_EMULATOR_HOST",
        "firestore_emulator_host",
        None,
        "use the Firestore emulator at host:port; honoured only for a `demo-` project (any other "
        "refuses to start)",
        read=_optional,
    ),
    Setting(
        "FIREBASE_AUTH_EMULATOR_HOST",
        "auth_emulator_host",
        None,
        "accept Auth emulator tokens (unsigned!); honoured only for a `demo-` project (any other "
        "refuses to start)",
        read=_optional,
    ),
    Setting(
        "STRIPE_SECRET_KEY",
        "stripe_secret_key",
        None,
        "Stripe API key (Secret Manager when deployed)",
        read=_optional,
        shown="required by `checkout`",
    ),
    Setting(
        "STRIPE_WEBHOOK_SECRET",
        "stripe_webhook_secret",
        None,
        "webhook endpoint secret (Secret Manager when deployed)",
        read=_optional,
        shown="required by `stripe_webhook`",
    ),
    Setting(
        "STRIPE_API_BASE",
        "stripe_api_base",
        None,
        "Stripe API base URL (a local double in tests); a deployed process refuses to start with it",
        read=_optional,
        shown="Stripe's",
    ),
    Setting(
        "CREDIT_PACKS",
        "credit_packs",
        DEFAULT_CREDIT_PACKS,
        'JSON catalog `{"<packId>": {"credits": 100, "price": "price_...", "expiresInDays": null, '
        '"amount": 500, "currency": "usd"}}`; a pack with `expiresInDays` grants credits that expire '
        "that long after the purchase; with `amount` and `currency` (both or neither) a Checkout "
        "Session credits the pack only when it charged exactly that",
        shown=", ".join(f"{pack} {spec['credits']}" for pack, spec in DEFAULT_CREDIT_PACKS.items()),
    ),
    Setting(
        "PLANS",
        "plans",
        {},
        'JSON subscription catalog `{"<planId>": {"price": "price_...", "credits": 1000, "rollover": 0, '
        '"trialCredits": 0, "amount": 1900, "currency": "usd"}}`: credits per period, unspent period '
        "credits carried into the next period (0: none), what a trial's $0 first invoice grants; one "
        "price per plan; `amount`/`currency` as for packs",
    ),
    Setting(
        "PERIOD_GRACE_H",
        "period_grace_h",
        72,
        "hours a period's grant outlives its period, so the hour between a renewal and its invoice's "
        "payment (and a short dunning) never leaves a subscriber without credits (at most 744)",
        read=_int,
        maximum=24 * 31,
    ),
    Setting(
        "SIGNUP_CREDITS",
        "signup_credits",
        0,
        "promotional credits a new account gets once, on its first consent, if its email is verified or "
        "it signed in with a provider other than password or anonymous",
        read=_int,
    ),
    Setting(
        "SIGNUP_CREDITS_EXPIRE_DAYS",
        "signup_credits_expire_days",
        30,
        "how long sign-up credits last",
        read=_int,
        minimum=1,
    ),
    Setting(
        "GENERATOR",
        "generator",
        "gemini",
        "`gemini` or `offline` (deterministic; a prompt with `#fail` fails)",
    ),
    Setting(
        "GEMINI_API_KEY",
        "gemini_api_key",
        None,
        "Gemini API key (Secret Manager when deployed)",
        read=_optional,
        shown="required for gemini",
    ),
    Setting(
        "GEMINI_MODEL",
        "gemini_model",
        "gemini-2.5-flash",
        "model name",
        read=_text,
    ),
    Setting(
        "GEMINI_BASE_URL",
        "gemini_base_url",
        None,
        "Gemini API base URL (a local double in tests); a deployed process refuses to start with it",
        read=_optional,
        shown="Google's",
    ),
    Setting(
        "GENERATION_TIMEOUT_S",
        "generation_timeout_s",
        30.0,
        "model call timeout, well under the function timeout",
    ),
    Setting(
        "STALE_CHARGE_AFTER_S",
        "stale_charge_after_s",
        600,
        "a `charged` generation older than this is refunded by the first of: the user's next `credits`, "
        "a replay of its key, the settlement job, the sweep; at least `GENERATION_TIMEOUT_S` + 30",
        why="GENERATION_TIMEOUT_S + 30",
    ),
    Setting(
        "STRIPE_MODE",
        "stripe_mode",
        "test",
        "`test` or `live`: an event whose `livemode` differs credits nothing and is stored as a "
        "problem; a `STRIPE_SECRET_KEY` of the other mode refuses to start",
    ),
    Setting(
        "PROBLEM_RETENTION_DAYS",
        "problem_retention_days",
        30,
        "stored Stripe events (`stripe_event_problems`) older than this are deleted by the sweep",
        read=_int,
        minimum=1,
    ),
    Setting(
        "TERMS_VERSION",
        "terms_version",
        "2026-01-01",
        "the terms version consent must match",
        read=_text,
    ),
    Setting(
        "RETENTION_DAYS",
        "retention_days",
        90,
        "project retention after last activity",
        read=_int,
        minimum=1,
    ),
    Setting(
        "SWEEP_BUDGET_S",
        "sweep_budget_s",
        480.0,
        "seconds one sweep may work; 0 stops before any deletion",
        read=_float,
    ),
    Setting(
        "SWEEP_INLINE_PROJECTS",
        "sweep_inline_projects",
        50,
        "a sweep that finds more expired projects fans out: one `purgeProject` task per project (when a "
        "task queue is reachable)",
        read=_int,
    ),
    Setting(
        "PURGE_TASK_URL",
        "purge_task_url",
        None,
        "the `purgeProject` function's URL, which every purge task names (`TaskOptions(uri=...)`): "
        "Cloud Tasks signs the task's OIDC token for it, and Cloud Run accepts only its own URLs. "
        "`deploy.sh` sets it from the deployed function; the Emulator Suite to the Functions "
        "emulator's. Deployed without it, the sweep deletes every project itself",
        read=_url,
    ),
    Setting(
        "CLOUD_TASKS_EMULATOR_HOST",
        "cloud_tasks_emulator_host",
        None,
        "set by the Emulator Suite: enqueue purge tasks on the Cloud Tasks emulator (deployed functions "
        "use Cloud Tasks); honoured only for a `demo-` project (any other refuses to start)",
        read=_optional,
    ),
    Setting(
        "ANALYTICS_RETENTION_DAYS",
        "analytics_retention_days",
        400,
        "analytics events older than this are deleted by the sweep",
        read=_int,
        minimum=1,
    ),
    Setting(
        "ALLOWED_ORIGINS",
        "allowed_origins",
        (),
        "comma-separated origins for CORS and checkout success/cancel URLs",
    ),
    Setting(
        "AUTH_STATE_CACHE_S",
        "auth_state_cache_s",
        30.0,
        "seconds an instance reuses an account's disabled/revoked state; a revocation reaches a warm "
        "instance at most this late (0: look up every request)",
        read=_float,
    ),
    Setting(
        "CHECKOUT_LIMIT",
        "checkout_limit",
        10,
        "checkout sessions one user may create per window (then 429 with `Retry-After`)",
        read=_int,
        minimum=1,
    ),
    Setting(
        "CHECKOUT_WINDOW_S",
        "checkout_window_s",
        3600,
        "the checkout limit's fixed window, in seconds",
        read=_int,
        minimum=1,
    ),
    Setting(
        "GENERATE_LIMIT",
        "generate_limit",
        100,
        "generations one user may start per `GENERATE_WINDOW_S` (then 429): a person reading each "
        "result does not reach 100 an hour; a script does",
        read=_int,
        minimum=1,
    ),
    Setting(
        "GENERATE_WINDOW_S",
        "generate_window_s",
        3600,
        "that window, in seconds",
        read=_int,
        minimum=1,
    ),
    Setting(
        "GENERATE_FAILURE_LIMIT",
        "generate_failure_limit",
        10,
        "refunded failures that count (see the refund policy) one user may have per "
        "`GENERATE_FAILURE_WINDOW_S`; past it every generate is 429 until the window ends: failures are "
        "free to the user and may bill model tokens",
        read=_int,
        minimum=1,
    ),
    Setting(
        "GENERATE_FAILURE_WINDOW_S",
        "generate_failure_window_s",
        3600,
        "that window, in seconds",
        read=_int,
        minimum=1,
    ),
    Setting(
        "GENERATE_CONCURRENCY",
        "generate_concurrency",
        3,
        "generations one user may have in flight (then 429): a second tab or a retry fits, a fan-out "
        "does not",
        read=_int,
        minimum=1,
    ),
    Setting(
        "MODEL_BREAKER_FAILURES",
        "breaker_failures",
        5,
        "model answers of 429 or 5xx within `MODEL_BREAKER_WINDOW_S` that open an instance's breaker: "
        "five is a burst, not bad luck",
        read=_int,
        minimum=1,
    ),
    Setting(
        "MODEL_BREAKER_WINDOW_S",
        "breaker_window_s",
        30,
        "that window, in seconds",
        read=_int,
        minimum=1,
    ),
    Setting(
        "MODEL_BREAKER_COOLDOWN_S",
        "breaker_cooldown_s",
        30,
        "seconds the open breaker answers 503 `model_unavailable` (with `Retry-After`) before one trial "
        "call; Gemini's per-minute quotas refill within a minute",
        read=_int,
        minimum=1,
    ),
    Setting(
        "GEMINI_MAX_OUTPUT_TOKENS",
        "max_output_tokens",
        2048,
        "the output cap of every model request (`maxOutputTokens`): bounds what one call can bill",
        read=_int,
        minimum=1,
    ),
    Setting(
        "GEMINI_THINKING_BUDGET",
        "thinking_budget",
        1024,
        "thinking tokens per request (`thinkingConfig.thinking_budget`); 0 turns thinking off; -1 "
        "(dynamic, unbounded) is refused",
        read=_int,
        minimum=0,
        why="-1 (dynamic) is unbounded",
    ),
    Setting(
        "EXPORT_LIMIT",
        "export_limit",
        5,
        "`account` exports one user may start per `EXPORT_WINDOW_S` (then 429): an export re-reads the "
        "whole history",
        read=_int,
        minimum=1,
    ),
    Setting(
        "EXPORT_WINDOW_S",
        "export_window_s",
        3600,
        "that window, in seconds",
        read=_int,
        minimum=1,
    ),
    Setting(
        "EXPORT_CONCURRENCY",
        "export_concurrency",
        4,
        "exports one `account` instance serves at once (one per user; then 429); at most 10, half of "
        "the instance's 20 requests, so erasures and other users never wait behind them",
        read=_int,
        minimum=1,
        maximum=ACCOUNT_CONCURRENCY // 2,
        why="half of account's",
    ),
    Setting(
        "CREDITS_LIMIT",
        "credits_limit",
        120,
        "`credits` calls one user may make per `CREDITS_WINDOW_S` (then 429): two a second, twice what "
        "a client polling every second after checkout needs",
        read=_int,
        minimum=1,
    ),
    Setting(
        "CREDITS_WINDOW_S",
        "credits_window_s",
        60,
        "that window, in seconds",
        read=_int,
        minimum=1,
    ),
    Setting(
        "CONSENT_LIMIT",
        "consent_limit",
        60,
        "`consent` calls one user may make per `CONSENT_WINDOW_S` (then 429): one a second",
        read=_int,
        minimum=1,
    ),
    Setting(
        "CONSENT_WINDOW_S",
        "consent_window_s",
        60,
        "that window, in seconds",
        read=_int,
        minimum=1,
    ),
    Setting(
        "APP_CHECK",
        "app_check",
        False,
        "`enforce`: every function that takes an ID token also requires a valid Firebase App Check "
        'token in `X-Firebase-AppCheck` (401 `app_check_required`, 403 `app_check_invalid`); see "Who '
        'may spend, and how often"',
        read=_enforced,
        shown="`off`",
    ),
)
DECLARED: dict[str, Setting[Any]] = {s.name: s for s in SETTINGS}
# The declarations read by code of their own below, which takes their defaults from here.
_GENERATOR: Setting[str] = DECLARED["GENERATOR"]
_TIMEOUT: Setting[float] = DECLARED["GENERATION_TIMEOUT_S"]
_STALE: Setting[int] = DECLARED["STALE_CHARGE_AFTER_S"]
_REGION: Setting[str] = DECLARED["FUNCTIONS_REGION"]
_STRIPE_MODE: Setting[str] = DECLARED["STRIPE_MODE"]


def _packs(env: Mapping[str, str]) -> dict[str, CreditPack]:
    raw = env.get("CREDIT_PACKS", "").strip()
    catalog: object = DEFAULT_CREDIT_PACKS
    if raw:
        try:
            catalog = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError("CREDIT_PACKS", f"CREDIT_PACKS is not valid JSON: {exc.msg}") from None
    if not isinstance(catalog, dict) or not catalog:
        raise ConfigError(
            "CREDIT_PACKS",
            'CREDIT_PACKS must be a JSON object like {"starter": {"credits": 100, "price": "price_..."}}',
        )
    packs = {}
    for pack_id, spec in catalog.items():
        credits = spec.get("credits") if isinstance(spec, dict) else None
        price = spec.get("price") if isinstance(spec, dict) else None
        if (
            not isinstance(credits, int)
            or isinstance(credits, bool)
            or credits <= 0
            or not isinstance(price, str)
            or not price
        ):
            raise ConfigError(
                "CREDIT_PACKS",
                f"CREDIT_PACKS entry {pack_id!r} needs a positive integer 'credits' and a 'price' id",
            )
        expires = spec.get("expiresInDays") if isinstance(spec, dict) else None
        if expires is not None and (
            not isinstance(expires, int) or isinstance(expires, bool) or expires <= 0
        ):
            raise ConfigError(
                "CREDIT_PACKS",
                f"CREDIT_PACKS entry {pack_id!r}: 'expiresInDays' must be a positive whole number or null",
            )
        amount, currency = _price_terms("CREDIT_PACKS", pack_id, spec)
        packs[pack_id] = CreditPack(pack_id, credits, price, expires, amount, currency)
    return packs


def _count(spec: dict[str, object], key: str) -> int:
    """`spec[key]` when it is a whole number >= 0 (0 when absent); -1 marks a bad value."""
    value = spec.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return -1
    return value


def _price_terms(name: str, entry: str, spec: dict[str, object]) -> tuple[int | None, str | None]:
    """The optional `amount` (minor units) and `currency` of a catalog entry: both or neither."""
    amount, currency = spec.get("amount"), spec.get("currency")
    if amount is None and currency is None:
        return None, None
    if (
        not isinstance(amount, int)
        or isinstance(amount, bool)
        or amount < 0
        or not isinstance(currency, str)
        or len(currency) != 3
        or not currency.isalpha()
    ):
        raise ConfigError(
            name,
            f"{name} entry {entry!r}: 'amount' (a whole number of minor units) and 'currency' "
            "(a 3-letter code) go together",
        )
    return amount, currency.lower()


def _plans(env: Mapping[str, str]) -> dict[str, Plan]:
    raw = env.get("PLANS", "").strip()
    if not raw:
        return {}
    try:
        catalog = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError("PLANS", f"PLANS is not valid JSON: {exc.msg}") from None
    if not isinstance(catalog, dict):
        raise ConfigError(
            "PLANS", 'PLANS must be a JSON object like {"pro": {"price": "price_...", "credits": 1000}}'
        )
    plans: dict[str, Plan] = {}
    for plan_id, spec in catalog.items():
        if not isinstance(spec, dict) or not plan_id or "/" in plan_id:
            raise ConfigError("PLANS", f"PLANS entry {plan_id!r} must be an object under a plain id")
        price, credits = spec.get("price"), _count(spec, "credits")
        if not isinstance(price, str) or not price or credits <= 0:
            raise ConfigError(
                "PLANS", f"PLANS entry {plan_id!r} needs a 'price' id and a positive integer 'credits'"
            )
        rollover, trial = _count(spec, "rollover"), _count(spec, "trialCredits")
        if rollover == -1 or trial == -1:
            raise ConfigError(
                "PLANS",
                f"PLANS entry {plan_id!r}: 'rollover' and 'trialCredits' must be whole numbers >= 0",
            )
        if any(p.price == price for p in plans.values()):
            # An invoice line names its price: one price must mean one plan.
            raise ConfigError("PLANS", f"PLANS entry {plan_id!r} reuses price {price!r} of another plan")
        amount, currency = _price_terms("PLANS", plan_id, spec)
        plans[plan_id] = Plan(plan_id, price, credits, rollover, trial, amount, currency)
    return plans


def settings_from(env: Mapping[str, str]) -> Settings:
    """Parse settings; every error names the variable that is wrong."""
    generator = _text(env, _GENERATOR)
    if generator not in ("gemini", "offline"):
        raise ConfigError("GENERATOR", f"GENERATOR must be 'gemini' or 'offline', got {generator!r}")
    project = project_of(env)
    if not project:
        raise ConfigError("GOOGLE_CLOUD_PROJECT")
    stripe_mode = stripe_mode_of(env)
    timeout_s = _float(env, _TIMEOUT)
    # A live request must never look stale: the deployed generate function times out before this.
    stale_minimum = math.ceil(timeout_s) + 30
    # Scheme and host are case-insensitive: origins are kept lowercase and compared so.
    origins = tuple(
        o.strip().rstrip("/").lower() for o in env.get("ALLOWED_ORIGINS", "").split(",") if o.strip()
    )
    return Settings(
        # Every declaration with a `read`, in SETTINGS' order; the rest by the code above and here.
        **{s.attribute: s.read(env, s) for s in SETTINGS if s.read},
        project=project,
        credit_packs=_packs(env),
        generator=generator,
        generation_timeout_s=timeout_s,
        stale_charge_after_s=_int(env, replace(_STALE, minimum=stale_minimum)),
        allowed_origins=origins,
        stripe_mode=stripe_mode,
        task_queue=bool(env.get("CLOUD_TASKS_EMULATOR_HOST"))
        or (bool(env.get(DEPLOYED_MARKER)) and env.get("FUNCTIONS_EMULATOR") != "true"),
        region=deploy_region(env),
        plans=_plans(env),
    )


@once
def get_settings() -> Settings:
    """Settings of this process, parsed once. Tests call `get_settings.cache_clear()`."""
    return settings_from(os.environ)


def generate_timeout_s(env: Mapping[str, str] = os.environ) -> int:
    """The deployed generate function's timeout: 120 s, or less when STALE_CHARGE_AFTER_S is set lower,
    so a request still running is never settled as a crashed one (read when the functions are declared)."""
    stale = _int(env, replace(_STALE, minimum=1, why=""))
    return min(GENERATE_TIMEOUT_CAP_S, stale - 1)


def deploy_region(env: Mapping[str, str] = os.environ) -> str:
    """FUNCTIONS_REGION: where every function is declared (read when the Firebase CLI discovers them)."""
    region = _text(env, _REGION)
    if not all(part.isalnum() for part in region.split("-")) or region.count("-") != 1:
        raise ConfigError(
            "FUNCTIONS_REGION", f"FUNCTIONS_REGION must be a region like us-central1, got {region!r}"
        )
    return region


def deploy_project(env: Mapping[str, str] = os.environ) -> str:
    """The project the functions are declared for ('' when none is set). GCLOUD_PROJECT first: the
    Firebase CLI sets it to the project it deploys to while it discovers them, and passes its own
    environment through, where a GOOGLE_CLOUD_PROJECT may name another (Cloud Shell sets it)."""
    return env.get("GCLOUD_PROJECT", "").strip() or project_of(env)


def _functions_emulator(env: Mapping[str, str]) -> bool:
    """The Firebase Functions emulator also sets K_SERVICE; it is local only with a demo- project."""
    return env.get("FUNCTIONS_EMULATOR") == "true" and project_of(env).startswith(DEMO_PREFIX)


def project_of(env: Mapping[str, str]) -> str:
    """The project id: GOOGLE_CLOUD_PROJECT, or GCLOUD_PROJECT as the Firebase emulators set it."""
    return env.get("GOOGLE_CLOUD_PROJECT", "").strip() or env.get("GCLOUD_PROJECT", "").strip()


def stripe_mode_of(env: Mapping[str, str]) -> str:
    """STRIPE_MODE ('test' by default), refused when STRIPE_SECRET_KEY is a key of the other mode."""
    mode = _text(env, _STRIPE_MODE)
    if mode not in ("test", "live"):
        raise ConfigError("STRIPE_MODE", f"STRIPE_MODE must be 'test' or 'live', got {mode!r}")
    key = env.get("STRIPE_SECRET_KEY", "").strip()
    for prefix, key_mode in STRIPE_KEY_MODES.items():
        if key.startswith(prefix) and key_mode != mode:
            # The prefix only: the key itself must never reach a log.
            raise ConfigError(
                "STRIPE_SECRET_KEY",
                f"refusing to start: STRIPE_SECRET_KEY is a {key_mode} key ({prefix}...) but STRIPE_MODE "
                f"is {mode!r}; set STRIPE_MODE={key_mode} or use a {mode} key",
            )
    return mode


def refuse_unsafe_environment(env: Mapping[str, str] = os.environ) -> None:
    """Fail closed before serving: raise ConfigError naming the first variable that makes this
    process unsafe.

    - A Stripe key of the other mode than STRIPE_MODE, wherever the process runs (see
      STRIPE_KEY_MODES).
    - An emulator switch is honoured only for a `demo-` project, wherever the process runs (a VM,
      GKE or a laptop with real credentials sets no K_SERVICE): with a real project it refuses.
    - A deployed process (K_SERVICE and a project that is not `demo-`) refuses the base-URL
      overrides of local doubles, and refuses to start without the secrets its function needs.
      The Firebase Functions emulator also sets K_SERVICE (with FUNCTIONS_EMULATOR=true and a
      `demo-` project): it is not deployed, and may use the emulators and the doubles.
    """
    stripe_mode_of(env)
    project = project_of(env)
    is_demo = project.startswith(DEMO_PREFIX)
    switches = [name for name in EMULATOR_VARIABLES if env.get(name)]
    if switches and not is_demo:
        raise ConfigError(
            switches[0],
            f"refusing to start: {', '.join(switches)} set for project {project or '(none)'!r}; "
            "emulators are only for demo- projects",
        )
    if not env.get(DEPLOYED_MARKER) or _functions_emulator(env):
        return
    where = (
        f"in a deployed environment ({DEPLOYED_MARKER}={env.get(DEPLOYED_MARKER)}, "
        f"project {project or '(none)'!r})"
    )
    overrides = [name for name in DOUBLE_VARIABLES if env.get(name)]
    if overrides and not is_demo:
        raise ConfigError(overrides[0], f"refusing to start: {', '.join(overrides)} set {where}")
    target = env.get("FUNCTION_TARGET", "")
    required = [
        s
        for s in required_secrets(target)
        if s != "GEMINI_API_KEY" or env.get("GENERATOR", _GENERATOR.default) == "gemini"
    ]
    missing = [name for name in required if not env.get(name)]
    if missing:
        raise ConfigError(missing[0], f"refusing to start {target}: {', '.join(missing)} not set {where}")
