"""Cold start of every entry point in main.py against two floors, and what each one imports.

    python -m bench.bench_cold_start [--repeats 7]

Cold start: from spawning `functions-framework --target NAME --source ...` to the answer of its first
real request (Firestore touched: a charge and a generation for `generate`, a signed delivery for
`stripe_webhook`, ...; `checkout` takes a rate-limit slot in Firestore and creates a session on
the local Stripe double). "Listening" is when the port first accepts a connection: imports done, gunicorn bound.
Each repeat starts every function once, in a shuffled order, against one warm emulator; the table
shows medians. Sources are loaded from checked-hash bytecode (tools/bytecode.py), as deploy.sh
ships them. The CPU time the served processes used up to the first answer is shown too: on a
shared machine it is steadier than wall time.

Imports, measured in a fresh interpreter per entry point that drives the same first request through
`functions_framework.create_app(...).test_client()`: the time `create_app` takes to load the source
(main.py, or the floor file), and which heavy modules are loaded after the import and after the
first request.

Floors: `floor_ff_txn` (bench/floor_firebase.py: one Firestore transaction in a function declared
with firebase-functions' `https_fn.on_request`) and `floor_txn` (the same work, a plain
functions-framework function).

Targets (issue 11): cold start <= 1.2x floor_ff_txn's and <= 1.3x floor_txn's for every entry point;
`stripe`, `google.genai`, `google.cloud.scheduler_v1` (and `firebase_admin.auth`) only where needed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import (
    FIREBASE_FLOOR_SOURCE,
    FLOOR_SOURCE,
    MAIN_SOURCE,
    ROOT,
    WEBHOOK_SECRET,
    Client,
    Stack,
    cpu_seconds,
    entry_points,
    median,
    ms,
    progress,
    ratio,
    section,
    seed_project,
    seed_user,
    table,
    token,
    verdict,
)
from devstack import stripe_events
from devstack.stripe_double import StripeDouble
from tools import bytecode

HEAVY = (
    "stripe",
    "google.genai",
    "google.cloud.scheduler_v1",
    "firebase_admin.auth",
    "firebase_functions",
    "google.cloud.firestore",
)
# What each path cannot do without (GENERATOR=offline here, so generate needs no google.genai).
# Every entry point is declared with firebase-functions, so that is needed everywhere but the plain floors.
FF = "firebase_functions"
NEEDED = {
    "generate": {"firebase_admin.auth", "google.cloud.firestore", FF},
    "consent": {"firebase_admin.auth", "google.cloud.firestore", FF},
    "credits": {"firebase_admin.auth", "google.cloud.firestore", FF},
    "checkout": {"firebase_admin.auth", "stripe", "google.cloud.firestore", FF},
    "stripe_webhook": {"stripe", "google.cloud.firestore", FF},
    "retention_sweep": {"google.cloud.firestore", FF},
    "account": {"firebase_admin.auth", "google.cloud.firestore", FF},
    "settle_charges": {"google.cloud.firestore", FF},
    "purgeProject": {"google.cloud.firestore", FF},
    "floor_ff_txn": {"google.cloud.firestore", FF},
    "floor_txn": {"google.cloud.firestore"},
    "bare": set(),
}
FLOOR = "floor_txn"
FF_FLOOR = "floor_ff_txn"
NO_FIRESTORE = {"bare"}
ORIGIN = "http://localhost:5173"


@dataclass
class FirstRequest:
    """The first real request of a fresh process, with data seeded for it."""

    method: str
    path: str = "/"
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""


def first_request(target: str) -> FirstRequest:
    """A request that does the function's real work, on data of its own (seeded here through the domain code)."""
    uid = f"cold-{target}-{uuid.uuid4().hex[:8]}"
    if target in (FLOOR, FF_FLOOR):
        return FirstRequest("POST", path=f"/?doc={uid}")
    if target == "bare":
        return FirstRequest("GET")
    if target not in _FIRST_REQUESTS:
        raise ValueError(target)
    return _FIRST_REQUESTS[target](uid)


def _signed_in(
    uid: str, credits: int | None, method: str, body: dict[str, Any] | None = None
) -> FirstRequest:
    """A request with the user's ID token; with `credits`, the user exists with that balance."""
    if credits is not None:
        seed_user(uid, credits)
    auth = {"Authorization": f"Bearer {token(uid)}", "Content-Type": "application/json"}
    return FirstRequest(method, headers=auth, body=json.dumps(body) if body is not None else "")


