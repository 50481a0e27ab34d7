"""The reference web client (web/): what it may call, what it tells the user, and the whole journey
in a real headless Chromium (Debian's, driven by Playwright) against the local stack of
`scripts/run-local`: sign up, 403 then accept, 402 then buy through the Stripe double's checkout
page, generate (a 409 retried with the same Idempotency-Key), iterate, a failed generation refunded,
the ledger table equal to `credits`, sign out (the cached prompts and outputs go) and in again,
export, erase (the cache goes again); the page's Content-Security-Policy blocks nothing on the way.
A subscriber picks a plan (credits per period, price), pays on the double's checkout page, sees the
plan's status, renewal date and period grant, then cancels at period end in the double's portal and
sees that after Stripe's event. A second user's page lists their grants in spend order with each one's remaining and expiry in
words, spends an operator's expiring promotional grant before a pack, and labels granted, voided and
expired entries in the ledger.

On failure a screenshot is saved under .local/browser/. `UPDATE_WEB_SCREENSHOT=1 scripts/test
tests/test_web_client.py` also writes the README's docs/web-client.png from the journey's end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
import yaml

from devstack.local_run import TERMS, Stack, buy_credits

# Minutes of the suite's time (browsers, served stacks, emulator start-ups): `scripts/test --fast` skips them.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "web" / "src"
SPEC: dict[str, Any] = yaml.safe_load((ROOT / "openapi.yaml").read_text())
ARTIFACTS = ROOT / ".local" / "browser"
README_SHOT = ROOT / "docs" / "web-client.png"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct-horse-battery"


def calls_in_source() -> set[tuple[str, str]]:
    """Every `request("<function>", "<METHOD>"` in the page's source: the only way it calls the backend."""
    calls = set()
    for path in SRC.glob("*.js"):
        calls |= {
            (fn, method) for fn, method in re.findall(r'request\("(\w+)", "([A-Z]+)"', path.read_text())
        }
    return calls


def readme_error_codes() -> set[str]:
    readme = (ROOT / "docs" / "API.md").read_text()
    table = readme.split("## Errors", 1)[1]
    rows = [line for line in table.splitlines() if re.match(r"\|\s*\d{3}\s*\|", line)]
    return {code for row in rows for code in re.findall(r"`(\w+)`", row.split("|")[2])}


def client_error_codes() -> set[str]:
    return set(re.findall(r"^  (\w+): \{$", (SRC / "errors.js").read_text(), re.MULTILINE))


@pytest.mark.no_emulator
def test_the_page_calls_only_documented_paths_and_methods() -> None:
    calls = calls_in_source()

    assert {fn for fn, _ in calls} >= {"generate", "consent", "credits", "checkout", "account"}
    undocumented = {(fn, m) for fn, m in calls if m.lower() not in SPEC["paths"].get(f"/{fn}", {})}
    assert not undocumented, f"web/src calls what openapi.yaml does not document: {undocumented}"


@pytest.mark.no_emulator
def test_every_error_code_gets_a_sentence_and_a_next_step() -> None:
    readme_codes = readme_error_codes()
    spec_codes = set(SPEC["components"]["schemas"]["Error"]["properties"]["error"]["enum"])

    assert {"insufficient_credits", "consent_required", "in_progress", "busy"} <= readme_codes
    missing = (readme_codes | spec_codes) - client_error_codes()
    assert not missing, f"add a sentence and a next step for {sorted(missing)} to web/src/errors.js"


# ---- the browser journey


