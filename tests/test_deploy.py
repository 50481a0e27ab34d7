"""deploy.sh wraps `firebase deploy`: its dry run prints the plan from the manifest the CLI discovers,
every account, role, secret grant and invoker, and calls no cloud tool; missing prerequisites and
config fail with a message that names them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from functions.lib import deployment

# deploy.sh run with fake cloud tools, 13 s in all: `scripts/test --fast` leaves them out.
pytestmark = [pytest.mark.no_emulator, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
CONFIG = {
    "ALLOWED_ORIGINS": "https://app.example.com,https://www.example.com",
    "TERMS_VERSION": "2026-11-01",
    "ALERT_EMAIL": "ops@example.com",
}
ALERTS_ONLY = {"ALERT_EMAIL": "ops@example.com"}
FUNCTIONS = (
    "generate",
    "consent",
    "credits",
    "checkout",
    "billing_portal",
    "catalog",
    "stripe_webhook",
    "retention_sweep",
    "purgeProject",
    "settle_charges",
    "account",
)


def tool_dir(tmp_path: Path, *, gcloud: bool = True) -> Path:
    """A PATH with the shell tools deploy.sh needs and a gcloud stub that records any call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("bash", "dirname", "sed", "mktemp", "rm", "cat", "grep", "sort", "tail", "cp"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    if gcloud:
        stub = bin_dir / "gcloud"
        stub.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\nexit 1\n')
        stub.chmod(0o755)
    return bin_dir


def deploy(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, gcloud: bool = True
) -> subprocess.CompletedProcess[str]:
    full = {
        "PATH": str(tool_dir(tmp_path, gcloud=gcloud)),
        "HOME": str(tmp_path),
        **(CONFIG if env is None else env),
    }
    return subprocess.run(
        ["bash", str(ROOT / "deploy.sh"), *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_dry_run_prints_the_firebase_plan_and_calls_no_cloud_tool(tmp_path: Path) -> None:
    res = deploy(tmp_path, "acme-credits-prod", "europe-west1", "--dry-run")

    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "calls").exists()
    out = res.stdout + res.stderr
    plan = {
        line.split(":")[0].strip(): line
        for line in out.splitlines()
        if line.startswith("  ") and " runs as " in line
    }
    assert set(FUNCTIONS) <= set(plan)
    for name in plan:
        account = deployment.FUNCTIONS[name].account
        assert (
            "region europe-west1" in plan[name]
            and f"runs as {account}@acme-credits-prod.iam.gserviceaccount.com" in plan[name]
        )
    assert (
        "invoker sweep-scheduler@acme-credits-prod.iam.gserviceaccount.com;" in plan["retention_sweep"]
        and "timeout 540 s" in plan["retention_sweep"]
    )
    for public in (
        "generate",
        "consent",
        "credits",
        "checkout",
        "billing_portal",
        "catalog",
        "stripe_webhook",
        "account",
    ):
        assert "HTTPS, invoker public" in plan[public]
    assert plan["generate"].endswith("secrets: GEMINI_API_KEY") and plan["checkout"].endswith(
        "secrets: STRIPE_SECRET_KEY"
    )
    assert plan["billing_portal"].endswith("secrets: STRIPE_SECRET_KEY")
    assert plan["stripe_webhook"].endswith("secrets: STRIPE_WEBHOOK_SECRET") and plan["credits"].endswith(
        "secrets: none"
    )
    firebase = "+ tools/firebase/node_modules/.bin/firebase deploy --only"
    deploy_steps = [
        line.removesuffix(" --non-interactive")
        for line in out.splitlines()
        if line.startswith((firebase, "+ tools/wait_for_indexes.sh"))
    ]
    assert deploy_steps == [  # the functions go out once the indexes their queries need are READY
        f"{firebase} firestore:rules\\,firestore:indexes --project acme-credits-prod",
        "+ tools/wait_for_indexes.sh acme-credits-prod",
        f"{firebase} functions --project acme-credits-prod --non-interactive --force",
    ]
    assert "gcloud functions deploy" not in out
    [enable] = [line for line in out.splitlines() if line.startswith("+ gcloud services enable")]
    # Firebase Auth's API: generate, checkout and account look accounts up; firestore for the rules.
    assert {"identitytoolkit.googleapis.com", "firestore.googleapis.com", "cloudtasks.googleapis.com"} <= set(
        enable.split()
    )


def test_dry_run_gives_each_account_only_its_roles_and_secrets(tmp_path: Path) -> None:
    res = deploy(tmp_path, "acme-credits-prod", "--dry-run")

    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    created = [line.split()[5] for line in lines if line.startswith("+ gcloud iam service-accounts create")]
    assert sorted(created) == sorted(
        {deployment.FUNCTIONS[n].account for n in FUNCTIONS} | {"sweep-scheduler"}
    )
    secret_grants = [line for line in lines if line.startswith("+ gcloud secrets add-iam-policy-binding")]
    assert sorted((g.split()[4], g.split()[5]) for g in secret_grants) == [
        ("GEMINI_API_KEY", "--member=serviceAccount:fn-generate@acme-credits-prod.iam.gserviceaccount.com"),
        (
            "STRIPE_SECRET_KEY",
            "--member=serviceAccount:fn-account@acme-credits-prod.iam.gserviceaccount.com",
        ),
        (
            "STRIPE_SECRET_KEY",
            "--member=serviceAccount:fn-billing-portal@acme-credits-prod.iam.gserviceaccount.com",
        ),
        (
            "STRIPE_SECRET_KEY",
            "--member=serviceAccount:fn-checkout@acme-credits-prod.iam.gserviceaccount.com",
        ),
        (
            "STRIPE_WEBHOOK_SECRET",
            "--member=serviceAccount:fn-stripe-webhook@acme-credits-prod.iam.gserviceaccount.com",
        ),
    ]
    roles = [line for line in lines if "add-iam-policy-binding acme-credits-prod" in line]
    assert not [r for r in roles if "sweep-scheduler" in r]
    narrow = ("--role=roles/datastore.user", "--role=roles/firebaseauth.viewer")
    # The public catalog only reads Firestore.
    [catalog_role] = [r for r in roles if "fn-catalog@" in r]
    assert "--role=roles/datastore.viewer" in catalog_role
    # Only `account` may delete Firebase Auth accounts (an erased user's sign-in).
    assert all(
        any(role in r for role in narrow)
        or ("fn-account@" in r and "--role=roles/firebaseauth.admin" in r)
        or ("fn-catalog@" in r and "--role=roles/datastore.viewer" in r)
        for r in roles
    )
    invokers = [line for line in lines if "add-invoker-policy-binding" in line]
    assert any(
        "add-invoker-policy-binding purgeProject" in i and "fn-retention-sweep@" in i for i in invokers
    )
    assert any(
        "service-accounts add-iam-policy-binding fn-retention-sweep@" in line and "serviceAccountUser" in line
        for line in lines
    )
    # The sweep's invoker is in its declaration (firebase deploy sets it each time), the queue's
    # enqueuer on the queue alone, not the project.
    assert len(invokers) == 1 and not [i for i in invokers if "retention_sweep" in i]
    assert [line for line in lines if "roles/cloudtasks" in line] == [
        "+ gcloud tasks queues add-iam-policy-binding purgeProject --location=us-central1 "
        "--member=serviceAccount:fn-retention-sweep@acme-credits-prod.iam.gserviceaccount.com "
        "--role=roles/cloudtasks.enqueuer --project=acme-credits-prod --quiet"
    ]
    assert "-m functions.admin schedule --project acme-credits-prod" in res.stdout
    assert "--service-account sweep-scheduler@acme-credits-prod.iam.gserviceaccount.com" in res.stdout
    assert (
        "ALLOWED_ORIGINS=https://app.example.com,https://www.example.com" in res.stdout
        and "FUNCTIONS_REGION=us-central1" in res.stdout
    )
    assert "Stripe webhook URL" in res.stdout


def test_dry_run_reads_the_projects_env_file_when_there_is_one(tmp_path: Path) -> None:
    env_file = ROOT / ".env.acme-env-file-test"
    env_file.write_text("TERMS_VERSION=2027-01-01\nALLOWED_ORIGINS=https://env-file.example.com\n")
    try:
        no_region = deploy(tmp_path / "first", "acme-env-file-test", "--dry-run", env=ALERTS_ONLY)
        env_file.write_text(
            "TERMS_VERSION=2027-01-01\nALLOWED_ORIGINS=https://env-file.example.com\nFUNCTIONS_REGION=us-central1\n"
        )
        ok = deploy(tmp_path, "acme-env-file-test", "--dry-run", env=ALERTS_ONLY)
        env_file.write_text(
            "TERMS_VERSION=2027-01-01\nALLOWED_ORIGINS=https://a.example\nFUNCTIONS_REGION=us-central1\nSTRIPE_SECRET_KEY=sk_live_oops\n"
        )
        leaked = deploy(tmp_path / "second", "acme-env-file-test", "--dry-run", env=ALERTS_ONLY)
    finally:
        env_file.unlink()

    assert no_region.returncode != 0 and "FUNCTIONS_REGION=us-central1 is not set" in no_region.stderr
    assert ok.returncode == 0, ok.stderr
    assert (
        "config for every function, from .env.acme-env-file-test" in ok.stdout
        and "https://env-file.example.com" in ok.stdout
    )
    assert leaked.returncode != 0 and "sets STRIPE_SECRET_KEY" in leaked.stderr


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        ((), CONFIG, "usage"),
        (("Bad_Project",), CONFIG, "not a valid Google Cloud project id"),
        (("demo-local",), CONFIG, "demo- id"),
        (("acme-credits-prod", "mars"), CONFIG, "REGION"),
        (("acme-credits-prod",), {"TERMS_VERSION": "v1", **ALERTS_ONLY}, "ALLOWED_ORIGINS"),
        (("acme-credits-prod",), {"ALLOWED_ORIGINS": "https://a.example", **ALERTS_ONLY}, "TERMS_VERSION"),
        (
            ("acme-credits-prod",),
            {"ALLOWED_ORIGINS": "https://a.example", "TERMS_VERSION": "v1"},
            "ALERT_EMAIL",
        ),
        (
            ("acme-credits-prod",),
            {**CONFIG, "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"},
            "FIREBASE_AUTH_EMULATOR_HOST",
        ),
    ],
)
def test_bad_arguments_and_config_fail_with_a_clear_message(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], named: str
) -> None:
    res = deploy(tmp_path, *args, "--dry-run", env=env)

    assert res.returncode != 0
    assert named in res.stderr
    assert not (tmp_path / "calls").exists()


