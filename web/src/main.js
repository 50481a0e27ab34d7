// The reference client: Firebase Auth (email and password) and the credits functions, no framework.
// config.json (served beside this page) names the Firebase project, the Auth emulator when local,
// each function's URL; the packs and plans on sale, with their prices, come from the `catalog` function.

import { initializeApp } from "firebase/app";
import {
  EmailAuthProvider,
  browserLocalPersistence,
  browserSessionPersistence,
  connectAuthEmulator,
  createUserWithEmailAndPassword,
  indexedDBLocalPersistence,
  initializeAuth,
  onAuthStateChanged,
  reauthenticateWithCredential,
  signInWithEmailAndPassword,
  signOut,
} from "firebase/auth";

import { ApiError, createApi, newIdempotencyKey } from "./api.js";
import { describe } from "./errors.js";

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
};

let auth;
let api;
let projects = [];
// Everything this page keeps in the browser's storage starts with this prefix.
const CACHE_PREFIX = "credits-client.";
const DRAFT_KEY = `${CACHE_PREFIX}draft`;

// Prompts and outputs are cached on this device for the signed-in user only: a signed-out page (after
// signing out, an erasure, or a session that ended elsewhere) keeps none for the next person to read.
function clearCache() {
  for (const storage of [localStorage, sessionStorage]) {
    for (let i = storage.length - 1; i >= 0; i--) {
      const key = storage.key(i);
      if (key?.startsWith(CACHE_PREFIX)) storage.removeItem(key);
    }
  }
}

// ---- notices: one line of what happened and, for errors, the next step with a button for it

const ACTIONS = {
  buy: ["Buy credits", () => focusPanel("buy-panel")],
  manage: ["Manage subscription", () => manageSubscription()],
  terms: ["Accept the terms", () => acceptTerms()],
  signin: ["Sign in again", () => signOut(auth)],
  "new-project": ["Start a new project", () => focusPanel("generate-panel")],
  reload: ["Reload", () => location.reload()],
};

function notify(kind, text, next = "", action = undefined) {
  const box = $("notice");
  box.hidden = false;
  box.className = `notice ${kind}`;
  box.dataset.kind = kind;
  $("notice-text").textContent = text;
  $("notice-next").textContent = next;
  const button = $("notice-action");
  button.hidden = !action;
  if (action) {
    const [label, run] = ACTIONS[action];
    button.textContent = label;
    button.dataset.action = action;
    button.onclick = () => run();
  }
}

function notifyError(err) {
  if (!(err instanceof ApiError) && !String(err?.code || "").startsWith("auth/")) console.error(err);
  const { text, next, action } = describe(err);
  notify("error", text, next, action);
  if (err instanceof ApiError && err.code === "consent_required") $("terms-panel").hidden = false;
}

function focusPanel(id) {
  const panel = $(id);
  panel.classList.add("highlight");
  panel.scrollIntoView({ behavior: "smooth", block: "center" });
  panel.querySelector("button, textarea, input")?.focus();
  setTimeout(() => panel.classList.remove("highlight"), 2000);
}

/** Run one user action with its buttons disabled, so one click sends one request (one Idempotency-Key). */
async function busy(buttons, work) {
  buttons.forEach((b) => (b.disabled = true));
  document.body.classList.add("working");
  try {
    await work();
  } catch (err) {
    notifyError(err);
  } finally {
    buttons.forEach((b) => (b.disabled = false));
    document.body.classList.remove("working");
  }
}

// ---- account state

function showBalance(balance) {
  $("balance").textContent = String(balance);
}

// Dates are written day-month in British English whatever the browser's language ("3 Jan"), in the
// browser's time zone; the year only when it is not this one. <time datetime> keeps the exact instant.
const DATE_LOCALE = "en-GB";
const DAY_MONTH = new Intl.DateTimeFormat(DATE_LOCALE, { day: "numeric", month: "short" });
const DAY_MONTH_YEAR = new Intl.DateTimeFormat(DATE_LOCALE, { day: "numeric", month: "short", year: "numeric" });
const HOUR_MINUTE = new Intl.DateTimeFormat(DATE_LOCALE, { hour: "2-digit", minute: "2-digit" });

