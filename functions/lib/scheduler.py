"""The Cloud Scheduler job that calls `retention_sweep` nightly, and its idempotent create-or-update.

The job POSTs `{}` to the function's URL with an OIDC token minted for a service account (the
only principal allowed to invoke the private function; the audience is the URL, which is what
Cloud Run checks). `google.cloud.scheduler_v1` is imported only inside these functions, so
importing this module (or main.py) never loads it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from functions.lib.errors import InvalidRequest

if TYPE_CHECKING:
    from google.cloud.scheduler_v1 import CloudSchedulerClient, Job

DEFAULT_JOB_ID = "retention-sweep"
DEFAULT_SCHEDULE = "0 3 * * *"
DEFAULT_TIME_ZONE = "UTC"
# The function's timeout (main.py: 540 s); the sweep stops itself at SWEEP_BUDGET_S, set below it.
DEFAULT_ATTEMPT_DEADLINE_S = 540
DEFAULT_RETRIES = 2
# What an update rewrites: everything this module sets, nothing Cloud Scheduler owns (state, times).
UPDATE_FIELDS = ("description", "schedule", "time_zone", "http_target", "retry_config", "attempt_deadline")
RPC_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class SweepJob:
    """Where and when the sweep runs: one Cloud Scheduler job per project and region."""

    project: str
    region: str
    url: str
    service_account: str
    schedule: str = DEFAULT_SCHEDULE
    time_zone: str = DEFAULT_TIME_ZONE
    job_id: str = DEFAULT_JOB_ID
    audience: str | None = None
    attempt_deadline_s: int = DEFAULT_ATTEMPT_DEADLINE_S
    retries: int = DEFAULT_RETRIES

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    @property
    def name(self) -> str:
        return f"{self.parent}/jobs/{self.job_id}"

    def check(self) -> SweepJob:
        """Fail before any API call, naming what is wrong."""
        if not re.fullmatch(r"https?://\S+", self.url):
            raise InvalidRequest(f"The sweep URL must be an http(s) URL, got {self.url!r}.")
        if "@" not in self.service_account:
            raise InvalidRequest(f"The service account must be an email, got {self.service_account!r}.")
        if len(self.schedule.split()) != 5:
            raise InvalidRequest(f"The schedule must be a 5-field cron expression, got {self.schedule!r}.")
        if not re.fullmatch(r"[a-zA-Z\d_-]{1,500}", self.job_id):
            raise InvalidRequest(f"The job id may hold letters, digits, - and _ only, got {self.job_id!r}.")
        if not 15 <= self.attempt_deadline_s <= 1800:
            raise InvalidRequest("The attempt deadline of an HTTP job must be 15 s to 30 min.")
        return self


@dataclass(frozen=True)
class Upserted:
    action: str  # "created" or "updated"
    job: Job


def job_spec(job: SweepJob) -> Job:
    """The job as Cloud Scheduler stores it: HTTP POST with an OIDC token, on a cron in a time zone."""
    from google.cloud import scheduler_v1
    from google.protobuf import duration_pb2

    return scheduler_v1.Job(
        name=job.name,
        description=(
            "Nightly retention sweep: delete expired projects, refund stale charges (credits backend)."
        ),
        schedule=job.schedule,
        time_zone=job.time_zone,
        http_target=scheduler_v1.HttpTarget(
            uri=job.url,
            http_method=scheduler_v1.HttpMethod.POST,
            headers={"Content-Type": "application/json"},
            body=b"{}",
            oidc_token=scheduler_v1.OidcToken(
                service_account_email=job.service_account, audience=job.audience or job.url
            ),
        ),
        # A failed pass is safe to repeat (the sweep is idempotent); a few spaced retries cover a blip.
        retry_config=scheduler_v1.RetryConfig(
            retry_count=job.retries,
            min_backoff_duration=duration_pb2.Duration(seconds=300),
            max_backoff_duration=duration_pb2.Duration(seconds=1800),
        ),
        attempt_deadline=duration_pb2.Duration(seconds=job.attempt_deadline_s),
    )


def scheduler_client(*, api_endpoint: str | None = None, credentials: Any = None) -> CloudSchedulerClient:
    """A Cloud Scheduler client over REST; `api_endpoint` (e.g. http://127.0.0.1:PORT) points it at a
    double."""
    from google.cloud import scheduler_v1

    options = {"api_endpoint": api_endpoint} if api_endpoint else None
    return scheduler_v1.CloudSchedulerClient(
        transport="rest", client_options=options, credentials=credentials
    )


def upsert_job(client: CloudSchedulerClient, job: SweepJob) -> Upserted:
    """Create the job, or update it in place when it exists: running this twice never makes two jobs.

    get -> update, or create; a create that loses a race to another deploy (409 ALREADY_EXISTS)
    updates instead.
    """
    from google.api_core import exceptions as gexc
    from google.protobuf import field_mask_pb2

    spec = job_spec(job.check())
    mask = field_mask_pb2.FieldMask(paths=list(UPDATE_FIELDS))
    try:
        client.get_job(name=job.name, timeout=RPC_TIMEOUT_S)
    except gexc.NotFound:
        try:
            return Upserted("created", client.create_job(parent=job.parent, job=spec, timeout=RPC_TIMEOUT_S))
        except gexc.Conflict:  # over REST, ALREADY_EXISTS arrives as HTTP 409
            pass
    return Upserted("updated", client.update_job(job=spec, update_mask=mask, timeout=RPC_TIMEOUT_S))
