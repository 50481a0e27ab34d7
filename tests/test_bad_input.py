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

from tests.helpers import assert_ledger_consistent, bearer, make_user, token

EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
USER = "fuzzy"

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


# Values no id field accepts: Firestore refuses them, or they are not Unicode at all.
HOSTILE_IDS = ["__x__", "a/b", "/", ".", "..", "x" * 501, "\u00e9" * 251, "\ud800", "id\udfff", ""]
LONE_SURROGATES = ["\ud800", "a \udfff in a prompt", "\udbff\udfff\ud800"]
not_strings = st.sampled_from([None, 7, True, [], {}, ["\ud800"], {"\ud800": 1}]) | json_values.filter(
    lambda v: not isinstance(v, str)
)
hostile_ids = st.sampled_from(HOSTILE_IDS) | not_strings
hostile_text = st.sampled_from([*LONE_SURROGATES, "", "   ", "x" * 8001]) | not_strings
hostile_urls = (
    st.sampled_from([*HOSTILE_IDS, "http://localhost:5173/\ud800", "javascript:alert(1)"]) | not_strings
)
# The fields each function reads, as (any value, a value that field refuses). A generated body
# uses only these, so it gets past the unknown-field check and reaches field validation, and one
# of its fields always holds a refused value, so no generated body is a valid request.
FIELDS: dict[str, dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]]] = {
    "generate": {
        "prompt": (st.text(min_size=1, max_size=40) | hostile_text, hostile_text),
        "projectId": (st.sampled_from(["p1", "missing"]) | hostile_ids, hostile_ids),
    },
    "checkout": {
        "packId": (
            st.sampled_from(["starter", "studio"]) | hostile_ids,
            hostile_ids | st.just("no-such-pack"),
        ),
        "successUrl": (st.just("http://localhost:5173/ok") | hostile_urls, hostile_urls),
        "cancelUrl": (st.just("http://localhost:5173/no") | hostile_urls, hostile_urls),
    },
    "consent": {"version": (hostile_text | hostile_ids, hostile_text | hostile_ids)},
    "stripe_webhook": {"id": (hostile_ids, hostile_ids), "object": (st.just("event"), st.just("event"))},
}
NESTED_60KB = b'{"prompt": ' + b"[" * 30000 + b"]" * 30000 + b"}"


def schema_bodies(target: str) -> st.SearchStrategy[bytes]:
    """Bodies of the target's own fields, with one field given a value it refuses."""
    fields = FIELDS.get(target)
    if not fields:
        return st.just(b"{}")
    anything = {name: pair[0] for name, pair in fields.items()}
    return st.tuples(st.fixed_dictionaries({}, optional=anything), st.sampled_from(sorted(fields))).flatmap(
        lambda picked: fields[picked[1]][1].map(
            lambda bad: json.dumps({**picked[0], picked[1]: bad}).encode()
        )
    )