function dateNode(iso) {
  const when = new Date(iso);
  const now = new Date();
  let text = (when.getFullYear() === now.getFullYear() ? DAY_MONTH : DAY_MONTH_YEAR).format(when);
  if (when - now < 2 * 24 * 3600 * 1000) text += ` at ${HOUR_MINUTE.format(when)}`; // soon: the hour matters
  return el("time", { dateTime: iso, title: when.toString() }, text);
}

const plural = (n, one, many) => (n === 1 ? one : many);

// Where a grant came from, in words; its `source` is pack:<id>, subscription:<id>, operator, signup or
// legacy (a subscription's rollover grant has an id starting rollover_).
function sourceText(source, id = "") {
  if (source?.startsWith("pack:")) return `bought: the ${source.slice(5)} pack`;
  if (source?.startsWith("subscription:")) {
    return id.startsWith("rollover_") ? "carried over from your plan's last period" : "your plan's credits for this period";
  }
  return { operator: "given by us", signup: "sign-up bonus", legacy: "your earlier balance" }[source] || "";
}

/** One live grant in plain words: "120 credits expire on 3 Jan", "40 promotional credits, never expire". */
function grantItem(g) {
  const kind = g.category === "promotional" ? "promotional " : "";
  const what = `${g.remaining} ${kind}${plural(g.remaining, "credit", "credits")}`;
  const when = g.expiresAt
    ? [` ${plural(g.remaining, "expires", "expire")} on `, dateNode(g.expiresAt)]
    : [`, never ${plural(g.remaining, "expires", "expire")}`];
  const details = [g.remaining < g.amount ? `${g.amount - g.remaining} of ${g.amount} spent` : "", sourceText(g.source, g.id)];
  const item = el(
    "li",
    { className: `grant ${g.category}` },
    el("span", { className: "what" }, what, ...when),
    el("span", { className: "muted details" }, details.filter(Boolean).join(" · ")),
  );
  Object.assign(item.dataset, { grant: g.id, category: g.category, remaining: String(g.remaining) });
  return item;
}

function showGrants(grants, debt) {
  // The backend lists live grants in the order they are spent: the next charge draws from the first.
  $("grants").replaceChildren(...grants.map(grantItem));
  $("grants-empty").hidden = grants.length > 0 || debt < 0;
  $("debt").hidden = !(debt < 0);
  $("debt").textContent =
    debt < 0
      ? `You owe ${-debt} ${plural(-debt, "credit", "credits")}: a payment was refunded after its credits were spent. Your next credits repay this first.`
      : "";
}

// The ledger's entry types in words; a type this page does not know yet shows as it is.
const ENTRY_LABELS = {
  purchase: "purchased",
  charge: "spent",
  refund: "refunded",
  reversal: "reversed",
  reinstatement: "reinstated",
  grant: "granted",
  forfeit: "forfeited",
  expiry: "expired",
  void: "voided",
  period: "plan period",
  rollover: "rolled over",
};

async function refreshCredits() {
  const { balance, transactions, grants = [], debt = 0, subscription = null } = await api.credits();
  showBalance(balance);
  showGrants(grants, debt);
  showSubscription(subscription);
  const rows = transactions.map((t) => {
    const row = el(
      "tr",
      { className: t.amount < 0 ? "debit" : "credit" },
      el("td", {}, t.createdAt ? new Date(t.createdAt).toLocaleString([], { dateStyle: "short", timeStyle: "medium" }) : "…"),
      el("td", { className: "type", title: t.type }, ENTRY_LABELS[t.type] || t.type),
      el("td", { className: "amount" }, (t.amount > 0 ? "+" : "") + t.amount),
      el("td", { className: "after" }, String(t.balanceAfter)),
      el("td", { className: "ref" }, t.id),
    );
    row.dataset.type = t.type;
    return row;
  });
  $("ledger-body").replaceChildren(...rows);
  $("ledger-empty").hidden = rows.length > 0;
}

async function refreshTerms() {
  const terms = await api.consent();
  $("terms-version").textContent = terms.version;
  $("terms-panel").hidden = terms.accepted;
  $("terms-state").textContent = terms.accepted ? `Terms ${terms.version} accepted.` : "";
  return terms;
}

