"""The sweep's fan-out: a large night is marked and handed to the purge task queue one project per
task; each task deletes one project under the sweep's rules; the task function takes the request
Cloud Tasks sends in production. (Through the Cloud Tasks emulator: tests/test_emulator_suite.py.)"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pytest

from functions.lib import retention
from functions.lib.errors import Unavailable
from functions.lib.tasks import PurgeQueue, task_id
from tests.test_retention import RECENT, CountingCommit, project_exists, seed_project, versions_left


class Queue:
    """Stands in for the Cloud Tasks queue only: records projects, refuses a repeat as the queue does."""

    def __init__(self) -> None:
        self.projects: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, project_id: str) -> bool:
        with self._lock:
            if project_id in self.projects:
                return False
            self.projects.append(project_id)
            return True


def test_a_large_night_is_marked_and_enqueued_not_deleted(db: Any, settings: Any) -> None:
    for i in range(4):
        seed_project(db, f"fan-{i}", 3)
    seed_project(db, "fan-fresh", 2, updated=RECENT)
    queue = Queue()

    report = retention.sweep(db, dataclasses.replace(settings, sweep_inline_projects=3), enqueue=queue)

    assert sorted(queue.projects) == [f"fan-{i}" for i in range(4)]
    body = report.body()
    assert body["complete"] is True and body["projectsEnqueued"] == 4 and body["projectsDeleted"] == 0
    for i in range(4):
        snap = db.collection("projects").document(f"fan-{i}").get()
        assert snap.get("deletingAt") is not None and versions_left(db, f"fan-{i}") == 3
    assert db.collection("projects").document("fan-fresh").get().get("deletingAt") is None


def test_a_repeat_pass_on_the_same_night_enqueues_nothing_new(db: Any, settings: Any) -> None:
    for i in range(3):
        seed_project(db, f"again-{i}", 1)
    queue, fan_out = Queue(), dataclasses.replace(settings, sweep_inline_projects=0)

    first = retention.sweep(db, fan_out, enqueue=queue).body()
    second = retention.sweep(db, fan_out, enqueue=queue).body()

    assert first["projectsEnqueued"] == 3 and second["projectsEnqueued"] == 0 and len(queue.projects) == 3


def test_a_project_the_queue_does_not_take_is_deferred_and_enqueued_by_the_next_pass(
    db: Any, settings: Any
) -> None:
    for i in range(3):
        seed_project(db, f"down-{i}", 1)
    healthy, fan_out = Queue(), dataclasses.replace(settings, sweep_inline_projects=0)

    def flaky(project_id: str) -> bool:
        if project_id == "down-1":
            raise Unavailable("Cloud Tasks did not take the purge of down-1")
        return healthy(project_id)

    first = retention.sweep(db, fan_out, enqueue=flaky).body()
    second = retention.sweep(db, fan_out, enqueue=healthy).body()

    assert first["complete"] is False and first["projectsEnqueued"] == 2 and first["projectsDeferred"] == 1
    assert db.collection("projects").document("down-1").get().get("deletingAt") is not None
    assert second["complete"] is True and second["projectsEnqueued"] == 1
    assert sorted(healthy.projects) == ["down-0", "down-1", "down-2"]


def test_the_purge_queue_reports_a_queue_it_cannot_reach_as_unavailable() -> None:
    from firebase_admin import exceptions

    class Unreachable:
        def enqueue(self, body: object, options: object) -> str:
            raise exceptions.UnavailableError("connection refused")

    class Refusing:
        def enqueue(self, body: object, options: object) -> str:
            raise exceptions.AlreadyExistsError("a task of that name exists")

    with pytest.raises(Unavailable, match="proj-1"):
        PurgeQueue(Unreachable()).enqueue("proj-1")
    assert PurgeQueue(Refusing()).enqueue("proj-1") is False


def test_each_purge_task_is_sent_to_the_configured_url_of_the_task_function() -> None:
    """Cloud Tasks signs the OIDC token for the task's URL: it must be the one Cloud Run accepts."""
    url = "https://purgeproject-abc123-uc.a.run.app"

    class Recording:
        def __init__(self) -> None:
            self.options: list[Any] = []

        def enqueue(self, body: object, options: Any) -> str:
            self.options.append(options)
            return "purge-x"

    queue = Recording()

    assert PurgeQueue(queue, uri=url).enqueue("proj-1") is True

    [options] = queue.options
    assert options.uri == url and options.task_id.startswith("purge-")


def test_deployed_without_the_task_url_the_sweep_does_not_fan_out(settings: Any) -> None:
    from functions.lib.config import settings_from
    from functions.lib.tasks import purge_queue

    deployed = {"GOOGLE_CLOUD_PROJECT": "acme-credits-prod", "K_SERVICE": "retention-sweep"}

    assert purge_queue(settings_from(deployed)) is None
    queue = purge_queue(settings_from({**deployed, "PURGE_TASK_URL": "https://purge.example/x"}))
    assert queue is not None


