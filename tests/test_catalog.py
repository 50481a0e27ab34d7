"""The catalog: `sync-catalog` reads the configured packs' and plans' prices from Stripe (the local
double, through the real stripe client) into `catalog/current`, and the public `catalog` GET serves
them with the configured credits, through functions-framework's real Flask stack."""

from __future__ import annotations

from typing import Any

import pytest

from devstack.stripe_double import StripeDouble
from tests.helpers import reset_caches
from tests.test_openapi import check

PLANS = '{"pro": {"price": "price_pro", "credits": 1000, "rollover": 200}, "max": {"price": "price_max", "credits": 3000, "trialCredits": 50}}'


def admin(*argv: str) -> int:
    from functions.admin.cli import main

    return main(list(argv))


@pytest.fixture
def priced(stripe_api: StripeDouble, monkeypatch: pytest.MonkeyPatch) -> StripeDouble:
    """Stripe has every configured price: the three packs one-time, the two plans monthly."""
    monkeypatch.setenv("PLANS", PLANS)
    reset_caches()
    for price, amount in {"price_studio_1500": 4500, "price_pro": 1200, "price_max": 2900}.items():
        monkeypatch.setitem(stripe_api.prices, price, amount)
    monkeypatch.setitem(stripe_api.intervals, "price_pro", "month")
    monkeypatch.setitem(stripe_api.intervals, "price_max", "month")
    return stripe_api


def get(app: Any, **headers: str) -> Any:
    return app("catalog").get("/", headers=headers)


def stored(db: Any) -> dict[str, Any]:
    return db.document("catalog/current").get().to_dict() or {}


def test_sync_writes_stripe_prices_and_the_catalog_serves_them(
    app: Any, db: Any, priced: StripeDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin("sync-catalog") == 0
    out = capsys.readouterr().out
    res = get(app, Origin="https://app.example.com")

    assert "pack starter: none -> 500 usd (price_starter_100)" in out
    assert "plan pro: none -> 1200 usd per month (price_pro)" in out
    assert "catalog/current written: 5 of 5 entries changed" in out
    assert res.status_code == 200
    body = check("catalog", "get", res)
    assert body["packs"]["starter"] == {
        "credits": 100,
        "expiresInDays": None,
        "price": "price_starter_100",
        "amount": 500,
        "currency": "usd",
    }
    assert body["plans"]["pro"] == {
        "credits": 1000,
        "rollover": 200,
        "trialCredits": 0,
        "price": "price_pro",
        "amount": 1200,
        "currency": "usd",
        "interval": "month",
    }
    assert body["plans"]["max"]["trialCredits"] == 50 and body["packs"]["studio"]["amount"] == 4500
    assert body["syncedAt"] is not None
    assert res.headers["Cache-Control"] == "public, max-age=300"
    assert res.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert [r.path for r in priced.received] == [
        "/v1/prices/price_starter_100",
        "/v1/prices/price_creator_500",
        "/v1/prices/price_studio_1500",
        "/v1/prices/price_pro",
        "/v1/prices/price_max",
    ]


def test_a_second_sync_changes_nothing_and_a_new_price_changes_only_its_entry(
    db: Any, priced: StripeDouble, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin("sync-catalog") == 0
    first = stored(db)
    capsys.readouterr()

    assert admin("sync-catalog") == 0
    again = capsys.readouterr().out
    monkeypatch.setitem(priced.prices, "price_pro", 1500)
    assert admin("sync-catalog") == 0
    changed = capsys.readouterr().out

    assert "catalog/current unchanged" in again
    assert changed.splitlines() == [
        "plan pro: 1200 usd per month (price_pro) -> 1500 usd per month (price_pro)",
        "catalog/current written: 1 of 5 entries changed",
    ]
    after = stored(db)
    assert after["plans"]["pro"]["amount"] == 1500 and after["packs"] == first["packs"]
    assert after["syncedAt"] > first["syncedAt"]


@pytest.mark.parametrize(
    ("arrange", "message"),
    [
        (lambda d, mp: mp.delitem(d.prices, "price_max"), "Stripe has no price 'price_max'"),
        (lambda d, mp: mp.setitem(d.intervals, "price_starter_100", "month"), "pack starter"),
        (lambda d, mp: mp.delitem(d.intervals, "price_pro"), "plan pro"),
        (lambda d, mp: setattr(d, "mode", "error"), "could not answer the price lookup"),
    ],
    ids=["missing_price", "recurring_pack", "one_time_plan", "stripe_down"],
)
def test_a_sync_that_cannot_read_every_price_writes_nothing(
    db: Any,
    priced: StripeDouble,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    arrange: Any,
    message: str,
) -> None:
    arrange(priced, monkeypatch)

    assert admin("sync-catalog") == 1
    assert message in capsys.readouterr().err
    assert not db.document("catalog/current").get().exists


def test_a_sync_warns_when_the_configured_amount_differs_from_stripe(
    db: Any, priced: StripeDouble, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(
        "PLANS", '{"pro": {"price": "price_pro", "credits": 1000, "amount": 999, "currency": "usd"}}'
    )
    reset_caches()

    assert admin("sync-catalog") == 0
    assert "WARNING plan pro: the configuration expects 999 usd but Stripe charges 1200 usd" in (
        capsys.readouterr().err
    )


def test_without_a_synced_catalog_the_configured_entries_are_served_without_prices(
    app: Any, db: Any, priced: StripeDouble
) -> None:
    res = get(app)

    body = check("catalog", "get", res)
    assert set(body["packs"]) == {"starter", "creator", "studio"} and set(body["plans"]) == {"pro", "max"}
    assert body["syncedAt"] is None
    assert all(p["amount"] is None and p["currency"] is None for p in body["packs"].values())
    assert body["plans"]["pro"]["credits"] == 1000 and body["plans"]["pro"]["interval"] is None
    assert priced.received == []  # the GET never calls Stripe


def test_stale_or_malformed_stored_entries_are_served_without_prices(
    app: Any, db: Any, priced: StripeDouble
) -> None:
    db.document("catalog/current").set(
        {
            "packs": {
                "starter": {"price": "price_old", "amount": 400, "currency": "usd"},  # price changed since
                "creator": {"price": "price_creator_500", "amount": "20.00", "currency": "usd"},
                "studio": "nonsense",
            },
            "plans": ["not", "a", "map"],
        }
    )

    body = check("catalog", "get", get(app))

    assert [p["amount"] for p in body["packs"].values()] == [None, None, None]
    assert [p["amount"] for p in body["plans"].values()] == [None, None]


def test_the_catalog_needs_no_token_nor_app_check_and_takes_only_get(
    app: Any, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_CHECK", "enforce")
    reset_caches()

    assert get(app).status_code == 200
    res = app("catalog").post("/", json={})
    assert res.status_code == 405 and res.headers["Cache-Control"] == "no-store"
