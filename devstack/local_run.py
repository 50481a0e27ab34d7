"""The whole stack on this machine, and a scripted journey through it, as a client app would do it.

    scripts/run-local                         # start, run the journey, stop
    scripts/run-local --serve                 # start, run the journey, keep serving until Ctrl-C or SIGTERM
    scripts/run-local --serve --no-journey    # start and serve (the web client, the functions)

Starts the Firestore emulator (gcloud), the Auth emulator (firebase-tools), and every function
under the real `functions-framework` CLI on 127.0.0.1, with the offline model provider, and serves
the web client (web/public) on its own port, whose origin is in ALLOWED_ORIGINS. The Stripe double
hosts a local checkout page whose "Pay" delivers the signed events to stripe_webhook, a portal page
(billing_portal's URL) and a test clock for subscriptions; PLANS offers the `pro` and `max` plans. No
cloud account and no keys. Everything started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from devstack import stripe_events
from devstack.auth import AuthEmulator
from devstack.firestore import FirestoreEmulator
from devstack.serve import ServedFunction
from devstack.stripe_double import StripeDouble
from devstack.web import WebClient, client_config
from functions.lib.config import DEFAULT_CREDIT_PACKS

PROJECT = "demo-credits-local"
TERMS = "2026-11-01"
# The functions the stack serves: the web client's, then Stripe's and the scheduler's.
CLIENT_TARGETS = ("catalog", "generate", "consent", "credits", "checkout", "billing_portal", "account")
TARGETS = (*CLIENT_TARGETS, "stripe_webhook", "retention_sweep")
# `stripe listen` prints its own whsec_...; pass it in to forward real test-mode events here.
WEBHOOK_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET") or "whsec_local_stack"
# The plans on sale locally (PLANS): credits per monthly period, up to `rollover` unspent ones carried
# into the next; `amount` (cents) is what the Stripe double charges for the price.
PLANS: dict[str, dict[str, Any]] = {
    "pro": {"price": "price_pro_1000", "credits": 1000, "rollover": 200, "amount": 1900, "currency": "usd"},
    "max": {"price": "price_max_3000", "credits": 3000, "amount": 4900, "currency": "usd"},
}
# What the Stripe double charges (cents) for each built-in pack's one-time price; the page shows
# these, read by `sync-catalog` into catalog/current and served by `catalog`.
PACK_AMOUNTS = {"starter": 500, "creator": 1900, "studio": 4900}


class Stack:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._stops: list[Callable[[], None]] = []
        self.functions: dict[str, ServedFunction] = {}
        self.env: dict[str, str] = {}
        self.grants: dict[str, dict[str, Any]] = {}  # the journey's last look at its live grants

    def start(self) -> None:
        step("starting the Firestore emulator (google-cloud-cli)")
        firestore = FirestoreEmulator(PROJECT, log_dir=self.log_dir)
        self._stops.append(firestore.stop)
        step(f"  Firestore on {firestore.host}")
        step("starting the Firebase Auth emulator (firebase-tools)")
        self.auth = AuthEmulator(PROJECT, log_dir=self.log_dir)
        self._stops.append(self.auth.stop)
        step(f"  Auth on {self.auth.host}")
        self.stripe = StripeDouble(
            hosted=True,
            webhook_secret=WEBHOOK_SECRET,
            prices={
                **{str(DEFAULT_CREDIT_PACKS[pack]["price"]): amount for pack, amount in PACK_AMOUNTS.items()},
                **{plan["price"]: plan["amount"] for plan in PLANS.values()},
            },
            intervals={plan["price"]: "month" for plan in PLANS.values()},
            plan_names={plan["price"]: plan_id for plan_id, plan in PLANS.items()},
        ).start()
        self._stops.append(self.stripe.stop)
        step(f"  Stripe API double on {self.stripe.url} (checkout talks to it instead of api.stripe.com)")
        self.web = WebClient()
        self._stops.append(self.web.stop)
        self.env = {
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "FIRESTORE_EMULATOR_HOST": firestore.host,
            "FIREBASE_AUTH_EMULATOR_HOST": self.auth.host,
            "GENERATOR": "offline",
            "TERMS_VERSION": TERMS,
            "STRIPE_SECRET_KEY": "sk_test_local_stack",
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRIPE_API_BASE": self.stripe.url,
            "ALLOWED_ORIGINS": self.web.origin,
            "PLANS": json.dumps(PLANS),
        }
        os.environ.update(self.env)
        step("serving the functions with functions-framework")
        starting = [ServedFunction(t, env=self.env, log_dir=self.log_dir, wait=False) for t in TARGETS]
        self._stops.extend(fn.stop for fn in starting)
        for fn in starting:
            fn.wait_ready()
            self.functions[fn.target] = fn
            step(f"  {fn.target:<16} {fn.url}")
        self.stripe.webhook_url = self.functions["stripe_webhook"].url + "/"
        urls = {target: fn.url + "/" for target, fn in self.functions.items() if target != "retention_sweep"}
        self.web.config = client_config(PROJECT, self.auth.host, urls)
        step(f"  web client       {self.web.url}")
        step("reading the prices from the Stripe double into catalog/current (what `catalog` serves)")
        operator(self, "sync-catalog")

    def stop(self) -> None:
        for stop in reversed(self._stops):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                print(f"warning: stop failed: {exc}", file=sys.stderr)
        self._stops.clear()

    def call(
        self,
        target: str,
        method: str,
        token: str | None,
        body: dict[str, Any] | bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.functions[target].url + "/", data=data, headers=hdrs, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


def step(message: str) -> None:
    print(message, flush=True)


# Every call the journey made, in order: what `--report FILE` writes for the end-to-end test.
TRANSCRIPT: list[dict[str, Any]] = []


def show(label: str, status: int, body: dict[str, Any]) -> None:
    TRANSCRIPT.append({"step": label, "status": status, "body": body})
    brief = {k: v for k, v in body.items() if k != "transactions"}
    print(f"  {label:<44} -> {status} {json.dumps(brief)[:150]}", flush=True)


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(f"journey failed: {what}")


def buy_credits(stack: Stack, uid: str, token: str) -> None:
    """Checkout, then Stripe's signed webhook delivery of the paid session (delivered twice)."""
    origin = stack.web.origin
    request = {"packId": "creator", "successUrl": f"{origin}/paid", "cancelUrl": f"{origin}/cancelled"}
    status, session = stack.call("checkout", "POST", token, request)
    show("checkout: the 'creator' pack (500 credits)", status, session)
    expect(status == 200 and session["sessionId"].startswith("cs_"), "checkout should create a session")
    # The buyer pays on Stripe's page; Stripe then calls the webhook with a signed event.
    event = stripe_events.checkout_completed(session["sessionId"], uid, "creator", stripe_events.new_id("pi"))
    for label in ("webhook: checkout.session.completed (paid)", "webhook: the same event redelivered"):
        body, headers = stripe_events.delivery(event, WEBHOOK_SECRET)
        status, ack = stack.call("stripe_webhook", "POST", None, body, headers)
        show(label, status, ack)
        expect(status == 200, "the webhook should accept a signed delivery")
    status, ack = stack.call(
        "stripe_webhook", "POST", None, stripe_events.encode(event), {"Stripe-Signature": "t=1,v1=forged"}
    )
    show("webhook: a forged signature", status, ack)
    expect(status == 400, "a forged delivery should be refused")


