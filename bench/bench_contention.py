"""Same-user contention: K simultaneous generates on one user, against the same K on K distinct users.

    python -m bench.bench_contention [--ks 1,2,5,10] [--rounds 5]

Each round fires K generates at once (connections opened first, a barrier releases the requests
together) at a served `generate` with an instant model: once on one user holding enough credits for
all of them, once on K users with one generation's worth each. The charge of every generate writes
the user's balance under a precondition, so on one user the K charges serialize through optimistic
retries; on K users nothing contends. Rounds alternate which goes first.

The served process gets more gunicorn threads than the largest K, so all K are in flight at once.
Checked afterwards: every user's balance equals its ledger sum, and each 200 is exactly one charge.

Target (issue 6): no 5xx at any K; exhausted retries would answer 503 `busy` with Retry-After.
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections import Counter
from functools import partial

from bench.harness import (
    Answer,
    Client,
    Run,
    Stack,
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

PROMPT = {"prompt": "the same account, many tabs"}


def generate_as(uids: list[str], client: Client) -> Answer:
    return json_post(client, PROMPT, {"Authorization": f"Bearer {token(uids[client.index])}"})


def outcome(answer: Answer) -> str:
    if answer.status == 200:
        return "200"
    body = answer.json()
    retry = f", Retry-After {answer.headers['retry-after']}" if "retry-after" in answer.headers else ""
    return f"{answer.status} {body.get('error', '')}{retry}"


def check_ledger(uids: list[str], charged: Counter[str]) -> list[str]:
    """Problems: a balance that is not its ledger sum, or charges that do not match the 200s answered."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    from functions.lib import db, ledger

    client = db.get_client()
    problems = []
    for uid in uids:
        entries = [
            s.to_dict() or {}
            for s in client.collection(ledger.LEDGER).where(filter=FieldFilter("userId", "==", uid)).stream()
        ]
        user = client.collection(ledger.USERS).document(uid).get()
        balance = int((user.to_dict() or {}).get("credits", 0))
        if balance != sum(e["amount"] for e in entries) or balance < 0:
            problems.append(f"{uid}: balance {balance} != ledger sum {sum(e['amount'] for e in entries)}")
        charges = sum(1 for e in entries if e["type"] == ledger.CHARGE)
        if charges != charged[uid]:
            problems.append(f"{uid}: {charges} charges for {charged[uid]} answers 200")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,2,5,10")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]

    with section("Same-user contention vs distinct users"), Stack(auth=True) as stack:
        # gunicorn serves THREADS requests at a time (default 4 per core: 8 here); more threads than the
        # largest K keep all K in flight at once, as K instances of the function would be.
        fn = stack.serve("generate", env={"THREADS": str(max(16, *ks))})
        warm_uid = f"warm-{uuid.uuid4().hex[:6]}"
        seed_user(warm_uid, 50)
        run_load(fn.url, [partial(generate_as, [warm_uid])], 1)

        runs: dict[tuple[int, str], Run] = {}
        all_uids: list[str] = []
        charged: Counter[str] = Counter()
        for k in ks:
            for r in range(args.rounds):
                same = [f"same-{k}-{r}-{uuid.uuid4().hex[:6]}"]
                distinct = [f"distinct-{k}-{r}-{i}-{uuid.uuid4().hex[:6]}" for i in range(k)]
                seed_user(same[0], 50 * k)
                for uid in distinct:
                    seed_user(uid, 50)
                all_uids += same + distinct
                modes = [("one user", same * k), ("K users", distinct)]
                progress(f"K={k} round {r + 1}/{args.rounds}")
                for mode, uids in modes if r % 2 == 0 else reversed(modes):
                    run = run_load(fn.url, [partial(generate_as, uids)] * k, k, together=True)
                    runs.setdefault((k, mode), Run()).extend(run)
                    for i, answer in enumerate(run.answers):
                        charged[uids[i]] += answer.status == 200
        problems = check_ledger(all_uids, charged)

        rows = []
        any_5xx = False
        for k in ks:
            base = runs[(k, "K users")]
            for mode in ("one user", "K users"):
                run = runs[(k, mode)]
                outcomes = Counter(outcome(a) for a in run.answers)
                fives = sum(1 for a in run.answers if a.status >= 500)
                busy = sum(1 for a in run.answers if a.status == 503 and a.json().get("error") == "busy")
                any_5xx = any_5xx or fives > 0
                rows.append(
                    [
                        str(k),
                        mode,
                        str(len(run.answers)),
                        json.dumps(dict(sorted(outcomes.items()))),
                        f"{ms(median(run.latencies))} ({ratio(median(run.latencies), median(base.latencies))})",
                        f"{ms(pct(run.latencies, 99))} ({ratio(pct(run.latencies, 99), pct(base.latencies, 99))})",
                        f"{ms(max(run.latencies))}",
                        str(busy),
                        str(fives),
                    ]
                )
        print(
            f"{args.rounds} rounds per K; each round fires K generates at once, on one user and on K users (order alternating). "
            "Latency in ms; ratios against the K-users run of the same K.\n"
        )
        print(
            table(
                [
                    "K",
                    "on",
                    "requests",
                    "outcomes",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "retries exhausted (503 busy)",
                    "5xx",
                ],
                rows,
            )
        )
        print(
            f"\nLedger: {len(all_uids)} users checked, {sum(charged.values())} charges; problems: {'; '.join(problems) or 'none'}."
        )
        print(f"\nTarget: no 5xx at any K: {verdict(not any_5xx)}.")
        if problems:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
