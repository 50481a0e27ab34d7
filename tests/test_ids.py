"""The one document-id rule (functions/lib/ids.py)."""

from __future__ import annotations

import pytest

from functions.lib import ids
from functions.lib.errors import InvalidRequest

pytestmark = pytest.mark.no_emulator


@pytest.mark.parametrize(
    "value", ["p1", "a" * 500, "\u00e9" * 250, "_x_", "___", "__x", "x__", "evt_1", "a.b", "..."]
)
def test_storable_ids_pass(value: str) -> None:
    assert ids.is_doc_id(value) and ids.require_doc_id(value, "id") == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "/",
        "a/b",
        ".",
        "..",
        "__x__",
        "____",
        "a" * 501,
        "\u00e9" * 251,
        "\ud800",
        "ok\udfff",
        None,
        7,
        ["a"],
    ],
)
def test_ids_firestore_cannot_store_are_refused_naming_the_field(value: object) -> None:
    assert not ids.is_doc_id(value)
    with pytest.raises(InvalidRequest) as err:
        ids.require_doc_id(value, "projectId")
    assert err.value.status == 400 and err.value.details["field"] == "projectId"


def test_a_lower_cap_applies_in_bytes() -> None:
    assert ids.is_doc_id("k" * 200, max_bytes=200) and not ids.is_doc_id("\u00e9" * 101, max_bytes=200)
