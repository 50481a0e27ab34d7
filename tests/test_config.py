"""Settings parse from the environment and name the variable that is wrong."""

from __future__ import annotations

import pytest

from functions.lib.config import refuse_unsafe_environment, settings_from
from functions.lib.errors import ConfigError

pytestmark = pytest.mark.no_emulator
BASE = {"GOOGLE_CLOUD_PROJECT": "demo-x"}


def test_defaults() -> None:
    s = settings_from(BASE)

    assert (s.retention_days, s.stale_charge_after_s, s.sweep_budget_s, s.generator) == (90, 600, 480.0, "gemini")
    assert s.credit_packs["starter"].credits == 100


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
        ({**BASE, "STALE_CHARGE_AFTER_S": "59"}, "STALE_CHARGE_AFTER_S"),  # below the default 30 s timeout + 30
        ({**BASE, "GENERATION_TIMEOUT_S": "100", "STALE_CHARGE_AFTER_S": "129"}, "STALE_CHARGE_AFTER_S"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_from(env)

    assert err.value.variable == variable and variable in str(err.value)


def test_a_charge_is_stale_only_after_the_generation_timeout_plus_30_s() -> None:
    assert settings_from({**BASE, "GENERATION_TIMEOUT_S": "100", "STALE_CHARGE_AFTER_S": "130"}).stale_charge_after_s == 130
    assert settings_from({**BASE, "GENERATION_TIMEOUT_S": "2.5"}).stale_charge_after_s == 600
    with pytest.raises(ConfigError, match=r"at least 33 \(GENERATION_TIMEOUT_S \+ 30\)"):
        settings_from({**BASE, "GENERATION_TIMEOUT_S": "2.5", "STALE_CHARGE_AFTER_S": "32"})


def test_stripe_mode() -> None:
    assert settings_from(BASE).stripe_mode == "test" and settings_from({**BASE, "STRIPE_MODE": "live"}).stripe_mode == "live"


def test_credit_packs_override() -> None:
    s = settings_from({**BASE, "CREDIT_PACKS": '{"mega": {"credits": 9000, "price": "price_mega"}}'})

    assert list(s.credit_packs) == ["mega"] and s.credit_packs["mega"].price == "price_mega"


def test_missing_secret_names_itself() -> None:
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_SECRET"):
        settings_from(BASE).require("STRIPE_WEBHOOK_SECRET")


def test_deployed_process_refuses_emulator_switches() -> None:
    with pytest.raises(ConfigError, match="FIREBASE_AUTH_EMULATOR_HOST"):
        refuse_unsafe_environment({"K_SERVICE": "generate", "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"})
    refuse_unsafe_environment({"K_SERVICE": "generate"})
    refuse_unsafe_environment({"FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"})


@pytest.mark.parametrize(
    ("target", "variable"),
    [("stripe_webhook", "STRIPE_WEBHOOK_SECRET"), ("checkout", "STRIPE_SECRET_KEY"), ("generate", "GEMINI_API_KEY")],
)
def test_deployed_function_refuses_to_start_without_its_secret(target: str, variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        refuse_unsafe_environment({"K_SERVICE": target, "FUNCTION_TARGET": target})
    refuse_unsafe_environment({"K_SERVICE": target, "FUNCTION_TARGET": target, variable: "set"})