async function acceptTerms() {
  await busy([$("accept-terms"), $("notice-action")], async () => {
    const { version } = await api.consent();
    await api.acceptTerms(version);
    await refreshTerms();
    notify("ok", `You accepted the terms (version ${version}).`, "You can generate once you have credits.");
  });
}

// ---- plans: a subscription by Stripe Checkout, managed in Stripe's billing portal

const STATUS_TEXT = {
  active: "active",
  trialing: "on trial",
  past_due: "payment overdue: update your card in \"Manage subscription\"",
  incomplete: "waiting for the first payment",
  unpaid: "unpaid",
  canceled: "canceled",
};

function price(amount, currency) {
  return new Intl.NumberFormat(DATE_LOCALE, { style: "currency", currency: currency.toUpperCase() }).format(amount / 100);
}

// amount and currency are null while the operator has not synced the catalog: no price is shown then.
const priced = (entry) => Number.isInteger(entry.amount) && typeof entry.currency === "string";

function renderPlans(plans = {}) {
  const buttons = Object.entries(plans).map(([planId, plan]) => {
    const per = plan.interval || "month";
    const details = [`${plan.credits} credits a ${per}`];
    if (plan.rollover) details.push(`up to ${plan.rollover} unused carried over`);
    const button = el("button", { className: "plan", type: "button" }, el("strong", {}, planId), el("span", {}, details.join(", ")));
    if (priced(plan)) button.append(el("span", { className: "price" }, `${price(plan.amount, plan.currency)} / ${per}`));
    button.dataset.plan = planId;
    button.onclick = () => subscribe(planId, button);
    return button;
  });
  $("plans").replaceChildren(...buttons);
  $("plans-empty").hidden = buttons.length > 0;
}

/** The live subscription (or none): its plan, status and renewal (or end) date; the plans otherwise. */
function showSubscription(sub) {
  const box = $("subscription");
  box.hidden = !sub;
  $("plans").hidden = Boolean(sub);
  if (!sub) return;
  const ends = sub.currentPeriodEnd;
  const when = ends ? [sub.cancelAtPeriodEnd ? ". Cancels on " : ". Renews on ", dateNode(ends), "."] : ["."];
  $("subscription-text").replaceChildren(
    "Your plan: ",
    el("strong", {}, sub.planId || "?"),
    ` (${STATUS_TEXT[sub.status] || sub.status})`,
    ...when,
  );
  Object.assign(box.dataset, { status: sub.status, cancelAtPeriodEnd: String(sub.cancelAtPeriodEnd) });
}

async function subscribe(planId, button) {
  await busy([button], async () => {
    const here = location.origin + location.pathname;
    const { url } = await api.subscribe(planId, `${here}?checkout=subscribed`, `${here}?checkout=cancelled`, newIdempotencyKey());
    sessionStorage.setItem(DRAFT_KEY, $("prompt").value);
    location.assign(url);
  });
}

async function manageSubscription() {
  await busy([$("manage"), $("notice-action")], async () => {
    const { url } = await api.billingPortal(location.origin + location.pathname);
    sessionStorage.setItem(DRAFT_KEY, $("prompt").value);
    location.assign(url);
  });
}

// ---- buying credits: Stripe Checkout, then back here

function renderPacks(packs) {
  const buttons = Object.entries(packs).map(([packId, pack]) => {
    const button = el("button", { className: "pack", type: "button" }, el("strong", {}, packId), el("span", {}, `${pack.credits} credits`));
    if (priced(pack)) button.append(el("span", { className: "price" }, price(pack.amount, pack.currency)));
    button.dataset.pack = packId;
    button.onclick = () => buy(packId, button);
    return button;
  });
  $("packs").replaceChildren(...buttons);
  $("packs-empty").hidden = buttons.length > 0;
}

