"""One served instance of the online path: generate with a 2 s model, stripe_webhook and credits.

    python -m bench.bench_online [--model-s 2.0] [--generate 200] [--gen-clients 20]
                                 [--requests 600] [--clients 8] [--chunks 4]

Each function runs as one functions-framework process, as served (gunicorn, one worker), against
one Firestore emulator and one Auth emulator; the Gemini API is the local double
(devstack.doubles.GeminiDouble) answering after `--model-s` seconds. Measured per function:
throughput (answers/s over the run's wall time), latency p50/p95 as the client sees it, the CPU
seconds of the function's process group (arbiter and worker: utime + stime from /proc) per request,
and the bytes the process logged per request (the structured JSON lines Cloud Logging would ingest).

- `generate` at `--gen-clients` (20: main.py's declared concurrency) concurrent clients, each its
  own user, twice: as served (gunicorn's default THREADS, 4 per core that os.cpu_count() reports)
  and with THREADS set to the declared concurrency. The floor `floor_reserve_model`
  (bench/floor_main.py: generate's three round trips with the same model call) runs with the same
  THREADS; the ideal is `--gen-clients / --model-s` answers/s.
- `stripe_webhook`: signed `checkout.session.completed` deliveries of new sessions over `--clients`
  clients, against `floor_create` (one `create()` per delivery), in chunks alternating which goes first.
- `credits` GET over `--clients` users, against `floor_txn` (one transaction, a read and two writes).

Then, in this process through the same Flask stack, the Firestore RPCs and documents read, written
and deleted per request, and the Firebase Auth account lookups per request, of generate (offline
model), stripe_webhook, credits and consent (GET and POST), counted by wrapping the Firestore
client's RPC methods. From the measured generate throughput: instances needed per 1,000
generations/s. Every process is local (127.0.0.1); the run is bounded by its request counts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from bench.bench_webhook_storm import signed_job
from bench.harness import (
    FLOOR_SOURCE,
    MAIN_SOURCE,
    TERMS,
    WEBHOOK_SECRET,
    Answer,
    Client,
    Run,
    Stack,
    cpu_meter,
    json_post,
    median,
    ms,
    pct,
    progress,
    ratio,
    run_load,
    section,
    seed_user,
    table,
    token,
)
from devstack import stripe_events
from devstack.doubles import GeminiDouble

PROMPT = {"prompt": "a lighthouse at dusk, in the style of a woodcut"}
COST = 50  # credits per initial generation (the default INITIAL_COST)


def generate_job(uids: list[str], client: Client) -> Answer:
    return json_post(client, PROMPT, {"Authorization": f"Bearer {token(uids[client.index])}"})


def floor_model_job(docs: list[str], client: Client) -> Answer:
    return json_post(client, PROMPT, path=f"/?doc={docs[client.index]}")


def credits_job(uids: list[str], client: Client) -> Answer:
    return client.request("GET", "/", headers={"Authorization": f"Bearer {token(uids[client.index])}"})


def floor_txn_job(docs: list[str], client: Client) -> Answer:
    return client.request("GET", f"/?doc={docs[client.index]}")


def purchase_bodies(n: int, uids: list[str]) -> list[bytes]:
    """`n` checkout.session.completed events of new sessions, spread over `uids`."""
    return [
        stripe_events.encode(
            stripe_events.checkout_completed(
                stripe_events.new_id("cs_test"), uids[i % len(uids)], "starter", stripe_events.new_id("pi")
            )
        )
        for i in range(n)
    ]


def log_bytes(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


class Measured:
    """A run, the CPU seconds and log bytes of the function's process group during it."""

    def __init__(self) -> None:
        self.run = Run()
        self.cpu: dict[str, float] = {}
        self.log = 0

    def measure(self, fn: Any, jobs: list[Callable[[Client], Answer]], clients: int) -> None:
        before = log_bytes(fn.child.log)
        with cpu_meter({"fn": fn.child.pid}, self.cpu):
            self.run.extend(run_load(fn.url, jobs, clients))
        self.log += log_bytes(fn.child.log) - before

    @property
    def n(self) -> int:
        return len(self.run.answers)

    def cpu_ms(self) -> float:
        return self.cpu.get("fn", 0.0) / self.n * 1000 if self.n else float("nan")

    def log_per_request(self) -> float:
        return self.log / self.n if self.n else float("nan")


# --- in-process counts -------------------------------------------------------------------------


