"""Every query the code sends has the index it needs, and no collection the online path writes is
bound by Firestore's limit of about 500 writes/s into an index of ever-growing values.

The queries are not listed by hand: the test runs the domain's flows (charges, refunds, purchases
and reversals, statements, limits, settlement, the sweep, export, erasure, the audit) against the
emulator and records every structured query the client library builds, then checks each one
against firestore.indexes.json as Firestore would plan it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack import stripe_events as se
from tests.helpers import ROOT, make_user

INDEX_FILE = ROOT / "firestore.indexes.json"
# Fields the online path (generate, the webhook, credits, consent) writes with a server timestamp:
# their values only grow, so an index on them takes every write at one end.
SEQUENTIAL = {
    "credit_transactions": {"createdAt"},
    "generations": {"createdAt", "updatedAt"},
    "projects": {"createdAt", "updatedAt"},
    "analytics_events": {"createdAt"},
}
# What may lead an index that holds a sequential field: a field of many values (one user's
# entries), or the index shard, which spreads the writes over 16 key ranges.
SPREADING = {"userId", "ownerId", "shard"}
EQUALITY = {"EQUAL", "IN", "ARRAY_CONTAINS", "ARRAY_CONTAINS_ANY"}


@dataclass(frozen=True)
class Shape:
    """What a query asks of the indexes: equality fields, then ordered (range or sort) fields."""

    collection: str
    equal: frozenset[str]
    ordered: tuple[tuple[str, str], ...]  # (field, ASCENDING | DESCENDING), the range field first

    def __str__(self) -> str:
        eq = ", ".join(sorted(self.equal))
        return f"{self.collection}: =({eq}) ordered({', '.join(f'{f} {d}' for f, d in self.ordered)})"


def shape_of(query_pb: Any) -> Shape:
    raw = type(query_pb).pb(query_pb)  # the protobuf under proto-plus
    equal: set[str] = set()
    ranged: list[str] = []

    def walk(flt: Any) -> None:
        kind = flt.WhichOneof("filter_type")
        if kind == "composite_filter":
            for sub in flt.composite_filter.filters:
                walk(sub)
        elif kind == "field_filter":
            op = (
                flt.field_filter.DESCRIPTOR.fields_by_name["op"]
                .enum_type.values_by_number[flt.field_filter.op]
                .name
            )
            if op in EQUALITY:
                equal.add(flt.field_filter.field.field_path)
            else:
                ranged.append(flt.field_filter.field.field_path)
        elif kind == "unary_filter":
            ranged.append(flt.unary_filter.field.field_path)

    if raw.HasField("where"):
        walk(raw.where)
    orders = [
        (o.field.field_path, "DESCENDING" if o.direction == 2 else "ASCENDING")
        for o in raw.order_by
        if o.field.field_path != "__name__"
    ]
    ordered = [(f, "ASCENDING") for f in ranged if f not in {o[0] for o in orders}] + orders
    return Shape(raw.from_[0].collection_id if raw.from_ else "", frozenset(equal), tuple(ordered))


@pytest.fixture
def sent() -> Iterator[set[Shape]]:
    """Every query shape the client library builds while the test runs."""
    from google.cloud.firestore_v1.base_query import BaseQuery

    shapes: set[Shape] = set()
    build = BaseQuery._to_protobuf

    def recording(self: Any) -> Any:
        pb = build(self)
        shapes.add(shape_of(pb))
        return pb

    BaseQuery._to_protobuf = recording  # type: ignore[method-assign]
    try:
        yield shapes
    finally:
        BaseQuery._to_protobuf = build  # type: ignore[method-assign]


def load_indexes(
    path: Any = INDEX_FILE,
) -> tuple[list[tuple[str, tuple[tuple[str, str], ...]]], set[tuple[str, str]]]:
    config = json.loads(path.read_text())
    composites = [
        (ix["collectionGroup"], tuple((f["fieldPath"], f.get("order", "ASCENDING")) for f in ix["fields"]))
        for ix in config["indexes"]
    ]
    exempt = {
        (o["collectionGroup"], o["fieldPath"])
        for o in config.get("fieldOverrides", [])
        if o.get("indexes") == []
    }
    return composites, exempt


def unserved(shape: Shape, composites: list[Any], exempt: set[tuple[str, str]]) -> str | None:
    """Why Firestore could not plan `shape` with these indexes, or None when it can."""
    fields = {f for f, _ in shape.ordered}
    if not shape.ordered or (not shape.equal and len(fields) == 1):
        # Equalities alone merge single-field indexes; one ranged or sorted field alone uses its own.
        needed = shape.equal | fields
        missing = sorted(f for f in needed if (shape.collection, f) in exempt)
        return f"single-field index exempted: {missing}" if missing else None
    for collection, index in composites:
        if collection != shape.collection or len(index) != len(shape.equal) + len(shape.ordered):
            continue
        head, tail = index[: len(shape.equal)], index[len(shape.equal) :]
        if {f for f, _ in head} == shape.equal and tail == shape.ordered:
            return None
    return "no composite index"


def hot_spots(composites: list[Any], exempt: set[tuple[str, str]]) -> list[str]:
    """Indexes on the online path's sequential fields that every write of them would land at the end of."""
    found = []
    for collection, fields in SEQUENTIAL.items():
        for field in sorted(fields):
            if (collection, field) not in exempt:
                found.append(f"{collection}.{field}: single-field index")
    for collection, index in composites:
        names = [f for f, _ in index]
        for i, name in enumerate(names):
            if name in SEQUENTIAL.get(collection, set()) and not SPREADING & set(names[:i]):
                found.append(f"{collection} ({', '.join(names)}): {name} not led by {sorted(SPREADING)}")
    return found


