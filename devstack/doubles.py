"""Small local HTTP doubles of the outside services: the Gemini API and the Stripe API.

Each runs a ThreadingHTTPServer on 127.0.0.1 in a background thread, records what it received,
and answers as its `mode` says, so tests drive the real client libraries over real HTTP.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))


class _Server(ThreadingHTTPServer):
    # Many callers may connect at once (bench_online: 20 generations in flight); the default listen
    # backlog of 5 makes the kernel refuse some of those connections.
    request_queue_size = 128


@dataclass
class _Double:
    mode: str = "ok"
    delay_s: float = 0.0
    # When set, each request waits for it before answering (a test opens it when it is ready).
    gate: threading.Event | None = None
    received: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def answer(self, req: Received) -> tuple[int, dict[str, Any]]:
        raise NotImplementedError

    def respond(self, req: Received) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body bytes; a JSON API by default (`answer`), overridden for pages."""
        status, body = self.answer(req)
        return status, {"Content-Type": "application/json"}, json.dumps(body).encode()

    def start(self) -> _Double:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                req = Received(
                    self.command, self.path, {k: v for k, v in self.headers.items()}, self.rfile.read(length)
                )
                double.received.append(req)
                if double.gate is not None:
                    double.gate.wait(timeout=60)
                if double.delay_s:
                    time.sleep(double.delay_s)
                status, headers, payload = double.respond(req)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PATCH = do_DELETE = _serve

            def log_message(self, *args: object) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class GeminiDouble(_Double):
    """Answers `POST /v1beta/models/MODEL:generateContent`. Modes: ok, error500, error429, hang,
    blocked (the prompt refused by safety filters), max_tokens (the output cap reached before any
    text). `received` holds every request; `generation_config(n)` is the n-th one's generationConfig."""

    def generation_config(self, n: int = -1) -> dict[str, Any]:
        config: dict[str, Any] = json.loads(self.received[n].body).get("generationConfig", {})
        return config

    def answer(self, req: Received) -> tuple[int, dict[str, Any]]:
        if self.mode == "hang":
            time.sleep(30)
        if self.mode == "error500":
            return 500, {"error": {"code": 500, "message": "internal", "status": "INTERNAL"}}
        if self.mode == "error429":
            return 429, {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}
        if self.mode == "blocked":
            return 200, {"promptFeedback": {"blockReason": "SAFETY"}}
        if self.mode == "max_tokens":
            return 200, {
                "candidates": [{"content": {"role": "model", "parts": []}, "finishReason": "MAX_TOKENS"}]
            }
        prompt = ""
        with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
            prompt = json.loads(req.body)["contents"][0]["parts"][0]["text"]
        return 200, {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": f"gemini says: {prompt}"}]},
                    "finishReason": "STOP",
                }
            ]
        }


class AppCheckKeysDouble(_Double):
    """Firebase App Check's key set (JWKS), and tokens signed with its key the way App Check signs
    them: RS256, a `kid`, `typ` JWT. Tests point firebase-admin's key URL here."""

    @functools.cached_property
    def _key(self) -> Any:
        from cryptography.hazmat.primitives.asymmetric import rsa

        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def answer(self, req: Received) -> tuple[int, dict[str, Any]]:
        from jwt.algorithms import RSAAlgorithm

        jwk = json.loads(RSAAlgorithm.to_jwk(self._key.public_key()))
        return 200, {"keys": [{**jwk, "kid": "local", "alg": "RS256", "use": "sig"}]}

    def token(self, project: str, *, app_id: str = "1:123:web:abc", expires_in_s: int = 3600) -> str:
        import jwt

        now = int(time.time())
        claims = {
            "iss": "https://firebaseappcheck.googleapis.com/123",
            "aud": ["projects/123", f"projects/{project}"],
            "sub": app_id,
            "iat": now,
            "exp": now + expires_in_s,
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": "local", "typ": "JWT"})