def _webhook_delivery(uid: str) -> FirstRequest:
    event = stripe_events.checkout_completed(
        stripe_events.new_id("cs_test"), uid, "starter", stripe_events.new_id("pi")
    )
    payload, headers = stripe_events.delivery(event, WEBHOOK_SECRET)
    return FirstRequest("POST", headers=headers, body=payload.decode())


def _purge_task(uid: str) -> FirstRequest:
    """As Cloud Tasks calls the task function: the callable body, one marked project."""
    seed_project(uid, 20, marked=True)
    return FirstRequest(
        "POST", headers={"Content-Type": "application/json"}, body=json.dumps({"data": {"projectId": uid}})
    )


_FIRST_REQUESTS: dict[str, Callable[[str], FirstRequest]] = {
    "generate": lambda uid: _signed_in(uid, 100, "POST", {"prompt": "a first light"}),
    "consent": lambda uid: _signed_in(uid, 0, "GET"),
    "credits": lambda uid: _signed_in(uid, 100, "GET"),
    # The caller needs an Auth account (checkout checks the account's state).
    "checkout": lambda uid: _signed_in(
        uid,
        0,
        "POST",
        {"packId": "starter", "successUrl": f"{ORIGIN}/paid", "cancelUrl": f"{ORIGIN}/credits"},
    ),
    "stripe_webhook": _webhook_delivery,
    "retention_sweep": lambda uid: FirstRequest(
        "POST", headers={"Content-Type": "application/json"}, body="{}"
    ),
    "account": lambda uid: _signed_in(uid, 100, "GET"),
    # As Cloud Scheduler calls it: an empty POST.
    "settle_charges": lambda uid: FirstRequest("POST", headers={"X-CloudScheduler-JobName": "settle"}),
    "purgeProject": _purge_task,
}


def source_of(target: str) -> Path:
    if target == FF_FLOOR:
        return FIREBASE_FLOOR_SOURCE
    return FLOOR_SOURCE if target in (FLOOR, "bare") else MAIN_SOURCE


@dataclass
class ColdStart:
    listening_s: float  # spawn to the port accepting connections
    answer_s: float  # spawn to the first answer
    cpu_s: float  # CPU time of the served processes (gunicorn arbiter and worker) at the first answer


