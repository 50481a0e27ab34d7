"""A fresh instance's first requests arrive together: each process-wide object is built once, and
a valid token is never refused because another request was building the firebase-admin app."""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from devstack.procs import wait_until
from devstack.serve import ServedFunction
from tests.helpers import make_user, reset_caches, token

CONCURRENT = 8


@pytest.fixture(autouse=True)
def _eager_thread_switches() -> Iterator[None]:
    """Switch threads every microsecond instead of every 5 ms, so a builder that is not guarded
    is interleaved the way a fresh instance's first requests (still importing) interleave it."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def together(n: int, call: Callable[[int], Any]) -> list[Any]:
    """`call(i)` in n threads released at once; each result, or the exception it raised."""
    gate = threading.Barrier(n)

    def run(i: int) -> Any:
        gate.wait()
        try:
            return call(i)
        except Exception as exc:  # noqa: BLE001 - the test inspects what each thread got
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_racing_first_token_checks_all_accept_valid_tokens(db: Any) -> None:
    from functions.lib import auth

    headers = [f"Bearer {token(f'racer{i}')}" for i in range(CONCURRENT)]
    for _ in range(25):  # before the fix, most rounds had a ValueError read as an invalid token
        reset_caches()
        got = together(CONCURRENT, lambda i: auth.authenticate(headers[i], check_revoked=True))
        assert got == [f"racer{i}" for i in range(CONCURRENT)]


@pytest.mark.parametrize(
    "builder",
    [
        "db.get_client",
        "db.rpc",
        "auth.firebase_app",
        "config.get_settings",
        "models.get_provider",
        "breaker.get_breaker",
        "limits.running_exports",
    ],
)
def test_racing_first_uses_share_one_process_wide_object(db: Any, builder: str) -> None:
    from functions.lib import auth, breaker, config, limits, models
    from functions.lib import db as db_module

    modules = {
        "db": db_module,
        "auth": auth,
        "config": config,
        "models": models,
        "breaker": breaker,
        "limits": limits,
    }
    module, name = builder.split(".")
    build = getattr(modules[module], name)
    for _ in range(10):
        reset_caches()
        got = together(CONCURRENT, lambda _: build())
        assert not [g for g in got if isinstance(g, Exception)]
        assert len({id(g) for g in got}) == 1, f"{builder} built {len({id(g) for g in got})} objects"


def test_racing_first_uses_share_one_gemini_provider_and_stripe_client(
    db: Any, gemini: Any, stripe_api: Any
) -> None:
    from functions.lib import models
    from functions.lib import stripe_api as stripe_module
    from functions.lib.config import get_settings

    for _ in range(10):
        reset_caches()
        stripe_module._client.cache_clear()
        providers = together(CONCURRENT, lambda _: models.get_provider())
        clients = together(CONCURRENT, lambda _: stripe_module.get_client(get_settings()))
        assert len({id(p) for p in providers}) == 1
        assert len({id(c) for c in clients}) == 1


def _first_calls(fn: ServedFunction, tokens: list[str]) -> list[int]:
    def call(i: int) -> int:
        req = urllib.request.Request(fn.url + "/", headers={"Authorization": f"Bearer {tokens[i]}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as res:
                json.load(res)
                return int(res.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    return together(len(tokens), call)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_a_fresh_served_process_answers_its_concurrent_first_requests(db: Any) -> None:
    """Each round starts a new functions-framework process and, once its port accepts connections
    (Cloud Run's default startup probe is the same TCP check), sends it 8 requests with valid tokens
    at once: they are its first requests, so they import the handler and build the clients together."""
    uids = [f"fresh{i}" for i in range(CONCURRENT)]
    for uid in uids:
        make_user(db, uid)
    tokens = [token(uid) for uid in uids]
    log_dir = Path(tempfile.mkdtemp(prefix="first-calls-"))
    # The served process switches threads as eagerly as this test does (a loaded instance does).
    (log_dir / "sitecustomize.py").write_text("import sys\nsys.setswitchinterval(1e-6)\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(log_dir), os.environ.get("PYTHONPATH")]))}
    for _ in range(8):  # before the fix, most fresh processes refused at least one first call
        fn = ServedFunction("consent", env=env, log_dir=log_dir, wait=False)
        try:
            wait_until(
                functools.partial(_listening, fn.port), what="consent's port", timeout=60, proc=fn.child.proc
            )
            statuses = _first_calls(fn, tokens)
        finally:
            fn.stop()
        assert statuses == [200] * CONCURRENT, fn.child.log.read_text()[-2000:]