@pytest.mark.parametrize("bad", ["purge.example/x", "ftp://purge.example/x", "https://"])
def test_a_purge_task_url_that_is_not_an_http_url_is_refused_naming_it(bad: str) -> None:
    from functions.lib.config import settings_from
    from functions.lib.errors import ConfigError

    with pytest.raises(ConfigError, match="PURGE_TASK_URL"):
        settings_from({"GOOGLE_CLOUD_PROJECT": "demo-x", "PURGE_TASK_URL": bad})


def test_a_small_night_is_deleted_inline_with_the_contract_keys(db: Any, settings: Any) -> None:
    seed_project(db, "small-0", 2)
    queue = Queue()

    body = retention.sweep(db, settings, enqueue=queue).body()

    assert queue.projects == [] and "projectsEnqueued" not in body
    assert body["projectsDeleted"] == 1 and body["versionsDeleted"] == 2 and not project_exists(db, "small-0")


def test_a_purge_task_deletes_one_marked_project_in_commits_of_at_most_500(db: Any, settings: Any) -> None:
    seed_project(db, "purge-me", 1200, marked=True)
    seed_project(db, "purge-other", 2, marked=True)
    commit = CountingCommit()

    report = retention.purge_project(db, settings, "purge-me", commit=commit)

    assert report.complete and report.projects_deleted == 1 and report.versions_deleted == 1200
    assert commit.sizes == [499, 499, 203] and not project_exists(db, "purge-me")
    assert project_exists(db, "purge-other") and versions_left(db, "purge-other") == 2


def test_a_purge_task_leaves_a_project_that_came_back_to_life_or_is_gone(db: Any, settings: Any) -> None:
    seed_project(db, "alive", 2, updated=RECENT)

    alive = retention.purge_project(db, settings, "alive")
    gone = retention.purge_project(db, settings, "never-existed")

    assert alive.complete and alive.projects_deleted == 0 and versions_left(db, "alive") == 2
    assert gone.complete and gone.projects_deleted == 0


def test_a_purge_task_stopped_by_its_budget_resumes_when_retried(db: Any, settings: Any) -> None:
    seed_project(db, "long", 1200, marked=True)
    ticks = iter([0.0, 0.0, 0.0, 0.0, 1000.0])

    stopped = retention.purge_project(
        db, dataclasses.replace(settings, sweep_budget_s=100), "long", clock=lambda: next(ticks, 1000.0)
    )
    left_after_stop = versions_left(db, "long")
    retried = retention.purge_project(db, settings, "long")

    assert (
        not stopped.complete
        and 0 < stopped.versions_deleted < 1200
        and left_after_stop == 1200 - stopped.versions_deleted
    )
    assert (
        retried.complete
        and stopped.versions_deleted + retried.versions_deleted == 1200
        and not project_exists(db, "long")
    )


def test_task_names_are_queue_safe_and_differ_by_project_and_night() -> None:
    names = {task_id("p1", "2026-11-26"), task_id("p1", "2026-11-27"), task_id("p/2 ü", "2026-11-26")}

    assert len(names) == 3
    assert all(n.replace("-", "").isalnum() and n.isascii() and len(n) <= 100 for n in names)


def test_the_task_function_takes_the_request_cloud_tasks_sends(db: Any, app: Any) -> None:
    seed_project(db, "via-task", 3, marked=True)
    client = app("purgeProject")
    # Cloud Tasks POSTs the task's body as enqueued: firebase-admin's payload, {"data": {...}} here.
    headers = {
        "Content-Type": "application/json",
        "X-CloudTasks-QueueName": "purgeProject",
        "X-CloudTasks-TaskName": "purge-x",
    }

    ok = client.post("/", json={"data": {"projectId": "via-task"}}, headers=headers)
    unwrapped = client.post("/", json={"projectId": "via-task"}, headers=headers)
    malformed = client.post("/", json={"data": {"projectId": "a/b"}}, headers=headers)

    assert (
        ok.status_code == 200
        and ok.json["result"]["projectsDeleted"] == 1
        and ok.json["result"]["versionsDeleted"] == 3
    )
    assert not project_exists(db, "via-task")
    # The trap: a bare payload is not the callable protocol, and firebase-functions refuses it.
    assert unwrapped.status_code == 400
    assert malformed.status_code == 200 and malformed.json["result"] == {"error": "invalid_task"}


def test_the_sweep_handler_deletes_inline_without_a_queue(db: Any, app: Any) -> None:
    seed_project(db, "inline-handler", 2)

    res = app("retention_sweep").post("/", json={})

    assert res.status_code == 200 and "projectsEnqueued" not in res.json and res.json["projectsDeleted"] == 1
    assert not project_exists(db, "inline-handler")
