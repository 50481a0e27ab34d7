"""Typed settings from the environment: the one reader of it. The variable names are part of the
contract (docs/CONFIGURATION.md); every error names the variable."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class Settings:
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
    stripe_mode: str = "test"
    problem_retention_days: int = 30
    analytics_retention_days: int = 400
    # The sweep's fan-out: a pass that finds more expired projects than this enqueues one purge task
    # per project when a task queue is reachable (deployed, or the Cloud Tasks emulator).
    sweep_inline_projects: int = 50
    task_queue: bool = False
    cloud_tasks_emulator_host: str | None = None
    # The purgeProject function's URL, where each purge task is sent: Cloud Tasks signs its OIDC token
    # for this audience, and Cloud Run accepts only its own URLs (deploy.sh sets it; locally the
    # Functions emulator's). Deployed without it, the sweep does not fan out.
    purge_task_url: str | None = None
    region: str = "us-central1"
    auth_state_cache_s: float = 30.0
    checkout_limit: int = 10
    checkout_window_s: int = 3600
    initial_cost: int = 50
    iteration_cost: int = 25
    signup_credits: int = 0
    signup_credits_expire_days: int = 30
    # Cost and abuse controls (docs/LIMITS.md): per-user windows, per-user
    # generations in flight, the per-instance model circuit breaker, and what one model call may use.
    generate_concurrency: int = 3
    generate_limit: int = 100
    generate_window_s: int = 3600
    generate_failure_limit: int = 10
    generate_failure_window_s: int = 3600
    breaker_failures: int = 5
    breaker_window_s: int = 30
    breaker_cooldown_s: int = 30
    max_output_tokens: int = 2048
    thinking_budget: int = 1024
    export_limit: int = 5
    export_window_s: int = 3600
    export_concurrency: int = 4
    credits_limit: int = 120
    credits_window_s: int = 60
    consent_limit: int = 60
    consent_window_s: int = 60
    app_check: bool = False
    plans: Mapping[str, Plan] = field(default_factory=dict)
    period_grace_h: int = 72

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


def _int(
    env: Mapping[str, str],
    name: str,
    default: int,
    *,
    minimum: int = 0,
    maximum: int | None = None,
    why: str = "",
) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        because = f" ({why})" if why else ""
        raise ConfigError(name, f"{name} must be at least {minimum}{because}, got {value}")
    if maximum is not None and value > maximum:
        because = f" ({why})" if why else ""
        raise ConfigError(name, f"{name} must be at most {maximum}{because}, got {value}")
    return value


def _switch(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (the first is the default); anything else is refused, never guessed."""
    value = env.get(name, "").strip().lower() or choices[0]
    if value not in choices:
        raise ConfigError(name, f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, f"{name} must be a number of seconds, got {raw!r}") from None
    if value < 0:
        raise ConfigError(name, f"{name} must not be negative, got {value}")
    return value