class FirestoreCounts:
    """RPCs, documents read (returned by lookups and queries), writes and deletes, by wrapping the
    GAPIC methods on a Firestore client's instance."""

    def __init__(self, firestore_client: Any) -> None:
        self.rpcs: Counter[str] = Counter()
        self.reads = self.writes = self.deletes = self.empty_queries = 0
        api = firestore_client._firestore_api
        for name in ("batch_get_documents", "run_query", "commit", "begin_transaction", "rollback"):
            setattr(api, name, self._wrap(name, getattr(api, name)))

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.rpcs[name] += 1
            request = kwargs.get("request") or (args[0] if args else {})
            if name == "commit":
                for write in _field(request, "writes") or []:
                    op = getattr(write, "_pb", write).WhichOneof("operation")
                    if op == "delete":
                        self.deletes += 1
                    else:
                        self.writes += 1
            result = method(*args, **kwargs)
            if name in ("batch_get_documents", "run_query"):
                return self._count_stream(name, result)
            return result

        return call

    def _count_stream(self, name: str, stream: Any) -> Iterator[Any]:
        found = 0
        try:
            for response in stream:
                pb = getattr(response, "_pb", response)
                # A document looked up and missing is billed as a read too.
                hit = (
                    pb.HasField("found") or bool(pb.missing)
                    if name == "batch_get_documents"
                    else pb.HasField("document")
                )
                if hit:
                    found += 1
                    self.reads += 1
                yield response
        finally:  # the caller may stop reading once it has what it asked for
            if name == "run_query" and found == 0:
                self.empty_queries += 1  # billed as one read


def _field(request: Any, name: str) -> Any:
    return request.get(name) if isinstance(request, dict) else getattr(request, name, None)


def count_in_process(calls: int) -> list[list[str]]:
    """Per request of each entry point: Firestore RPCs, documents read / written / deleted, Auth lookups."""
    import functions_framework

    from functions.lib import auth, db, logs

    silent = logging.NullHandler()  # stdout is the report: the handlers' JSON lines go nowhere here
    silent.setFormatter(logs.CloudLoggingFormatter())
    logging.getLogger().addHandler(silent)
    lookups = Counter[str]()
    real_lookup = auth.account_states.lookup

    def counted_lookup(uid: str) -> Any:
        lookups["n"] += 1
        return real_lookup(uid)

    auth.account_states.lookup = counted_lookup
    apps = {
        name: functions_framework.create_app(target=name, source=str(MAIN_SOURCE)).test_client()
        for name in ("generate", "stripe_webhook", "credits", "consent")
    }
    uid = f"count-{uuid.uuid4().hex[:8]}"
    seed_user(uid, COST * (calls + 2))
    auth_header = {"Authorization": f"Bearer {token(uid)}"}
    newcomer = f"count-new-{uuid.uuid4().hex[:8]}"

    def webhook_call() -> Any:
        body = purchase_bodies(1, [uid])[0]
        headers = {"Stripe-Signature": stripe_events.sign(body, WEBHOOK_SECRET)}
        return apps["stripe_webhook"].post("/", data=body, headers=headers, content_type="application/json")

    consent_users = iter(f"{newcomer}-{i}" for i in range(calls + 1))

    def consent_post() -> Any:
        header = {"Authorization": f"Bearer {token(next(consent_users))}"}
        return apps["consent"].post("/", json={"version": TERMS}, headers=header)

    cases: dict[str, Callable[[], Any]] = {
        "generate (POST, new project)": lambda: apps["generate"].post("/", json=PROMPT, headers=auth_header),
        "stripe_webhook (checkout.session.completed, new session)": webhook_call,
        "credits (GET)": lambda: apps["credits"].get("/", headers=auth_header),
        "consent (GET)": lambda: apps["consent"].get("/", headers=auth_header),
        "consent (POST, a new user accepts)": consent_post,
    }
    for call in cases.values():  # the first call of each builds its clients and imports its modules
        answer = call()
        assert answer.status_code == 200, answer.get_data()[:300]
    rows = []
    for name, call in cases.items():
        counts = FirestoreCounts(db.get_client())  # wraps the instance's methods afresh for each case
        lookups.clear()
        auth.account_states.clear()  # each case starts with a cold account-state cache
        statuses = Counter(call().status_code for _ in range(calls))
        rpcs = ", ".join(f"{k} {v / calls:g}" for k, v in sorted(counts.rpcs.items()))
        rows.append(
            [
                name,
                rpcs,
                f"{counts.reads / calls:g} (+{counts.empty_queries / calls:g} empty queries)",
                f"{counts.writes / calls:g}",
                f"{counts.deletes / calls:g}",
                f"{lookups['n']} in {calls} calls",
                json.dumps(dict(statuses)),
            ]
        )
    auth.account_states.lookup = real_lookup
    return rows


# --- main --------------------------------------------------------------------------------------


