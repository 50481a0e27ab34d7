"""Webhook storm: signed deliveries of paid Checkout Sessions, each delivered twice, shuffled, concurrent.

    python -m bench.bench_webhook_storm [--sessions 500] [--users 100] [--clients 8] [--chunks 4]

Every session is delivered twice: half as the same event redelivered, half as the two event types
that carry one session (`checkout.session.completed` then `async_payment_succeeded`). Deliveries are
signed with the real scheme (devstack.stripe_events) at send time and POSTed to a served
`stripe_webhook`; a non-2xx answer is delivered again, as Stripe does, and counted. The same bodies,
in the same order and concurrency, go to `floor_create` (one `create()` per delivery). The run is
cut into chunks that alternate which function goes first, so drift hits both alike.

Checked afterwards, from Firestore: exactly one purchase entry per session, the total credited equals
the catalog's credits of the 500 packs, and every balance equals its ledger sum.

Target (issue 6): webhook throughput >= 0.5x the floor's, with exactly 500 purchases credited.
"""

from __future__ import annotations

import argparse
import json
import random
import uuid
from collections import Counter
from collections.abc import Callable

from bench.harness import (
    FLOOR_SOURCE,
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
    table,
    verdict,
)
from devstack import stripe_events

PACKS = {"starter": 100, "creator": 500, "studio": 1500}  # the built-in catalog (functions.lib.config)
MAX_REDELIVERIES = 20


def deliveries(
    sessions: int, users: int, rng: random.Random
) -> tuple[list[bytes], dict[str, int], dict[str, str]]:
    """Shuffled event bodies (two per session), the credits each user should end with, and each session's uid."""
    bodies: list[bytes] = []
    expected: Counter[str] = Counter()
    owner: dict[str, str] = {}
    uids = [f"storm-{i}-{uuid.uuid4().hex[:6]}" for i in range(users)]
    for i in range(sessions):
        uid, pack = uids[i % users], rng.choice(sorted(PACKS))
        session_id, intent = stripe_events.new_id("cs_test"), stripe_events.new_id("pi")
        first = stripe_events.checkout_completed(session_id, uid, pack, intent)
        second = first if i % 2 == 0 else stripe_events.async_payment_succeeded(session_id, uid, pack, intent)
        bodies += [stripe_events.encode(first), stripe_events.encode(second)]
        expected[uid] += PACKS[pack]
        owner[session_id] = uid
    rng.shuffle(bodies)
    return bodies, dict(expected), owner


def signed_job(body: bytes, redelivered: list[str]) -> Callable[[Client], Answer]:
    """POST one delivery, signed now; deliver again on a non-2xx answer, as Stripe does."""

    def job(client: Client) -> Answer:
        for _ in range(MAX_REDELIVERIES):
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": stripe_events.sign(body, WEBHOOK_SECRET),
            }
            answer = json_post(client, body, headers)
            if answer.status < 300:
                return answer
            redelivered.append(
                f"{answer.status} {answer.json().get('error', '')}".strip()
            )  # list.append is atomic
        return answer

    return job