def bodies(target: str) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass") if s else b""),
        json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
        schema_bodies(target),
        schema_bodies(target),
        st.sampled_from(
            [
                b"\xff\xfe{",
                b'{"prompt": "\\ud800"',
                '{"prompt": "caf\u00e9"}'.encode("latin-1"),
                b"null",
                b"{}" * 40000,
            ]
        ),
        st.sampled_from(
            [
                NESTED_60KB,
                b"[" * 60000,
                b'{"prompt": "x", "projectId": ' + b'{"a":' * 12000 + b"1" + b"}" * 12001,
            ]
        ),
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
header_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=300
)
auth_headers = st.one_of(
    st.just(None),
    st.sampled_from(["Bearer", "Bearer ", "Basic dXNlcg==", "bearer a.b.c", "Token abc"]),
    header_text.map(lambda s: "Bearer " + s[:60]),
    st.just("VALID"),
)
methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
extra_headers = st.dictionaries(
    st.sampled_from(["Idempotency-Key", "Stripe-Signature", "Origin", "X-Cloud-Trace-Context"]),
    header_text | st.sampled_from([i for i in HOSTILE_IDS if i.isascii()]),
    max_size=3,
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
    @given(
        method=methods,
        body=bodies(target),
        content_type=content_types,
        auth=auth_headers,
        headers=extra_headers,
    )
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
            assert (
                res.is_json
                and isinstance(res.json.get("error"), str)
                and isinstance(res.json.get("message"), str)
            )

    run()

    assert snapshot(db) == before
    assert_ledger_consistent(db)


@pytest.mark.parametrize("target", ["generate", "consent", "checkout"])
def test_a_number_too_long_for_python_is_a_400_and_changes_nothing(app: Any, db: Any, target: str) -> None:
    make_user(db, USER, credits=80)
    before = snapshot(db)
    body = b'{"prompt": "ok", "n": ' + b"1" * 5000 + b"}"  # over the 4,300 digits int() takes

    res = app(target).post("/", data=body, headers=bearer(USER), content_type="application/json")

    assert res.status_code == 400 and res.json["error"] == "invalid_request"
    assert "too many digits" in res.json["message"]
    assert snapshot(db) == before


@pytest.mark.parametrize(
    ("body", "headers", "says"),
    [
        (NESTED_60KB, {}, "nests deeper"),
        (b"[" * 60000, {}, "nests deeper"),
        (json.dumps({"prompt": "\ud800"}).encode(), {}, "not valid Unicode"),
        (json.dumps({"prompt": "ok", "projectId": "\ud800"}).encode(), {}, "not valid Unicode"),
        (json.dumps({"prompt": "ok", "projectId": "__x__"}).encode(), {}, "projectId"),
        (json.dumps({"prompt": "ok", "projectId": "a/b"}).encode(), {}, "projectId"),
        (json.dumps({"prompt": "ok", "projectId": ".."}).encode(), {}, "projectId"),
        (json.dumps({"prompt": "ok", "projectId": "p" * 501}).encode(), {}, "projectId"),
        (json.dumps({"prompt": "ok"}).encode(), {"Idempotency-Key": "__x__"}, "Idempotency-Key"),
        (json.dumps({"prompt": "ok"}).encode(), {"Idempotency-Key": "a/b"}, "Idempotency-Key"),
        (json.dumps({"prompt": "ok"}).encode(), {"Idempotency-Key": "."}, "Idempotency-Key"),
        (json.dumps({"prompt": "ok"}).encode(), {"Idempotency-Key": "k" * 201}, "Idempotency-Key"),
    ],
)
def test_hostile_generate_requests_are_400_before_any_charge(
    app: Any, db: Any, body: bytes, headers: dict[str, str], says: str
) -> None:
    make_user(db, USER, credits=80)
    before = snapshot(db)

    res = app("generate").post(
        "/", data=body, headers={**bearer(USER), **headers}, content_type="application/json"
    )

    assert res.status_code == 400 and res.json["error"] == "invalid_request", res.get_data(as_text=True)[:300]
    assert says in res.json["message"] or res.json.get("field") == says
    assert snapshot(db) == before


@pytest.mark.parametrize(
    ("body", "headers", "field"),
    [
        ({"packId": "__x__"}, {}, "packId"),
        ({"packId": "\ud800"}, {}, None),
        (
            {
                "packId": "starter",
                "successUrl": "http://localhost:5173/\ud800",
                "cancelUrl": "http://localhost:5173/",
            },
            {},
            None,
        ),
        (
            {
                "packId": "starter",
                "successUrl": "http://localhost:5173/",
                "cancelUrl": "http://localhost:5173/",
            },
            {"Idempotency-Key": "__x__"},
            "Idempotency-Key",
        ),
        (
            {
                "packId": "starter",
                "successUrl": "http://localhost:5173/",
                "cancelUrl": "http://localhost:5173/",
            },
            {"Idempotency-Key": "a/b"},
            "Idempotency-Key",
        ),
    ],
)
def test_hostile_checkout_requests_are_400_before_stripe(
    app: Any, body: dict[str, Any], headers: dict[str, str], field: str | None
) -> None:
    res = app("checkout").post(
        "/",
        data=json.dumps(body).encode(),
        headers={**bearer(USER), **headers},
        content_type="application/json",
    )

    assert res.status_code == 400 and res.json["error"] == "invalid_request", res.get_data(as_text=True)[:300]
    assert res.json.get("field") == field