def serve_all(stack: Stack, gemini: GeminiDouble, gen_clients: int) -> dict[str, Any]:
    threads = {"THREADS": str(gen_clients)}
    model_env = {"GENERATOR": "gemini", "GEMINI_API_KEY": "bench", "GEMINI_BASE_URL": gemini.url}
    served = {
        "generate": stack.serve("generate", env=model_env, wait=False),
        "generate_threads": stack.serve("generate", env={**model_env, **threads}, wait=False),
        "floor_reserve_model": stack.serve(
            "floor_reserve_model",
            source=FLOOR_SOURCE,
            env={"FLOOR_MODEL_URL": gemini.url, **threads},
            wait=False,
        ),
        "stripe_webhook": stack.serve("stripe_webhook", wait=False),
        "floor_create": stack.serve("floor_create", source=FLOOR_SOURCE, wait=False),
        "credits": stack.serve("credits", wait=False),
        "floor_txn": stack.serve("floor_txn", source=FLOOR_SOURCE, wait=False),
    }
    for fn in served.values():
        fn.wait_ready()
    return served


def warm_up(
    served: dict[str, Any], jobs: dict[str, Callable[[Client], Answer]], uids: list[str], args: Any
) -> None:
    """Each process's first requests pay its imports and client construction: not measured."""
    for name, job in jobs.items():
        clients = args.gen_clients if name in GENERATE_RUNS else args.clients
        warm = run_load(served[name].url, [job] * clients, clients)
        if set(warm.statuses()) != {200}:
            raise SystemExit(f"{name} warm-up answered {warm.statuses()}: {warm.answers[0].body[:300]!r}")
    for name in ("stripe_webhook", "floor_create"):
        run_load(served[name].url, [signed_job(b, []) for b in purchase_bodies(4, uids)], 2)


GENERATE_RUNS = ("floor_reserve_model", "generate_threads", "generate")


