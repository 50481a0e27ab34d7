"""A user's data: export and erasure of one user, against the retention sweep deleting the same projects.

    python -m bench.bench_user_data [--rounds 3] [--projects 50] [--versions 100]

One Firestore emulator. Before every measured run it is cleared and seeded with the same user:
PROJECTS projects of VERSIONS versions (5,000 by default, idle for a year so the sweep takes them),
one generation and one analytics event per version, and a ledger of a grant plus one charge per
generation. Then one of:
- export: `user_data.export`, every piece taken and joined (what `account` GET streams);
- erasure: `user_data.erase` (what `account` DELETE does; the Firebase Auth call is left out:
  there is no Auth emulator here, and it is one request);
- the sweep: `retention.sweep` deleting the same projects (its default 2 workers, and 1 worker as
  the erasure deletes one project at a time). It deletes only projects and versions: the erasure
  also deletes the generations and events and renames the ledger, so it writes more documents.
Rounds alternate the order of the methods; reported is the median wall time with its ratio to the
sweep (2 workers), commits and their largest write count, and documents written per second. Every
erasure run is checked to leave nothing of the user but the ledger under a pseudonym summing to zero.

A second table: peak Python memory (tracemalloc) of export and erasure at a tenth of the versions
and at all of them, to show that memory does not grow with the number of versions.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.harness import Stack, progress, ratio, section, table
from functions.lib.db import shard_of

UID = "bench-erasure-user"
EXPIRED = datetime.now(UTC) - timedelta(days=365)
SEED_THREADS = 4


@dataclass
class Result:
    wall_s: float
    commits: int
    max_writes: int
    written: int
    peak_bytes: int = 0


def seed(client: Any, projects: int, versions: int) -> None:
    """The user: projects with versions, a generation and an event per version, a ledger that sums to the balance."""
    from functions.lib import ledger

    ledger.grant(client, UID, "bench-seed", 10 * projects * versions, "benchmark seed")

    def one(p: int) -> None:
        project = client.collection("projects").document(f"{UID}-p{p:03d}")
        batch, pending = client.batch(), 0
        for n in range(versions):
            gen_id = f"g{p:03d}{n:05d}"
            batch.set(
                project.collection("versions").document(gen_id),
                {
                    "number": n + 1,
                    "prompt": "a lighthouse at dusk, " * 3,
                    "output": "x" * 300,
                    "generationId": gen_id,
                    "createdAt": EXPIRED,
                },
            )
            batch.set(
                client.collection("generations").document(gen_id),
                {
                    "userId": UID,
                    "projectId": project.id,
                    "kind": "iteration",
                    "cost": 1,
                    "status": "succeeded",
                    "createdAt": EXPIRED,
                    "updatedAt": EXPIRED,
                    "error": None,
                },
            )
            batch.set(
                client.collection("analytics_events").document(f"{gen_id}-succeeded"),
                {
                    "type": "generation_succeeded",
                    "userId": UID,
                    "properties": {"generationId": gen_id},
                    "createdAt": datetime.now(UTC),
                    "shard": shard_of(f"{gen_id}-succeeded"),
                },
            )
            pending += 3
            if pending >= 498:
                batch.commit(timeout=60)
                batch, pending = client.batch(), 0
        batch.set(
            project,
            {
                "ownerId": UID,
                "shard": shard_of(project.id),
                "createdAt": EXPIRED,
                "updatedAt": EXPIRED,
                "versionCount": versions,
                "latestVersionId": None,
                "deletingAt": None,
            },
        )
        batch.commit(timeout=60)

    with ThreadPoolExecutor(SEED_THREADS) as pool:
        list(pool.map(one, range(projects)))
    for p in range(projects):  # one after another: they all move one balance
        ledger.charge(client, UID, f"bench-{p:03d}", versions, {"projectId": f"{UID}-p{p:03d}"})


def count(query: Any) -> int:
    return int(query.count().get(timeout=60)[0][0].value)


def by_export(client: Any) -> tuple[int, int, int]:
    from functions.lib import user_data

    size = sum(len(piece) for piece in user_data.export(client, UID))
    assert size > 0
    return 0, 0, 0


def by_erasure(client: Any) -> tuple[int, int, int]:
    from google.cloud.firestore_v1.base_query import FieldFilter

    from functions.lib import user_data

    report = user_data.erase(client, UID, delete_login=lambda _uid: False)
    assert count(client.collection("projects")) == 0 and count(client.collection_group("versions")) == 0
    assert count(client.collection("generations")) == 0 and count(client.collection("analytics_events")) == 0
    assert not client.collection("users").document(UID).get().exists
    assert count(client.collection("credit_transactions").where(filter=FieldFilter("userId", "==", UID))) == 0
    amounts = [
        snap.get("amount") for snap in client.collection("credit_transactions").select(["amount"]).stream()
    ]
    assert sum(amounts) == 0, sum(amounts)
    written = (
        report.versions_deleted + report.projects_deleted + report.generations_deleted + report.events_deleted
    )
    written += report.entries_pseudonymised + 1  # the user document
    return report.commits, report.max_commit_writes, written


def by_sweep(workers: int) -> Callable[[Any], tuple[int, int, int]]:
    def run(client: Any) -> tuple[int, int, int]:
        from functions.lib.config import get_settings
        from functions.lib.retention import sweep

        report = sweep(client, get_settings(), workers=workers)
        assert report.complete and count(client.collection("projects")) == 0, report
        return report.commits, report.max_commit_writes, report.versions_deleted + report.projects_deleted

    return run


METHODS: dict[str, Callable[[Any], tuple[int, int, int]]] = {
    "sweep (2 workers)": by_sweep(2),
    "sweep (1 worker)": by_sweep(1),
    "erasure": by_erasure,
    "export": by_export,
}


def measure(
    stack: Stack,
    run: Callable[[Any], tuple[int, int, int]],
    projects: int,
    versions: int,
    *,
    memory: bool = False,
) -> Result:
    from functions.lib import db

    client = db.get_client()
    stack.firestore.clear()
    seed(client, projects, versions)
    if memory:
        tracemalloc.start()
        tracemalloc.reset_peak()
    started = time.perf_counter()
    commits, max_writes, written = run(client)
    wall = time.perf_counter() - started
    peak = 0
    if memory:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return Result(wall, commits, max_writes, written, peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--projects", type=int, default=50)
    parser.add_argument("--versions", type=int, default=100)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    total = args.projects * args.versions
    names = list(METHODS)

    with (
        section(
            f"A user's data: export and erasure of {args.projects} projects x {args.versions} versions vs the sweep"
        ),
        Stack() as stack,
    ):
        progress("warm-up")
        measure(stack, by_erasure, 2, 100)
        runs: dict[str, list[Result]] = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else list(reversed(names)):
                progress(f"round {r + 1}/{args.rounds}: {name}")
                result = measure(stack, METHODS[name], args.projects, args.versions)
                runs[name].append(result)
                progress(f"  wall {result.wall_s:.2f} s, {result.commits} commits")
        baseline = statistics.median(r.wall_s for r in runs[names[0]])
        rows = []
        for name, results in runs.items():
            wall = statistics.median(r.wall_s for r in results)
            first = results[0]
            rows.append(
                [
                    name,
                    str(len(results)),
                    f"{wall:.2f} ({ratio(wall, baseline)})",
                    str(first.commits) if first.commits else "- (reads only)",
                    str(first.max_writes) if first.commits else "-",
                    f"{first.written:,}" if first.written else "-",
                    f"{first.written / wall:,.0f}" if first.written else "-",
                ]
            )
        print(
            f"One user with {args.projects} projects of {args.versions} versions ({total:,}), one generation and one analytics "
            f"event per version, a ledger of {args.projects + 1} entries; seeded afresh before every run. Median over rounds; "
            "ratio against the sweep with its default 2 workers. Every erasure left nothing of the user but the ledger "
            "under a pseudonym, summing to zero.\n"
        )
        print(
            table(
                [
                    "method",
                    "runs",
                    "wall s (ratio)",
                    "commits",
                    "max writes per commit",
                    "documents written",
                    "written/s",
                ],
                rows,
            )
        )

        if not args.skip_memory:
            small = max(1, args.projects // 10)
            peaks: dict[tuple[str, int], int] = {}
            mem_rows = []
            for name in ("export", "erasure", "sweep (2 workers)"):
                for projects in (small, args.projects):
                    progress(f"memory: {name}, {projects} x {args.versions}")
                    result = measure(stack, METHODS[name], projects, args.versions, memory=True)
                    peaks[(name, projects)] = result.peak_bytes
                    mem_rows.append(
                        [
                            name,
                            f"{projects} x {args.versions}",
                            f"{projects * args.versions:,}",
                            f"{result.peak_bytes / 2**20:.2f}",
                        ]
                    )
            print("\nPeak Python memory of one run (tracemalloc; the timing runs above are without it):\n")
            print(table(["method", "projects x versions", "versions", "peak MiB"], mem_rows))
            growth = "; ".join(
                f"{name} {ratio(peaks[(name, args.projects)], peaks[(name, small)])}"
                for name in ("export", "erasure", "sweep (2 workers)")
            )
            print(
                f"\nPeak memory at {args.projects} vs {small} projects ({args.projects // small}x the versions): {growth}."
            )


if __name__ == "__main__":
    main()
