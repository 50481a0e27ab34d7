"""Retention sweep throughput and memory, against Firestore's own recursive delete on the same data.

    python -m bench.bench_retention [--rounds 3] [--projects 40] [--versions 500] [--workers 2]

One Firestore emulator; before every measured run it is cleared and seeded with the same data:
PROJECTS expired projects of VERSIONS versions each (20,000 versions by default), written in
parallel batched commits. Then one of:
- the sweep: `functions.lib.retention.sweep` (mark, list names page by page, commits of <= 500
  writes, project document last; it also runs its stale-charge and analytics queries);
- `client.recursive_delete(project_ref, bulk_writer=...)` per project, with a BulkWriter raised to
  20,000 ops/s (the baseline of the target), and with the default BulkWriter (500 ops/s, ramping);
- `client.recursive_delete(projects_collection, ...)` at 20,000 ops/s: everything in one call, the
  fastest use of the library (not what a per-project sweep can do; shown for reference).
Rounds alternate the order of the methods. Reported: median wall time, CPU seconds of this process
and of the emulator (the machine is shared; CPU time is steadier than wall time), commits (the
sweep's Commit RPCs; the BulkWriter's BatchWrite RPCs, read from its counter). Every run is checked
to leave no project and no version behind.

A second table: peak Python memory (tracemalloc) of one pass over 2,000 vs 20,000 versions, both
spread over projects of 500 and in a single project, to show that memory does not grow with the
number of versions (the sweep holds one page and one 500-write chunk per worker).

Target (issue 6): the sweep's wall time is at most 1.0x that of recursive_delete per project with a
BulkWriter at 20,000 ops/s on the same data.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.harness import Stack, cpu_seconds, progress, ratio, section, table, verdict
from functions.lib.db import shard_of

EXPIRED = datetime.now(UTC) - timedelta(days=365)
SEED_THREADS = 4
FAST_OPS = 20_000


# (client, project ids) -> (commits or RPCs, largest commit or None, documents deleted)
Runner = Callable[[Any, list[str]], tuple[int, int | None, int]]


@dataclass
class Result:
    wall_s: float
    client_cpu_s: float
    emulator_cpu_s: float
    commits: int
    max_writes: int | None
    deleted: int
    peak_bytes: int = 0


def seed(client: Any, projects: int, versions: int) -> list[str]:
    """`projects` expired projects of `versions` versions each; commits of 500 writes in parallel."""
    ids = [f"bench-{p:03d}" for p in range(projects)]

    def one(project_id: str) -> None:
        project = client.collection("projects").document(project_id)
        batch, pending = client.batch(), 0
        for n in range(versions):
            batch.set(
                project.collection("versions").document(f"v{n:06d}"),
                {
                    "number": n + 1,
                    "prompt": "a lighthouse at dusk, " * 3,
                    "output": "x" * 300,
                    "generationId": f"g{project_id}{n}",
                    "createdAt": EXPIRED,
                },
            )
            pending += 1
            if pending == 500:
                batch.commit(timeout=60)
                batch, pending = client.batch(), 0
        batch.set(
            project,
            {
                "ownerId": "bench",
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
        list(pool.map(one, ids))
    return ids


def left_behind(client: Any) -> tuple[int, int]:
    """(projects, versions) still stored."""

    def count(query: Any) -> int:
        return int(query.count().get(timeout=60)[0][0].value)

    return count(client.collection("projects")), count(client.collection_group("versions"))


def fast_bulk_writer(client: Any) -> Any:
    from google.cloud.firestore_v1.bulk_writer import BulkWriterOptions

    return client.bulk_writer(
        options=BulkWriterOptions(initial_ops_per_second=FAST_OPS, max_ops_per_second=FAST_OPS)
    )


def by_sweep(workers: int) -> Runner:
    def run(client: Any, ids: list[str]) -> tuple[int, int | None, int]:
        from functions.lib.config import get_settings
        from functions.lib.retention import sweep

        report = sweep(client, get_settings(), workers=workers)
        assert report.complete and report.projects_deleted == len(ids), report
        return report.commits, report.max_commit_writes, report.versions_deleted + report.projects_deleted

    return run


def by_recursive_delete(make_writer: Callable[[Any], Any]) -> Runner:
    def run(client: Any, ids: list[str]) -> tuple[int, int | None, int]:
        batches = deleted = 0
        for project_id in ids:
            writer = make_writer(client)  # recursive_delete closes the writer it is given
            deleted += client.recursive_delete(
                client.collection("projects").document(project_id), bulk_writer=writer
            )
            batches += writer._total_batches_sent
        return batches, None, deleted

    return run


def by_recursive_delete_of_the_collection(client: Any, ids: list[str]) -> tuple[int, int | None, int]:
    writer = fast_bulk_writer(client)
    deleted = client.recursive_delete(client.collection("projects"), bulk_writer=writer)
    return writer._total_batches_sent, None, deleted


# name -> (the sweep's workers -> a runner)
METHODS: dict[str, Callable[[int], Runner]] = {
    "sweep": by_sweep,
    "recursive_delete per project, BulkWriter 20,000 ops/s": lambda _: by_recursive_delete(fast_bulk_writer),
    "recursive_delete per project, default BulkWriter": lambda _: by_recursive_delete(
        lambda c: c.bulk_writer()
    ),
    "recursive_delete of the collection, BulkWriter 20,000 ops/s": lambda _: (
        by_recursive_delete_of_the_collection
    ),
}


def measure(stack: Stack, run: Runner, projects: int, versions: int, *, memory: bool = False) -> Result:
    from functions.lib import db

    client = db.get_client()
    stack.firestore.clear()
    ids = seed(client, projects, versions)
    assert left_behind(client) == (projects, projects * versions)
    emulator_pgid = stack.firestore.child.pid
    if memory:
        tracemalloc.start()
        tracemalloc.reset_peak()
    emu0, cpu0, t0 = cpu_seconds(emulator_pgid), time.process_time(), time.perf_counter()
    commits, max_writes, deleted = run(client, ids)
    wall, cpu, emu = time.perf_counter() - t0, time.process_time() - cpu0, cpu_seconds(emulator_pgid) - emu0
    peak = 0
    if memory:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    remaining = left_behind(client)
    assert remaining == (0, 0), f"left behind: {remaining}"
    assert deleted == projects * (versions + 1), deleted
    return Result(wall, cpu, emu, commits, max_writes, deleted, peak)


@contextlib.contextmanager
def fresh_stack() -> Iterator[Stack]:
    """A new emulator: the emulator keeps deleted data's history in its heap (512 MiB) even across
    clears, and ran out of memory after ~300,000 seeded documents, so each round gets its own."""
    from functions.lib import config, db

    # The cached settings and client point at the previous emulator (Stack() warms up through them).
    config.get_settings.cache_clear()
    db.get_client.cache_clear()
    with Stack() as stack:
        yield stack


def print_runs(args: argparse.Namespace, runs: dict[str, list[Result]], baseline: float) -> None:
    total = args.projects * args.versions
    rows = []
    for name, results in runs.items():
        if not results:
            continue
        wall = statistics.median(r.wall_s for r in results)
        rows.append(
            [
                name + (f" (workers={args.workers})" if name == "sweep" else ""),
                str(len(results)),
                f"{wall:.2f} ({ratio(wall, baseline)})",
                f"{total / wall:,.0f}",
                f"{statistics.median(r.client_cpu_s for r in results):.2f}",
                f"{statistics.median(r.emulator_cpu_s for r in results):.2f}",
                str(results[0].commits),
                str(results[0].max_writes) if results[0].max_writes is not None else "20 (BatchWrite)",
            ]
        )
    print(
        f"{total:,} versions in {args.projects} projects of {args.versions}, seeded afresh before every run; a fresh emulator "
        f"per round. Median over rounds; ratio against recursive_delete per project at {FAST_OPS:,} ops/s. "
        "Every run left 0 projects and 0 versions.\n"
    )
    headers = [
        "method",
        "runs",
        "wall s (ratio)",
        "versions/s",
        "client CPU s",
        "emulator CPU s",
        "commits / RPCs",
        "max writes per commit",
    ]
    print(table(headers, rows))


def print_memory(args: argparse.Namespace) -> None:
    layouts = [[(4, 500), (40, 500)], [(1, 2_000), (1, 20_000)]]
    methods = (
        ("sweep", by_sweep(args.workers)),
        ("recursive_delete 20k ops/s", by_recursive_delete(fast_bulk_writer)),
    )
    rows = []
    peaks: dict[tuple[str, int, int], int] = {}
    for group in layouts:
        with fresh_stack() as stack:
            for projects, versions in group:
                for label, method in methods:
                    progress(f"memory: {label}, {projects} x {versions}")
                    result = measure(stack, method, projects, versions, memory=True)
                    peaks[(label, projects, versions)] = result.peak_bytes
                    rows.append(
                        [
                            label,
                            f"{projects * versions:,}",
                            f"{projects} x {versions:,}",
                            str(result.commits),
                            str(result.max_writes) if result.max_writes is not None else "20",
                            f"{result.peak_bytes / 2**20:.2f}",
                        ]
                    )
    print("\nPeak Python memory of one pass (tracemalloc; the timing runs above are without it):\n")
    print(
        table(
            [
                "method",
                "versions",
                "projects x versions",
                "commits / RPCs",
                "max writes per commit",
                "peak MiB",
            ],
            rows,
        )
    )
    growth = [
        f"{label}: {ratio(peaks[(label, 1, 20_000)], peaks[(label, 1, 2_000)])} in one project, "
        f"{ratio(peaks[(label, 40, 500)], peaks[(label, 4, 500)])} over projects of 500"
        for label, _ in methods
    ]
    print(f"\nPeak memory at 20,000 vs 2,000 versions: {'; '.join(growth)}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--projects", type=int, default=40)
    parser.add_argument("--versions", type=int, default=500)
    parser.add_argument(
        "--workers", type=int, default=2, help="the sweep's parallel projects (its default is 2)"
    )
    parser.add_argument(
        "--slow-rounds", type=int, default=1, help="rounds of the default (500 ops/s) BulkWriter"
    )
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    total = args.projects * args.versions
    names = list(METHODS)
    baseline_name = names[1]

    with section(f"Retention sweep vs recursive_delete: {total:,} versions in {args.projects} projects"):
        runs: dict[str, list[Result]] = {name: [] for name in names}
        for r in range(args.rounds):
            with fresh_stack() as stack:
                progress(f"round {r + 1}/{args.rounds}: warm-up")
                measure(stack, by_sweep(args.workers), 4, 500)
                measure(stack, by_recursive_delete(fast_bulk_writer), 4, 500)
                for name in names if r % 2 == 0 else list(reversed(names)):
                    if name == names[2] and r >= args.slow_rounds:
                        continue
                    progress(f"round {r + 1}/{args.rounds}: {name}")
                    result = measure(stack, METHODS[name](args.workers), args.projects, args.versions)
                    runs[name].append(result)
                    progress(
                        f"  wall {result.wall_s:.2f} s, client CPU {result.client_cpu_s:.2f} s, emulator CPU {result.emulator_cpu_s:.2f} s"
                    )
        baseline = statistics.median(r.wall_s for r in runs[baseline_name])
        sweep_wall = statistics.median(r.wall_s for r in runs["sweep"])
        whole = statistics.median(r.wall_s for r in runs[names[3]])
        print_runs(args, runs, baseline)
        sweep_cpu = statistics.median(r.client_cpu_s for r in runs["sweep"])
        whole_cpu = statistics.median(r.client_cpu_s for r in runs[names[3]])
        print(
            f"\nThe one-call delete of the whole collection takes {ratio(whole, sweep_wall)} of the sweep's time here: one query "
            f"streams every name in 5,000-document chunks, which the emulator serves cheaply but which costs this process "
            f"{ratio(whole_cpu, sweep_cpu)} the sweep's CPU. A sweep must pick expired projects one by one; it lists names per "
            "project (ListDocuments, a page per RPC; the emulator caps pages at 150 names)."
        )
        if not args.skip_memory:
            print_memory(args)
        print(
            f"\nTarget: sweep wall time <= 1.0x recursive_delete per project at {FAST_OPS:,} ops/s: "
            f"{ratio(sweep_wall, baseline)}, {verdict(sweep_wall <= baseline)}."
        )


if __name__ == "__main__":
    main()
