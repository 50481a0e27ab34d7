"""openapi.yaml is checked against the handlers: same functions, same methods, every error code
known, and real responses (through functions-framework) valid against the documented schemas."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.helpers import TERMS, bearer, make_user

ROOT = Path(__file__).resolve().parent.parent
SPEC: dict[str, Any] = yaml.safe_load((ROOT / "openapi.yaml").read_text())
METHODS = ("get", "post", "put", "patch", "delete")


def entry_points() -> set[str]:
    import main

    return {
        name
        for name, fn in vars(main).items()
        if inspect.isfunction(fn)
        and fn.__module__ == "main"
        and getattr(getattr(fn, "__firebase_endpoint__", None), "httpsTrigger", None) is not None
    }


def check(target: str, method: str, res: Any) -> dict[str, Any]:
    """Assert the response's status is documented for the operation and its body matches the schema."""
    responses = SPEC["paths"][f"/{target}"][method]["responses"]
    assert str(res.status_code) in responses, (
        f"{method.upper()} /{target} answered undocumented {res.status_code}"
    )
    documented = responses[str(res.status_code)]
    if "$ref" in documented:
        documented = SPEC["components"]["responses"][documented["$ref"].rsplit("/", 1)[1]]
    schema = {**documented["content"]["application/json"]["schema"], "components": SPEC["components"]}
    body: dict[str, Any] = res.json
    jsonschema.validate(body, schema)
    return body


@pytest.mark.no_emulator
def test_every_entry_point_is_documented_and_nothing_else() -> None:
    assert {p.lstrip("/") for p in SPEC["paths"]} == entry_points()


@pytest.mark.no_emulator
def test_every_error_code_is_in_the_spec() -> None:
    from functions.lib import errors

    codes = {
        cls.code for cls in vars(errors).values() if inspect.isclass(cls) and issubclass(cls, errors.AppError)
    }
    assert codes <= set(SPEC["components"]["schemas"]["Error"]["properties"]["error"]["enum"])


@pytest.mark.parametrize("target", sorted(p.lstrip("/") for p in SPEC["paths"]))
def test_documented_methods_are_the_ones_served(app: Any, db: Any, target: str) -> None:
    documented = set(SPEC["paths"][f"/{target}"])
    for method in METHODS:
        res = app(target).open("/", method=method.upper(), headers=bearer("m"), json={})
        if method in documented:
            assert res.status_code != 405, (target, method)
        else:
            assert res.status_code == 405, (target, method)
            check_error = SPEC["components"]["schemas"]["Error"]
            jsonschema.validate(res.json, {**check_error, "components": SPEC["components"]})


def test_generate_consent_credits_responses_match_the_spec(app: Any, db: Any) -> None:
    make_user(db, "olga", credits=60, consent=False)
    gen = app("generate")

    check("generate", "post", gen.post("/", json={"prompt": "x"}))  # 401
    check("generate", "post", gen.post("/", json={"prompt": "x"}, headers=bearer("olga")))  # 403
    check("consent", "get", app("consent").get("/", headers=bearer("olga")))
    check("consent", "post", app("consent").post("/", json={"version": "old"}, headers=bearer("olga")))  # 400
    check("consent", "post", app("consent").post("/", json={"version": TERMS}, headers=bearer("olga")))
    ok = check("generate", "post", gen.post("/", json={"prompt": "x"}, headers=bearer("olga")))
    check(
        "generate",
        "post",
        gen.post("/", json={"prompt": "y", "projectId": ok["projectId"]}, headers=bearer("olga")),
    )  # 402
    check("generate", "post", gen.post("/", json={"prompt": 1}, headers=bearer("olga")))  # 400
    check(
        "generate",
        "post",
        gen.post("/", data="x" * 70000, headers=bearer("olga"), content_type="application/json"),
    )  # 413
    credits = check("credits", "get", app("credits").get("/", headers=bearer("olga")))
    assert credits["balance"] == 10


def test_generation_failure_matches_the_spec(app: Any, db: Any, gemini: Any) -> None:
    make_user(db, "pia", credits=50)
    gemini.mode = "error500"

    body = check("generate", "post", app("generate").post("/", json={"prompt": "x"}, headers=bearer("pia")))

    assert body["refunded"] == 50


def test_credits_with_grants_debt_and_the_grant_entry_types_matches_the_spec(
    app: Any, db: Any, settings: Any
) -> None:
    from datetime import UTC, datetime, timedelta

    from devstack import stripe_events as se
    from functions.lib import clock, ledger, payments

    start = datetime(2027, 1, 1, 12, 0, tzinfo=UTC)
    with clock.frozen(start):
        make_user(db, "rae")
        payments.handle_event(db, settings, se.checkout_completed("cs_r1", "rae", "starter", "pi_r1"))
        ledger.grant(db, "rae", "rae-soon", 30, "promo", expires_in_days=1)
        ledger.grant(db, "rae", "rae-late", 40, "promo", priority=90, expires_in_days=30)
        ledger.grant(db, "rae", "rae-brief", 5, "promo", priority=95, expires_in_days=1)
        ledger.grant(db, "rae", "rae-gift", 20, "gift", priority=99)
        ledger.void(db, "rae", "grant_rae-gift", "granted by mistake")
        ledger.charge(db, "rae", "rae-c1", 130)  # the soon-expiring 30, then the whole pack
        refund = se.refund_event("refund.created", "re_r1", "ch_r1", "pi_r1", se.DEFAULT_AMOUNT)
        payments.handle_event(db, settings, refund)  # the pack's 100 were spent: debt
        clock.set_to(start + timedelta(days=2))  # the brief grant expires

        body = check("credits", "get", app("credits").get("/", headers=bearer("rae")))

    assert body["debt"] == -100 and body["balance"] == -60 and body["subscription"] is None
    assert [(g["id"], g["remaining"], g["expiresAt"] is not None) for g in body["grants"]] == [
        ("grant_rae-late", 40, True)
    ]
    types = [t["type"] for t in body["transactions"]]
    assert types == ["expiry", "reversal", "charge", "void", "grant", "grant", "grant", "grant", "purchase"]
    assert body["transactions"][0]["balanceAfter"] == -60