def cold_start(stack: Stack, target: str, env: dict[str, str]) -> ColdStart:
    """Spawn a served process and send its first real request, which must answer 200."""
    req = first_request(target)
    started = time.perf_counter()
    fn = stack.serve(target, source=source_of(target), env=env, wait=False)
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", fn.port), timeout=1).close()
                break
            except OSError:
                if fn.child.proc.poll() is not None or time.perf_counter() - started > 60:
                    raise RuntimeError(
                        f"{target} did not start: {fn.child.log.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.002)
        listening = time.perf_counter() - started
        answer = Client(fn.url).request(req.method, req.path, req.body.encode() or None, req.headers)
        answered = time.perf_counter() - started
        cpu = cpu_seconds(fn.child.pid)
    finally:
        fn.stop()
    if answer.status != 200:
        raise RuntimeError(f"{target} answered {answer.status}: {answer.body[:300]!r}")
    return ColdStart(listening, answered, cpu)


def probe(target: str, spec: str) -> None:
    """In a fresh interpreter: load the source like functions-framework does, serve one request, report imports."""
    started = time.perf_counter()
    import functions_framework

    framework = time.perf_counter()
    app = functions_framework.create_app(target=target, source=str(source_of(target)))
    loaded = time.perf_counter()
    after_import = [m for m in HEAVY if m in sys.modules]
    req = FirstRequest(**json.loads(spec))
    response = app.test_client().open(
        req.path, method=req.method, headers=req.headers, data=req.body.encode()
    )
    answered = time.perf_counter()
    after_request = [m for m in HEAVY if m in sys.modules]
    result = {
        "framework_s": framework - started,
        "source_s": loaded - framework,
        "first_request_s": answered - loaded,
        "status": response.status_code,
        "after_import": after_import,
        "after_request": after_request,
    }
    print("PROBE " + json.dumps(result), flush=True)


def run_probe(target: str, env: dict[str, str]) -> dict[str, Any]:
    req = first_request(target)
    spec = json.dumps(req.__dict__)
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_cold_start", "--probe", target, spec],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("PROBE ")]
    if not lines:
        raise RuntimeError(f"probe of {target} failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("PROBE "))
    if result["status"] != 200:
        raise RuntimeError(f"probe of {target} answered {result['status']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--probe", nargs=2, metavar=("TARGET", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(*args.probe)
        return

    # Every source, the floors' included, is loaded from bytecode, as a deploy ships the functions' code.
    if not bytecode.compile_sources([MAIN_SOURCE, ROOT / "functions", ROOT / "bench"]):
        raise SystemExit("a module does not compile")
    with section("Cold start per entry point vs floor_ff_txn and floor_txn"), Stack(auth=True) as stack:
        stripe = StripeDouble(prices={"price_starter_100": 500}).start()
        stack.add_stop(stripe.stop)
        env = {"STRIPE_API_BASE": stripe.url}
        targets = [*entry_points(), FF_FLOOR, FLOOR, "bare"]
        starts: dict[str, list[ColdStart]] = {t: [] for t in targets}
        probes: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
        probe_env = {**os.environ, **env}
        for r in range(args.repeats):
            order = random.sample(targets, len(targets))
            progress(f"repeat {r + 1}/{args.repeats}: {', '.join(order)}")
            for target in order:
                starts[target].append(cold_start(stack, target, env))
                probes[target].append(run_probe(target, probe_env))

        ff_answer = median(s.answer_s for s in starts[FF_FLOOR])
        floor_answer = median(s.answer_s for s in starts[FLOOR])
        floor_cpu = median(s.cpu_s for s in starts[FLOOR])
        bare_answer = median(s.answer_s for s in starts["bare"])
        floor_source = median(p["source_s"] for p in probes["bare"])
        rows, misses = [], []
        for target in targets:
            listening = median(s.listening_s for s in starts[target])
            answer = median(s.answer_s for s in starts[target])
            cpu = median(s.cpu_s for s in starts[target])
            source_s = median(p["source_s"] for p in probes[target])
            first_s = median(p["first_request_s"] for p in probes[target])
            after_import = probes[target][-1]["after_import"]
            after_request = probes[target][-1]["after_request"]
            # What the firebase-functions declaration itself loads (its floor's imports) is needed by every entry point.
            declared = set(probes[FF_FLOOR][-1]["after_import"]) if NEEDED[target] >= {FF} else set()
            extra = sorted(set(after_request) - NEEDED[target] - declared)
            if target in entry_points() and (
                answer > 1.2 * ff_answer or answer > 1.3 * floor_answer or extra
            ):
                misses.append(target)
            rows.append(
                [
                    target + (" (no Firestore)" if target in NO_FIRESTORE else ""),
                    f"{ms(listening)}",
                    f"{ms(answer)} ({ratio(answer, ff_answer)})",
                    f"{ratio(answer, floor_answer)}",
                    f"{ms(min(s.answer_s for s in starts[target]))}-{ms(max(s.answer_s for s in starts[target]))}",
                    f"{ms(answer - bare_answer)}",
                    f"{ms(cpu)} ({ratio(cpu, floor_cpu)})",
                    f"{ms(source_s)} ({ratio(source_s, floor_source)} of bare)",
                    f"{ms(first_s)}",
                    ", ".join(after_import) or "none",
                    ", ".join(after_request) or "none",
                    ", ".join(extra) or "none",
                ]
            )
        print(
            f"Medians of {args.repeats} fresh processes per function (shuffled order each repeat), served by the functions-framework CLI; "
            f"ratios against {FF_FLOOR} and {FLOOR} (cold start) and bare (source import). In-process columns from a fresh interpreter driving the "
            "same first request through create_app(...).test_client().\n"
        )
        print(
            table(
                [
                    "function",
                    "listening ms",
                    f"first answer ms (vs {FF_FLOOR})",
                    f"vs {FLOOR}",
                    "first answer min-max ms",
                    "first answer - bare ms",
                    "CPU ms to first answer (vs floor_txn)",
                    "source import ms",
                    "first request in-process ms",
                    "heavy modules after import",
                    "heavy modules after first request",
                    "not needed by this path",
                ],
                rows,
            )
        )
        print(
            f"\nTarget: every entry point's first answer <= 1.2x {FF_FLOOR} ({ms(1.2 * ff_answer)} ms) and <= 1.3x {FLOOR} "
            f"({ms(1.3 * floor_answer)} ms), and no heavy module it does not need: "
            f"{verdict(not misses)}" + (f" (missed by: {', '.join(misses)})." if misses else ".")
        )


if __name__ == "__main__":
    main()
