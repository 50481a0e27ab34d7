// What the user reads for every error the backend can answer (docs/API.md's error table) and for
// Firebase Auth's sign-in errors: a sentence, then the next step. `action` names a button the page
// offers for that step (see ACTIONS in main.js). tests/test_web_client.py fails when a code in the
// docs/API.md's table has no entry here.

export const API_ERRORS = {
  invalid_request: {
    text: (b) => `The request was not accepted: ${b.message}`,
    next: "Check what you entered and try again.",
  },
  invalid_signature: {
    text: () => "A payment notification could not be verified, so it was not applied.",
    next: "If a payment does not show up in your balance within a few minutes, contact support.",
  },
  unauthenticated: {
    text: (b) => (b.reason === "stale_sign_in" ? "This step needs a sign-in from the last few minutes." : "Your session has expired."),
    next: (b) => (b.reason === "stale_sign_in" ? "Enter your password and click again." : "Sign in again."),
    action: "signin",
  },
  app_check_required: {
    text: () => "This app could not prove it is the genuine app (no App Check token).",
    next: "Reload the page; if it keeps happening, update your browser or contact support.",
  },
  app_check_invalid: {
    text: () => "This app's App Check token was refused.",
    next: "Reload the page and try again.",
  },
  insufficient_credits: {
    text: (b) => `You need ${b.required} credits but have ${b.balance}.`,
    next: "Buy credits to continue.",
    action: "buy",
  },
  consent_required: {
    text: () => "You have not accepted the current terms yet.",
    next: "Accept the terms to continue.",
    action: "terms",
  },
  project_not_found: {
    text: () => "That project no longer exists (projects are deleted after a period without activity).",
    next: "Start a new project.",
    action: "new-project",
  },
  not_found: {
    text: () => "That was not found.",
    next: "Reload the page and try again.",
    action: "reload",
  },
  method_not_allowed: {
    text: () => "The app sent a request the server does not support.",
    next: "Reload the page; if it keeps happening, contact support.",
    action: "reload",
  },
  in_progress: {
    text: () => "Your previous click is still being processed.",
    next: "Wait a few seconds; the result appears here, or try again.",
  },
  payload_too_large: {
    text: () => "What you sent is too long.",
    next: "Shorten the prompt and try again.",
  },
  unsupported_media_type: {
    text: () => "The app sent data in a form the server cannot read.",
    next: "Reload the page and try again.",
    action: "reload",
  },
  already_subscribed: {
    text: () => "You already have a subscription.",
    next: "Change or cancel it with \"Manage subscription\".",
    action: "manage",
  },
  no_customer: {
    text: () => "There is no billing account for you yet.",
    next: "Subscribe to a plan or buy a pack first.",
  },
  idempotency_key_reused: {
    text: () => "This click was already sent with different content.",
    next: "Click the button again to send it as a new request.",
  },
  generation_failed: {
    text: (b) =>
      `The generation failed${b.reason ? ` (${b.reason})` : ""}. Your ${b.refunded} credits were refunded; your balance is ${b.balance}.`,
    next: "Try again, perhaps with another prompt.",
  },
  upstream_failed: {
    text: () => "The payment provider could not be reached; nothing was bought.",
    next: "Try again in a minute.",
    action: "buy",
  },
  unavailable: {
    text: () => "The service is temporarily unavailable; nothing was charged.",
    next: "Try again in a moment.",
  },
  model_unavailable: {
    text: () => "The image model is overloaded or failing right now; nothing was charged.",
    next: "Try again in a minute.",
  },
  busy: {
    text: () => "The service is busy right now; nothing was charged.",
    next: "Try again in a few seconds.",
  },
  rate_limited: {
    text: () => "Too many attempts in a short time.",
    next: "Wait a minute, then try again.",
  },
  internal: {
    text: () => "Something went wrong on our side.",
    next: "Try again; if it keeps happening, contact support.",
  },
  network_error: {
    text: () => "The server could not be reached.",
    next: "Check your connection and try again.",
  },
};

const AUTH_ERRORS = {
  "auth/email-already-in-use": ["An account with this email already exists.", "Sign in instead."],
  "auth/invalid-email": ["That email address is not valid.", "Check it and try again."],
  "auth/weak-password": ["That password is too short.", "Use at least 6 characters."],
  "auth/missing-password": ["The password is empty.", "Enter a password."],
  "auth/invalid-credential": ["The email or password is wrong.", "Check them, or sign up for a new account."],
  "auth/user-not-found": ["There is no account with this email.", "Sign up instead."],
  "auth/wrong-password": ["The password is wrong.", "Check it and try again."],
  "auth/too-many-requests": ["Too many attempts.", "Wait a minute, then try again."],
  "auth/network-request-failed": ["The sign-in service could not be reached.", "Check your connection and try again."],
};

/** {text, next, action} for an ApiError (by its `error` code) or a Firebase Auth error. */
export function describe(err) {
  if (err && typeof err.code === "string" && err.code.startsWith("auth/")) {
    const [text, next] = AUTH_ERRORS[err.code] || ["Signing in failed.", "Try again."];
    return { text, next };
  }
  const entry = API_ERRORS[err?.code] || API_ERRORS.internal;
  const body = err?.body || {};
  const next = typeof entry.next === "function" ? entry.next(body) : entry.next;
  const action = body.reason === "stale_sign_in" ? undefined : entry.action;
  return { text: entry.text(body), next, action };
}