def test_missing_gcloud_fails_naming_it(tmp_path: Path) -> None:
    res = deploy(tmp_path, "acme-credits-prod", "--dry-run", gcloud=False)

    assert res.returncode != 0 and "gcloud is not installed" in res.stderr


def test_deploy_script_is_executable() -> None:
    # What a deploy uploads is checked by tests/test_upload.py with the Firebase CLI's own packaging.
    assert os.access(ROOT / "deploy.sh", os.X_OK)


def wait_for_indexes(
    tmp_path: Path, *listings: str | None, timeout_s: int = 60
) -> subprocess.CompletedProcess[str]:
    """tools/wait_for_indexes.sh against a gcloud stub whose Nth call prints listings[N] (None: the call
    fails); the last listing repeats. Polls every 0 s."""
    bin_dir = tool_dir(tmp_path, gcloud=False)
    for tool in ("head", "sleep"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or tool)
    for n, listing in enumerate(listings):
        (tmp_path / f"listing{n}").write_text("FAIL" if listing is None else listing)
    stub = bin_dir / "gcloud"
    stub.write_text(
        f'#!/bin/bash\necho "$@" >> {tmp_path / "calls"}\n'
        f"n=$(grep -c . {tmp_path / 'calls'}); f={tmp_path}/listing$((n - 1))\n"
        f'[ -f "$f" ] || f={tmp_path}/listing{len(listings) - 1}\n'
        '[ "$(cat "$f")" != FAIL ] || exit 1\ncat "$f"\n'
    )
    stub.chmod(0o755)
    return subprocess.run(
        ["bash", str(ROOT / "tools" / "wait_for_indexes.sh"), "acme-credits-prod", str(timeout_s), "0"],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_the_deploy_waits_until_every_composite_index_is_ready(tmp_path: Path) -> None:
    res = wait_for_indexes(
        tmp_path, "READY\nCREATING\nCREATING\n", "READY\nREADY\nCREATING\n", "READY\nREADY\nREADY\n"
    )

    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "   composite indexes: 1 of 3 READY, 2 building; checking again in 0s",
        "   composite indexes: 2 of 3 READY, 1 building; checking again in 0s",
        "   composite indexes: 3 of 3 READY",
    ]
    calls = (tmp_path / "calls").read_text().splitlines()
    assert (
        calls
        == ["firestore indexes composite list --format=value(state) --project=acme-credits-prod --quiet"] * 3
    )


