"""`generate` with an instant model against two floors: reserve-then-settle, and one Firestore transaction.

    python -m bench.bench_generate [--rounds 5] [--sequential 40] [--concurrent 80] [--clients 4]

Both are served by the functions-framework CLI against one Firestore emulator. Rounds alternate
which goes first, so drift (other load on the machine, the emulator warming up) hits both alike.
Every client has its own user (its own floor document), so nothing here contends; same-user
contention is `bench_contention`. Round trips are counted in-process, through the same Flask
stack (`functions_framework.create_app(...).test_client()`), by wrapping the Firestore client's
RPC methods on its instance.

`generate` checks that the caller's account is neither disabled nor revoked (a Firebase Auth
account lookup, here against the Auth emulator), cached per instance for AUTH_STATE_CACHE_S
(default 30 s): `generate` runs with the default, so after the warm-up its lookups are cache
hits; `generate_lookup_each` is the same function with AUTH_STATE_CACHE_S=0, one lookup per
request. Their difference is what the check costs when the cache misses.

Floors (bench/floor_main.py): `floor_reserve_settle`, the least generate can do (one read; a commit
of ledger entry, balance and generation record; an instant model; a commit of version and status:
3 round trips, 5 writes), and `floor_txn` (one transaction of one read and two writes). A third
baseline, `floor_data_model`, makes the same round trips writing the data model's seven documents
as generate does, without generate's code around them: generate against it is what that code
costs, and it against `floor_reserve_settle` what the documents cost.

Targets (issue 11): generate p50 <= 1.15x floor_reserve_settle's; round trips <= the floor's.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

from bench.harness import (
    FLOOR_SOURCE,
    MAIN_SOURCE,
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
    verdict,
)

PROMPT = {"prompt": "a lighthouse at dusk, in the style of a woodcut"}
GAPIC_METHODS = (
    "get_document",
    "batch_get_documents",
    "begin_transaction",
    "commit",
    "rollback",
    "run_query",
    "batch_write",
    "write",
)


def generate_job(uids: list[str], client: Client) -> Answer:
    return json_post(client, PROMPT, {"Authorization": f"Bearer {token(uids[client.index])}"})


RESERVE = "floor_reserve_settle"
DATA_MODEL = "floor_data_model"


def floor_job(docs: list[str], client: Client) -> Answer:
    return json_post(client, PROMPT, path=f"/?doc={docs[client.index]}")


def count_round_trips(firestore_client: Any) -> Counter[str]:
    """Count every RPC the client's GAPIC layer sends, by method, by wrapping the methods on its instance."""
    api = firestore_client._firestore_api
    counts: Counter[str] = Counter()

    def counted(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return method(*args, **kwargs)

        return call

    for name in GAPIC_METHODS:
        setattr(api, name, counted(name, getattr(api, name)))
    return counts


def round_trips(requests: int) -> tuple[Counter[str], Counter[str], int]:
    """Round trips of `requests` successful generates and floor calls, in this process, through the Flask stack."""
    import functions_framework

    from functions.lib import db, logs

    # The handlers log JSON lines to stdout, and here stdout is the report: a handler with their
    # formatter already in place makes `logs.configure` add none.
    silent = logging.NullHandler()
    silent.setFormatter(logs.CloudLoggingFormatter())
    logging.getLogger().addHandler(silent)
    uid = f"rt-{uuid.uuid4().hex[:10]}"
    seed_user(uid, 50 * (requests + 1))
    generate = functions_framework.create_app(target="generate", source=str(MAIN_SOURCE)).test_client()
    floor = functions_framework.create_app(target=RESERVE, source=str(FLOOR_SOURCE)).test_client()
    headers = {"Authorization": f"Bearer {token(uid)}"}
    # The first call of each builds its client; count from the second on, so both are counted warm.
    assert generate.post("/", json=PROMPT, headers=headers).status_code == 200
    assert floor.post("/?doc=rt", json=PROMPT).status_code == 200
    floor_main = sys.modules["floor_main"]  # create_app loaded bench/floor_main.py under its file name
    gen_counts, floor_counts = count_round_trips(db.get_client()), count_round_trips(floor_main._client())
    ok = 0
    for _ in range(requests):
        ok += generate.post("/", json=PROMPT, headers=headers).status_code == 200
        assert floor.post("/?doc=rt", json=PROMPT).status_code == 200
    return gen_counts, floor_counts, ok


def describe(counts: Counter[str], n: int) -> str:
    return ", ".join(f"{name} {c / n:g}" for name, c in sorted(counts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sequential", type=int, default=40, help="requests per round, one client")
    parser.add_argument(
        "--concurrent", type=int, default=80, help="requests per round, over --clients clients"
    )
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()

    with section("generate vs floor_reserve_settle and floor_txn (instant model)"):
        with Stack(auth=True) as stack:
            gen_fn = stack.serve("generate", wait=False)
            lookup_fn = stack.serve("generate", env={"AUTH_STATE_CACHE_S": "0"}, wait=False)
            floor_fn = stack.serve("floor_txn", source=FLOOR_SOURCE, wait=False)
            reserve_fn = stack.serve(RESERVE, source=FLOOR_SOURCE, wait=False)
            model_fn = stack.serve(DATA_MODEL, source=FLOOR_SOURCE, wait=False)
            for fn in (gen_fn, lookup_fn, floor_fn, reserve_fn, model_fn):
                fn.wait_ready()
            total = args.warmup + args.rounds * (args.sequential + args.concurrent)
            uids = [f"gen-{i}-{uuid.uuid4().hex[:8]}" for i in range(args.clients)]
            docs = [f"floor-{i}-{uuid.uuid4().hex[:8]}" for i in range(args.clients)]
            reserve_docs = [f"reserve-{i}-{uuid.uuid4().hex[:8]}" for i in range(args.clients)]
            model_docs = [f"model-{i}-{uuid.uuid4().hex[:8]}" for i in range(args.clients)]
            progress(f"seeding {len(uids)} users")
            for uid in uids:
                seed_user(uid, 2 * 50 * (total + 10))

            targets = {
                "generate": (gen_fn, partial(generate_job, uids)),
                "generate_lookup_each": (lookup_fn, partial(generate_job, uids)),
                RESERVE: (reserve_fn, partial(floor_job, reserve_docs)),
                DATA_MODEL: (model_fn, partial(floor_job, model_docs)),
                "floor_txn": (floor_fn, partial(floor_job, docs)),
            }
            seq: dict[str, Run] = {name: Run() for name in targets}
            conc: dict[str, Run] = {name: Run() for name in targets}
            cpu: dict[str, float] = dict.fromkeys(targets, 0.0)
            emulator_cpu: dict[str, float] = dict.fromkeys(targets, 0.0)
            for name, (fn, job) in targets.items():
                warm = run_load(fn.url, [job] * args.warmup, 1)
                if set(warm.statuses()) != {200}:
                    raise SystemExit(
                        f"{name} warm-up answered {warm.statuses()}: {warm.answers[0].body[:300]!r}"
                    )
            for r in range(args.rounds):
                order = random.sample(list(targets), len(targets))
                progress(f"round {r + 1}/{args.rounds}: {' then '.join(order)}")
                for name in order:
                    fn, job = targets[name]
                    with (
                        cpu_meter({name: fn.child.pid}, cpu),
                        cpu_meter({name: stack.firestore.child.pid}, emulator_cpu),
                    ):
                        seq[name].extend(run_load(fn.url, [job] * args.sequential, 1))
                        conc[name].extend(run_load(fn.url, [job] * args.concurrent, args.clients))

            progress("counting round trips in-process")
            rt_requests = 20
            gen_counts, floor_counts, gen_ok = round_trips(rt_requests)

        base_seq, base_conc = seq[RESERVE], conc[RESERVE]
        rows = []
        for name in targets:
            s, c = seq[name], conc[name]
            served = len(s.answers) + len(c.answers)
            rows.append(
                [
                    name,
                    f"{ms(median(s.latencies))} ({ratio(median(s.latencies), median(base_seq.latencies))})",
                    f"{ms(pct(s.latencies, 99))} ({ratio(pct(s.latencies, 99), pct(base_seq.latencies, 99))})",
                    f"{s.rate:.1f} ({ratio(s.rate, base_seq.rate)})",
                    f"{ms(median(c.latencies))} ({ratio(median(c.latencies), median(base_conc.latencies))})",
                    f"{ms(pct(c.latencies, 99))} ({ratio(pct(c.latencies, 99), pct(base_conc.latencies, 99))})",
                    f"{c.rate:.1f} ({ratio(c.rate, base_conc.rate)})",
                    f"{ms(cpu[name] / served)} ({ratio(cpu[name], cpu[RESERVE])})",
                    f"{ms(emulator_cpu[name] / served)} ({ratio(emulator_cpu[name], emulator_cpu[RESERVE])})",
                    json.dumps(dict(Counter(s.statuses()) + Counter(c.statuses()))),
                ]
            )
        print(
            f"{args.rounds} interleaved rounds; per round and function: {args.sequential} requests from 1 client, then "
            f"{args.concurrent} from {args.clients} concurrent clients (one user / floor document each). "
            f"Latency in ms, as the client sees it; ratios against {RESERVE} measured in the same rounds.\n"
        )
        print(
            table(
                [
                    "function",
                    "p50 seq",
                    "p99 seq",
                    "req/s seq",
                    f"p50 x{args.clients}",
                    f"p99 x{args.clients}",
                    f"req/s x{args.clients}",
                    "function CPU ms/req",
                    "emulator CPU ms/req",
                    "statuses",
                ],
                rows,
            )
        )
        gen_rt, floor_rt = sum(gen_counts.values()) / rt_requests, sum(floor_counts.values()) / rt_requests
        print(
            f"\nFirestore round trips per call, counted in-process over {rt_requests} warm calls each ({gen_ok} generates answered 200):\n"
        )
        print(
            table(
                ["function", "round trips / call", "by RPC"],
                [
                    [
                        "generate",
                        f"{gen_rt:g} ({ratio(gen_rt, floor_rt)})",
                        describe(gen_counts, rt_requests),
                    ],
                    [RESERVE, f"{floor_rt:g}", describe(floor_counts, rt_requests)],
                ],
            )
        )
        lookup_ms = median(seq["generate_lookup_each"].latencies) - median(seq["generate"].latencies)
        lookup_ms_conc = median(conc["generate_lookup_each"].latencies) - median(conc["generate"].latencies)
        print(
            f"\nAccount check (disabled / revoked), lookup on every request minus cached, p50: sequential {ms(lookup_ms)} ms "
            f"({ratio(lookup_ms, median(base_seq.latencies))} of the floor's p50), {args.clients} clients {ms(lookup_ms_conc)} ms "
            f"({ratio(lookup_ms_conc, median(base_conc.latencies))})."
        )
        model_seq = median(seq["generate"].latencies) / median(seq[DATA_MODEL].latencies)
        model_conc = median(conc["generate"].latencies) / median(conc[DATA_MODEL].latencies)
        print(
            f"\ngenerate against {DATA_MODEL} (the same round trips writing the data model's seven documents, "
            f"without the token check, consent, validation and logs): p50 {model_seq:.2f}x sequential, "
            f"{model_conc:.2f}x with {args.clients} clients; {DATA_MODEL} itself is "
            f"{median(seq[DATA_MODEL].latencies) / median(base_seq.latencies):.2f}x {RESERVE} sequential."
        )
        p50 = median(seq["generate"].latencies) / median(base_seq.latencies)
        p50_conc = median(conc["generate"].latencies) / median(base_conc.latencies)
        print(
            f"\nTargets: generate p50 <= 1.15x {RESERVE}: {verdict(p50 <= 1.15)} (sequential {p50:.2f}x, {args.clients} clients "
            f"{p50_conc:.2f}x); round trips <= the floor's ({floor_rt:g}): {verdict(gen_rt <= floor_rt and gen_ok == rt_requests)} ({gen_rt:g})."
        )


if __name__ == "__main__":
    main()
