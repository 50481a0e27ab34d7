"""Who may call: ID tokens, the uid they carry, and (for money) revoked sessions and disabled accounts."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import token
from tests.helpers import make_user


@pytest.mark.parametrize("uid", ["a/b", "__x__", "..", "u" * 501])
@pytest.mark.parametrize("target", ["generate", "credits", "consent"])
def test_a_token_whose_uid_cannot_name_a_document_gets_401(app: Any, db: Any, uid: str, target: str) -> None:
    make_user(db, "victim", credits=80)
    method = "post" if target == "generate" else "get"

    res = getattr(app(target), method)(
        "/", json={"prompt": "x"} if method == "post" else None, headers={"Authorization": f"Bearer {token(uid)}"}
    )

    assert res.status_code == 401 and res.json["error"] == "unauthenticated"
    assert [d.id for d in db.collection("users").stream()] == ["victim"]
