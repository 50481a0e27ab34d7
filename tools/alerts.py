"""Alerts as code: the log-based metrics and Cloud Monitoring alert policies of a deployed project,
created or updated by deploy.sh (docs/OPERATIONS.md, "Alerts").

    python -m tools.alerts PROJECT (--email ADDRESS | --channel NAME) [--dry-run]

Each metric counts log lines the code writes (functions/lib/logs.py: one JSON object per line, read
by Cloud Logging into `jsonPayload`; `message`, `logger` and the `json_fields` of the line). Each
run is idempotent: a metric that `gcloud logging metrics describe` finds is updated, else created;
a policy is found by its display name (`gcloud monitoring policies list`) and replaced, else
created; the email channel is found by its address, else created. `--dry-run` prints every command
and each definition it would send, and calls nothing (it cannot look, so it shows creates).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX = "credits"
REQUEST_LINE = 'jsonPayload.logger="request" AND jsonPayload.status>=100'


@dataclass(frozen=True)
class Metric:
    name: str
    description: str
    filter: str
    labels: tuple[tuple[str, str], ...] = ()  # (label, field of jsonPayload)

    def body(self) -> dict[str, Any]:
        """A LogMetric (Cloud Logging API): a DELTA INT64 counter of matching lines."""
        body: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "filter": f'resource.type="cloud_run_revision" AND ({self.filter})',
            "metricDescriptor": {
                "metricKind": "DELTA",
                "valueType": "INT64",
                "unit": "1",
                "labels": [{"key": key, "valueType": "STRING"} for key, _ in self.labels],
            },
        }
        if self.labels:
            body["labelExtractors"] = {key: f"EXTRACT(jsonPayload.{field})" for key, field in self.labels}
        return body

    @property
    def type(self) -> str:
        return f"logging.googleapis.com/user/{self.name}"


METRICS = (
    Metric(
        f"{PREFIX}_requests",
        "Requests answered by an HTTP function (the edge's one line per request), by function.",
        REQUEST_LINE,
        (("function", "function"),),
    ),
    Metric(
        f"{PREFIX}_request_errors",
        "Requests an HTTP function answered 5xx, by function.",
        f"{REQUEST_LINE} AND jsonPayload.status>=500",
        (("function", "function"),),
    ),
    Metric(
        f"{PREFIX}_webhook_failures",
        "Stripe webhook deliveries answered 4xx or 5xx (Stripe retries them, then may disable the endpoint).",
        f'{REQUEST_LINE} AND jsonPayload.function="stripe_webhook" AND jsonPayload.status>=400',
        (("status", "status"),),
    ),
    Metric(
        f"{PREFIX}_stripe_problems",
        "Stripe events stored as open problems in stripe_event_problems (or parked and not stored).",
        'jsonPayload.message="stripe event stored for operators" '
        'OR jsonPayload.message=~"^parked stripe event .* is not stored"',
        (("reason", "reason"),),
    ),
    Metric(
        f"{PREFIX}_stale_charges_settled",
        "Passes that refunded crashed (stale) charges, and stale charges without a user.",
        'jsonPayload.message="stale charges refunded" '
        'OR jsonPayload.message=~"^stale charge .* has no userId"',
    ),
    Metric(
        f"{PREFIX}_purge_failures",
        "Purge tasks stopped with work left or malformed, and projects the task queue did not take.",
        'jsonPayload.message=~"^purge of project .* stopped with work left$" '
        'OR jsonPayload.message=~"^purge task without a valid projectId" '
        'OR jsonPayload.message=~"^the queue did not take project "',
    ),
    Metric(
        f"{PREFIX}_sweep_passes",
        "Nightly retention sweep passes, by whether they completed.",
        'jsonPayload.logger="retention" AND jsonPayload.message=~"^retention sweep "',
        (("complete", "complete"),),
    ),
    Metric(
        f"{PREFIX}_grant_expiry_overdue",
        "Settlement passes that found grants still unwritten-off 15 minutes past their expiry.",
        'jsonPayload.message="expired grants overdue"',
    ),
)
_BY_NAME = {m.name.removeprefix(f"{PREFIX}_"): m for m in METRICS}


def _sum(metric: Metric, period_s: int, group_by: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return [
        {
            "alignmentPeriod": f"{period_s}s",
            "perSeriesAligner": "ALIGN_DELTA",
            "crossSeriesReducer": "REDUCE_SUM",
            "groupByFields": list(group_by),
        }
    ]


def _count_above(
    metric: Metric, threshold: float, period_s: int, *, group_by: tuple[str, ...] = ()
) -> dict[str, Any]:
    """More than `threshold` matching lines within `period_s`."""
    return {
        "displayName": f"{metric.name} above {threshold:g} in {period_s // 60} min",
        "conditionThreshold": {
            "filter": f'metric.type="{metric.type}" AND resource.type="cloud_run_revision"',
            "aggregations": _sum(metric, period_s, group_by),
            "comparison": "COMPARISON_GT",
            "thresholdValue": threshold,
            "duration": "0s",
            "trigger": {"count": 1},
        },
    }


@dataclass(frozen=True)
class Policy:
    display_name: str
    means: str
    first: str
    conditions: tuple[dict[str, Any], ...]

    def body(self, channels: list[str]) -> dict[str, Any]:
        """An AlertPolicy (Cloud Monitoring API); the documentation is what the notification says."""
        return {
            "displayName": self.display_name,
            "documentation": {
                "content": f"{self.means}\n\nFirst thing to do: {self.first}",
                "mimeType": "text/markdown",
            },
            "userLabels": {"app": PREFIX},
            "combiner": "OR",
            "conditions": list(self.conditions),
            "notificationChannels": channels,
            "alertStrategy": {"autoClose": "604800s"},
        }


_ERRORS, _REQUESTS = _BY_NAME["request_errors"], _BY_NAME["requests"]
_SWEEPS = f"logging_googleapis_com:user_{_BY_NAME['sweep_passes'].name}"
POLICIES = (
    Policy(
        f"{PREFIX}: 5xx rate by function",
        "More than 5% of one HTTP function's requests answered 5xx over 5 minutes (the alert names the "
        "function in its `function` label).",
        'open Logs Explorer on `jsonPayload.function="NAME" AND severity>=ERROR` and read the '
        "`stack_trace`; `busy` and `model_unavailable` are 503s from contention and the model's "
        "breaker, anything else is a bug or an outage of Firestore, Auth or Stripe.",
        (
            {
                "displayName": "5xx over 5% of requests, per function",
                "conditionThreshold": {
                    "filter": f'metric.type="{_ERRORS.type}" AND resource.type="cloud_run_revision"',
                    "aggregations": _sum(_ERRORS, 300, ("metric.label.function",)),
                    "denominatorFilter": (
                        f'metric.type="{_REQUESTS.type}" AND resource.type="cloud_run_revision"'
                    ),
                    "denominatorAggregations": _sum(_REQUESTS, 300, ("metric.label.function",)),
                    "comparison": "COMPARISON_GT",
                    "thresholdValue": 0.05,
                    "duration": "300s",
                    "trigger": {"count": 1},
                },
            },
        ),
    ),
    Policy(
        f"{PREFIX}: Stripe webhook deliveries failing",
        "The webhook answered more than 3 Stripe deliveries with 4xx or 5xx in 15 minutes. Stripe "
        "retries for up to 3 days, then may disable the endpoint: purchases would credit nothing.",
        "look at the failed deliveries in the Stripe Dashboard (Developers > Webhooks > the "
        "endpoint); 400 `invalid_signature` means STRIPE_WEBHOOK_SECRET is not the endpoint's "
        'signing secret, a 5xx is in the function\'s logs (`jsonPayload.function="stripe_webhook"`).',
        (_count_above(_BY_NAME["webhook_failures"], 3, 900),),
    ),
    Policy(
        f"{PREFIX}: Stripe problem events stored",
        "A Stripe event could not be applied and was stored in `stripe_event_problems` for an "
        "operator (the `reason` label says why): a payment, refund or dispute that moved no credits.",
        "read the open ones (`stripe_event_problems` where `status` is `open`: `reason`, `message`); "
        "fix the cause (e.g. a pack missing from CREDIT_PACKS), then "
        "`python -m functions.admin replay EVENT_ID`.",
        (_count_above(_BY_NAME["stripe_problems"], 0, 300),),
    ),
    Policy(
        f"{PREFIX}: crashed charges settled",
        "Generations left `charged` by a killed process (a function timeout or crash) were refunded "
        "by settlement. One now and then is a redeploy; a steady stream means generate is dying "
        "mid-request.",
        "check generate's timeouts and crashes (Cloud Run metrics: request latencies near the "
        "timeout, container restarts) and GENERATION_TIMEOUT_S against the model's latency.",
        (_count_above(_BY_NAME["stale_charges_settled"], 0, 600),),
    ),
    Policy(
        f"{PREFIX}: purge tasks failing",
        "More than 10 purge tasks stopped with work left, were malformed, or could not be enqueued "
        "in an hour. Cloud Tasks retries (10 attempts); projects past them stay marked for the next "
        "sweep.",
        'read the purgeProject logs (`jsonPayload.logger="retention"`); a 401/403 on the tasks means '
        "PURGE_TASK_URL or the sweep's invoker binding is wrong: run deploy.sh again.",
        (_count_above(_BY_NAME["purge_failures"], 10, 3600),),
    ),
    Policy(
        f"{PREFIX}: retention sweep not complete two nights running",
        "No retention sweep pass has reported `complete: true` in 49 hours: it stopped with work left "
        "(budget, contention, a queue it could not reach) or did not run at all.",
        'read the last `retention sweep` lines (`jsonPayload.logger="retention"`) and check the '
        "Cloud Scheduler job's last run; `python -m functions.admin sweep --dry-run` shows what is "
        "left.",
        (
            {
                "displayName": "no complete sweep in 49 h",
                "conditionPrometheusQueryLanguage": {
                    "query": (
                        f'(sum(increase({_SWEEPS}{{complete="true"}}[49h])) < 1) '
                        f'or absent_over_time({_SWEEPS}{{complete="true"}}[49h])'
                    ),
                    "duration": "0s",
                    "evaluationInterval": "3600s",
                },
            },
        ),
    ),
    Policy(
        f"{PREFIX}: expired grants overdue",
        "A settlement pass found grants more than 15 minutes past their expiry and not written off: "
        "the settlement job (every 10 minutes) is failing or falling behind, and those balances still "
        "show expired credits.",
        "check the `settle_charges` job's runs and its `settlement pass` lines; "
        "`python -m functions.admin settle` writes them off now, and `python -m functions.admin audit` "
        "lists any `expiry_overdue` left.",
        (_count_above(_BY_NAME["grant_expiry_overdue"], 0, 1800),),
    ),
)


class Gcloud:
    """Runs (or, in a dry run, prints) gcloud commands as deploy.sh does: `+ cmd` before each."""

    def __init__(self, project: str, *, dry_run: bool) -> None:
        self.project, self.dry_run = project, dry_run

    def _argv(self, *args: str) -> list[str]:
        return ["gcloud", *args, f"--project={self.project}", "--quiet"]

    def read(self, *args: str) -> str | None:
        """A read-only command's output, or None when it fails; in a dry run, printed and None."""
        argv = self._argv(*args)
        print("+ " + shlex.join(argv), flush=True)
        if self.dry_run:
            return None
        res = subprocess.run(argv, capture_output=True, text=True)
        return res.stdout.strip() if res.returncode == 0 else None

    def write(self, *args: str, config: dict[str, Any] | None = None, flag: str = "") -> str:
        """Run a command that changes something, with `config` written to a file for `flag`."""
        with tempfile.TemporaryDirectory() as tmp:
            extra = []
            if config is not None:
                path = Path(tmp) / "config.json"
                path.write_text(json.dumps(config, indent=2))
                extra = [f"{flag}={'FILE' if self.dry_run else path}"]
            argv = self._argv(*args, *extra)
            print("+ " + shlex.join(argv), flush=True)
            if config is not None:
                print("    FILE: " + json.dumps(config, sort_keys=True), flush=True)
            if self.dry_run:
                return ""
            res = subprocess.run(argv, capture_output=True, text=True)
            if res.returncode != 0:
                raise SystemExit(f"alerts: {' '.join(args[:4])} failed: {res.stderr.strip()}")
            return res.stdout.strip()