@pytest.mark.parametrize(
    ("listings", "message"),
    [
        (("READY\nNEEDS_REPAIR\n",), "an index is NEEDS_REPAIR"),
        ((None,), "could not list the composite indexes of acme-credits-prod"),
        (("READY\nCREATING\n",), "1 of 2 composite indexes still building after 0s"),
    ],
)
def test_an_index_that_will_not_be_ready_stops_the_deploy_naming_why(
    tmp_path: Path, listings: tuple[str | None, ...], message: str
) -> None:
    res = wait_for_indexes(tmp_path, *listings, timeout_s=0)

    assert res.returncode == 1 and message in res.stderr, res.stderr


def test_a_database_without_composite_indexes_does_not_wait(tmp_path: Path) -> None:
    res = wait_for_indexes(tmp_path, "")

    assert res.returncode == 0 and "composite indexes: none" in res.stdout, res.stderr


@pytest.mark.parametrize(
    ("gcloud_says", "message"),
    [
        (
            "ERROR: (gcloud.firestore.databases.describe) NOT_FOUND: Project 'acme-credits-prod' or "
            "database '(default)' does not exist.",
            "project acme-credits-prod has no Firestore database: create it once, choosing its location: "
            "gcloud firestore databases create --location=LOCATION --delete-protection",
        ),
        (
            "ERROR: (gcloud.firestore.databases.describe) PERMISSION_DENIED: missing permission",
            "could not check project acme-credits-prod's Firestore database: ERROR: "
            "(gcloud.firestore.databases.describe) PERMISSION_DENIED",
        ),
    ],
)
def test_a_project_without_a_firestore_database_stops_before_anything_is_deployed(
    tmp_path: Path, gcloud_says: str, message: str
) -> None:
    """firebase deploy would create the database itself, in nam5, and its location never changes;
    any other failure to look is said as it is, not as a missing database."""
    bin_dir = tool_dir(tmp_path)
    (bin_dir / "gcloud").write_text(
        f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\n'
        f'case "$*" in "firestore databases describe"*) echo "{gcloud_says}" >&2; exit 1 ;; esac\nexit 0\n'
    )
    res = subprocess.run(
        ["bash", str(ROOT / "deploy.sh"), "acme-credits-prod"],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path), **CONFIG},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )

    assert res.returncode == 1 and message in res.stderr, res.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[-1].startswith("firestore databases describe --database=(default)")
    assert [c.split()[0] for c in calls] == ["services", "firestore"]  # no account, role or secret touched
    assert "+ tools/firebase/node_modules/.bin/firebase deploy" not in res.stdout


