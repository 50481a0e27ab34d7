"""The HTTP edge shared by every handler: CORS, methods, body limits, JSON, auth, and the one
place where errors become responses. Handlers built with `endpoint` receive parsed input and
return a dict (200 JSON) or a `Reply`; domain errors raised anywhere map through `AppError`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from functions.lib import ids, logs
from functions.lib.config import get_settings
from functions.lib.db import firestore_unavailable
from functions.lib.errors import (
    AppError,
    InvalidRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    Unavailable,
    UnsupportedMediaType,
)

if TYPE_CHECKING:
    import flask

log = logging.getLogger("request")
MAX_BODY_BYTES = 64 * 1024
# Every body this API takes is a flat object; deeper input is hostile (60 KB of `[` makes
# json.loads raise RecursionError, which must be a 400 and not a 500).
MAX_JSON_DEPTH = 16
MAX_IDEMPOTENCY_KEY_BYTES = 200


def _hostile_json(data: Any) -> str | None:
    """Why a parsed body is unusable (too deep, or a string with a lone surrogate such as JSON's
    `"\\ud800"`, which is not Unicode and which Firestore cannot store), or None. Iterative, so
    depth costs no stack.
    """
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "The request body holds a string that is not valid Unicode (a lone surrogate)."
        elif isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                return f"The request body nests deeper than {MAX_JSON_DEPTH} levels."
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
    return None


@dataclass
class Reply:
    body: dict[str, Any]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    credits_moved: int = 0


@dataclass
class Stream:
    """A 200 JSON answer sent piece by piece as the handler's iterator yields it (a large export).

    The status is sent before the first piece: errors that must become a 4xx/5xx are raised
    before returning the Stream. A failure mid-stream breaks the connection off (logged), so a
    client never takes a cut-off document for a complete one.
    """

    pieces: Iterable[str]


@dataclass
class Call:
    """What a handler gets: the request's parts, never the Flask request itself."""

    method: str
    headers: Any
    raw_body: bytes
    args: Any

    def json(self, *, allowed: frozenset[str] | None = None) -> dict[str, Any]:
        """The body as a JSON object, or InvalidRequest / UnsupportedMediaType naming what is wrong;
        with `allowed`, a field outside it is an InvalidRequest naming the unknown fields."""
        if not self.raw_body:
            raise InvalidRequest("The request body is empty; send a JSON object.")
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type and content_type != "application/json":
            raise UnsupportedMediaType()
        try:
            data = json.loads(self.raw_body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InvalidRequest("The request body is not valid JSON.") from None
        except ValueError:  # an integer of more digits than Python converts (4,300)
            raise InvalidRequest("The request body holds a number with too many digits.") from None
        except RecursionError:
            raise InvalidRequest(f"The request body nests deeper than {MAX_JSON_DEPTH} levels.") from None
        if not isinstance(data, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        problem = _hostile_json(data)
        if problem:
            raise InvalidRequest(problem)
        unknown = sorted(set(data) - allowed) if allowed is not None else []
        if unknown:
            raise InvalidRequest(f"Unknown field(s): {', '.join(unknown)}.", fields=unknown)
        return data

    def idempotency_key(self) -> str | None:
        """The `Idempotency-Key` header, if sent: an id under the one document-id rule, at most 200 bytes."""
        key = self.headers.get("Idempotency-Key")
        if key is None:
            return None
        if not key.strip():
            raise InvalidRequest("Idempotency-Key must not be blank.", field="Idempotency-Key")
        return ids.require_doc_id(key, "Idempotency-Key", max_bytes=MAX_IDEMPOTENCY_KEY_BYTES)


def _cors_headers(origin: str | None, methods: tuple[str, ...]) -> dict[str, str]:
    allowed = get_settings().allowed_origins
    if not origin or origin.rstrip("/").lower() not in allowed:
        return {"Vary": "Origin"}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": ", ".join((*methods, "OPTIONS")),
        "Access-Control-Allow-Headers": "Authorization, Content-Type, Idempotency-Key",
        "Access-Control-Expose-Headers": "Retry-After",
        "Access-Control-Max-Age": "3600",
        "Vary": "Origin",
    }


def _respond(reply: Reply, extra_headers: dict[str, str]) -> flask.Response:
    import flask

    headers = {**extra_headers, **reply.headers, "Cache-Control": "no-store"}
    return flask.Response(
        json.dumps(reply.body), status=reply.status, headers=headers, mimetype="application/json"
    )


def _stream_response(stream: Stream, extra_headers: dict[str, str]) -> flask.Response:
    import flask

    def pieces() -> Iterator[bytes]:
        try:
            for piece in stream.pieces:
                yield piece.encode()
        except Exception:
            log.error("stream broken off", exc_info=True)
            raise

    headers = {**extra_headers, "Cache-Control": "no-store"}
    return flask.Response(pieces(), status=200, headers=headers, mimetype="application/json")


def error_reply(exc: BaseException) -> Reply:
    """The one mapping from exceptions to HTTP: AppErrors as they say, anything else a bare 500."""
    if not isinstance(exc, AppError) and firestore_unavailable(exc):
        exc = Unavailable()
    if isinstance(exc, AppError):
        if exc.status >= 500:
            level = logging.ERROR if exc.alert else logging.WARNING
            log.log(level, "%s: %s", exc.code, exc, exc_info=exc.status == 500)
        return Reply(exc.body(), exc.status, dict(exc.headers))
    log.error("unhandled error", exc_info=exc)
    return Reply({"error": "internal", "message": "Something went wrong on our side."}, 500)


Handler = Callable[[Call], dict[str, Any] | Reply | Stream]


def endpoint(
    name: str, *, methods: tuple[str, ...], cors: bool = True, max_body: int = MAX_BODY_BYTES
) -> Callable[[Handler], Callable[[flask.Request], flask.Response]]:
    """Wrap a handler of `Call` into a functions-framework HTTP function."""

    def decorate(handler: Handler) -> Callable[[flask.Request], flask.Response]:
        def serve(request: flask.Request) -> flask.Response:
            started = time.perf_counter()
            logs.configure()
            logs.reset()
            extra: dict[str, str] = {}
            stream: Stream | None = None
            try:
                settings = get_settings()
                logs.bind(
                    function=name,
                    trace=logs.trace_from_header(
                        request.headers.get("X-Cloud-Trace-Context"), settings.project
                    ),
                )
                if cors:
                    extra = _cors_headers(request.headers.get("Origin"), methods)
                if request.method == "OPTIONS" and cors:
                    reply = Reply({}, 204)
                elif request.method not in methods:
                    raise MethodNotAllowed(
                        f"Use {' or '.join(methods)}.", headers={"Allow": ", ".join(methods)}
                    )
                else:
                    # Reading one byte past the limit bounds the work whatever Content-Length claims.
                    raw = request.stream.read(max_body + 1) if request.method != "GET" else b""
                    if len(raw) > max_body:
                        raise PayloadTooLarge(f"The body exceeds {max_body} bytes.", limit=max_body)
                    result = handler(Call(request.method, request.headers, raw, request.args))
                    if isinstance(result, Stream):
                        stream, reply = result, Reply({})
                    else:
                        reply = result if isinstance(result, Reply) else Reply(result)
            except Exception as exc:  # noqa: BLE001 - the one place errors become responses
                reply = error_reply(exc)
            response = _stream_response(stream, extra) if stream is not None else _respond(reply, extra)
            log.info(
                "%s %s %s",
                name,
                request.method,
                reply.status,
                extra={
                    "json_fields": {
                        "outcome": reply.body.get("error", "ok") if reply.status >= 400 else "ok",
                        "status": reply.status,
                        "creditsMoved": reply.credits_moved,
                        "latencyMs": round((time.perf_counter() - started) * 1000, 1),
                    }
                },
            )
            return response

        serve.__name__ = name
        serve.__doc__ = handler.__doc__
        return serve

    return decorate