/** The packs and plans on sale from `catalog` (public, no token); a message in their place when it fails. */
async function loadCatalog() {
  try {
    const { packs, plans } = await api.catalog();
    renderPacks(packs || {});
    renderPlans(plans || {});
  } catch (err) {
    console.error(err);
    for (const kind of ["packs", "plans"]) {
      $(kind).replaceChildren();
      $(`${kind}-empty`).hidden = true;
      $(`${kind}-error`).hidden = false;
    }
  }
}

async function buy(packId, button) {
  await busy([button], async () => {
    const here = location.origin + location.pathname;
    const { url } = await api.checkout(packId, `${here}?checkout=success`, `${here}?checkout=cancelled`, newIdempotencyKey());
    sessionStorage.setItem(DRAFT_KEY, $("prompt").value); // the prompt survives the trip to Stripe
    location.assign(url);
  });
}

async function afterCheckout() {
  const outcome = new URLSearchParams(location.search).get("checkout");
  if (!outcome) return;
  history.replaceState(null, "", location.pathname);
  if (outcome === "cancelled") {
    notify("info", "Checkout was cancelled; nothing was charged.");
    return;
  }
  if (outcome === "subscribed") {
    // The period's credits come with the first invoice's payment, which Stripe reports on its own schedule.
    for (let i = 0; i < 10; i++) {
      const { transactions, subscription } = await api.credits();
      const period = transactions.find((t) => t.type === "period");
      if (subscription && period) {
        await refreshCredits();
        notify("ok", `You subscribed to the ${subscription.planId} plan: ${period.amount} credits for this period were added.`, "You can generate now.");
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    notify("info", "Subscribed; your plan's credits will appear in a moment.", "Reload the page to check your balance.");
    return;
  }
  // Stripe calls the webhook on its own schedule: wait briefly for the purchase to show in the ledger.
  for (let i = 0; i < 10; i++) {
    const { transactions } = await api.credits();
    const purchase = transactions.find((t) => t.type === "purchase");
    if (purchase) {
      notify("ok", `Payment received: ${purchase.amount} credits were added.`, "You can generate now.");
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  notify("info", "Payment received; your credits will appear in a moment.", "Reload the page to check your balance.");
}

// ---- generating: a new project, then iterations on it

function storageKey() {
  return `${CACHE_PREFIX}projects.${auth.currentUser.uid}`;
}

function saveProjects() {
  localStorage.setItem(storageKey(), JSON.stringify(projects));
}

function renderProjects() {
  const cards = projects.map((project) => {
    const versions = project.versions.map((v, i) =>
      el(
        "li",
        { className: "version" },
        el("span", { className: "label" }, `v${i + 1} · ${v.creditsCharged} credits`),
        el("q", {}, v.prompt),
        el("pre", {}, v.output),
      ),
    );
    const input = el("input", { type: "text", placeholder: "Change something…", className: "iterate-prompt" });
    const button = el("button", { type: "button", className: "iterate" }, "Iterate (25 credits)");
    button.onclick = () => generate(input.value, project.projectId, button);
    const card = el(
      "article",
      { className: "project" },
      el("h3", {}, `Project ${project.projectId.slice(0, 12)}`),
      el("ol", {}, ...versions),
      el("div", { className: "row" }, input, button),
    );
    card.dataset.project = project.projectId;
    return card;
  });
  $("projects").replaceChildren(...cards);
}

async function generate(prompt, projectId, button) {
  if (!prompt.trim()) {
    notify("error", "The prompt is empty.", "Describe what to generate.");
    return;
  }
  const key = newIdempotencyKey(); // one per click; the retries of this click reuse it
  await busy([button], async () => {
    try {
      const result = await api.generate(prompt, projectId, key);
      let project = projects.find((p) => p.projectId === result.projectId);
      if (!project) {
        project = { projectId: result.projectId, versions: [] };
        projects.unshift(project);
      }
      project.versions.push({ versionId: result.versionId, prompt, output: result.output, creditsCharged: result.creditsCharged });
      saveProjects();
      renderProjects();
      showBalance(result.balance);
      notify("ok", `Generated: ${result.creditsCharged} credits charged; your balance is ${result.balance}.`);
    } catch (err) {
      if (err instanceof ApiError && err.code === "generation_failed") showBalance(err.body.balance);
      throw err;
    } finally {
      await refreshCredits().catch(() => {});
    }
  });
}

// ---- your data: export (account GET) and erasure (account DELETE)

async function exportData() {
  await busy([$("export")], async () => {
    const data = await api.exportAccount();
    const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
    const link = el("a", { href: URL.createObjectURL(blob), download: "my-data.json" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
    notify("ok", `Your data was downloaded as my-data.json (ledger entries: ${data.ledger.length}, projects: ${data.projects.length}).`);
  });
}

async function eraseAccount() {
  const password = $("erase-password").value;
  if (!password) {
    notify("error", "Deleting your account needs your password.", "Enter it, then click again.");
    return;
  }
  await busy([$("erase")], async () => {
    const user = auth.currentUser;
    // The backend erases only for a sign-in from the last few minutes: sign in again first.
    await reauthenticateWithCredential(user, EmailAuthProvider.credential(user.email, password));
    const report = await api.eraseAccount();
    clearCache();
    $("erase-password").value = "";
    await signOut(auth);
    const forfeited = report.creditsForfeited > 0 ? `; ${report.creditsForfeited} unused credits were forfeited` : "";
    notify("ok", `Your account was deleted${forfeited}.`, "Your ledger is kept under a pseudonym, as accounting requires.");
  });
}

// ---- signing in

async function signInOrUp(create) {
  const email = $("email").value.trim();
  const password = $("password").value;
  $("notice").hidden = true;
  await busy([$("sign-in"), $("sign-up")], async () => {
    await (create ? createUserWithEmailAndPassword : signInWithEmailAndPassword)(auth, email, password);
  });
}

async function onSignedIn(user) {
  $("auth-panel").hidden = true;
  $("app").hidden = false;
  $("who").hidden = false;
  $("user-email").textContent = user.email;
  projects = JSON.parse(localStorage.getItem(storageKey()) || "[]");
  $("prompt").value ||= sessionStorage.getItem(DRAFT_KEY) || "";
  sessionStorage.removeItem(DRAFT_KEY);
  renderProjects();
  await Promise.all([refreshTerms(), refreshCredits()]);
  await afterCheckout();
}

function onSignedOut() {
  $("auth-panel").hidden = false;
  $("app").hidden = true;
  $("who").hidden = true;
  projects = [];
  renderProjects();
  $("prompt").value = "";
  clearCache();
}

async function start() {
  const config = await (await fetch("config.json")).json();
  const app = initializeApp(config.firebase);
  // getAuth() would also set up sign-in by popup or redirect, which loads Google scripts and frames
  // this page never needs (email and password only) and its Content-Security-Policy does not allow.
  auth = initializeAuth(app, {
    persistence: [indexedDBLocalPersistence, browserLocalPersistence, browserSessionPersistence],
  });
  if (config.authEmulator) connectAuthEmulator(auth, config.authEmulator, { disableWarnings: true });
  api = createApi({
    urls: config.functions,
    getToken: (refresh) => auth.currentUser.getIdToken(refresh),
    onWait: (body, seconds) => notify("info", `Still working on it (${body.error}); retrying in ${seconds} s…`),
  });
  const catalogLoaded = loadCatalog();

  $("auth-form").onsubmit = (e) => e.preventDefault();
  $("sign-up").onclick = () => signInOrUp(true);
  $("sign-in").onclick = () => signInOrUp(false);
  $("sign-out").onclick = () => {
    $("notice").hidden = true;
    signOut(auth);
  };
  $("manage").onclick = () => manageSubscription();
  $("export").onclick = () => exportData();
  $("erase").onclick = () => eraseAccount();
  $("accept-terms").onclick = () => acceptTerms();
  $("generate").onclick = () => generate($("prompt").value, null, $("generate"));

  onAuthStateChanged(auth, (user) => {
    (user ? onSignedIn(user) : Promise.resolve(onSignedOut()))
      .catch(notifyError)
      .finally(() => catalogLoaded)
      .finally(() => {
        document.body.dataset.ready = user ? "signed-in" : "signed-out";
      });
  });
}

start().catch((err) => {
  console.error(err);
  notify("error", "The page could not start.", "Reload the page; if it keeps happening, contact support.", "reload");
});