# Lines as people write them, and as the Firebase CLI's dotenv grammar reads them (or refuses them).
DOTENV_FILES = [
    "A=1\nexport B=2\nexport   C=3\n  D=4\n\tE=5\nF = 6\n",
    "G=\"a b\" # a comment\nH='x # y'\nI=v # c\nJ=v#c\nK=\nL=\"\"\nM=' spaced '  \n",
    'N="esc \\n \\" \\\\ q"\nO=\'single \\n kept\'\nP="two\nlines"\nQ=\'also\ntwo\'\n',
    "# export SECRET=1\n\n   # indented comment\nR=1\r\nS=2\r\nT=3\r\n",
    "A='x\r\ny'\r\nB='p\r\nq'\r\n",  # the CLI turns only the first CRLF into LF
    "\ufeffU=bom\nV=\u00a0nbsp\n\u00a0W=1\nexportX=1\nexport=1\nK.E/Y=1\nZ=1\nZ=2\n",
    'junk\nKEY\n=v\nA=1\n"Q"=1\nB="unterminated\nC=2\n',
    "A='a' trailing\nB=\"b\" c\"\nexport  \t D = 'q' # c\n",
]


@pytest.mark.parametrize("text", DOTENV_FILES)
def test_env_files_are_read_as_the_firebase_cli_reads_them(tmp_path: Path, text: str) -> None:
    from tools import dotenv

    node = shutil.which("node")
    assert node, "node is needed (scripts/setup installs firebase-tools with it)"
    env_js = ROOT / "tools/firebase/node_modules/firebase-tools/lib/functions/env.js"
    path = tmp_path / ".env.x"
    path.write_text(text, encoding="utf-8")
    script = (
        f"const env = require({json.dumps(str(env_js))});"
        f"const data = require('fs').readFileSync({json.dumps(str(path))}, 'utf8');"
        "process.stdout.write(JSON.stringify(env.parse(data)));"
    )
    cli = json.loads(subprocess.run([node, "-e", script], capture_output=True, check=True, text=True).stdout)

    ours = dotenv.parse(text)

    assert ours.envs == cli["envs"]
    assert [line for _, line in ours.bad_lines] == cli["errors"]


