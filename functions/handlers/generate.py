"""`generate` handler: parse and validate, then hand over to `lib.generations`."""

from __future__ import annotations

from functions.edge import Call, Reply, endpoint
from functions.lib import auth, db, ids, logs
from functions.lib.breaker import get_breaker
from functions.lib.config import get_settings
from functions.lib.errors import InvalidRequest
from functions.lib.generations import MAX_PROMPT_CHARS, GenerationRequest, generate
from functions.lib.models import get_provider

FIELDS = frozenset({"prompt", "projectId"})


def parse(uid: str, call: Call) -> GenerationRequest:
    body = call.json(allowed=FIELDS)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("'prompt' must be a non-empty string.", field="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"'prompt' must be at most {MAX_PROMPT_CHARS} characters.", field="prompt")
    project_id = body.get("projectId")
    if project_id is not None:
        project_id = ids.require_doc_id(project_id, "projectId")
    return GenerationRequest(uid, prompt, project_id, call.idempotency_key())


@endpoint("generate", methods=("POST",))
def handle(call: Call) -> Reply:
    """POST {prompt, projectId?} -> 200 {projectId, versionId, output, creditsCharged, balance}."""
    uid = auth.authenticate(call.headers.get("Authorization"), check_revoked=True)
    logs.bind(uid=uid)
    request = parse(uid, call)
    done = generate(db.get_client(), get_settings(), get_provider(), request, get_breaker())
    return Reply(done.body(), credits_moved=0 if done.replayed else -done.credits_charged)
