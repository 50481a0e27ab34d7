"""deploy.sh: its dry run shows every function, flag and secret binding and calls no cloud tool;
missing prerequisites and config fail with a message that names them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.no_emulator
ROOT = Path(__file__).resolve().parent.parent
CONFIG = {"ALLOWED_ORIGINS": "https://app.example.com,https://www.example.com", "TERMS_VERSION": "2026-11-01"}
FUNCTIONS = ("generate", "consent", "credits", "checkout", "stripe_webhook", "retention_sweep")


def tool_dir(tmp_path: Path, *, gcloud: bool = True) -> Path:
    """A PATH with the shell tools deploy.sh needs and a gcloud stub that records any call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "sed", "mktemp", "rm", "cat"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    if gcloud:
        stub = bin_dir / "gcloud"
        stub.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\nexit 1\n')
        stub.chmod(0o755)
    return bin_dir


def deploy(tmp_path: Path, *args: str, env: dict[str, str] | None = None, gcloud: bool = True) -> subprocess.CompletedProcess[str]:
    full = {"PATH": str(tool_dir(tmp_path, gcloud=gcloud)), "HOME": str(tmp_path), **(CONFIG if env is None else env)}
    return subprocess.run(["bash", str(ROOT / "deploy.sh"), *args], env=full, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_dry_run_prints_every_command_and_calls_no_cloud_tool(tmp_path: Path) -> None:
    res = deploy(tmp_path, "acme-credits-prod", "europe-west1", "--dry-run")

    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "calls").exists()
    out = res.stdout + res.stderr
    deploys = {line.split()[4]: line for line in out.splitlines() if line.startswith("+ gcloud functions deploy")}
    assert set(deploys) == set(FUNCTIONS)
    for name, line in deploys.items():
        for flag in (
            "--gen2",
            "--runtime=python311",
            "--region=europe-west1",
            f"--entry-point={name}",
            "--trigger-http",
            "--project=acme-credits-prod",
        ):
            assert flag in line, (name, flag)
        assert "--memory=" in line and "--timeout=" in line and "--concurrency=" in line
        assert "--service-account=credits-functions@acme-credits-prod.iam.gserviceaccount.com" in line
    assert "--no-allow-unauthenticated" in deploys["retention_sweep"] and "--timeout=540s" in deploys["retention_sweep"]
    for public in ("generate", "consent", "credits", "checkout", "stripe_webhook"):
        assert " --allow-unauthenticated" in deploys[public]
    assert "--set-secrets=STRIPE_WEBHOOK_SECRET=STRIPE_WEBHOOK_SECRET:latest" in deploys["stripe_webhook"]
    assert "--set-secrets=STRIPE_SECRET_KEY=STRIPE_SECRET_KEY:latest" in deploys["checkout"]
    assert "--set-secrets=GEMINI_API_KEY=GEMINI_API_KEY:latest" in deploys["generate"]
    assert "--set-secrets" not in deploys["credits"]
    assert "add-invoker-policy-binding retention_sweep" in out and "serviceAccount:credits-scheduler@" in out
    assert "-m functions.admin schedule --project acme-credits-prod" in out
    assert "deploy --only firestore:rules\\,firestore:indexes" in out
    assert "ALLOWED_ORIGINS: 'https://app.example.com,https://www.example.com'" in out
    assert "Stripe webhook URL" in out


def test_dry_run_with_offline_generator_binds_no_gemini_secret(tmp_path: Path) -> None:
    res = deploy(tmp_path, "acme-credits-prod", "--dry-run", env={**CONFIG, "GENERATOR": "offline"})

    assert res.returncode == 0 and "GEMINI_API_KEY" not in res.stdout
    assert "Stripe webhook URL" in res.stdout


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        ((), CONFIG, "usage"),
        (("Bad_Project",), CONFIG, "not a valid Google Cloud project id"),
        (("demo-local",), CONFIG, "demo- id"),
        (("acme-credits-prod", "mars"), CONFIG, "REGION"),
        (("acme-credits-prod",), {"TERMS_VERSION": "v1"}, "ALLOWED_ORIGINS"),
        (("acme-credits-prod",), {"ALLOWED_ORIGINS": "https://a.example"}, "TERMS_VERSION"),
        (("acme-credits-prod",), {**CONFIG, "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"}, "FIREBASE_AUTH_EMULATOR_HOST"),
    ],
)
def test_bad_arguments_and_config_fail_with_a_clear_message(tmp_path: Path, args: tuple[str, ...], env: dict[str, str], named: str) -> None:
    res = deploy(tmp_path, *args, "--dry-run", env=env)

    assert res.returncode != 0
    assert named in res.stderr
    assert not (tmp_path / "calls").exists()


def test_missing_gcloud_fails_naming_it(tmp_path: Path) -> None:
    res = deploy(tmp_path, "acme-credits-prod", "--dry-run", gcloud=False)

    assert res.returncode != 0 and "gcloud is not installed" in res.stderr


def test_deploy_uploads_only_the_functions(tmp_path: Path) -> None:
    ignored = (ROOT / ".gcloudignore").read_text().split()
    for private in (".venv/", "node_modules/", "tests/", "devstack/", "bench/"):
        assert private in ignored
    assert os.access(ROOT / "deploy.sh", os.X_OK)
