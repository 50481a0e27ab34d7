"""The manifest the Firebase CLI discovers (firebase-functions' admin server, `/__/functions.yaml`):
every function with its trigger, options, secrets, service account and invoker, from one table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devstack.manifest import discover
from functions.lib import deployment
from functions.lib.config import settings_from

pytestmark = pytest.mark.no_emulator
ROOT = Path(__file__).resolve().parent.parent
PUBLIC_HTTP = {"generate", "consent", "credits", "checkout", "billing_portal", "catalog", "stripe_webhook"}
PROJECT = "acme-credits-prod"


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    # As `firebase deploy` discovers them: it sets GCLOUD_PROJECT (firebase-tools, functions/env.js).
    return discover(ROOT, env={"FUNCTIONS_REGION": "europe-west1", "GCLOUD_PROJECT": PROJECT})


def email(account: str) -> str:
    return f"{account}@{PROJECT}.iam.gserviceaccount.com"


def test_every_entry_point_is_declared_with_its_trigger_and_invoker(manifest: dict[str, Any]) -> None:
    endpoints = manifest["endpoints"]

    assert set(endpoints) >= PUBLIC_HTTP | {"retention_sweep", "purgeProject", "settle_charges"}
    assert set(endpoints) <= set(deployment.FUNCTIONS)
    for name in PUBLIC_HTTP:
        assert endpoints[name]["httpsTrigger"] == {"invoker": ["public"]}, name
    # Only the scheduler's account, named on the function: "private" would make every deploy clear
    # the binding deploy.sh grants, and the nightly job get 403 until the next grant.
    assert endpoints["retention_sweep"]["httpsTrigger"] == {"invoker": [email("sweep-scheduler")]}
    for name, endpoint in endpoints.items():
        assert endpoint["entryPoint"] == name
        assert endpoint["platform"] == "gcfv2" and endpoint["region"] == ["europe-west1"], name
        assert (
            endpoint["cpu"] == 1 and endpoint["availableMemoryMb"] >= 256 and endpoint["maxInstances"] >= 1
        ), name


def test_each_function_runs_as_its_own_account_with_exactly_its_secrets(manifest: dict[str, Any]) -> None:
    endpoints = manifest["endpoints"]

    secrets = {
        name: sorted(s["key"] for s in e["secretEnvironmentVariables"]) for name, e in endpoints.items()
    }
    assert secrets["generate"] == ["GEMINI_API_KEY"]
    assert secrets["checkout"] == ["STRIPE_SECRET_KEY"]
    assert secrets["billing_portal"] == ["STRIPE_SECRET_KEY"]
    assert secrets["account"] == ["STRIPE_SECRET_KEY"]  # erasure cancels the user's subscriptions
    assert secrets["stripe_webhook"] == ["STRIPE_WEBHOOK_SECRET"]
    assert all(
        not secrets[name]
        for name in set(endpoints) - {"generate", "checkout", "billing_portal", "account", "stripe_webhook"}
    )
    accounts = {name: e["serviceAccountEmail"] for name, e in endpoints.items()}
    # Full emails: the CLI expands the `fn-x@` shorthand for the run-as account only, and would grant
    # the secrets to, and write the settlement job's token for, `fn-x@` verbatim.
    assert accounts == {name: email(deployment.FUNCTIONS[name].account) for name in endpoints}
    assert len(set(accounts.values())) == len(accounts)


def test_the_purge_task_function_has_a_letters_only_queue_with_retries_and_rate_limits(
    manifest: dict[str, Any],
) -> None:
    purge = manifest["endpoints"]["purgeProject"]

    assert "httpsTrigger" not in purge
    queue = purge["taskQueueTrigger"]
    assert queue["retryConfig"] == {
        "maxAttempts": 10,
        "minBackoffSeconds": 30,
        "maxBackoffSeconds": 600,
        "maxDoublings": 4,
    }
    assert queue["rateLimits"] == {"maxConcurrentDispatches": 6, "maxDispatchesPerSecond": 5}
    assert purge["entryPoint"].isalpha()  # a queue id takes no underscore
    assert (
        purge["concurrency"] == 1 and purge["maxInstances"] == queue["rateLimits"]["maxConcurrentDispatches"]
    )
    assert purge["timeoutSeconds"] > settings_from({"GOOGLE_CLOUD_PROJECT": "demo-x"}).sweep_budget_s
    assert "cloudtasks.googleapis.com" in {api["api"] for api in manifest["requiredAPIs"]}


def test_the_settlement_job_runs_on_a_schedule_of_at_most_15_minutes(manifest: dict[str, Any]) -> None:
    job = manifest["endpoints"]["settle_charges"]

    assert (
        job["scheduleTrigger"]["schedule"] == "every 10 minutes"
        and job["scheduleTrigger"]["timeZone"] == "Etc/UTC"
    )
    assert job["scheduleTrigger"]["retryConfig"] == {}  # the next run, 10 minutes on, is the retry
    assert (
        job["maxInstances"] == 1
        and job["serviceAccountEmail"] == email("fn-settle-charges")
        and not job["secretEnvironmentVariables"]
    )
    assert "cloudscheduler.googleapis.com" in {api["api"] for api in manifest["requiredAPIs"]}


def test_options_match_the_documented_limits(manifest: dict[str, Any]) -> None:
    endpoints = manifest["endpoints"]
    defaults = settings_from({"GOOGLE_CLOUD_PROJECT": "demo-x"})

    generate = endpoints["generate"]
    # A live generation must never look stale to the settlement job, and must outlast its model call.
    assert defaults.generation_timeout_s + 30 <= generate["timeoutSeconds"] < 600
    assert generate["timeoutSeconds"] < defaults.stale_charge_after_s
    assert (
        endpoints["retention_sweep"]["maxInstances"] == 1 and endpoints["retention_sweep"]["concurrency"] == 1
    )
    assert endpoints["retention_sweep"]["timeoutSeconds"] > defaults.sweep_budget_s


def test_importing_main_loads_no_heavy_library() -> None:
    code = (
        "import sys, main\n"
        "heavy = [m for m in ('stripe', 'google.genai', 'google.cloud.scheduler_v1', 'google.cloud.firestore') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert 'firebase_functions.https_fn' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={"PATH": "/usr/bin:/bin"}, check=True)


def test_without_a_project_the_accounts_use_the_clis_shorthand() -> None:
    """Discovery outside the CLI (no GCLOUD_PROJECT) still declares every identity."""
    endpoints = discover(ROOT, env={"FUNCTIONS_REGION": "europe-west1"})["endpoints"]

    assert endpoints["generate"]["serviceAccountEmail"] == "fn-generate@"
    assert endpoints["retention_sweep"]["httpsTrigger"] == {"invoker": ["sweep-scheduler@"]}


def test_the_project_firebase_deploys_to_names_the_accounts_whatever_else_the_shell_says() -> None:
    """The CLI passes its own environment through to discovery: Cloud Shell's GOOGLE_CLOUD_PROJECT
    (the active gcloud project) must not put another project's accounts into the declarations."""
    endpoints = discover(
        ROOT,
        env={
            "FUNCTIONS_REGION": "europe-west1",
            "GCLOUD_PROJECT": PROJECT,
            "GOOGLE_CLOUD_PROJECT": "sandbox",
        },
    )["endpoints"]

    assert endpoints["generate"]["serviceAccountEmail"] == email("fn-generate")
    assert endpoints["retention_sweep"]["httpsTrigger"] == {"invoker": [email("sweep-scheduler")]}
