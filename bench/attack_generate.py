"""The cost attack of issue 19, rerun: what one account with one small pack makes the model and
Firestore do.

    python -m bench.attack_generate [--failing 400] [--upstream 20]

Three runs against one Firestore emulator, one Auth emulator and the Gemini double, through the
real `generate` (functions-framework's Flask stack, in process), each by a fresh user holding 100
credits and the default limits:
- `failing`: calls whose prompt the model blocks (a failure the user can provoke at will);
- `upstream 429`: calls while the model answers 429 (the project's quota exhausted);
- `upstream 5xx`: the same while it answers 500.
For each: the answers by status, the calls that reached the model, the documents left in
Firestore (every collection), the user's balance at the end, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from typing import Any

from bench.harness import Stack, seed_user, token
from devstack.doubles import GeminiDouble

COLLECTIONS = ("credit_transactions", "generations", "analytics_events", "projects", "users", "rate_limits")


def documents(client: Any) -> int:
    return sum(len(list(client.collection(name).select([]).stream())) for name in COLLECTIONS)


def attack(uid: str, mode: str, calls: int, gemini: GeminiDouble) -> dict[str, Any]:
    import functions_framework

    from functions.lib import breaker, config, db, ledger, models

    for cache in (config.get_settings, db.get_client, models.get_provider, breaker.get_breaker):
        cache.cache_clear()  # a fresh instance: its breaker starts closed
    seed_user(uid, 100)
    client = db.get_client()
    before_docs = documents(client)
    gemini.mode, gemini.received = mode, []
    app = functions_framework.create_app(target="generate", source="main.py").test_client()
    headers = {"Authorization": f"Bearer {token(uid)}"}
    started = time.perf_counter()
    statuses = Counter(
        str(app.post("/", json={"prompt": f"attack {n}"}, headers=headers).status_code) for n in range(calls)
    )
    elapsed = time.perf_counter() - started
    return {
        "mode": mode,
        "calls": calls,
        "statuses": dict(sorted(statuses.items())),
        "modelCalls": len(gemini.received),
        "documentsWritten": documents(client) - before_docs,
        "balanceAfter": ledger.balance_of(client.collection("users").document(uid).get()),
        "seconds": round(elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--failing", type=int, default=400)
    parser.add_argument("--upstream", type=int, default=20)
    args = parser.parse_args()
    gemini = GeminiDouble().start()
    with Stack(auth=True):
        os.environ.update({"GENERATOR": "gemini", "GEMINI_API_KEY": "bench", "GEMINI_BASE_URL": gemini.url})
        for name in (
            "GENERATE_LIMIT",
            "GENERATE_CONCURRENCY",
            "CREDITS_LIMIT",
            "CONSENT_LIMIT",
            "EXPORT_LIMIT",
        ):
            os.environ.pop(name)  # the defaults, as deployed
        runs = [
            attack("attacker-blocked", "blocked", args.failing, gemini),
            attack("attacker-429", "error429", args.upstream, gemini),
            attack("attacker-500", "error500", args.upstream, gemini),
        ]
    gemini.stop()
    print("| run | calls | answers | model calls | documents written | balance after | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r['mode']} | {r['calls']} | {json.dumps(r['statuses'])} | {r['modelCalls']} | "
            f"{r['documentsWritten']} | {r['balanceAfter']} | {r['seconds']} |"
        )


if __name__ == "__main__":
    main()
