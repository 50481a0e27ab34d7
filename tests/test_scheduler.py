"""The Cloud Scheduler job: the exact REST requests google-cloud-scheduler sends to a local double of
the API, create then update in place (never a second job), and the operator command that runs it."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from devstack.scheduler_double import SchedulerDouble
from functions.lib.errors import InvalidRequest
from functions.lib.scheduler import SweepJob, scheduler_client, upsert_job
from tests.helpers import ROOT

pytestmark = pytest.mark.no_emulator

PARENT = "projects/acme-credits/locations/europe-west1"
NAME = f"{PARENT}/jobs/retention-sweep"
URL = "https://retention-sweep-abc123-ew.a.run.app"
SA = "credits-scheduler@acme-credits.iam.gserviceaccount.com"
JOB = SweepJob(project="acme-credits", region="europe-west1", url=URL, service_account=SA)
EXPECTED_JOB = {
    "name": NAME,
    "description": "Nightly retention sweep: delete expired projects, refund stale charges (credits backend).",
    "httpTarget": {
        "uri": URL,
        "httpMethod": 1,  # POST, as the REST transport encodes enums (enum-encoding=int)
        "headers": {"Content-Type": "application/json"},
        "body": base64.b64encode(b"{}").decode(),
        "oidcToken": {"serviceAccountEmail": SA, "audience": URL},
    },
    "schedule": "0 3 * * *",
    "timeZone": "UTC",
    "retryConfig": {"retryCount": 2, "minBackoffDuration": "300s", "maxBackoffDuration": "1800s"},
    "attemptDeadline": "540s",
}


@pytest.fixture(scope="module")
def served_api() -> Iterator[SchedulerDouble]:
    double = SchedulerDouble().start()
    yield double  # type: ignore[misc]
    double.stop()


@pytest.fixture
def api(served_api: SchedulerDouble) -> SchedulerDouble:
    """The module's double, emptied: no jobs, no requests (stopping a server costs 0.5 s each)."""
    served_api.jobs.clear()
    served_api.received.clear()
    served_api.hide_from_get = False
    served_api.mode = "ok"
    return served_api


def client_for(api: SchedulerDouble) -> Any:
    from google.auth.credentials import AnonymousCredentials

    return scheduler_client(api_endpoint=api.url, credentials=AnonymousCredentials())


def test_first_upsert_creates_the_job_with_exactly_this_request(api: SchedulerDouble) -> None:
    result = upsert_job(client_for(api), JOB)

    assert result.action == "created" and result.job.name == NAME
    assert api.requests() == [("GET", f"/v1/{NAME}"), ("POST", f"/v1/{PARENT}/jobs")]
    assert json.loads(api.received[1].body) == EXPECTED_JOB
    assert list(api.jobs) == [NAME]


def test_second_upsert_updates_the_same_job_instead_of_adding_one(api: SchedulerDouble) -> None:
    client = client_for(api)
    upsert_job(client, JOB)
    changed = SweepJob(
        project="acme-credits",
        region="europe-west1",
        url=URL,
        service_account=SA,
        schedule="30 2 * * *",
        time_zone="Europe/Paris",
    )

    result = upsert_job(client, changed)

    assert result.action == "updated"
    assert api.requests() == [
        ("GET", f"/v1/{NAME}"),
        ("POST", f"/v1/{PARENT}/jobs"),
        ("GET", f"/v1/{NAME}"),
        ("PATCH", f"/v1/{NAME}"),
    ]
    patch = api.received[3]
    assert parse_qs(urlsplit(patch.path).query)["updateMask"] == [
        "description,schedule,timeZone,httpTarget,retryConfig,attemptDeadline"
    ]
    body = json.loads(patch.body)
    assert body == {k: v for k, v in EXPECTED_JOB.items() if k != "name"} | {
        "schedule": "30 2 * * *",
        "timeZone": "Europe/Paris",
    }
    assert list(api.jobs) == [NAME]
    assert api.jobs[NAME]["schedule"] == "30 2 * * *" and api.jobs[NAME]["timeZone"] == "Europe/Paris"
    assert api.jobs[NAME]["state"] == "ENABLED"


def test_create_that_loses_a_race_updates_instead(api: SchedulerDouble) -> None:
    client = client_for(api)
    upsert_job(client, JOB)
    api.hide_from_get = True  # another deploy created it between our get and our create

    result = upsert_job(client, JOB)

    assert result.action == "updated"
    assert api.requests()[2:] == [
        ("GET", f"/v1/{NAME}"),
        ("POST", f"/v1/{PARENT}/jobs"),
        ("PATCH", f"/v1/{NAME}"),
    ]
    assert list(api.jobs) == [NAME]


@pytest.mark.parametrize(
    "job",
    [
        SweepJob("acme-credits", "europe-west1", "not a url", SA),
        SweepJob("acme-credits", "europe-west1", URL, "not-an-email"),
        SweepJob("acme-credits", "europe-west1", URL, SA, schedule="every night"),
        SweepJob("acme-credits", "europe-west1", URL, SA, job_id="a/b"),
        SweepJob("acme-credits", "europe-west1", URL, SA, attempt_deadline_s=3600),
    ],
    ids=["url", "service-account", "schedule", "job-id", "deadline"],
)
def test_a_bad_spec_fails_before_any_request(api: SchedulerDouble, job: SweepJob) -> None:
    with pytest.raises(InvalidRequest):
        upsert_job(client_for(api), job)

    assert api.received == []


def schedule_argv(
    api: SchedulerDouble, *, project: str = "acme-credits", region: str = "europe-west1", url: str = URL
) -> list[str]:
    """`admin schedule` arguments aimed at the Scheduler double."""
    options = {"--project": project, "--region": region, "--url": url, "--service-account": SA}
    return ["schedule", *(part for option in options.items() for part in option), "--api-endpoint", api.url]


def test_schedule_command_creates_then_updates(
    api: SchedulerDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions.admin import cli as admin

    argv = schedule_argv(api)

    assert admin.main(argv) == 0
    assert admin.main([*argv, "--schedule", "15 4 * * *"]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"created {NAME}: POST {URL} at '0 3 * * *' (UTC), OIDC as {SA}")
    assert out[1].startswith(f"updated {NAME}: POST {URL} at '15 4 * * *' (UTC)")
    assert list(api.jobs) == [NAME] and api.jobs[NAME]["schedule"] == "15 4 * * *"


def test_schedule_command_rejects_a_bad_url_without_calling_the_api(
    api: SchedulerDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions.admin import cli as admin

    argv = schedule_argv(api, project="p", region="r", url="ftp://x")

    assert admin.main(argv) == admin.EXIT_FAILED
    assert "sweep URL" in capsys.readouterr().err and api.received == []


def test_schedule_command_reports_a_refusal_by_the_api(
    api: SchedulerDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions.admin import cli as admin

    api.mode = "denied"
    argv = schedule_argv(api)

    assert admin.main(argv) == admin.EXIT_FAILED
    err = capsys.readouterr().err
    assert (
        err.startswith("schedule failed: Cloud Scheduler answered 403")
        and "The caller does not have permission" in err
        and NAME in err
    )


def test_importing_the_entry_points_does_not_load_the_scheduler_library() -> None:
    code = (
        "import sys, main, functions.handlers.retention_sweep, functions.lib.retention, functions.lib.scheduler, functions.admin.cli\n"
        "loaded = [m for m in sys.modules if m.startswith('google.cloud.scheduler')]\n"
        "assert not loaded, loaded\n"
    )
    env = {"PATH": "/usr/bin:/bin", "GOOGLE_CLOUD_PROJECT": "demo-x"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)
