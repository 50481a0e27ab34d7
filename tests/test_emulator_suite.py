"""The Firebase Emulator Suite serves this repo's functions, as a Firebase developer would run them:
`firebase emulators:start --only functions,auth,tasks` on a copy of the functions source, Firestore
from the gcloud emulator through FIRESTORE_EMULATOR_HOST, a real Auth emulator account, and the
sweep's fan-out dispatched by the Cloud Tasks emulator to the `purgeProject` task queue function."""

from __future__ import annotations

import json
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import stripe_events
from devstack.emulator_suite import EmulatorSuite
from devstack.firestore import FirestoreEmulator
from devstack.procs import wait_until
from functions.lib.tasks import purge_queue
from tests.helpers import PROJECT, TERMS, balance, entries, generations, reset_caches
from tests.test_retention import project_exists, seed_project

# Minutes of the suite's time (browsers, served stacks, emulator start-ups): `scripts/test --fast` skips them.
pytestmark = pytest.mark.slow

WEBHOOK_SECRET = "whsec_emulator_suite"


def call(
    url: str, *, method: str = "POST", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        # The first call of a function starts its Python worker: allow for a slow cold start.
        with urllib.request.urlopen(req, timeout=120) as res:
            return res.status, json.loads(res.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def suite(emulator: FirestoreEmulator) -> Iterator[EmulatorSuite]:
    # SWEEP_INLINE_PROJECTS=1: a night of more than one expired project fans out.
    env = {
        "GENERATOR": "offline",
        "TERMS_VERSION": TERMS,
        "ALLOWED_ORIGINS": "http://localhost:5173",
        "SWEEP_INLINE_PROJECTS": "1",
    }
    secrets = {
        "STRIPE_SECRET_KEY": "sk_test_emulator_suite",
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "GEMINI_API_KEY": "unused-offline",
    }
    suite = EmulatorSuite(
        PROJECT,
        firestore_host=emulator.host,
        env=env,
        secrets=secrets,
        log_dir=Path(tempfile.mkdtemp(prefix="emulator-suite-")),
        tasks=True,
    )
    yield suite
    suite.stop()


def test_generate_through_the_emulator_suite_needs_consent_then_charges(
    suite: EmulatorSuite, db: Any
) -> None:
    uid, id_token = suite.sign_up(f"suite-{uuid.uuid4().hex[:8]}@example.com", "secret123")
    auth = {"Authorization": f"Bearer {id_token}", "Content-Type": "application/json"}
    prompt = json.dumps({"prompt": "a lighthouse through the emulator"}).encode()

    status, body = call(suite.url("generate"), body=prompt, headers=auth)
    assert (status, body["error"]) == (403, "consent_required")

    status, body = call(suite.url("consent"), body=json.dumps({"version": TERMS}).encode(), headers=auth)
    assert status == 200 and body["accepted"] is True
    event = stripe_events.checkout_completed(
        stripe_events.new_id("cs_test"), uid, "starter", stripe_events.new_id("pi")
    )
    payload, headers = stripe_events.delivery(event, WEBHOOK_SECRET)
    status, body = call(suite.url("stripe_webhook"), body=payload, headers=headers)
    assert status == 200, body

    status, body = call(suite.url("generate"), body=prompt, headers=auth)
    assert status == 200, body
    assert body["creditsCharged"] == 50 and body["balance"] == 50
    assert balance(db, uid) == 50
    assert sorted(e["type"] for e in entries(db, uid)) == ["charge", "purchase"]
    assert [g["status"] for g in generations(db, uid)] == ["succeeded"]
    status, body = call(suite.url("credits"), method="GET", headers=auth)
    assert status == 200 and body["balance"] == 50


def test_a_large_night_fans_out_through_the_cloud_tasks_emulator(suite: EmulatorSuite, db: Any) -> None:
    projects = [f"night-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    for project_id in projects:
        seed_project(db, project_id, 600)

    status, body = call(
        suite.url("retention_sweep"), body=b"{}", headers={"Content-Type": "application/json"}
    )

    assert status == 200, (body, suite.child.log.read_text()[-4000:])
    assert body["complete"] is True and body["projectsEnqueued"] == 3 and body["projectsDeleted"] == 0
    # Each task deletes its project (600 versions: two commits) through the purgeProject function.
    wait_until(
        lambda: not any(project_exists(db, p) for p in projects),
        what="purge tasks",
        timeout=120,
        log=suite.child.log,
    )
    assert not any(list(db.collection(f"projects/{p}/versions").list_documents()) for p in projects)


def test_a_repeat_enqueue_of_the_same_project_and_night_is_refused_by_the_queue(
    suite: EmulatorSuite, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert suite.tasks_host
    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", suite.tasks_host)
    reset_caches()
    from functions.lib.config import get_settings

    queue = purge_queue(get_settings())
    assert queue is not None
    project_id = f"dup-{uuid.uuid4().hex[:6]}"

    assert queue.enqueue(project_id) is True
    assert queue.enqueue(project_id) is False


def test_the_cloud_tasks_emulator_posts_each_purge_task_to_the_configured_task_url(
    suite: EmulatorSuite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task names PURGE_TASK_URL (TaskOptions(uri=...)), and the queue delivers it there, not to
    a URL of its own: a recording server stands at that URL."""
    import http.server
    import threading

    received: list[tuple[str, dict[str, Any]]] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append((self.path, json.loads(body or b"{}")))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"result": {}}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/recorded/purgeProject"
        assert suite.tasks_host
        monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", suite.tasks_host)
        monkeypatch.setenv("PURGE_TASK_URL", url)
        reset_caches()
        from functions.lib.config import get_settings

        queue = purge_queue(get_settings())
        assert queue is not None
        project_id = f"routed-{uuid.uuid4().hex[:6]}"

        assert queue.enqueue(project_id) is True
        wait_until(lambda: bool(received), what="the task at PURGE_TASK_URL", timeout=60, log=suite.child.log)
    finally:
        server.shutdown()
        server.server_close()
    assert received == [("/recorded/purgeProject", {"data": {"projectId": project_id}})]
