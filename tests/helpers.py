"""Arrange helpers that go through the real domain code (no direct balance writes)."""

from __future__ import annotations

from typing import Any

from google.cloud.firestore_v1.base_query import FieldFilter

from tests.conftest import TERMS


def make_user(db: Any, uid: str, *, credits: int = 0, consent: bool = True) -> None:
    from functions.lib import ledger, terms

    if consent:
        terms.accept(db, uid, TERMS, TERMS)
    if credits:
        ledger.grant(db, uid, f"seed-{uid}", credits, "test seed")


def balance(db: Any, uid: str) -> int:
    snap = db.collection("users").document(uid).get()
    return int((snap.to_dict() or {}).get("credits", 0)) if snap.exists else 0


def entries(db: Any, uid: str, type: str | None = None) -> list[dict[str, Any]]:
    docs = [
        d.to_dict() | {"id": d.id}
        for d in db.collection("credit_transactions").where(filter=FieldFilter("userId", "==", uid)).stream()
    ]
    return [d for d in docs if type is None or d["type"] == type]


def generations(db: Any, uid: str) -> list[dict[str, Any]]:
    return [
        d.to_dict() | {"id": d.id}
        for d in db.collection("generations").where(filter=FieldFilter("userId", "==", uid)).stream()
    ]