@pytest.fixture(scope="module")
def stack(emulator: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The local stack of `scripts/run-local --serve`, web client included; os.environ restored after.
    After `emulator`, whose session settings the restore must keep (every test here starts it anyway)."""
    saved = dict(os.environ)
    for key in [
        k
        for k in os.environ
        if k.startswith(("FIRESTORE_EMULATOR", "FIREBASE_AUTH_EMULATOR", "STRIPE_", "GEMINI_"))
    ]:
        del os.environ[key]
    local = Stack(tmp_path_factory.mktemp("web-stack"))
    try:
        local.start()
        yield local
    finally:
        local.stop()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is not installed: run scripts/setup"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@contextlib.contextmanager
def screenshot_on_failure(page: Any, name: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / f"{name}-failure.png"
        with contextlib.suppress(Exception):
            page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot of the failure: {shot}")
        raise


class Traffic:
    """What the page sent to the functions: (function, method, status, Idempotency-Key), in order."""

    def __init__(self, stack: Stack) -> None:
        self.by_origin = {fn.url: target for target, fn in stack.functions.items()}
        self.allowed_origins = {
            *self.by_origin,
            stack.web.origin,
            stack.stripe.url,
            f"http://{stack.auth.host}",
        }
        self.calls: list[tuple[str, str, int, str | None]] = []
        self.elsewhere: list[str] = []

    def on_response(self, response: Any) -> None:
        parts = urlsplit(response.url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in self.allowed_origins and parts.scheme in ("http", "https"):
            self.elsewhere.append(response.url)
        target = self.by_origin.get(origin)
        if target is not None and response.request.method != "OPTIONS":
            key = response.request.headers.get("idempotency-key")
            self.calls.append((target, response.request.method, response.status, key))

    def statuses(self, target: str) -> list[int]:
        return [status for fn, _, status, _ in self.calls if fn == target]


def notice(page: Any, kind: str) -> str:
    page.wait_for_selector(f"#notice[data-kind='{kind}']")
    return str(page.inner_text("#notice"))


def sign_in(page: Any, email: str, button: str) -> None:
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click(button)
    page.wait_for_selector("body[data-ready='signed-in']")


def wait_for_balance(page: Any, balance: int) -> None:
    page.wait_for_function("b => document.getElementById('balance').textContent === String(b)", arg=balance)


def ledger_rows(page: Any) -> list[tuple[str, int, int, str]]:
    """The ledger table as (entry type, amount, balance after, entry id), newest first."""
    rows = page.eval_on_selector_all(
        "#ledger-body tr",
        "rows => rows.map(r => [r.dataset.type, ...[...r.querySelectorAll('td')].map(td => td.textContent)])",
    )
    return [(type_, int(amount), int(after), ref) for type_, _, _, amount, after, ref in rows]


def ledger_labels(page: Any) -> list[str]:
    """The ledger's Type column as the user reads it, newest first."""
    return [
        str(t)
        for t in page.eval_on_selector_all("#ledger-body td.type", "els => els.map(e => e.textContent)")
    ]


def grants_shown(page: Any) -> list[dict[str, Any]]:
    """The page's list of live grants, top first: id, category, remaining, its sentence, the expiry's
    `<time datetime>` (None for a grant that never expires) and the details line."""
    return list(
        page.eval_on_selector_all(
            "#grants li",
            """items => items.map(li => ({
                id: li.dataset.grant,
                category: li.dataset.category,
                remaining: Number(li.dataset.remaining),
                text: li.querySelector('.what').textContent,
                expiresAt: li.querySelector('time')?.getAttribute('datetime') ?? null,
                details: li.querySelector('.details').textContent,
            }))""",
        )
    )


def operator(stack: Stack, *args: str) -> str:
    """`python -m functions.admin ARGS` against the stack's emulators: the operator's own path."""
    done = subprocess.run(
        [sys.executable, "-m", "functions.admin", *args],
        cwd=ROOT,
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def answer_409_once(page: Any, url: str, origin: str, keys: list[str]) -> None:
    """The first generate after this answers 409 in_progress with Retry-After: 1; later ones go through."""

    def handle(route: Any) -> None:
        if route.request.method == "POST" and not keys:
            keys.append(route.request.headers.get("idempotency-key"))
            headers = {
                "Retry-After": "1",
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Expose-Headers": "Retry-After",
            }
            body = {"error": "in_progress", "message": "This request is still being processed."}
            route.fulfill(status=409, headers=headers, content_type="application/json", body=json.dumps(body))
        else:
            route.fallback()

    page.route(url, handle)


def stored(page: Any) -> str:
    """Everything the page's origin keeps in localStorage and sessionStorage, keys and values."""
    return str(page.evaluate("() => JSON.stringify([{...localStorage}, {...sessionStorage}])"))


def outputs(page: Any) -> list[str]:
    return [
        str(text) for text in page.eval_on_selector_all(".project pre", "els => els.map(e => e.textContent)")
    ]


def watch_csp(page: Any) -> list[str]:
    """Every Content-Security-Policy violation on any page this tab shows, as the browser reports it."""
    violations: list[str] = []
    page.expose_function("reportCspViolation", lambda text: violations.append(text))
    page.add_init_script(
        "document.addEventListener('securitypolicyviolation', e =>"
        " window.reportCspViolation(`${e.effectiveDirective} ${e.blockedURI} on ${location.origin}`))"
    )
    page.on(
        "console",
        lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    return violations


def watched_page(stack: Stack, browser: Any) -> tuple[Any, Any, Traffic, list[str]]:
    """A new browser context and page whose calls to the functions and CSP violations are recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(15_000)
    traffic = Traffic(stack)
    page.on("response", traffic.on_response)
    return context, page, traffic, watch_csp(page)


def test_the_whole_journey_in_a_real_browser(stack: Stack, browser: Any) -> None:
    started = time.monotonic()
    context, page, traffic, csp_violations = watched_page(stack, browser)
    email = "ada@example.com"  # the stack, its Auth emulator included, is this module's own
    generate_url = stack.functions["generate"].url + "/"

    with screenshot_on_failure(page, "journey"):
        page.goto(stack.web.url)
        page.wait_for_selector("body[data-ready='signed-out']")
        policy = page.get_attribute("meta[http-equiv='Content-Security-Policy']", "content") or ""
        assert "default-src 'none'" in policy and "script-src 'self';" in policy
        sign_in(page, email, "#sign-up")
        wait_for_balance(page, 0)

        page.fill("#prompt", "a lighthouse at dusk")
        page.click("#generate")
        assert "accepted the current terms" in notice(page, "error")
        assert page.get_attribute("#notice-action", "data-action") == "terms"
        page.click("#notice-action")
        assert "You accepted the terms" in notice(page, "ok")

        page.click("#generate")
        assert "You need 50 credits but have 0." in notice(page, "error")
        assert page.get_attribute("#notice-action", "data-action") == "buy"
        page.click("#notice-action")
        page.click("button[data-pack='creator']")
        page.wait_for_selector("#pay")  # the Stripe double's hosted checkout page
        page.click("#pay")
        assert "Payment received: 500 credits were added." in notice(page, "ok")
        wait_for_balance(page, 500)
        assert page.input_value("#prompt") == "a lighthouse at dusk"

        refused_keys: list[str] = []
        answer_409_once(page, generate_url, stack.web.origin, refused_keys)
        page.click("#generate")
        page.wait_for_selector(".project .version")
        wait_for_balance(page, 450)
        page.fill(".iterate-prompt", "now with storm clouds")
        page.click(".iterate")
        page.wait_for_selector(".project .version >> nth=1")
        wait_for_balance(page, 425)
        page.fill(".iterate-prompt", "make it fail #fail")
        page.click(".iterate")
        failed = notice(page, "error")
        assert "Your 25 credits were refunded; your balance is 425." in failed
        wait_for_balance(page, 425)
        assert page.locator(".project .version").count() == 2
        page.wait_for_selector("#ledger-body tr >> nth=4")
        rows = ledger_rows(page)

        _, token = stack.auth.sign_in(email, PASSWORD)
        status, credits = stack.call("credits", "GET", token)
        assert status == 200 and credits["balance"] == 425
        assert rows == [(t["type"], t["amount"], t["balanceAfter"], t["id"]) for t in credits["transactions"]]
        assert [r[0] for r in rows] == ["refund", "charge", "charge", "charge", "purchase"]
        assert ledger_labels(page) == ["refunded", "spent", "spent", "spent", "purchased"]
        [pack] = grants_shown(page)
        assert (pack["text"], pack["expiresAt"]) == ("425 credits, never expire", None)
        assert pack["details"] == "75 of 500 spent · bought: the creator pack"
        assert not page.is_visible("#debt")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-client.png"))
        if os.environ.get("UPDATE_WEB_SCREENSHOT") == "1":
            README_SHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(README_SHOT))

        # Signed in, the page caches the user's prompts and outputs; signed out, it keeps none.
        cached = ["a lighthouse at dusk", "now with storm clouds", *outputs(page)]
        assert all(text in stored(page) for text in cached)
        page.click("#sign-out")
        page.wait_for_selector("body[data-ready='signed-out']")
        assert not any(text in stored(page) for text in cached), stored(page)
        assert "credits-client." not in stored(page) and not outputs(page)
        sign_in(page, email, "#sign-in")
        wait_for_balance(page, 425)
        assert page.locator(".project .version").count() == 0  # the cache went with the sign-out
        page.fill("#prompt", "a harbour at dawn")
        page.click("#generate")
        page.wait_for_selector(".project .version")
        wait_for_balance(page, 375)
        cached = ["a harbour at dawn", *outputs(page)]
        assert all(text in stored(page) for text in cached)

        with page.expect_download() as download:
            page.click("#export")
        exported = json.loads(Path(download.value.path()).read_text())
        assert "Your data was downloaded as my-data.json (ledger entries: 6, projects: 2)." in notice(
            page, "ok"
        )
        exported_ids = {e["id"] for e in exported["ledger"]}
        assert len(exported_ids) == 6 and {r[3] for r in rows} < exported_ids
        page.fill("#erase-password", PASSWORD)
        page.click("#erase")
        page.wait_for_selector("body[data-ready='signed-out']")
        assert "Your account was deleted; 375 unused credits were forfeited." in notice(page, "ok")
        assert not any(text in stored(page) for text in cached), stored(page)
        assert "credits-client." not in stored(page) and not outputs(page)
        page.fill("#email", email)
        page.fill("#password", PASSWORD)
        page.click("#sign-in")
        notice(page, "error")
        assert page.get_attribute("body", "data-ready") == "signed-out"

    context.close()
    generates = [(status, key) for fn, _, status, key in traffic.calls if fn == "generate"]
    assert [status for status, _ in generates] == [403, 402, 409, 200, 200, 502, 200]
    keys = [key for _, key in generates]
    assert refused_keys == [keys[2]] and keys[2] == keys[3], (
        "the 409 retry reuses its click's Idempotency-Key"
    )
    assert len(set(keys)) == 6 and None not in keys, "one Idempotency-Key per click"
    assert traffic.statuses("checkout") == [200]
    assert [(m, s) for fn, m, s, _ in traffic.calls if fn == "account"] == [("GET", 200), ("DELETE", 200)]
    undocumented = {(fn, m) for fn, m, _, _ in traffic.calls if m.lower() not in SPEC["paths"][f"/{fn}"]}
    assert not undocumented and not traffic.elsewhere
    assert not csp_violations, f"the Content-Security-Policy blocked: {csp_violations}"
    print(f"browser journey: {time.monotonic() - started:.1f} s")


def test_grants_in_spend_order_with_their_expiry_promotional_spent_first(stack: Stack, browser: Any) -> None:
    # A browser in German on New Zealand time: the page writes dates in British English regardless,
    # in the browser's time zone.
    zone = "Pacific/Auckland"
    context = browser.new_context(viewport={"width": 1280, "height": 860}, locale="de-DE", timezone_id=zone)
    page = context.new_page()
    page.set_default_timeout(15_000)
    csp_violations = watch_csp(page)
    email = "grace@example.com"
    uid, token = stack.auth.sign_up(email, PASSWORD)
    assert stack.call("consent", "POST", token, {"version": TERMS})[0] == 200
    buy_credits(stack, uid, token)  # the creator pack: 500 paid credits that never expire
    operator(stack, "grant", uid, "120", "--id", "launch-week", "--reason", "launch week promotion",
             "--category", "promotional", "--expires-in-days", "7")  # fmt: skip
    operator(
        stack, "grant", uid, "40", "--id", "welcome", "--reason", "welcome gift", "--category", "promotional"
    )

    with screenshot_on_failure(page, "grants"):
        page.goto(stack.web.url)
        page.wait_for_selector("body[data-ready='signed-out']")
        sign_in(page, email, "#sign-in")
        wait_for_balance(page, 660)
        status, credits = stack.call("credits", "GET", token)
        assert status == 200 and credits["debt"] == 0 and credits["subscription"] is None
        shown = grants_shown(page)
        pack_id = credits["grants"][2]["id"]
        assert (
            [(g["id"], g["category"], g["remaining"]) for g in shown]
            == [
                ("grant_launch-week", "promotional", 120),
                ("grant_welcome", "promotional", 40),
                (pack_id, "paid", 500),
            ]
            == [(g["id"], g["category"], g["remaining"]) for g in credits["grants"]]
        )
        week = credits["grants"][0]["expiresAt"]
        assert week and shown[0]["expiresAt"] == week
        ends = datetime.fromisoformat(week).astimezone(ZoneInfo(zone))
        # "120 promotional credits expire on 11 Dec" (a year only when it is not this one's)
        assert re.fullmatch(
            rf"120 promotional credits expire on {ends.day} {ends:%b}[a-z]?( {ends.year})?", shown[0]["text"]
        ), shown[0]["text"]
        assert shown[0]["details"] == "given by us"
        assert [g["text"] for g in shown[1:]] == [
            "40 promotional credits, never expire",
            "500 credits, never expire",
        ]
        assert ledger_labels(page) == ["granted", "granted", "purchased"]

        # A new project (50) and an iteration (25) are paid from the expiring promotional grant; the
        # never-expiring promotional one and the pack are untouched.
        page.fill("#prompt", "a windmill in the rain")
        page.click("#generate")
        wait_for_balance(page, 610)
        page.wait_for_selector("#grants li[data-remaining='70']")
        assert [g["remaining"] for g in grants_shown(page)] == [70, 40, 500]
        page.fill(".iterate-prompt", "at night")
        page.click(".iterate")
        wait_for_balance(page, 585)
        page.wait_for_selector("#grants li[data-remaining='45']")
        shown = grants_shown(page)
        assert [g["remaining"] for g in shown] == [45, 40, 500]
        assert shown[0]["text"].startswith("45 promotional credits expire on ")
        assert shown[0]["details"] == "75 of 120 spent · given by us"

        # The operator voids the welcome grant, and a 3-second grant runs out before the page reloads.
        operator(stack, "void", uid, "grant_welcome", "--reason", "granted by mistake")
        operator(stack, "grant", uid, "10", "--id", "flash", "--reason", "flash sale",
                 "--category", "promotional", "--expires-in-days", str(3 / 86400))  # fmt: skip
        time.sleep(3.5)
        page.reload()
        page.wait_for_selector("body[data-ready='signed-in']")
        wait_for_balance(page, 545)
        assert [(g["id"], g["remaining"]) for g in grants_shown(page)] == [
            ("grant_launch-week", 45),
            (pack_id, 500),
        ]
        rows = ledger_rows(page)
        assert [(t, amount) for t, amount, _, _ in rows[:3]] == [
            ("expiry", -10),
            ("grant", 10),
            ("void", -40),
        ]
        assert ledger_labels(page)[:3] == ["expired", "granted", "voided"]
        status, credits = stack.call("credits", "GET", token)
        assert rows == [(t["type"], t["amount"], t["balanceAfter"], t["id"]) for t in credits["transactions"]]
        assert not page.is_visible("#debt")

    context.close()
    assert not csp_violations, f"the Content-Security-Policy blocked: {csp_violations}"


def test_packs_and_plans_are_priced_from_the_catalog(stack: Stack, browser: Any) -> None:
    """The prices shown are the Stripe double's, as `sync-catalog` stored them and `catalog` serves
    them (config.json names no packs or plans); without the catalog the page says so."""
    status, catalog = stack.call("catalog", "GET", None)
    assert status == 200 and catalog["syncedAt"], catalog
    creator = catalog["packs"]["creator"]
    assert (creator["amount"], creator["currency"]) == (stack.stripe.prices[creator["price"]], "usd")
    assert creator["amount"] == 1900 and catalog["plans"]["max"]["amount"] == 4900
    assert not {"packs", "plans"} & set(stack.web.config)

    context, page, _, csp_violations = watched_page(stack, browser)
    with screenshot_on_failure(page, "catalog"):
        page.goto(stack.web.url)
        page.wait_for_selector("body[data-ready='signed-out']")
        stack.auth.sign_up("lin@example.com", PASSWORD)
        sign_in(page, "lin@example.com", "#sign-in")
        wait_for_balance(page, 0)
        packs = {
            pack: page.inner_text(f"button[data-pack='{pack}'] .price")
            for pack in ("starter", "creator", "studio")
        }
        assert packs == {"starter": "US$5.00", "creator": "US$19.00", "studio": "US$49.00"}, packs
        assert "500 credits" in page.inner_text("button[data-pack='creator']")
        assert page.inner_text("button[data-plan='max'] .price") == "US$49.00 / month"
        assert not page.is_visible("#packs-error") and not page.is_visible("#plans-error")
    assert not csp_violations, f"the Content-Security-Policy blocked: {csp_violations}"
    context.close()

    context, page, _, csp_violations = watched_page(stack, browser)
    with screenshot_on_failure(page, "catalog-down"):
        catalog_url = stack.functions["catalog"].url + "/"
        page.route(
            catalog_url,
            lambda route: route.fulfill(
                status=503, json={"error": "unavailable"}, headers={"Access-Control-Allow-Origin": "*"}
            ),
        )
        page.goto(stack.web.url)
        page.wait_for_selector("body[data-ready='signed-out']")
        sign_in(page, "lin@example.com", "#sign-in")
        wait_for_balance(page, 0)
        assert "could not be loaded" in page.inner_text("#packs-error")
        assert "could not be loaded" in page.inner_text("#plans-error")
        assert page.locator("button[data-pack]").count() == 0
    assert not csp_violations, f"the Content-Security-Policy blocked: {csp_violations}"
    context.close()


def test_subscribe_to_a_plan_then_cancel_it_at_period_end_in_the_portal(stack: Stack, browser: Any) -> None:
    context, page, traffic, csp_violations = watched_page(stack, browser)
    email = "kim@example.com"
    _, token = stack.auth.sign_up(email, PASSWORD)
    assert stack.call("consent", "POST", token, {"version": TERMS})[0] == 200

    with screenshot_on_failure(page, "subscription"):
        page.goto(stack.web.url)
        page.wait_for_selector("body[data-ready='signed-out']")
        sign_in(page, email, "#sign-in")
        wait_for_balance(page, 0)
        assert not page.is_visible("#subscription")
        pro = page.inner_text("button[data-plan='pro']")
        assert "1000 credits a month, up to 200 unused carried over" in pro and "US$19.00 / month" in pro, pro
        assert "3000 credits a month" in page.inner_text("button[data-plan='max']")

        page.fill("#prompt", "a tram in the snow")
        page.click("button[data-plan='pro']")
        page.wait_for_selector("#pay")  # the Stripe double's hosted checkout page, subscription mode
        assert "pro" in page.inner_text("#plan")
        page.click("#pay")
        assert "You subscribed to the pro plan: 1000 credits for this period were added." in notice(
            page, "ok"
        )
        wait_for_balance(page, 1000)
        assert page.input_value("#prompt") == "a tram in the snow"
        status, credits = stack.call("credits", "GET", token)
        sub = credits["subscription"]
        assert status == 200 and (sub["planId"], sub["status"]) == ("pro", "active")
        page.wait_for_selector("#subscription[data-status='active']")
        text = page.inner_text("#subscription-text")
        assert text.startswith("Your plan: pro (active). Renews on "), text
        assert page.get_attribute("#subscription-text time", "datetime") == sub["currentPeriodEnd"]
        assert not page.is_visible("#plans")
        [grant] = grants_shown(page)
        assert grant["expiresAt"] == credits["grants"][0]["expiresAt"] and grant["text"].startswith(
            "1000 credits expire on "
        )
        assert grant["details"] == "your plan's credits for this period"
        assert ledger_labels(page) == ["plan period"]

        page.click("#manage")
        page.wait_for_selector("#cancel-at-period-end")  # the double's portal page
        assert page.url.startswith(stack.stripe.url + "/p/session/")
        assert "Renews on" in page.inner_text(".sub .state")
        page.click("#cancel-at-period-end")
        page.wait_for_selector("#resume")
        assert "Cancels on" in page.inner_text(".sub .state")
        page.click("#return")
        page.wait_for_selector("body[data-ready='signed-in']")
        page.wait_for_selector("#subscription[data-cancel-at-period-end='true']")
        assert "Cancels on " in page.inner_text("#subscription-text")
        wait_for_balance(page, 1000)
        status, credits = stack.call("credits", "GET", token)
        assert credits["subscription"]["cancelAtPeriodEnd"] is True
        # The prompt survived the trip to the portal, and its draft left the browser's storage.
        assert page.input_value("#prompt") == "a tram in the snow"
        assert "credits-client.draft" not in stored(page)

        # A second subscription is refused while this one lives; the notice offers the portal.
        status, body = stack.call(
            "checkout",
            "POST",
            token,
            {"planId": "max", "successUrl": stack.web.url, "cancelUrl": stack.web.url},
        )
        assert (status, body["error"]) == (409, "already_subscribed")

    context.close()
    assert [(m, s) for fn, m, s, _ in traffic.calls if fn == "checkout"] == [("POST", 200)]
    assert [(m, s) for fn, m, s, _ in traffic.calls if fn == "billing_portal"] == [("POST", 200)]
    undocumented = {(fn, m) for fn, m, _, _ in traffic.calls if m.lower() not in SPEC["paths"][f"/{fn}"]}
    assert not undocumented and not traffic.elsewhere
    assert not csp_violations, f"the Content-Security-Policy blocked: {csp_violations}"
