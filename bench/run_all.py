"""Run every benchmark, one after another, and write their tables to bench/RESULTS.md.

    python -m bench.run_all [--only generate,cold_start,...] [--output bench/RESULTS.md]

Each benchmark runs in a process of its own with its own emulator and served functions, with its
default settings, so every table in RESULTS.md comes from this one run. Progress goes to stderr;
the report (also on stdout) records the date, the commit, whether the working tree had changes,
the machine's load, and the command that reproduces each table.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.harness import ROOT, load_average

BENCHES = (
    "generate",
    "cold_start",
    "webhook_storm",
    "contention",
    "retention",
    "fanout",
    "user_data",
    "online",
)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.rstrip()  # porcelain lines start with a space


def available(only: list[str] | None) -> list[str]:
    """The benchmarks present in bench/ (bench_retention.py is another engineer's, and may not exist yet)."""
    names = [n for n in BENCHES if (ROOT / "bench" / f"bench_{n}.py").exists()]
    return [n for n in names if only is None or n in only]


def run_bench(name: str, tail: int = 12) -> tuple[int, str, list[str]]:
    """Run bench/bench_NAME.py; its stderr (progress) streams through, and its last lines are kept for a failure note."""
    proc = subprocess.Popen(
        [sys.executable, "-m", f"bench.bench_{name}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    last: collections.deque[str] = collections.deque(maxlen=tail)

    def echo() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            last.append(line.rstrip("\n"))

    echoing = threading.Thread(target=echo)
    echoing.start()
    stdout = proc.stdout.read() if proc.stdout is not None else ""
    code = proc.wait()
    echoing.join()
    return code, stdout, list(last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated subset of: " + ", ".join(BENCHES))
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    names = available(args.only.split(",") if args.only else None)

    commit = git("rev-parse", "HEAD")
    changes = [(line[:2].strip(), line[3:]) for line in git("status", "--porcelain").splitlines()]
    started = dt.datetime.now(dt.UTC)
    header = [
        "# Benchmark results",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC",
        f"- Commit: `{commit}` ({git('log', '-1', '--format=%s')[:100]})",
        "- Working tree: "
        + (
            "clean"
            if not changes
            else "not clean: "
            + ", ".join(f"`{path}` ({'untracked' if code == '??' else code})" for code, path in changes)
        ),
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; at start: {load_average()}",
        "- Reproduce all: `python -m bench.run_all` (from the repository root, in the venv); each section names its own command.",
        "- Every figure in brackets is a ratio against the baseline measured in the same benchmark run (a floor function served",
        "  the same way, or the uncontended case).",
        "",
    ]
    sections: list[str] = []
    failed: list[str] = []
    for name in names:
        print(f"== bench_{name}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        code, stdout, stderr_tail = run_bench(name)
        print(stdout, flush=True)
        text = stdout.strip()
        if code != 0:
            failed.append(name)
            text += f"\n\n**bench_{name} exited with status {code}** after {time.perf_counter() - t0:.0f} s. The end of its stderr:\n\n"
            text += "```\n" + "\n".join(stderr_tail) + "\n```"
        sections.append(text)

    targets = [line for text in sections for line in text.splitlines() if line.startswith("Target")]
    summary = ["## Targets at a glance", "", *[f"- {line}" for line in targets], ""]
    footer = [
        "",
        f"Finished {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {load_average()}.",
        *([f"Failed: {', '.join(failed)}."] if failed else []),
        "",
    ]
    args.output.write_text(
        "\n".join(header + summary) + "\n" + "\n\n".join(sections) + "\n" + "\n".join(footer)
    )
    print(f"wrote {args.output}", file=sys.stderr)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