# The journey's flash promotion expires this many seconds after it is granted.
FLASH_S = 4


def operator(stack: Stack, *argv: str) -> None:
    """An operator command against the local stack (`python -m functions.admin ...`), as one would type it."""
    import subprocess

    print(f"  $ python -m functions.admin {shlex.join(argv)}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "functions.admin", *argv],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    for line in (done.stdout + done.stderr).strip().splitlines():
        print(f"      {line}", flush=True)
    expect(done.returncode == 0, f"operator command {argv[0]} should succeed")


def show_grants(stack: Stack, token: str, label: str) -> dict[str, int]:
    """The caller's live grants, printed in spend order; {id: remaining}."""
    status, body = stack.call("credits", "GET", token)
    show(label, status, body)
    stack.grants = {g["id"]: g for g in body["grants"]}
    for g in body["grants"]:
        print(
            f"      {g['id']:<28} {g['remaining']:>4} of {g['amount']:<4} {g['category']:<11} "
            f"expires {g['expiresAt'] or 'never'}",
            flush=True,
        )
    return {g["id"]: g["remaining"] for g in body["grants"]}


def show_ledger(body: dict[str, Any]) -> None:
    for entry in body["transactions"]:
        print(
            f"      {entry['type']:<9} {entry['amount']:>+5}  balance after {entry['balanceAfter']:>4}"
            f"  {entry.get('grantId') or _draws(entry)}",
            flush=True,
        )


def pay_on_hosted_page(url: str) -> int:
    """The buyer's click on the double's hosted "Pay": the status (303 to the success URL when paid)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=60)
    conn.request("POST", parts.path, body=b"", headers={"Content-Type": "application/x-www-form-urlencoded"})
    status = conn.getresponse().status
    conn.close()
    return status


def show_deliveries(stage: str, deliveries: list[dict[str, Any]]) -> None:
    for d in deliveries:
        answer = d["answer"] if isinstance(d["answer"], dict) else {"answer": d["answer"]}
        show(f"{stage} webhook: {d['type']}", d["status"], answer)


def subscribe_and_renew(stack: Stack, token: str, balance: int) -> dict[str, Any]:
    """Subscribe to `pro` through its hosted checkout, spend from the period's grant, then renew once
    on the double's test clock: the next period's grant, up to 200 carried, the rest written off."""
    plan = PLANS["pro"]
    step(
        f"\nsubscription: the 'pro' plan ({plan['credits']} credits a month, up to {plan['rollover']} carried over)"
    )
    origin = stack.web.origin
    request = {"planId": "pro", "successUrl": f"{origin}/?checkout=success", "cancelUrl": f"{origin}/"}
    status, session = stack.call("checkout", "POST", token, request)
    show("checkout: the 'pro' plan", status, session)
    expect(status == 200 and session["sessionId"].startswith("cs_"), "checkout should create a session")
    seen = len(stack.stripe.deliveries)
    status = pay_on_hosted_page(session["url"])
    print(
        f"  paid on the double's checkout page -> {status}; Stripe's events, signed, in its order:",
        flush=True,
    )
    expect(status == 303, "paying a subscription session should return to the success URL")
    show_deliveries("subscribe", stack.stripe.deliveries[seen:])
    expect(
        all(d["status"] == 200 for d in stack.stripe.deliveries[seen:]), "the webhook should take every event"
    )
    status, body = stack.call("checkout", "POST", token, request)
    show("checkout: the plan again (already subscribed)", status, body)
    expect(status == 409 and body["error"] == "already_subscribed", "a second subscription is refused")

    status, body = stack.call("credits", "GET", token)
    show("credits: the subscription", status, body)
    sub = body["subscription"]
    expect(status == 200 and sub is not None and sub["status"] == "active", "the subscription should be live")
    print(f"      {sub['id']} {sub['planId']} {sub['status']}, renews {sub['currentPeriodEnd']}", flush=True)
    grants = show_grants(stack, token, "credits: the first period's grant, spent first")
    [first] = [g for g in grants if g.startswith("period_")]
    expect(
        grants[first] == plan["credits"] and sum(grants.values()) == balance + plan["credits"], "1000 granted"
    )

    status, body = stack.call("generate", "POST", token, {"prompt": "a comet over the bay"})
    show("generate: on the plan's credits (50)", status, body)
    project_id = body["projectId"]
    status, body = stack.call(
        "generate", "POST", token, {"prompt": "with a meteor shower", "projectId": project_id}
    )
    show("generate: iteration (25)", status, body)
    expect(status == 200, "the iteration should be charged")
    grants = show_grants(stack, token, "credits: the period's grant paid for both")
    expect(grants[first] == plan["credits"] - 75, "the expiring period grant is spent before the pack")

    seen = len(stack.stripe.deliveries)
    clock = f"{stack.stripe.url}/_clock/subscriptions/{sub['id']}/renew"
    print(f"  $ curl -X POST {clock}   # the test clock reaches the period's end", flush=True)
    with urllib.request.urlopen(urllib.request.Request(clock, data=b"", method="POST"), timeout=60) as res:
        renewed = json.loads(res.read())
    show_deliveries("renewal", renewed["deliveries"])
    expect([d["status"] for d in renewed["deliveries"]] == [200] * 5, "the renewal's five events are taken")
    grants = show_grants(stack, token, "credits: the new period and the rollover")
    [second] = [g for g in grants if g.startswith("period_")]
    [rollover] = [g for g in grants if g.startswith("rollover_")]
    expect(second != first and grants[second] == plan["credits"], "the new period grants 1000")
    expect(grants[rollover] == plan["rollover"], "200 of the 925 left carried over")

    status, body = stack.call("credits", "GET", token)
    show("credits: balance and ledger after the renewal", status, body)
    show_ledger(body)
    # The first period's 925 left end with it (an expiry entry); 200 of them come back as the
    # rollover grant, so 725 are written off.
    ended = [e["amount"] for e in body["transactions"] if e["type"] == "expiry" and e["grantId"] == first]
    carried = [e["amount"] for e in body["transactions"] if e["type"] == "rollover"]
    expect(ended == [-(plan["credits"] - 75)] and carried == [plan["rollover"]], "925 ended, 200 carried")
    print(
        f"      carried {carried[0]} of the {-ended[0]} left; {-ended[0] - carried[0]} written off",
        flush=True,
    )
    expect(body["balance"] == sum(e["amount"] for e in body["transactions"]), "balance = ledger sum")
    return body


def _draws(entry: dict[str, Any]) -> str:
    draws = entry.get("metadata", {}).get("draws")
    return "drew " + ", ".join(f"{n} from {gid}" for gid, n in draws.items()) if draws else ""


def journey(stack: Stack) -> None:
    step(
        "\njourney: a new user signs up, accepts the terms, buys credits, generates, iterates, fails once,"
        " subscribes to a plan and renews it once"
    )
    uid, token = stack.auth.sign_up(f"user{int(time.time())}@example.com", "correct-horse-battery")
    print(f"  signed up with the Auth emulator: uid {uid}", flush=True)

    status, body = stack.call("generate", "POST", token, {"prompt": "a lighthouse at dusk"})
    show("generate before accepting the terms", status, body)
    expect(status == 403, "generate without consent should be 403")

    status, body = stack.call("consent", "POST", token, {"version": TERMS})
    show("consent: accept the current terms", status, body)
    expect(status == 200 and body["accepted"], "consent should be accepted")

    status, body = stack.call("generate", "POST", token, {"prompt": "a lighthouse at dusk"})
    show("generate with no credits", status, body)
    expect(status == 402 and body["shortfall"] == 50, "generate with 0 credits should be 402")

    # Grants: a promotion that expires in seconds, and one that lasts: each comes as its own grant.
    operator(
        stack,
        "grant",
        uid,
        "20",
        "--id",
        "flash",
        "--reason",
        "flash sale",
        "--expires-in-days",
        f"{FLASH_S / 86400}",
    )
    operator(stack, "grant", uid, "30", "--id", "welcome", "--reason", "welcome", "--expires-in-days", "30")
    buy_credits(stack, uid, token)
    show_grants(stack, token, "credits: three live grants (two promotional, the pack)")
    flash_expires = datetime.fromisoformat(stack.grants["grant_flash"]["expiresAt"])
    wait = (flash_expires - datetime.now(UTC)).total_seconds() + 0.5
    print(f"  ... waiting {wait:.1f} s for the flash grant to expire", flush=True)
    time.sleep(max(0.0, wait))

    status, body = stack.call(
        "generate", "POST", token, {"prompt": "a lighthouse at dusk"}, {"Idempotency-Key": "first"}
    )
    show("generate: initial (50 credits)", status, body)
    expect(status == 200 and body["creditsCharged"] == 50, "initial generation should charge 50")
    project_id = body["projectId"]
    grants = show_grants(stack, token, "credits: the expired flash grant written off, welcome spent first")
    [(pack_grant, left)] = grants.items()
    expect(
        pack_grant.startswith("purchase_") and left == 480, "welcome (30) then 20 of the pack; flash expired"
    )

    status, again = stack.call(
        "generate", "POST", token, {"prompt": "a lighthouse at dusk"}, {"Idempotency-Key": "first"}
    )
    show("same Idempotency-Key again (no new charge)", status, again)
    expect(status == 200 and again["balance"] == body["balance"], "replay should not charge again")

    status, body = stack.call(
        "generate", "POST", token, {"prompt": "now with storm clouds", "projectId": project_id}
    )
    show("generate: iteration (25 credits)", status, body)
    expect(status == 200 and body["creditsCharged"] == 25, "iteration should charge 25")

    status, body = stack.call(
        "generate", "POST", token, {"prompt": "make it fail #fail", "projectId": project_id}
    )
    show("generate: the model fails (refunded)", status, body)
    expect(status == 502 and body["refunded"] == 25, "a failed generation should be refunded")
    expect(body["balance"] == 455, "500 bought + 50 granted - 20 expired - 50 - 25 - 25 + 25 refunded = 455")

    status, body = stack.call("credits", "GET", token)
    show("credits: balance and ledger", status, body)
    show_ledger(body)
    expect(any(e["type"] == "expiry" and e["amount"] == -20 for e in body["transactions"]), "an expiry entry")
    expect(
        status == 200 and body["balance"] == sum(e["amount"] for e in body["transactions"]),
        "balance should equal the ledger sum",
    )
    final = body

    status, body = stack.call("retention_sweep", "POST", None, {})
    show("retention_sweep: one nightly pass", status, body)
    expect(
        status == 200 and body["complete"] and body["refundsSettled"] == 0,
        "the sweep should finish with nothing to settle",
    )
    final = subscribe_and_renew(stack, token, final["balance"])
    operator(stack, "status")  # what an operator sees now: the sweep's run, nothing open
    step(
        f"\njourney complete: balance {final['balance']} = sum of {len(final['transactions'])} ledger entries"
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--serve", action="store_true", help="keep the stack running after the journey, until Ctrl-C"
    )
    parser.add_argument(
        "--no-journey", action="store_true", help="skip the scripted journey (with --serve: just serve)"
    )
    parser.add_argument(
        "--report", type=Path, help="write every call of the journey (step, status, body) to this JSON file"
    )
    args = parser.parse_args(argv)
    # `kill` (SIGTERM) stops everything as Ctrl-C does: without this Python dies at once, and the
    # emulators and functions, each in its own process group, keep running and holding their ports.
    signal.signal(signal.SIGTERM, _interrupt)
    log_dir = Path(tempfile.mkdtemp(prefix="credits-local-"))
    step(f"logs: {log_dir}")
    stack = Stack(log_dir)
    passed = False
    try:
        stack.start()
        if not args.no_journey:
            journey(stack)
            passed = not args.serve
        if args.serve:
            step("\nserving; try:")
            for target, fn in stack.functions.items():
                step(f"  {target:<16} {fn.url}")
            step(
                "to serve a function or run an operator command by hand, in another shell (docs/DEVELOPING.md):"
            )
            step("  export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in stack.env.items()))
            step(f"web client: {stack.web.url}  (open it in a browser; sign up with any email)")
            step("Ctrl-C (or SIGTERM) stops everything.")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        step("stopping everything this run started")
        stack.stop()
        if passed:  # a failed or served run keeps its logs to read
            shutil.rmtree(log_dir, ignore_errors=True)
            step(f"the journey passed: removed its logs ({log_dir})")
        else:
            step(f"logs kept in {log_dir}")
        if args.report is not None:
            args.report.write_text(json.dumps({"steps": TRANSCRIPT, "stopped": True}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