def email_channel(gcloud: Gcloud, email: str) -> str:
    """The email notification channel for `email`, created when there is none."""
    found = gcloud.read(
        "beta",
        "monitoring",
        "channels",
        "list",
        f'--filter=type="email" AND labels.email_address="{email}"',
        "--format=value(name)",
    )
    if found:
        return found.splitlines()[0]
    created = gcloud.write(
        "beta",
        "monitoring",
        "channels",
        "create",
        f"--display-name={PREFIX} alerts: {email}",
        "--type=email",
        f"--channel-labels=email_address={email}",
        "--format=value(name)",
    )
    return created or f"projects/{gcloud.project}/notificationChannels/NEW"


def apply(gcloud: Gcloud, channel: str) -> None:
    for metric in METRICS:
        exists = gcloud.read("logging", "metrics", "describe", metric.name, "--format=value(name)")
        verb = "update" if exists is not None else "create"
        gcloud.write("logging", "metrics", verb, metric.name, config=metric.body(), flag="--config-from-file")
    for policy in POLICIES:
        found = gcloud.read(
            "monitoring",
            "policies",
            "list",
            f'--filter=displayName="{policy.display_name}"',
            "--format=value(name)",
        )
        body = policy.body([channel])
        if found:
            name = found.splitlines()[0]
            gcloud.write("monitoring", "policies", "update", name, config=body, flag="--policy-from-file")
        else:
            gcloud.write("monitoring", "policies", "create", config=body, flag="--policy-from-file")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--email", help="send alerts to this address (its channel is created once)")
    target.add_argument("--channel", help="an existing channel: projects/P/notificationChannels/ID")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    gcloud = Gcloud(args.project, dry_run=args.dry_run)
    channel = args.channel or email_channel(gcloud, args.email)
    apply(gcloud, channel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