def measure_all(
    stack: Stack, gemini: GeminiDouble, args: Any
) -> tuple[dict[str, Measured], dict[str, float], list[str]]:
    """Every function's runs, the emulator's CPU during each, and the webhook's non-2xx answers."""
    served = serve_all(stack, gemini, args.gen_clients)
    tag = uuid.uuid4().hex[:6]
    gen_uids = [f"online-gen-{i}-{tag}" for i in range(args.gen_clients)]
    credit_uids = [f"online-credits-{i}-{tag}" for i in range(args.clients)]
    progress(f"seeding {len(gen_uids) + len(credit_uids)} users")
    per_user = -(-(2 * args.generate + 4 * args.gen_clients) // args.gen_clients)
    for uid in gen_uids:
        seed_user(uid, COST * (per_user + 2))
    for uid in credit_uids:
        seed_user(uid, 1000)
    floor_docs = [f"online-floor-{i}-{tag}" for i in range(max(args.gen_clients, args.clients))]
    jobs: dict[str, Callable[[Client], Answer]] = {
        "generate": partial(generate_job, gen_uids),
        "generate_threads": partial(generate_job, gen_uids),
        "floor_reserve_model": partial(floor_model_job, floor_docs),
        "credits": partial(credits_job, credit_uids),
        "floor_txn": partial(floor_txn_job, floor_docs),
    }
    warm_up(served, jobs, credit_uids, args)

    results = {name: Measured() for name in served}
    emulator_cpu: dict[str, float] = {}
    half = args.generate // 2
    for order in (GENERATE_RUNS, tuple(reversed(GENERATE_RUNS))):  # two rounds, alternating order
        for name in order:
            progress(f"{name}: {half} requests over {args.gen_clients} clients")
            with cpu_meter({name: stack.firestore.child.pid}, emulator_cpu):
                results[name].measure(served[name], [jobs[name]] * half, args.gen_clients)

    bodies = {
        name: purchase_bodies(args.requests, credit_uids) for name in ("stripe_webhook", "floor_create")
    }
    redelivered: list[str] = []
    size = -(-args.requests // args.chunks)
    for c in range(args.chunks):
        for real, floor in (("stripe_webhook", "floor_create"), ("credits", "floor_txn")):
            for name in [real, floor] if c % 2 == 0 else [floor, real]:
                progress(f"chunk {c + 1}/{args.chunks}: {name}")
                if name in bodies:
                    batch = [signed_job(b, redelivered) for b in bodies[name][c * size : (c + 1) * size]]
                else:
                    batch = [jobs[name]] * len(range(c * size, min((c + 1) * size, args.requests)))
                with cpu_meter({name: stack.firestore.child.pid}, emulator_cpu):
                    results[name].measure(served[name], batch, args.clients)
    return results, emulator_cpu, redelivered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-s", type=float, default=2.0, help="the Gemini double's delay")
    parser.add_argument("--generate", type=int, default=200, help="generate requests per variant")
    parser.add_argument("--gen-clients", type=int, default=20, help="concurrent generate clients")
    parser.add_argument("--requests", type=int, default=600, help="webhook deliveries and credits calls each")
    parser.add_argument("--clients", type=int, default=8, help="concurrent webhook and credits clients")
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--count-calls", type=int, default=10, help="in-process calls per entry point")
    args = parser.parse_args()

    with section(f"One instance: generate ({args.model_s:g} s model), stripe_webhook, credits"):
        gemini = GeminiDouble(delay_s=args.model_s).start()
        with Stack(auth=True) as stack:
            stack.add_stop(gemini.stop)
            results, emulator_cpu, redelivered = measure_all(stack, gemini, args)
            progress("counting Firestore operations and Auth lookups in-process")
            # The in-process app reads settings from this process's environment: the offline model.
            os.environ["GENERATOR"] = "offline"
            counts = count_in_process(args.count_calls)
        report(args, results, emulator_cpu, redelivered, counts)


def report(
    args: Any,
    results: dict[str, Measured],
    emulator_cpu: dict[str, float],
    redelivered: list[str],
    counts: list[list[str]],
) -> None:
    ideal = args.gen_clients / args.model_s
    rows = []
    baselines = {
        "generate": "floor_reserve_model",
        "generate_threads": "floor_reserve_model",
        "floor_reserve_model": "floor_reserve_model",
        "stripe_webhook": "floor_create",
        "floor_create": "floor_create",
        "credits": "floor_txn",
        "floor_txn": "floor_txn",
    }
    labels = {
        "generate": f"generate, as served (THREADS default), {args.gen_clients} clients",
        "generate_threads": f"generate, THREADS={args.gen_clients}, {args.gen_clients} clients",
        "floor_reserve_model": f"floor_reserve_model, THREADS={args.gen_clients}, {args.gen_clients} clients",
        "stripe_webhook": f"stripe_webhook, {args.clients} clients",
        "floor_create": f"floor_create, {args.clients} clients",
        "credits": f"credits GET, {args.clients} clients",
        "floor_txn": f"floor_txn GET, {args.clients} clients",
    }
    for name, m in results.items():
        b = results[baselines[name]]
        lat, blat = m.run.latencies, b.run.latencies
        rows.append(
            [
                labels[name],
                str(m.n),
                f"{m.run.rate:.2f} ({ratio(m.run.rate, b.run.rate)})",
                f"{ms(median(lat))} ({ratio(median(lat), median(blat))})",
                f"{ms(pct(lat, 95))} ({ratio(pct(lat, 95), pct(blat, 95))})",
                f"{m.cpu_ms():.1f} ({ratio(m.cpu_ms(), b.cpu_ms())})",
                f"{emulator_cpu.get(name, 0.0) / m.n * 1000:.1f}" if m.n else "n/a",
                f"{m.log_per_request():.0f}",
                json.dumps(m.run.statuses()),
            ]
        )
    print(
        f"One functions-framework process per function (gunicorn, 1 worker) on {os.cpu_count()} cores shared with the "
        f"emulators, the double and the clients. Gemini double delay {args.model_s:g} s. Ratios against the floor "
        "named in the module docstring, measured in the same run. CPU is the function's process group "
        "(utime + stime from /proc); log bytes are what the process wrote to stdout/stderr.\n"
    )
    print(
        table(
            [
                "function",
                "requests",
                "answers/s",
                "p50 ms",
                "p95 ms",
                "function CPU ms/req",
                "emulator CPU ms/req",
                "log bytes/req",
                "statuses",
            ],
            rows,
        )
    )
    if redelivered:
        print(f"\nWebhook non-2xx answers (delivered again): {json.dumps(Counter(redelivered))}")
    print(
        f"\nFirestore operations and Auth lookups per request, counted in-process over {args.count_calls} warm calls "
        "each (account-state cache cleared before each entry point's calls; AUTH_STATE_CACHE_S as configured, "
        "30 s by default):\n"
    )
    print(
        table(
            [
                "entry point",
                "RPCs / request",
                "documents read / request",
                "writes / request",
                "deletes / request",
                "Auth lookups",
                "statuses",
            ],
            counts,
        )
    )
    print()
    for name in ("generate", "generate_threads"):
        rate = results[name].run.rate
        need = 1000 / rate if rate else float("inf")
        print(
            f"- {labels[name]}: {rate:.2f} generations/s per instance = {ratio(rate, ideal)} of the ideal "
            f"{args.gen_clients}/{args.model_s:g} s = {ideal:.1f}/s; instances per 1,000 generations/s: {need:.0f}; "
            f"CPU {results[name].cpu_ms():.1f} ms per generation = {rate * results[name].cpu_ms() / 1000:.2f} "
            "of a core busy at that rate."
        )
    for name in ("stripe_webhook", "credits"):
        m = results[name]
        print(
            f"- {labels[name]}: {m.run.rate:.1f} answers/s on this machine; {m.cpu_ms():.1f} ms of function CPU "
            f"per request, {1000 / m.cpu_ms():.0f} requests per CPU-second."
        )


if __name__ == "__main__":
    main()
