// The one place the page talks to the backend. Each function has its own URL (config.json maps a
// function name to it); `request` sends the Firebase ID token, one Idempotency-Key per user action
// (the caller makes it), and retries what the backend says is worth retrying: 409 `in_progress` and
// 503 (`busy`, `unavailable`) after their Retry-After, a 401 once with a refreshed token.
// tests/test_web_client.py checks every `request("<function>", "<METHOD>"` written here against
// openapi.yaml, so keep calls in that literal form.

export class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
    this.code = body.error || "network_error";
  }
}

const MAX_RETRIES = 3;
const MAX_WAIT_S = 10;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function newIdempotencyKey() {
  return crypto.randomUUID();
}

export function createApi({ urls, getToken, onWait }) {
  async function request(fn, method, body, idempotencyKey) {
    let refreshToken = false;
    for (let attempt = 0; ; attempt++) {
      const headers = { Authorization: `Bearer ${await getToken(refreshToken)}` };
      if (body !== undefined) headers["Content-Type"] = "application/json";
      if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
      let res;
      try {
        res = await fetch(urls[fn], { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
      } catch (err) {
        throw new ApiError(0, { error: "network_error", message: String(err) });
      }
      const data = await res.json().catch(() => ({ error: "internal", message: `HTTP ${res.status}` }));
      if (res.ok) return data;
      const retryAfter = Number(res.headers.get("Retry-After"));
      const retryable = res.status === 409 || res.status === 503;
      if (retryable && attempt < MAX_RETRIES && Number.isFinite(retryAfter) && retryAfter >= 0) {
        const seconds = Math.min(retryAfter, MAX_WAIT_S);
        onWait?.(data, seconds);
        await sleep(seconds * 1000);
        continue;
      }
      if (res.status === 401 && !refreshToken) {
        refreshToken = true;
        continue;
      }
      throw new ApiError(res.status, data);
    }
  }

  // A public function: no token, no retries (the page shows a fallback when it fails).
  async function publicRequest(fn, method) {
    let res;
    try {
      res = await fetch(urls[fn], { method });
    } catch (err) {
      throw new ApiError(0, { error: "network_error", message: String(err) });
    }
    const data = await res.json().catch(() => ({ error: "internal", message: `HTTP ${res.status}` }));
    if (!res.ok) throw new ApiError(res.status, data);
    return data;
  }

  return {
    catalog: () => publicRequest("catalog", "GET"),
    consent: () => request("consent", "GET"),
    acceptTerms: (version) => request("consent", "POST", { version }),
    credits: () => request("credits", "GET"),
    checkout: (packId, successUrl, cancelUrl, key) => request("checkout", "POST", { packId, successUrl, cancelUrl }, key),
    subscribe: (planId, successUrl, cancelUrl, key) => request("checkout", "POST", { planId, successUrl, cancelUrl }, key),
    billingPortal: (returnUrl) => request("billing_portal", "POST", { returnUrl }),
    generate: (prompt, projectId, key) => request("generate", "POST", projectId ? { prompt, projectId } : { prompt }, key),
    exportAccount: () => request("account", "GET"),
    eraseAccount: () => request("account", "DELETE"),
  };
}
