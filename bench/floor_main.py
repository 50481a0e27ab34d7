"""Floor functions: the least work functions-framework and Firestore allow, served exactly like the
real entry points (`functions-framework --target NAME --source bench/floor_main.py`).

The benchmarks divide the real functions' figures by these. To keep the ratios honest, the floors
do the minimum their comparison needs and no more, and build their Firestore client the same lazy
way as `functions/lib/db.py` (first call, anonymous credentials on the emulator, cached):
- `floor_txn`: one Firestore transaction with one read and two writes (what a charge needs at least).
- `floor_create`: one `create()` of a document named in the body; an existing one answers 200
  "duplicate" (what a deduplicating webhook needs at least).
- `floor_reserve_settle`: the least `generate` can do: one read of the user; one commit of a ledger
  entry, the balance and a generation record; an instant model; one commit of the version and the
  generation's status (3 round trips, 5 writes).
- `floor_data_model`: the same three round trips writing what the data model asks of a generation
  (docs/ARCHITECTURE.md, "Data model"): the ledger entry, the balance under a precondition and the
  generation record with every field `generate` stores; then the version, the project, the
  generation's status under a precondition and the analytics event (7 writes, server timestamps).
  Not a target's floor: it tells the cost of the documents from the cost of the code around them
  (token check, consent, validation, logs).
- `floor_reserve_model`: `floor_reserve_settle` with a model call between the commits: one POST to
  the Gemini double at FLOOR_MODEL_URL (`bench_online`'s floor for generate with a slow model).
- `bare`: no Firestore at all, for import-time and process-start comparisons.
The firebase-functions floor (`floor_txn` declared with `https_fn.on_request`) is in
`bench/floor_firebase.py`, so its import cost stays out of these.

This file does not import `functions/`: nothing of the real code may leak into the baseline.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import flask
    from google.cloud.firestore import Client


@functools.cache
def _client() -> Client:
    from google.cloud import firestore

    project = os.environ["GOOGLE_CLOUD_PROJECT"]
    if os.environ.get("FIRESTORE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return firestore.Client(project=project, credentials=AnonymousCredentials())
    return firestore.Client(project=project)


def floor_txn(request: flask.Request) -> dict[str, Any]:
    """POST/GET ?doc=ID: in one transaction, read `floor_users/ID`, bump its counter, create an entry."""
    from google.cloud import firestore

    client = _client()
    doc = request.args.get("doc") or uuid.uuid4().hex
    user_ref = client.collection("floor_users").document(doc)
    entry_ref = client.collection("floor_entries").document(uuid.uuid4().hex)

    @firestore.transactional
    def bump(transaction: Any) -> int:
        snap = user_ref.get(transaction=transaction)
        count = int((snap.to_dict() or {}).get("count", 0)) + 1 if snap.exists else 1
        transaction.set(user_ref, {"count": count})
        transaction.create(entry_ref, {"user": doc, "count": count})
        return count

    return {"count": bump(client.transaction())}


def floor_create(request: flask.Request) -> dict[str, Any] | tuple[dict[str, Any], int]:
    """POST a Stripe event: create `floor_purchases/{data.object.id}` once; a repeat answers 200 duplicate."""
    from google.api_core.exceptions import AlreadyExists

    if request.method != "POST":  # the readiness probe's GET, as the real webhook answers it
        return {"error": "method_not_allowed"}, 405
    event = json.loads(request.get_data())
    session_id = event["data"]["object"]["id"]
    try:
        _client().collection("floor_purchases").document(session_id).create({"event": event["id"]})
    except AlreadyExists:
        return {"outcome": "duplicate"}
    return {"outcome": "created"}


def bare(request: flask.Request) -> dict[str, Any]:
    """Any request: a JSON answer, no I/O."""
    return {"ok": True}


def floor_reserve_settle(request: flask.Request) -> dict[str, Any]:
    """POST {prompt} ?doc=ID: reserve 50 credits, "generate" instantly, settle: 3 round trips, 5 writes."""
    client = _client()
    user_ref = client.collection("floor_users").document(request.args.get("doc") or uuid.uuid4().hex)
    prompt = str((request.get_json(silent=True) or {}).get("prompt", ""))
    generation_id = uuid.uuid4().hex
    generation_ref = client.collection("floor_generations").document(generation_id)
    credits = int((user_ref.get().to_dict() or {}).get("credits", 0))
    reserve = client.batch()
    reserve.create(
        client.collection("floor_entries").document(f"charge_{generation_id}"),
        {"amount": -50, "user": user_ref.id},
    )
    reserve.set(user_ref, {"credits": credits - 50})
    reserve.create(generation_ref, {"status": "charged", "user": user_ref.id})
    reserve.commit()
    output = f"instant: {prompt[:40]}"
    settle = client.batch()
    settle.create(client.collection("floor_versions").document(generation_id), {"output": output})
    settle.update(generation_ref, {"status": "succeeded"})
    settle.commit()
    return {"generationId": generation_id, "output": output, "balance": credits - 50}


# The grant a floor user without one draws from: the data model's grant fields, never exhausted.
FLOOR_GRANT = {
    "id": "grant_floor",
    "amount": 10**9,
    "remaining": 10**9,
    "category": "paid",
    "priority": 50,
    "source": "floor",
    "createdAt": None,
    "expiresAt": None,
}


def floor_data_model(request: flask.Request) -> dict[str, Any]:
    """POST {prompt} ?doc=ID: floor_reserve_settle's three round trips with the data model's seven writes."""
    from google.cloud.firestore import SERVER_TIMESTAMP as NOW

    client = _client()
    user_ref = client.collection("floor_users").document(request.args.get("doc") or uuid.uuid4().hex)
    prompt = str((request.get_json(silent=True) or {}).get("prompt", ""))
    generation_id = "g" + uuid.uuid4().hex
    project_id = "p" + generation_id[1:]
    generation_ref = client.collection("floor_generations").document(generation_id)
    user = user_ref.get()
    data = user.to_dict() or {}
    balance = int(data.get("credits", 0)) - 50
    # The data model's user document holds the live grants: the charge draws from the first one.
    [grant] = data.get("grants") or [FLOOR_GRANT]
    drawn = {**grant, "remaining": grant["remaining"] - 50}
    money = {"credits": balance, "grants": [drawn], "debt": 0, "nextExpiryAt": None}
    draws = {grant["id"]: 50}
    reserve = client.batch()
    reserve.create(
        client.collection("floor_entries").document(f"charge_{generation_id}"),
        {
            "userId": user_ref.id,
            "type": "charge",
            "grantId": None,
            "amount": -50,
            "balanceAfter": balance,
            "metadata": {"generationId": generation_id, "projectId": project_id, "draws": draws},
            "createdAt": NOW,
            "seq": 0,
        },
    )
    if user.exists:  # as the ledger does: the balance under a precondition, or a new user document
        reserve.update(user_ref, money, option=client.write_option(last_update_time=user.update_time))
    else:
        reserve.create(user_ref, {**money, "createdAt": NOW})
    reserve.create(
        generation_ref,
        {
            "userId": user_ref.id,
            "projectId": project_id,
            "kind": "initial",
            "cost": 50,
            "status": "charged",
            "requestHash": uuid.uuid4().hex * 2,
            "chargeToken": uuid.uuid4().hex,
            "balanceAfterCharge": balance,
            "draws": draws,
            "shard": 0,
            "createdAt": NOW,
            "updatedAt": NOW,
            "error": None,
        },
    )
    charged_at = reserve.commit()[0].update_time
    output = f"instant: {prompt[:40]}"
    project_ref = client.collection("floor_projects").document(project_id)
    settle = client.batch()
    settle.create(
        project_ref.collection("versions").document(generation_id),
        {"number": 1, "prompt": prompt, "output": output, "generationId": generation_id, "createdAt": NOW},
    )
    settle.create(
        project_ref,
        {
            "ownerId": user_ref.id,
            "createdAt": NOW,
            "deletingAt": None,
            "shard": 0,
            "updatedAt": NOW,
            "versionCount": 1,
            "latestVersionId": generation_id,
        },
    )
    settle.update(
        generation_ref,
        {"status": "succeeded", "versionId": generation_id, "updatedAt": NOW},
        option=client.write_option(last_update_time=charged_at),
    )
    settle.set(
        client.collection("floor_events").document(f"{generation_id}-succeeded"),
        {
            "type": "generation_succeeded",
            "userId": user_ref.id,
            "properties": {
                "generationId": generation_id,
                "projectId": project_id,
                "kind": "initial",
                "cost": 50,
            },
            "createdAt": NOW,
            "shard": 0,
        },
    )
    settle.commit()
    return {"projectId": project_id, "versionId": generation_id, "output": output, "balance": balance}


def floor_reserve_model(request: flask.Request) -> dict[str, Any]:
    """POST {prompt} ?doc=ID: floor_reserve_settle with the model call in the middle: one POST to the
    Gemini double at FLOOR_MODEL_URL (its delay is the model's), over one pooled HTTP connection per thread."""
    import urllib.request

    if request.method != "POST":  # the readiness probe's GET, answered as generate answers it
        return {"error": "method_not_allowed"}
    client = _client()
    user_ref = client.collection("floor_users").document(request.args.get("doc") or uuid.uuid4().hex)
    prompt = str((request.get_json(silent=True) or {}).get("prompt", ""))
    generation_id = uuid.uuid4().hex
    generation_ref = client.collection("floor_generations").document(generation_id)
    credits = int((user_ref.get().to_dict() or {}).get("credits", 0))
    reserve = client.batch()
    reserve.create(
        client.collection("floor_entries").document(f"charge_{generation_id}"),
        {"amount": -50, "user": user_ref.id},
    )
    reserve.set(user_ref, {"credits": credits - 50})
    reserve.create(generation_ref, {"status": "charged", "user": user_ref.id})
    reserve.commit()
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": prompt}]}]}).encode()
    url = os.environ["FLOOR_MODEL_URL"] + "/v1beta/models/floor:generateContent"
    call = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(call, timeout=60) as answer:
        output = json.loads(answer.read())["candidates"][0]["content"]["parts"][0]["text"]
    settle = client.batch()
    settle.create(client.collection("floor_versions").document(generation_id), {"output": output})
    settle.update(generation_ref, {"status": "succeeded"})
    settle.commit()
    return {"generationId": generation_id, "output": output, "balance": credits - 50}