def check_ledger(expected: dict[str, int], owner: dict[str, str]) -> tuple[int, int, list[str]]:
    """(purchase entries, credits they add, problems) for the storm's users, read back from Firestore."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    from functions.lib import db, ledger

    client = db.get_client()
    query = client.collection(ledger.LEDGER).where(filter=FieldFilter("type", "==", ledger.PURCHASE))
    purchases = [snap.to_dict() or {} for snap in query.stream()]
    problems = []
    by_session = Counter(p["metadata"]["stripeSessionId"] for p in purchases)
    twice = [s for s, n in by_session.items() if n > 1]
    missing = [s for s in owner if s not in by_session]
    if twice:
        problems.append(f"{len(twice)} sessions credited more than once")
    if missing:
        problems.append(f"{len(missing)} sessions never credited")
    for uid, credits in expected.items():
        user = client.collection(ledger.USERS).document(uid).get()
        balance = int((user.to_dict() or {}).get("credits", 0))
        ledger_sum = sum(p["amount"] for p in purchases if p["userId"] == uid)
        if balance != credits or ledger_sum != credits:
            problems.append(f"{uid}: balance {balance}, ledger sum {ledger_sum}, expected {credits}")
    return len(purchases), sum(p["amount"] for p in purchases), problems


def count_floor_creates() -> int:
    from functions.lib import db

    return sum(1 for _ in db.get_client().collection("floor_purchases").select([]).stream())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--users", type=int, default=100, help="sessions are spread over this many users")
    parser.add_argument("--clients", type=int, default=8, help="concurrent deliveries")
    parser.add_argument("--chunks", type=int, default=4, help="alternating slices of the storm")
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()

    with section("Webhook storm vs floor_create"), Stack() as stack:
        webhook = stack.serve("stripe_webhook", wait=False)
        floor = stack.serve("floor_create", source=FLOOR_SOURCE, wait=False)
        webhook.wait_ready()
        floor.wait_ready()
        bodies, expected, owner = deliveries(args.sessions, args.users, random.Random(args.seed))
        redelivered: list[str] = []
        floor_retried: list[str] = []

        # One warm-up request each, on an event of its own, so neither pays its first-request imports in the storm.
        warm = stripe_events.encode(
            stripe_events.checkout_completed(
                stripe_events.new_id("cs_test"), "storm-warmup", "starter", "pi_w"
            )
        )
        run_load(webhook.url, [signed_job(warm, [])], 1)
        run_load(floor.url, [signed_job(warm, [])], 1)
        expected["storm-warmup"] = PACKS["starter"]

        runs = {"stripe_webhook": Run(), "floor_create": Run()}
        pgids = {"stripe_webhook": webhook.child.pid, "floor_create": floor.child.pid}
        cpu: dict[str, float] = {}
        emulator_cpu: dict[str, float] = {}
        size = -(-len(bodies) // args.chunks)
        for c in range(args.chunks):
            chunk = bodies[c * size : (c + 1) * size]
            order = [("stripe_webhook", webhook.url, redelivered), ("floor_create", floor.url, floor_retried)]
            for name, url, retried in order if c % 2 == 0 else reversed(order):
                progress(
                    f"chunk {c + 1}/{args.chunks}: {name}, {len(chunk)} deliveries over {args.clients} clients"
                )
                with (
                    cpu_meter({name: pgids[name]}, cpu),
                    cpu_meter({name: stack.firestore.child.pid}, emulator_cpu),
                ):
                    runs[name].extend(
                        run_load(url, [signed_job(body, retried) for body in chunk], args.clients)
                    )

        purchases, credited, problems = check_ledger(expected, owner)
        floor_docs = count_floor_creates()
        purchases -= 1  # the warm-up's
        credited -= PACKS["starter"]
        owner_total = sum(v for k, v in expected.items() if k != "storm-warmup")

        outcomes: dict[str, Counter[str]] = {name: Counter() for name in runs}
        for name, run in runs.items():
            for answer in run.answers:
                outcomes[name][answer.json().get("outcome", str(answer.status))] += 1

        base = runs["floor_create"]
        rows = []
        for name, run in runs.items():
            rows.append(
                [
                    name,
                    str(len(run.answers)),
                    f"{run.rate:.1f} ({ratio(run.rate, base.rate)})",
                    f"{ms(median(run.latencies))} ({ratio(median(run.latencies), median(base.latencies))})",
                    f"{ms(pct(run.latencies, 99))} ({ratio(pct(run.latencies, 99), pct(base.latencies, 99))})",
                    f"{ms(cpu[name] / len(run.answers))} ({ratio(cpu[name], cpu['floor_create'])})",
                    f"{ms(emulator_cpu[name] / len(run.answers))} ({ratio(emulator_cpu[name], emulator_cpu['floor_create'])})",
                    json.dumps(dict(sorted(outcomes[name].items()))),
                    json.dumps(
                        dict(
                            sorted(
                                Counter(redelivered if name == "stripe_webhook" else floor_retried).items()
                            )
                        )
                    ),
                ]
            )
        print(
            f"{len(bodies)} signed deliveries of {args.sessions} paid Checkout Sessions for {args.users} users, shuffled, "
            f"{args.clients} concurrent clients, in {args.chunks} chunks alternating which function goes first. "
            "Latency in ms per delivery (a redelivery after a 5xx counts in the same delivery).\n"
        )
        print(
            table(
                [
                    "function",
                    "deliveries",
                    "deliveries/s",
                    "p50 ms",
                    "p99 ms",
                    "function CPU ms/delivery",
                    "emulator CPU ms/delivery",
                    "outcomes",
                    "non-2xx answers (delivered again)",
                ],
                rows,
            )
        )
        exact = purchases == args.sessions and credited == owner_total and not problems
        print(
            f"\nLedger after the storm: {purchases} purchase entries for {args.sessions} sessions; {credited} credits added, "
            f"{owner_total} expected; {len(problems)} problems{': ' + '; '.join(problems[:5]) if problems else ''}. "
            f"floor_purchases documents: {floor_docs} (the warm-up's included)."
        )
        webhook_ratio = runs["stripe_webhook"].rate / base.rate
        print(
            f"\nTarget: throughput >= 0.5x floor_create with exactly {args.sessions} purchases: "
            f"{verdict(webhook_ratio >= 0.5 and exact)} ({webhook_ratio:.2f}x; exactly-once {'held' if exact else 'BROKEN'})."
        )
        if not exact:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
