"""Functions served by the real functions-framework CLI, as Cloud Run runs them."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devstack.serve import ServedFunction
from tests.helpers import make_user, token


def _wait_exit(fn: ServedFunction, timeout: float = 30) -> int | None:
    try:
        return fn.child.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


REAL_PROJECT = "credits-prod"
DEPLOYED = {"GOOGLE_CLOUD_PROJECT": REAL_PROJECT}


@pytest.mark.no_emulator
@pytest.mark.parametrize(
    ("target", "env", "named"),
    [
        # An emulator switch with a real project: refused whether or not the process looks deployed.
        (
            "generate",
            {**DEPLOYED, "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099", "GENERATOR": "offline"},
            "FIREBASE_AUTH_EMULATOR_HOST",
        ),
        (
            "credits",
            {**DEPLOYED, "FIRESTORE_EMULATOR_HOST": "127.0.0.1:8080", "K_SERVICE": "credits"},
            "FIRESTORE_EMULATOR_HOST",
        ),
        # Deployed (K_SERVICE, real project): a double's base URL would receive the live key.
        (
            "checkout",
            {**DEPLOYED, "K_SERVICE": "checkout", "STRIPE_API_BASE": "http://127.0.0.1:9"},
            "STRIPE_API_BASE",
        ),
        (
            "generate",
            {
                **DEPLOYED,
                "K_SERVICE": "generate",
                "GEMINI_API_KEY": "k",
                "GEMINI_BASE_URL": "http://127.0.0.1:9",
            },
            "GEMINI_BASE_URL",
        ),
        (
            "generate",
            {"K_SERVICE": "generate", "GOOGLE_CLOUD_PROJECT": "demo-x", "GENERATOR": "gemini"},
            "GEMINI_API_KEY",
        ),
        # A live key with the default STRIPE_MODE=test: refused before a buyer is charged, anywhere.
        ("checkout", {"STRIPE_SECRET_KEY": "sk_live_51Hx", "STRIPE_MODE": ""}, "STRIPE_MODE"),
    ],
)
def test_process_with_unsafe_config_refuses_to_start_naming_the_variable(
    target: str, env: dict[str, str], named: str
) -> None:
    unsafe = (
        "FIREBASE_AUTH_EMULATOR_HOST",
        "FIRESTORE_EMULATOR_HOST",
        "GEMINI_API_KEY",
        "STRIPE_API_BASE",
        "GEMINI_BASE_URL",
        "K_SERVICE",
    )
    base = {k: v for k, v in os.environ.items() if k not in unsafe}
    full = {**base, "FUNCTION_TARGET": target, **env}
    fn = ServedFunction(target, env=full, log_dir=Path(tempfile.mkdtemp()), wait=False, inherit=False)
    try:
        code = _wait_exit(fn)
    finally:
        fn.stop()

    assert code not in (None, 0)
    log = fn.child.log.read_text()
    assert "refusing to start" in log and named in log


def test_one_request_logs_one_summary_line_in_cloud_logging_shape(db: Any) -> None:
    make_user(db, "logan", credits=100)
    fn = ServedFunction("generate", env={}, log_dir=Path(tempfile.mkdtemp()))
    secret_prompt = "my very private prompt 8c1e"
    id_token = token("logan")
    try:
        req = urllib.request.Request(
            fn.url + "/",
            data=json.dumps({"prompt": secret_prompt}).encode(),
            headers={
                "Authorization": f"Bearer {id_token}",
                "Content-Type": "application/json",
                "X-Cloud-Trace-Context": "0123456789abcdef0123456789abcdef/1;o=1",
            },
        )
        with urllib.request.urlopen(req, timeout=30) as res:
            assert res.status == 200
    finally:
        fn.stop()

    lines = [json.loads(line) for line in fn.child.log.read_text().splitlines() if line.startswith("{")]
    # The readiness probe (a GET, answered 405) is a request of its own; look at the POST.
    summaries = [line for line in lines if line.get("logger") == "request" and " POST " in line["message"]]
    assert len(summaries) == 1
    [summary] = summaries
    assert summary["severity"] == "INFO" and summary["message"].startswith("generate POST 200")
    assert (
        summary["logging.googleapis.com/trace"]
        == "projects/demo-credits-test/traces/0123456789abcdef0123456789abcdef"
    )
    assert summary["function"] == "generate" and summary["uid"] == "logan"
    assert summary["outcome"] == "ok" and summary["status"] == 200 and summary["creditsMoved"] == -50
    assert isinstance(summary["latencyMs"], float)
    text = fn.child.log.read_text()
    assert id_token not in text and id_token.split(".")[1] not in text
    assert secret_prompt not in text
