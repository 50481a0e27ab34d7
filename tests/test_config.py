"""Settings parse from the environment and name the variable that is wrong."""

from __future__ import annotations

import pytest

from functions.lib.config import generate_timeout_s, refuse_unsafe_environment, settings_from
from functions.lib.errors import ConfigError

pytestmark = pytest.mark.no_emulator
BASE = {"GOOGLE_CLOUD_PROJECT": "demo-x"}


def test_defaults() -> None:
    s = settings_from(BASE)

    assert (s.retention_days, s.stale_charge_after_s, s.sweep_budget_s, s.generator) == (
        90,
        600,
        480.0,
        "gemini",
    )
    assert s.credit_packs["starter"].credits == 100
    assert (s.generate_limit, s.generate_failure_limit, s.generate_concurrency, s.app_check) == (
        100,
        10,
        3,
        False,
    )
    assert (s.max_output_tokens, s.thinking_budget, s.export_concurrency) == (2048, 1024, 4)
    assert settings_from({**BASE, "APP_CHECK": "Enforce"}).app_check


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "GOOGLE_CLOUD_PROJECT"),
        ({**BASE, "RETENTION_DAYS": "ninety"}, "RETENTION_DAYS"),
        ({**BASE, "RETENTION_DAYS": "0"}, "RETENTION_DAYS"),
        ({**BASE, "SWEEP_BUDGET_S": "-1"}, "SWEEP_BUDGET_S"),
        ({**BASE, "GENERATOR": "gpt"}, "GENERATOR"),
        ({**BASE, "CREDIT_PACKS": "{oops"}, "CREDIT_PACKS"),
        ({**BASE, "CREDIT_PACKS": '{"x": {"credits": -1, "price": "p"}}'}, "CREDIT_PACKS"),
        ({**BASE, "STRIPE_MODE": "production"}, "STRIPE_MODE"),
        (
            {**BASE, "STALE_CHARGE_AFTER_S": "59"},
            "STALE_CHARGE_AFTER_S",
        ),  # below the default 30 s timeout + 30
        ({**BASE, "GENERATION_TIMEOUT_S": "100", "STALE_CHARGE_AFTER_S": "129"}, "STALE_CHARGE_AFTER_S"),
        ({**BASE, "GENERATE_LIMIT": "0"}, "GENERATE_LIMIT"),
        ({**BASE, "GENERATE_CONCURRENCY": "many"}, "GENERATE_CONCURRENCY"),
        ({**BASE, "GENERATE_FAILURE_WINDOW_S": "0"}, "GENERATE_FAILURE_WINDOW_S"),
        ({**BASE, "MODEL_BREAKER_COOLDOWN_S": "0"}, "MODEL_BREAKER_COOLDOWN_S"),
        ({**BASE, "GEMINI_MAX_OUTPUT_TOKENS": "0"}, "GEMINI_MAX_OUTPUT_TOKENS"),
        ({**BASE, "GEMINI_THINKING_BUDGET": "-1"}, "GEMINI_THINKING_BUDGET"),  # dynamic: unbounded
        ({**BASE, "EXPORT_CONCURRENCY": "11"}, "EXPORT_CONCURRENCY"),  # more than half of account's 20
        ({**BASE, "CREDITS_LIMIT": "0"}, "CREDITS_LIMIT"),
        ({**BASE, "APP_CHECK": "yes"}, "APP_CHECK"),
        ({**BASE, "PLANS": "[1]"}, "PLANS"),
        ({**BASE, "PLANS": '{"pro": {"price": "price_pro"}}'}, "PLANS"),  # no credits
        ({**BASE, "PLANS": '{"pro": {"price": "price_pro", "credits": 10, "rollover": -1}}'}, "PLANS"),
        (
            {**BASE, "PLANS": '{"a": {"price": "p", "credits": 1}, "b": {"price": "p", "credits": 2}}'},
            "PLANS",
        ),
        ({**BASE, "PLANS": '{"pro": {"price": "p", "credits": 1, "amount": 900}}'}, "PLANS"),  # no currency
        ({**BASE, "CREDIT_PACKS": '{"x": {"credits": 1, "price": "p", "currency": "usd"}}'}, "CREDIT_PACKS"),
        ({**BASE, "PERIOD_GRACE_H": "-1"}, "PERIOD_GRACE_H"),
        ({**BASE, "PERIOD_GRACE_H": "a day"}, "PERIOD_GRACE_H"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_from(env)

    assert err.value.variable == variable and variable in str(err.value)


def test_a_charge_is_stale_only_after_the_generation_timeout_plus_30_s() -> None:
    assert (
        settings_from(
            {**BASE, "GENERATION_TIMEOUT_S": "100", "STALE_CHARGE_AFTER_S": "130"}
        ).stale_charge_after_s
        == 130
    )
    assert settings_from({**BASE, "GENERATION_TIMEOUT_S": "2.5"}).stale_charge_after_s == 600
    with pytest.raises(ConfigError, match=r"at least 33 \(GENERATION_TIMEOUT_S \+ 30\)"):
        settings_from({**BASE, "GENERATION_TIMEOUT_S": "2.5", "STALE_CHARGE_AFTER_S": "32"})


def test_the_generate_function_times_out_before_its_charge_can_look_stale() -> None:
    assert generate_timeout_s({}) == 120
    assert generate_timeout_s({"STALE_CHARGE_AFTER_S": "60"}) == 59


def test_stripe_mode() -> None:
    assert (
        settings_from(BASE).stripe_mode == "test"
        and settings_from({**BASE, "STRIPE_MODE": "live"}).stripe_mode == "live"
    )


@pytest.mark.parametrize(
    ("key", "mode"),
    [
        ("sk_live_51Hx", {}),  # the default mode is test
        ("sk_live_51Hx", {"STRIPE_MODE": "test"}),
        ("rk_live_51Hx", {"STRIPE_MODE": "test"}),
        ("sk_test_51Hx", {"STRIPE_MODE": "live"}),
        ("rk_test_51Hx", {"STRIPE_MODE": "live"}),
    ],
)
def test_a_stripe_key_of_the_other_mode_refuses_to_start_naming_both_variables(
    key: str, mode: dict[str, str]
) -> None:
    env = {**BASE, "STRIPE_SECRET_KEY": key, **mode}
    for parse in (settings_from, refuse_unsafe_environment):
        with pytest.raises(ConfigError) as err:
            parse(env)

        message = str(err.value)
        assert "STRIPE_SECRET_KEY" in message and "STRIPE_MODE" in message and "refusing to start" in message
        assert key not in message  # the prefix only: a key never reaches a log
    # Not only a deployed process: a laptop with a live key would charge real cards too.
    with pytest.raises(ConfigError):
        refuse_unsafe_environment({**env, "K_SERVICE": "checkout", "FUNCTION_TARGET": "checkout"})


@pytest.mark.parametrize(
    ("key", "mode"),
    [
        ("sk_live_51Hx", "live"),
        ("rk_live_51Hx", "live"),
        ("sk_test_51Hx", "test"),
        ("rk_test_51Hx", "test"),
        ("sk_local", "live"),  # a key that names no mode (a local double's) is not judged
        ("sk_local", "test"),
    ],
)
def test_a_stripe_key_of_its_own_mode_starts(key: str, mode: str) -> None:
    env = {**BASE, "STRIPE_SECRET_KEY": key, "STRIPE_MODE": mode}

    refuse_unsafe_environment(env)
    assert settings_from(env).stripe_mode == mode


def test_credit_packs_override() -> None:
    s = settings_from({**BASE, "CREDIT_PACKS": '{"mega": {"credits": 9000, "price": "price_mega"}}'})

    assert list(s.credit_packs) == ["mega"] and s.credit_packs["mega"].price == "price_mega"


def test_plans_and_the_period_grace() -> None:
    assert (settings_from(BASE).plans, settings_from(BASE).period_grace_h) == ({}, 72)
    s = settings_from(
        {
            **BASE,
            "PLANS": '{"pro": {"price": "price_pro", "credits": 1000, "rollover": 200, "trialCredits": 50,'
            ' "amount": 1900, "currency": "USD"}, "basic": {"price": "price_basic", "credits": 100}}',
            "PERIOD_GRACE_H": "24",
        }
    )

    pro = s.plans["pro"]
    assert (pro.credits, pro.rollover, pro.trial_credits, pro.amount, pro.currency) == (
        1000,
        200,
        50,
        1900,
        "usd",
    )
    assert (s.plans["basic"].rollover, s.plans["basic"].amount) == (0, None)
    assert s.plan_of_price("price_basic") == s.plans["basic"] and s.plan_of_price("price_x") is None
    assert s.period_grace_h == 24


def test_missing_secret_names_itself() -> None:
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_SECRET"):
        settings_from(BASE).require("STRIPE_WEBHOOK_SECRET")


@pytest.mark.parametrize(
    "variable", ["FIRESTORE_EMULATOR_HOST", "FIREBASE_AUTH_EMULATOR_HOST", "CLOUD_TASKS_EMULATOR_HOST"]
)
@pytest.mark.parametrize(
    "project", [{"GOOGLE_CLOUD_PROJECT": "credits-prod"}, {"GCLOUD_PROJECT": "credits-prod"}, {}]
)
@pytest.mark.parametrize("deployed", [{}, {"K_SERVICE": "generate"}])
def test_emulator_switches_with_a_real_project_refuse_to_start_anywhere(
    variable: str, project: dict[str, str], deployed: dict[str, str]
) -> None:
    with pytest.raises(ConfigError) as err:
        refuse_unsafe_environment({**project, **deployed, variable: "127.0.0.1:9099"})

    assert err.value.variable == variable and variable in str(err.value) and "demo-" in str(err.value)


def test_emulator_switches_work_for_demo_projects_including_the_functions_emulator() -> None:
    switches = {"FIRESTORE_EMULATOR_HOST": "127.0.0.1:8080", "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"}
    refuse_unsafe_environment({"GOOGLE_CLOUD_PROJECT": "demo-x", **switches})
    # What `firebase emulators:start` gives each function: K_SERVICE as on Cloud Run, GCLOUD_PROJECT.
    functions_emulator = {
        "K_SERVICE": "checkout",
        "FUNCTION_TARGET": "checkout",
        "FUNCTIONS_EMULATOR": "true",
        "GCLOUD_PROJECT": "demo-x",
    }
    refuse_unsafe_environment(
        {
            **functions_emulator,
            **switches,
            "STRIPE_SECRET_KEY": "sk_test",
            "STRIPE_API_BASE": "http://127.0.0.1:12111",
        }
    )


@pytest.mark.parametrize("variable", ["STRIPE_API_BASE", "GEMINI_BASE_URL"])
def test_deployed_process_refuses_double_base_urls(variable: str) -> None:
    deployed = {"K_SERVICE": "credits", "FUNCTION_TARGET": "credits", "GOOGLE_CLOUD_PROJECT": "credits-prod"}
    with pytest.raises(ConfigError) as err:
        refuse_unsafe_environment({**deployed, variable: "http://127.0.0.1:9"})

    assert err.value.variable == variable and "refusing to start" in str(err.value)
    refuse_unsafe_environment(deployed)
    # Not deployed (no K_SERVICE): a developer may point a real-project run at a local double.
    refuse_unsafe_environment({"GOOGLE_CLOUD_PROJECT": "credits-prod", variable: "http://127.0.0.1:9"})


@pytest.mark.parametrize(
    ("target", "variable"),
    [
        ("stripe_webhook", "STRIPE_WEBHOOK_SECRET"),
        ("checkout", "STRIPE_SECRET_KEY"),
        ("generate", "GEMINI_API_KEY"),
    ],
)
def test_deployed_function_refuses_to_start_without_its_secret(target: str, variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        refuse_unsafe_environment({"K_SERVICE": target, "FUNCTION_TARGET": target})
    refuse_unsafe_environment({"K_SERVICE": target, "FUNCTION_TARGET": target, variable: "set"})


def test_operator_cli_refuses_an_emulator_switch_with_a_real_project(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions.admin import cli as admin

    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "credits-prod")
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:9")

    assert admin.main(["audit"]) == admin.EXIT_CONFIG
    assert "FIRESTORE_EMULATOR_HOST" in capsys.readouterr().err
