"""The ledger's exactly-once writes against the emulator."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.helpers import assert_ledger_consistent, balance, entries


def test_grant_is_idempotent_by_id(db: Any) -> None:
    from functions.lib import ledger

    first = ledger.grant(db, "u1", "support-42", 30, "apology")
    second = ledger.grant(db, "u1", "support-42", 30, "apology")

    assert first.applied and not second.applied
    assert balance(db, "u1") == 30 and len(entries(db, "u1")) == 1
    [entry] = entries(db, "u1")
    assert entry["id"] == "grant_support-42" and entry["metadata"] == {"reason": "apology"}


def test_concurrent_repeats_of_one_entry_write_it_once(db: Any) -> None:
    from functions.lib import ledger

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: ledger.grant(db, "u2", "same", 10, "race"), range(10)))

    assert sum(r.applied for r in results) == 1
    assert balance(db, "u2") == 10
    assert_ledger_consistent(db)


def test_concurrent_distinct_entries_all_land(db: Any) -> None:
    from functions.lib import ledger

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: ledger.grant(db, "u3", f"g{i}", 5, "race"), range(8)))

    assert balance(db, "u3") == 40 and len(entries(db, "u3")) == 8
    assert_ledger_consistent(db)


@pytest.mark.parametrize(("amount", "reason"), [(0, "x"), (-5, "x"), (5, "  ")])
def test_bad_grants_are_refused(db: Any, amount: int, reason: str) -> None:
    from functions.lib import ledger
    from functions.lib.errors import InvalidRequest

    with pytest.raises(InvalidRequest):
        ledger.grant(db, "u4", "g", amount, reason)
    assert entries(db, "u4") == []


def test_a_debit_below_zero_is_refused_with_figures(db: Any) -> None:
    from functions.lib import ledger
    from functions.lib.errors import InsufficientCredits

    ledger.grant(db, "u5", "g", 10, "seed")

    with pytest.raises(InsufficientCredits) as err:
        ledger.charge(db, "u5", "gen1", 25)

    assert err.value.details == {"balance": 10, "required": 25, "shortfall": 15}
    assert balance(db, "u5") == 10


def test_a_grant_id_reused_for_another_user_is_refused(db: Any) -> None:
    from functions.lib import ledger
    from functions.lib.errors import IdempotencyKeyReused

    ledger.grant(db, "u6", "promo-1", 10, "promo")

    with pytest.raises(IdempotencyKeyReused):
        ledger.grant(db, "u7", "promo-1", 10, "promo")
    again = ledger.grant(db, "u6", "promo-1", 99, "promo")
    assert not again.applied and again.amount == 10
    assert balance(db, "u6") == 10 and balance(db, "u7") == 0


def test_a_statement_is_one_moment_even_when_an_entry_lands_between_its_reads(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.cloud.firestore_v1.query import Query

    from functions.lib import ledger

    ledger.grant(db, "wes", "first", 10, "seed")
    real_stream, landed = Query.stream, []

    def stream(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not landed:  # between the user read and the ledger query
            landed.append(ledger.grant(db, "wes", "second", 5, "concurrent").applied)
        return real_stream(self, *args, **kwargs)

    monkeypatch.setattr(Query, "stream", stream)
    st = ledger.statement(db, "wes")

    assert landed == [True]
    assert st.balance == st.transactions[0]["balanceAfter"] == sum(e["amount"] for e in st.transactions)


@pytest.mark.parametrize(("uid", "grant_id"), [("u5", ""), ("u5", "ticket/7"), ("a/b", "g"), ("", "g")])
def test_a_grant_to_a_bad_user_or_with_a_bad_id_is_refused_before_any_write(
    db: Any, uid: str, grant_id: str
) -> None:
    from functions.lib import ledger
    from functions.lib.errors import InvalidRequest

    with pytest.raises(InvalidRequest):
        ledger.grant(db, uid, grant_id, 5, "support")
    assert list(db.collection("credit_transactions").stream()) == []