def test_a_secret_in_an_env_file_is_refused_however_the_line_is_written(tmp_path: Path) -> None:
    base = "TERMS_VERSION=2027-01-01\nALLOWED_ORIGINS=https://a.example\nFUNCTIONS_REGION=us-central1\n"
    project_file, shared_file = ROOT / ".env.acme-dotenv-test", ROOT / ".env"
    assert not shared_file.exists(), "a .env in the repository would be deployed with every project"
    cases = {
        "export": (project_file, base + "export STRIPE_SECRET_KEY=sk_live_oops\n", "sets STRIPE_SECRET_KEY"),
        "indented": (project_file, base + "   GEMINI_API_KEY = 'AIza-oops' # later\n", "sets GEMINI_API_KEY"),
        # The CLI loads .env for every project, before .env.PROJECT_ID.
        "shared": (shared_file, "\texport STRIPE_WEBHOOK_SECRET=whsec_oops\n", "sets STRIPE_WEBHOOK_SECRET"),
        "unreadable": (
            project_file,
            base + "STRIPE_SECRET_KEY sk_live_oops\n",
            ".env.acme-dotenv-test line 4:",
        ),
    }
    results = {}
    try:
        for name, (path, text, _) in cases.items():
            project_file.write_text(base)
            path.write_text(text)
            results[name] = deploy(tmp_path / name, "acme-dotenv-test", "--dry-run", env=ALERTS_ONLY)
            shared_file.unlink(missing_ok=True)
        project_file.write_text(
            "export TERMS_VERSION='2027-01-01'\n  ALLOWED_ORIGINS=\"https://quoted.example\" # ours\n"
            "FUNCTIONS_REGION=us-central1 # where the sweep enqueues\n"
        )
        quoted = deploy(tmp_path / "quoted", "acme-dotenv-test", "--dry-run", env=ALERTS_ONLY)
    finally:
        project_file.unlink(missing_ok=True)
        shared_file.unlink(missing_ok=True)

    for name, (_, _, says) in cases.items():
        res = results[name]
        assert res.returncode != 0 and says in res.stderr, (name, res.stderr)
        assert "oops" not in res.stdout + res.stderr, name  # a refused line is named, never printed
    assert quoted.returncode == 0, quoted.stderr


def test_a_config_value_the_cli_would_read_differently_is_refused(tmp_path: Path) -> None:
    res = deploy(tmp_path, "acme-credits-prod", "--dry-run", env={**CONFIG, "TERMS_VERSION": "v1 #2"})

    assert res.returncode != 0 and "TERMS_VERSION's value would reach the functions changed" in res.stderr


def test_dry_run_prints_every_alert_metric_and_policy_and_sets_the_purge_task_url(tmp_path: Path) -> None:
    from tools import alerts

    res = deploy(tmp_path, "acme-credits-prod", "--dry-run")

    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "calls").exists()
    lines = res.stdout.splitlines()
    for metric in alerts.METRICS:
        assert f"+ gcloud logging metrics create {metric.name} --config-from-file=FILE" in res.stdout
    created = [line for line in lines if line.startswith("+ gcloud monitoring policies create")]
    sent = [json.loads(line.split("FILE: ", 1)[1]) for line in lines if line.startswith("    FILE: {")]
    policies = [p for p in sent if "conditions" in p]
    assert len(created) == len(alerts.POLICIES) == 7
    assert sorted(p["displayName"] for p in policies) == sorted(p.display_name for p in alerts.POLICIES)
    assert all(
        p["notificationChannels"] == ["projects/acme-credits-prod/notificationChannels/NEW"] for p in policies
    )
    assert "--channel-labels=email_address=ops@example.com" in res.stdout
    # The purge task URL is read from the deployed function and shipped with the functions.
    assert "gcloud functions describe purgeProject --gen2" in res.stderr
    assert "PURGE_TASK_URL=https://purgeproject-HASH-us-central1.a.run.app" in res.stdout
    [enable] = [line for line in lines if line.startswith("+ gcloud services enable")]
    assert {"monitoring.googleapis.com", "logging.googleapis.com"} <= set(enable.split())