def run_the_flows(db: Any, settings: Any, app: Any) -> None:
    """The domain's flows, each once, so each kind of query is sent."""
    from functions.lib import audit, generations, ledger, limits, operations, payments, settlement, user_data
    from functions.lib.breaker import CircuitBreaker
    from functions.lib.models import OfflineProvider
    from functions.lib.retention import sweep

    make_user(db, "ix")
    ledger.grant(db, "ix", "g1", 200, "seed", expires_in_days=1)
    payments.handle_event(db, settings, se.checkout_completed("cs_ix", "ix", "starter", "pi_ix"))
    payments.handle_event(db, settings, se.refund_event("refund.created", "re_ix", "ch_ix", "pi_ix", 100))
    breaker = CircuitBreaker(100, 1, 1)
    done = generations.generate(
        db, settings, OfflineProvider(), generations.GenerationRequest("ix", "a"), breaker
    )
    generations.generate(
        db, settings, OfflineProvider(), generations.GenerationRequest("ix", "b", done.project_id), breaker
    )
    generations.charge(db, settings, generations.GenerationRequest("ix", "crashes"))
    ledger.statement(db, "ix")
    now = datetime.now(UTC)
    limits.take_call_slot(db, settings, limits.CREDITS, "ix", now=now)
    limits.take_checkout_slot(db, "ix", limit=5, window_s=60, now=now)
    later = now + timedelta(days=400)
    settlement.settle_stale_charges(db, settings, now=later)
    settlement.settle_user(db, settings, "ix", now=later)
    list(db.collection("users").stream())  # keeps the emulator's view fresh for the next reads
    audit.audit(db)
    operations.status(db, settings)
    "".join(user_data.export(db, "ix"))
    sweep(db, settings, now=later)
    user_data.erase(db, "ix", delete_login=lambda uid: True)


def test_every_query_the_code_sends_has_its_index_and_none_is_exempted(
    db: Any, settings: Any, app: Any, sent: set[Shape]
) -> None:
    run_the_flows(db, settings, app)
    composites, exempt = load_indexes()

    assert len(sent) >= 12, sorted(map(str, sent))  # the flows reached the queries
    problems = {str(shape): why for shape in sent if (why := unserved(shape, composites, exempt))}
    assert problems == {}


def test_no_index_on_the_online_path_is_bound_by_the_sequential_write_limit() -> None:
    composites, exempt = load_indexes()

    assert hot_spots(composites, exempt) == []


def test_the_checks_catch_a_missing_composite_an_exempted_field_and_a_hot_spot(tmp_path: Any) -> None:
    # Today's index file before the reshaping: (status, createdAt) led by a field of two values, and
    # the ledger's createdAt indexed on its own.
    before = {
        "indexes": [
            {
                "collectionGroup": "generations",
                "fields": [{"fieldPath": "status"}, {"fieldPath": "createdAt"}],
            }
        ],
        "fieldOverrides": [{"collectionGroup": "generations", "fieldPath": "userId", "indexes": []}],
    }
    (tmp_path / "ix.json").write_text(json.dumps(before))
    composites, exempt = load_indexes(tmp_path / "ix.json")
    stale = Shape("generations", frozenset({"shard", "status"}), (("createdAt", "ASCENDING"),))
    mine = Shape("generations", frozenset({"userId", "status"}), ())

    assert unserved(stale, composites, exempt) == "no composite index"
    assert unserved(mine, composites, exempt) == "single-field index exempted: ['userId']"
    found = hot_spots(composites, exempt)
    assert "credit_transactions.createdAt: single-field index" in found
    assert any(f.startswith("generations (status, createdAt)") for f in found)


def test_backfill_gives_old_documents_their_shard_so_the_sweep_finds_them(
    db: Any, settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions.admin.cli import main
    from functions.lib.db import shard_of
    from functions.lib.retention import sweep

    old = datetime.now(UTC) - timedelta(days=settings.retention_days + 1)
    for pid in ("legacy-a", "legacy-b"):  # written before shards existed
        db.collection("projects").document(pid).set(
            {"ownerId": "o", "createdAt": old, "updatedAt": old, "versionCount": 0, "deletingAt": None}
        )
    assert sweep(db, settings).projects_deleted == 0  # the sharded query cannot see them

    assert main(["backfill-shards", "--dry-run"]) == 0
    assert "projects: would set shard on 2 documents" in capsys.readouterr().out
    assert main(["backfill-shards"]) == 0
    assert main(["backfill-shards"]) == 0
    out = capsys.readouterr().out
    assert "projects: set shard on 2 documents" in out and "projects: set shard on 0 documents" in out
    assert db.collection("projects").document("legacy-a").get().get("shard") == shard_of("legacy-a")
    assert sweep(db, settings).projects_deleted == 2