def _url(env: Mapping[str, str], name: str) -> str | None:
    """An absolute http(s) URL, or None when unset."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.startswith(("https://", "http://")) or len(raw.split("/")) < 4 or not raw.split("/")[2]:
        raise ConfigError(name, f"{name} must be a URL like https://host/path, got {raw!r}")
    return raw


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
    generator = env.get("GENERATOR", "gemini").strip() or "gemini"
    if generator not in ("gemini", "offline"):
        raise ConfigError("GENERATOR", f"GENERATOR must be 'gemini' or 'offline', got {generator!r}")
    project = project_of(env)
    if not project:
        raise ConfigError("GOOGLE_CLOUD_PROJECT")
    stripe_mode = stripe_mode_of(env)
    timeout_s = _float(env, "GENERATION_TIMEOUT_S", 30.0)
    # A live request must never look stale: the deployed generate function times out before this.
    stale_minimum = math.ceil(timeout_s) + 30
    # Scheme and host are case-insensitive: origins are kept lowercase and compared so.
    origins = tuple(
        o.strip().rstrip("/").lower() for o in env.get("ALLOWED_ORIGINS", "").split(",") if o.strip()
    )
    return Settings(
        project=project,
        firestore_emulator_host=env.get("FIRESTORE_EMULATOR_HOST") or None,
        auth_emulator_host=env.get("FIREBASE_AUTH_EMULATOR_HOST") or None,
        stripe_secret_key=env.get("STRIPE_SECRET_KEY") or None,
        stripe_webhook_secret=env.get("STRIPE_WEBHOOK_SECRET") or None,
        stripe_api_base=env.get("STRIPE_API_BASE") or None,
        credit_packs=_packs(env),
        generator=generator,
        gemini_api_key=env.get("GEMINI_API_KEY") or None,
        gemini_model=env.get("GEMINI_MODEL", "").strip() or "gemini-2.5-flash",
        gemini_base_url=env.get("GEMINI_BASE_URL") or None,
        generation_timeout_s=timeout_s,
        stale_charge_after_s=_int(
            env, "STALE_CHARGE_AFTER_S", 600, minimum=stale_minimum, why="GENERATION_TIMEOUT_S + 30"
        ),
        terms_version=env.get("TERMS_VERSION", "").strip() or "2026-01-01",
        retention_days=_int(env, "RETENTION_DAYS", 90, minimum=1),
        sweep_budget_s=_float(env, "SWEEP_BUDGET_S", 480.0),
        analytics_retention_days=_int(env, "ANALYTICS_RETENTION_DAYS", 400, minimum=1),
        auth_state_cache_s=_float(env, "AUTH_STATE_CACHE_S", 30.0),
        checkout_limit=_int(env, "CHECKOUT_LIMIT", 10, minimum=1),
        signup_credits=_int(env, "SIGNUP_CREDITS", 0),
        signup_credits_expire_days=_int(env, "SIGNUP_CREDITS_EXPIRE_DAYS", 30, minimum=1),
        checkout_window_s=_int(env, "CHECKOUT_WINDOW_S", 3600, minimum=1),
        allowed_origins=origins,
        stripe_mode=stripe_mode,
        problem_retention_days=_int(env, "PROBLEM_RETENTION_DAYS", 30, minimum=1),
        sweep_inline_projects=_int(env, "SWEEP_INLINE_PROJECTS", 50),
        task_queue=bool(env.get("CLOUD_TASKS_EMULATOR_HOST"))
        or (bool(env.get(DEPLOYED_MARKER)) and env.get("FUNCTIONS_EMULATOR") != "true"),
        cloud_tasks_emulator_host=env.get("CLOUD_TASKS_EMULATOR_HOST") or None,
        purge_task_url=_url(env, "PURGE_TASK_URL"),
        region=deploy_region(env),
        generate_concurrency=_int(env, "GENERATE_CONCURRENCY", 3, minimum=1),
        generate_limit=_int(env, "GENERATE_LIMIT", 100, minimum=1),
        generate_window_s=_int(env, "GENERATE_WINDOW_S", 3600, minimum=1),
        generate_failure_limit=_int(env, "GENERATE_FAILURE_LIMIT", 10, minimum=1),
        generate_failure_window_s=_int(env, "GENERATE_FAILURE_WINDOW_S", 3600, minimum=1),
        breaker_failures=_int(env, "MODEL_BREAKER_FAILURES", 5, minimum=1),
        breaker_window_s=_int(env, "MODEL_BREAKER_WINDOW_S", 30, minimum=1),
        breaker_cooldown_s=_int(env, "MODEL_BREAKER_COOLDOWN_S", 30, minimum=1),
        max_output_tokens=_int(env, "GEMINI_MAX_OUTPUT_TOKENS", 2048, minimum=1),
        # 0 turns thinking off; the model's "dynamic" (-1) has no bound, so it is refused.
        thinking_budget=_int(env, "GEMINI_THINKING_BUDGET", 1024, minimum=0, why="-1 (dynamic) is unbounded"),
        export_limit=_int(env, "EXPORT_LIMIT", 5, minimum=1),
        export_window_s=_int(env, "EXPORT_WINDOW_S", 3600, minimum=1),
        # `account` serves 20 requests at once per instance: exports may hold at most half of them, so
        # an erasure (or another user's export) always finds a free one.
        export_concurrency=_int(
            env, "EXPORT_CONCURRENCY", 4, minimum=1, maximum=ACCOUNT_CONCURRENCY // 2, why="half of account's"
        ),
        credits_limit=_int(env, "CREDITS_LIMIT", 120, minimum=1),
        credits_window_s=_int(env, "CREDITS_WINDOW_S", 60, minimum=1),
        consent_limit=_int(env, "CONSENT_LIMIT", 60, minimum=1),
        consent_window_s=_int(env, "CONSENT_WINDOW_S", 60, minimum=1),
        app_check=_switch(env, "APP_CHECK", ("off", "enforce")) == "enforce",
        plans=_plans(env),
        period_grace_h=_int(env, "PERIOD_GRACE_H", 72, maximum=24 * 31),
    )


@once
def get_settings() -> Settings:
    """Settings of this process, parsed once. Tests call `get_settings.cache_clear()`."""
    return settings_from(os.environ)


def generate_timeout_s(env: Mapping[str, str] = os.environ) -> int:
    """The deployed generate function's timeout: 120 s, or less when STALE_CHARGE_AFTER_S is set lower,
    so a request still running is never settled as a crashed one (read when the functions are declared)."""
    stale = _int(env, "STALE_CHARGE_AFTER_S", 600, minimum=1)
    return min(GENERATE_TIMEOUT_CAP_S, stale - 1)


def deploy_region(env: Mapping[str, str] = os.environ) -> str:
    """FUNCTIONS_REGION: where every function is declared (read when the Firebase CLI discovers them)."""
    region = env.get("FUNCTIONS_REGION", "").strip() or "us-central1"
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
    mode = env.get("STRIPE_MODE", "").strip() or "test"
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
        if s != "GEMINI_API_KEY" or env.get("GENERATOR", "gemini") == "gemini"
    ]
    missing = [name for name in required if not env.get(name)]
    if missing:
        raise ConfigError(missing[0], f"refusing to start {target}: {', '.join(missing)} not set {where}")