def test_the_alert_metrics_count_the_lines_the_code_writes() -> None:
    """Each metric's filter names a message or field that a log line of the code carries."""
    from tools import alerts

    sources = "\n".join(p.read_text() for p in (ROOT / "functions").rglob("*.py"))
    for text in [
        "stripe event stored for operators",
        "parked stripe event %s is not stored",
        "stale charges refunded",
        "stale charge %s has no userId",
        "purge task without a valid projectId",
        "the queue did not take project %s",
        '"retention sweep %s"',
        "expired grants overdue",
        "function=self.name",
        '"status": reply.status',
    ]:
        assert text in sources, text
    filters = " ".join(m.body()["filter"] for m in alerts.METRICS)
    for message in ("stripe event stored for operators", "stale charges refunded", "expired grants overdue"):
        assert message in filters


GCLOUD_STUB = """#!{python}
import json, sys
from pathlib import Path

state = Path({state!r})
calls = Path({calls!r})
args = [a for a in sys.argv[1:] if not a.startswith(("--project=", "--quiet"))]
with calls.open("a") as f:
    f.write(" ".join(args) + "\\n")
known = json.loads(state.read_text()) if state.exists() else {{}}

def save():
    state.write_text(json.dumps(known))

def arg(prefix):
    return next(a.split("=", 1)[1] for a in args if a.startswith(prefix))

if args[:3] == ["logging", "metrics", "describe"]:
    sys.exit(0 if args[3] in known else 1)
if args[:3] == ["logging", "metrics", "create"]:
    assert args[3] not in known, "created twice"
    known[args[3]] = json.loads(Path(arg("--config-from-file")).read_text())["filter"]
    save()
elif args[:3] == ["monitoring", "policies", "list"]:
    name = arg("--filter").split('"')[1]
    if name in known:
        print(known[name])
elif args[:3] == ["monitoring", "policies", "create"]:
    policy = json.loads(Path(arg("--policy-from-file")).read_text())
    assert policy["displayName"] not in known, "created twice"
    known[policy["displayName"]] = "projects/p/alertPolicies/" + str(len(known))
    save()
elif args[:4] == ["beta", "monitoring", "channels", "list"]:
    if "channel" in known:
        print(known["channel"])
elif args[:4] == ["beta", "monitoring", "channels", "create"]:
    known["channel"] = "projects/p/notificationChannels/7"
    save()
    print(known["channel"])
"""


def test_alerts_are_created_once_then_updated_in_place(tmp_path: Path) -> None:
    import sys

    from tools import alerts

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    stub = bin_dir / "gcloud"
    stub.write_text(
        GCLOUD_STUB.format(python=sys.executable, state=str(tmp_path / "state"), calls=str(calls))
    )
    stub.chmod(0o755)

    def run() -> list[str]:
        calls.unlink(missing_ok=True)
        res = subprocess.run(
            [sys.executable, "-m", "tools.alerts", "acme-credits-prod", "--email", "ops@example.com"],
            env={"PATH": str(bin_dir)},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert res.returncode == 0, res.stderr
        return [c for c in calls.read_text().splitlines() if " list " not in f" {c} " and "describe" not in c]

    first, second = run(), run()

    names = [m.name for m in alerts.METRICS]
    assert [c.split()[:4] for c in first if c.startswith("logging")] == [
        ["logging", "metrics", "create", n] for n in names
    ]
    assert sum(c.startswith("monitoring policies create") for c in first) == len(alerts.POLICIES)
    assert sum(c.startswith("beta monitoring channels create") for c in first) == 1
    # The second run finds everything by name and replaces it: nothing is created again.
    assert not [c for c in second if " create" in c]
    assert [c.split()[:4] for c in second if c.startswith("logging")] == [
        ["logging", "metrics", "update", n] for n in names
    ]
    updated = [c.split()[3] for c in second if c.startswith("monitoring policies update")]
    known = json.loads((tmp_path / "state").read_text())
    assert sorted(updated) == sorted(known[p.display_name] for p in alerts.POLICIES)
    assert len(set(updated)) == len(alerts.POLICIES)
