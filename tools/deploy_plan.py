"""What `firebase deploy` will create, read from the manifest the Firebase CLI discovers, and the IAM
steps deploy.sh runs before it, from the one table in `functions/lib/deployment.py`.

    python -m tools.deploy_plan PROJECT REGION            # the plan, for people
    python -m tools.deploy_plan PROJECT REGION --iam      # IAM steps, one per line, for deploy.sh

IAM step lines (space-separated): `account ID`, `role ID ROLE`, `secret ID SECRET`, `invoker ID FUNCTION`,
`enqueuer ID QUEUE`, `actas ID ACCOUNT` (ID may mint tokens as ACCOUNT). `invoker` lines are only for
functions that cannot declare their invokers (task queue functions): an HTTPS function's invokers
are in its declaration, and `firebase deploy` sets them.
Calls no cloud API: discovery runs firebase-functions' admin server locally, as the CLI does.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from devstack.manifest import discover
from functions.lib import deployment


def trigger_of(endpoint: dict[str, Any]) -> str:
    if "httpsTrigger" in endpoint:
        invoker = endpoint["httpsTrigger"].get("invoker") or ["public"]
        return f"HTTPS, invoker {','.join(invoker)}"
    if "scheduleTrigger" in endpoint:
        schedule = endpoint["scheduleTrigger"]
        return f"schedule '{schedule['schedule']}' ({schedule.get('timeZone') or 'UTC'}), private"
    if "taskQueueTrigger" in endpoint:
        queue = endpoint["taskQueueTrigger"]
        limits, retry = queue.get("rateLimits") or {}, queue.get("retryConfig") or {}
        return (
            f"task queue '{endpoint['entryPoint']}', private: "
            f"{limits.get('maxConcurrentDispatches')} concurrent, "
            f"{limits.get('maxDispatchesPerSecond')}/s, {retry.get('maxAttempts')} attempts, "
            f"backoff {retry.get('minBackoffSeconds')}-{retry.get('maxBackoffSeconds')} s"
        )
    return "unknown trigger"


def plan_lines(manifest: dict[str, Any]) -> list[str]:
    lines = []
    for name, endpoint in sorted(manifest["endpoints"].items()):
        secrets = [s["key"] for s in endpoint.get("secretEnvironmentVariables") or []]
        # Full emails: discovery runs with GCLOUD_PROJECT set, as the CLI's does (deployment.service_account).
        account = str(endpoint.get("serviceAccountEmail") or "default compute account")
        size = (
            f"{endpoint['availableMemoryMb']} MB, {endpoint['cpu']} CPU, "
            f"timeout {endpoint['timeoutSeconds']} s, "
            f"up to {endpoint['maxInstances']} instances x {endpoint['concurrency']} concurrent"
        )
        lines.append(
            f"  {name}: {trigger_of(endpoint)}; region {','.join(endpoint['region'])}; {size}; "
            f"runs as {account}; secrets: {', '.join(secrets) or 'none'}"
        )
    return lines


def iam_lines(manifest: dict[str, Any]) -> list[str]:
    """Accounts, roles, per-secret access and private invokers for the declared functions and the
    scheduler."""
    lines = []
    declared = manifest["endpoints"]
    for name, spec in [
        *((n, deployment.FUNCTIONS[n]) for n in sorted(declared)),
        ("scheduler", deployment.SCHEDULER),
    ]:
        lines.append(f"account {spec.account}")
        lines.extend(f"role {spec.account} {role}" for role in spec.roles)
        secrets = (
            [s["key"] for s in declared[name].get("secretEnvironmentVariables") or []]
            if name in declared
            else []
        )
        lines.extend(f"secret {spec.account} {secret}" for secret in secrets)
        lines.extend(
            f"invoker {spec.account} {function}"
            for function in spec.invokes
            if function in declared and "httpsTrigger" not in declared[function]
        )
        lines.extend(f"enqueuer {spec.account} {queue}" for queue in spec.enqueues if queue in declared)
        if spec.acts_as_itself:
            lines.append(f"actas {spec.account} {spec.account}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project")
    parser.add_argument("region")
    parser.add_argument(
        "--iam", action="store_true", help="print IAM steps for deploy.sh instead of the plan"
    )
    args = parser.parse_args(argv)
    manifest = discover(
        env={
            "FUNCTIONS_REGION": args.region,
            "GCLOUD_PROJECT": args.project,
            "PATH": os.environ.get("PATH", ""),
        }
    )
    unknown = sorted(set(manifest["endpoints"]) - set(deployment.FUNCTIONS))
    if unknown:
        print(
            f"deploy plan: {', '.join(unknown)} not in functions/lib/deployment.py FUNCTIONS", file=sys.stderr
        )
        return 1
    print("\n".join(iam_lines(manifest) if args.iam else plan_lines(manifest)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
