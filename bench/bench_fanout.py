"""The sweep's fan-out: purge tasks dispatched to the `purgeProject` task queue function at 1, 2 and 4
at once, as Cloud Tasks dispatches them (`maxConcurrentDispatches`; one task per instance).

    python -m bench.bench_fanout [--projects 8] [--versions 750] [--rounds 2]

Each dispatch slot is its own `functions-framework --target purgeProject --source main.py` process
(an instance with concurrency 1), fed the request Cloud Tasks sends (`{"data": {"projectId"}}`) by one
client thread; the slots share one Firestore emulator. Every round seeds the same expired, marked
projects afresh and times dispatching all of them; rounds alternate the order of the levels. Ratios
are against 1 dispatch measured in the same run. The Cloud Tasks queue itself is not in the loop
(its dispatch rate is a production setting: 5 tasks/s, at most 6 at once; see docs/OPERATIONS.md's capacity
model); neither is the sweep's marking and enqueueing, one mark commit and one enqueue per project.
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
import time
import uuid
from typing import Any

from bench.harness import (
    Client,
    Stack,
    cpu_meter,
    median,
    ms,
    progress,
    ratio,
    section,
    seed_project,
    table,
    verdict,
)

LEVELS = (1, 2, 4)


def dispatch(urls: list[str], projects: list[str]) -> tuple[float, list[dict[str, Any]]]:
    """POST one task per project, len(urls) at a time (one per served process); wall seconds and answers."""
    todo: queue.Queue[str] = queue.Queue()
    for project_id in projects:
        todo.put(project_id)
    answers: list[dict[str, Any]] = []
    lock = threading.Lock()
    start = threading.Barrier(len(urls) + 1)

    def slot(url: str) -> None:
        client = Client(url)
        start.wait()
        while True:
            try:
                project_id = todo.get_nowait()
            except queue.Empty:
                return
            body = json.dumps({"data": {"projectId": project_id}}).encode()
            answer = client.request(
                "POST",
                "/",
                body,
                {"Content-Type": "application/json", "X-CloudTasks-QueueName": "purgeProject"},
            )
            if answer.status != 200:
                raise RuntimeError(f"purge of {project_id} answered {answer.status}: {answer.body[:300]!r}")
            with lock:
                answers.append(json.loads(answer.body)["result"])

    threads = [threading.Thread(target=slot, args=(url,)) for url in urls]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=8)
    parser.add_argument("--versions", type=int, default=750, help="versions per project")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    with section("Sweep fan-out: purge tasks at 1, 2 and 4 concurrent dispatches"), Stack() as stack:
        served = [stack.serve("purgeProject", wait=False) for _ in range(max(LEVELS))]
        for fn in served:
            fn.wait_ready()
        walls: dict[int, list[float]] = {k: [] for k in LEVELS}
        cpu: dict[str, float] = {}
        commits: dict[int, int] = dict.fromkeys(LEVELS, 0)
        max_writes: dict[int, int] = dict.fromkeys(LEVELS, 0)
        deleted: dict[int, int] = dict.fromkeys(LEVELS, 0)
        for r in range(args.rounds):
            order = LEVELS if r % 2 == 0 else tuple(reversed(LEVELS))
            for k in order:
                projects = [f"fan-{k}-{r}-{i}-{uuid.uuid4().hex[:6]}" for i in range(args.projects)]
                progress(
                    f"round {r + 1}/{args.rounds}, {k} dispatches: seeding {args.projects} x {args.versions} versions"
                )
                for project_id in projects:
                    seed_project(project_id, args.versions, marked=True)
                with cpu_meter({f"emulator-{k}": stack.firestore.child.pid}, cpu):
                    wall, answers = dispatch([fn.url for fn in served[:k]], projects)
                walls[k].append(wall)
                commits[k] += sum(a["commits"] for a in answers)
                max_writes[k] = max(max_writes[k], *(a["maxCommitWrites"] for a in answers))
                deleted[k] += sum(a["versionsDeleted"] for a in answers)
                if sum(a["projectsDeleted"] for a in answers) != len(projects) or any(
                    not a["complete"] for a in answers
                ):
                    raise SystemExit(f"{k} dispatches: not every project was deleted: {answers}")

        base = median(walls[1])
        rows = []
        for k in LEVELS:
            wall = median(walls[k])
            rate = args.projects * args.versions / wall
            rows.append(
                [
                    k,
                    f"{ms(wall)} ({ratio(wall, base)})",
                    f"{rate:,.0f} ({ratio(rate, args.projects * args.versions / base)})",
                    f"{args.projects / wall:.2f}",
                    f"{commits[k] / args.rounds:g}",
                    max_writes[k],
                    f"{ms(cpu[f'emulator-{k}'] / (deleted[k] or 1))} per version",
                ]
            )
        print(
            f"{args.projects} expired, marked projects of {args.versions} versions per round, {args.rounds} rounds (levels in alternating "
            "order); medians. Each dispatch slot is one purgeProject process fed one task at a time; ratios against 1 dispatch.\n"
        )
        print(
            table(
                [
                    "concurrent dispatches",
                    "wall ms (vs 1)",
                    "versions deleted/s (vs 1)",
                    "projects/s",
                    "commits per round",
                    "max writes per commit",
                    "emulator CPU ms",
                ],
                rows,
            )
        )
        speedup = base / median(walls[2])
        print(
            f"\nTarget: every project deleted in commits of <= 500 writes: {verdict(all(w <= 500 for w in max_writes.values()))}. "
            f"2 dispatches {speedup:.2f}x the rate of 1, 4 dispatches {base / median(walls[4]):.2f}x, on 2 cores shared with "
            "the emulator (the emulator's CPU bounds it here; Firestore's write limits bound it in production)."
        )


if __name__ == "__main__":
    main()
