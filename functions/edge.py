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
    # Runs once when the response ends, sent in full, broken off or abandoned by the client.
    on_close: Callable[[], None] | None = None


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
        "Access-Control-Allow-Headers": "Authorization, Content-Type, Idempotency-Key, X-Firebase-AppCheck",
        "Access-Control-Expose-Headers": "Retry-After",
        "Access-Control-Max-Age": "3600",
        "Vary": "Origin",
    }


def _respond(reply: Reply, extra_headers: dict[str, str]) -> flask.Response:
    import flask

    # no-store unless the handler's own answer says otherwise (the public catalog); errors never do.
    headers = {**extra_headers, "Cache-Control": "no-store", **reply.headers}
    return flask.Response(
        json.dumps(reply.body), status=reply.status, headers=headers, mimetype="application/json"
    )


class _StreamBody:
    """A streamed body that knows what it sent: a piece counts once the server asked for the next
    one (it was written). It ends once: when the last piece was taken, or when the WSGI server
    calls `close` before that (a client that went away, a broken stream); then the Stream's
    `on_close` runs and `ended(bytes_sent, client_gone)` hears of it."""

    def __init__(self, stream: Stream, ended: Callable[[int, bool], None]) -> None:
        self._stream, self._ended = stream, ended
        self.sent, self.over = 0, False

    def __iter__(self) -> Iterator[bytes]:
        try:
            for piece in self._stream.pieces:
                data = piece.encode()
                yield data
                self.sent += len(data)
        except Exception:
            log.error("stream broken off", exc_info=True)
            raise
        self._end(client_gone=False)

    def _end(self, *, client_gone: bool) -> None:
        if self.over:
            return
        self.over = True
        try:
            if self._stream.on_close is not None:
                self._stream.on_close()
        finally:
            self._ended(self.sent, client_gone)

    def close(self) -> None:
        self._end(client_gone=True)


def _stream_response(
    stream: Stream, extra_headers: dict[str, str], ended: Callable[[int, bool], None]
) -> flask.Response:
    import flask

    headers = {**extra_headers, "Cache-Control": "no-store"}
    body = _StreamBody(stream, ended)
    return flask.Response(body, status=200, headers=headers, mimetype="application/json")


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
APP_CHECK_HEADER = "X-Firebase-AppCheck"


@dataclass(frozen=True)
class _Route:
    name: str
    handler: Handler
    methods: tuple[str, ...]
    cors: bool
    max_body: int
    attested: bool

    def run(self, request: flask.Request) -> Reply | Stream:
        """The handler's answer to `request`, or the AppError that stops it before the handler."""
        if request.method == "OPTIONS" and self.cors:
            return Reply({}, 204)
        if request.method not in self.methods:
            raise MethodNotAllowed(
                f"Use {' or '.join(self.methods)}.", headers={"Allow": ", ".join(self.methods)}
            )
        # The browser-facing functions (those with CORS) are the ones an App Check token attests,
        # except public read-only ones (the catalog, which anyone and any cache may read).
        if self.cors and self.attested and get_settings().app_check:
            from functions.lib import auth

            auth.verify_app_check(request.headers.get(APP_CHECK_HEADER))
        # Reading one byte past the limit bounds the work whatever Content-Length claims.
        raw = request.stream.read(self.max_body + 1) if request.method != "GET" else b""
        if len(raw) > self.max_body:
            raise PayloadTooLarge(f"The body exceeds {self.max_body} bytes.", limit=self.max_body)
        result = self.handler(Call(request.method, request.headers, raw, request.args))
        return result if isinstance(result, Reply | Stream) else Reply(result)

    def log(self, method: str, reply: Reply, started: float, **more: Any) -> None:
        """The request's one line: outcome, status, credits moved, latency (and a stream's bytes)."""
        fields = {
            "outcome": reply.body.get("error", "ok") if reply.status >= 400 else "ok",
            "status": reply.status,
            "creditsMoved": reply.credits_moved,
            **more,
            "latencyMs": round((time.perf_counter() - started) * 1000, 1),
        }
        log.info("%s %s %s", self.name, method, reply.status, extra={"json_fields": fields})

    def serve(self, request: flask.Request) -> flask.Response:
        started = time.perf_counter()
        logs.configure()
        logs.reset()
        extra: dict[str, str] = {}
        try:
            settings = get_settings()
            logs.bind(
                function=self.name,
                trace=logs.trace_from_header(request.headers.get("X-Cloud-Trace-Context"), settings.project),
            )
            if self.cors:
                extra = _cors_headers(request.headers.get("Origin"), self.methods)
            result = self.run(request)
        except Exception as exc:  # noqa: BLE001 - the one place errors become responses
            result = error_reply(exc)
        if isinstance(result, Reply):
            self.log(request.method, result, started)
            return _respond(result, extra)
        context = logs.snapshot()

        def ended(sent: int, client_gone: bool) -> None:
            # A stream's line is written when it ends, with what was sent and whether the client went
            # away first: its status line left long before, so "200 in 6 ms" would say nothing.
            with logs.restored(context):
                self.log(request.method, Reply({}), started, bytesSent=sent, clientGone=client_gone)

        return _stream_response(result, extra, ended)


def endpoint(
    name: str,
    *,
    methods: tuple[str, ...],
    cors: bool = True,
    max_body: int = MAX_BODY_BYTES,
    attested: bool = True,
) -> Callable[[Handler], Callable[[flask.Request], flask.Response]]:
    """Wrap a handler of `Call` into a functions-framework HTTP function; `attested=False` skips the
    App Check token a browser-facing function otherwise requires (public, cacheable answers)."""

    def decorate(handler: Handler) -> Callable[[flask.Request], flask.Response]:
        route = _Route(name, handler, methods, cors, max_body, attested)

        def serve(request: flask.Request) -> flask.Response:
            return route.serve(request)

        serve.__name__ = name
        serve.__doc__ = handler.__doc__
        return serve

    return decorate
