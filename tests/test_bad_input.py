"""Bad input on every HTTP function: generated bodies, headers, methods, sizes and encodings.

Every answer must be a JSON 4xx (never a 5xx, never a traceback) and no ledger or balance may
change. Requests go through functions-framework's real Flask app; data lives in the emulator.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import assert_ledger_consistent, token
from tests.helpers import make_user

EXAMPLES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
USER = "fuzzy"

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12
)


def _always_invalid(obj: dict[str, Any]) -> dict[str, Any]:
    """Any object plus a field no function accepts: invalid by construction for every body schema."""
    return {**obj, "\u2603unexpected": True}


bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass") if s else b""),
    json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["prompt", "projectId", "version", "packId", "successUrl", "cancelUrl", "x"]), json_values, max_size=5)
    .map(_always_invalid)
    .map(lambda d: json.dumps(d).encode()),
    st.sampled_from([b"\xff\xfe{", b'{"prompt": "\\ud800"', '{"prompt": "caf\u00e9"}'.encode("latin-1"), b"null", b"{}" * 40000]),
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "application/x-www-form-urlencoded",
        "",
        "multipart/form-data; boundary=x",
    ]
)
# Header values a client can actually send: HTTP clients refuse control characters before sending.
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=300)
auth_headers = st.one_of(
    st.just(None),
    st.sampled_from(["Bearer", "Bearer ", "Basic dXNlcg==", "bearer a.b.c", "Token abc"]),
    header_text.map(lambda s: "Bearer " + s[:60]),
    st.just("VALID"),
)
methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
extra_headers = st.dictionaries(
    st.sampled_from(["Idempotency-Key", "Stripe-Signature", "Origin", "X-Cloud-Trace-Context"]), header_text, max_size=3
)


def snapshot(db: Any) -> tuple[list[tuple[str, Any]], list[str]]:
    users = sorted((u.id, (u.to_dict() or {}).get("credits")) for u in db.collection("users").stream())
    ledger = sorted(e.id for e in db.collection("credit_transactions").stream())
    return users, ledger


@pytest.mark.parametrize("target", ["generate", "consent", "credits", "checkout", "stripe_webhook"])
def test_generated_bad_requests_get_json_4xx_and_change_nothing(app: Any, db: Any, target: str) -> None:
    make_user(db, USER, credits=80)
    before = snapshot(db)
    client = app(target)

    @EXAMPLES
    @given(method=methods, body=bodies, content_type=content_types, auth=auth_headers, headers=extra_headers)
    def run(method: str, body: bytes, content_type: str, auth: str | None, headers: dict[str, str]) -> None:
        hdrs = dict(headers)
        if auth is not None:
            hdrs["Authorization"] = f"Bearer {token(USER)}" if auth == "VALID" else auth
        if method == "GET" and target in ("consent", "credits") and auth == "VALID":
            method = "PUT"  # a valid GET is a legitimate read, not bad input
        res = client.open("/", method=method, data=body, headers=hdrs, content_type=content_type or None)

        text = res.get_data(as_text=True)
        assert res.status_code < 500, (res.status_code, text[:300])
        assert "Traceback" not in text and 'File "' not in text
        if method not in ("HEAD", "OPTIONS"):
            assert res.status_code >= 400
            assert res.is_json and isinstance(res.json.get("error"), str) and isinstance(res.json.get("message"), str)

    run()

    assert snapshot(db) == before
    assert_ledger_consistent(db)
