"""What every benchmark shares: the local stack, a keep-alive HTTP client, load runners, statistics
and Markdown tables.

The benchmarks are scripts, not tests: each starts its own Firestore emulator and functions-framework
processes, measures the real entry points against a floor (`bench/floor_main.py`) in the same run,
and prints every figure next to its ratio to that floor.
"""

from __future__ import annotations

import ast
import contextlib
import http.client
import json
import os
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.auth import AuthEmulator
from devstack.firestore import FirestoreEmulator
from devstack.serve import ServedFunction
from devstack.tokens import emulator_id_token
from functions.lib.db import shard_of

ROOT = Path(__file__).resolve().parent.parent
MAIN_SOURCE = ROOT / "main.py"
FLOOR_SOURCE = ROOT / "bench" / "floor_main.py"
PROJECT = "demo-credits-bench"
TERMS = "2026-11-01"
WEBHOOK_SECRET = "whsec_bench_local"
# Every entry point of the contract (docs/ARCHITECTURE.md); a benchmark measures those main.py defines.
ENTRY_POINTS = (
    "generate",
    "consent",
    "credits",
    "checkout",
    "stripe_webhook",
    "retention_sweep",
    "account",
    "settle_charges",
    "purgeProject",
)
FIREBASE_FLOOR_SOURCE = ROOT / "bench" / "floor_firebase.py"


def entry_points() -> list[str]:
    """The entry points main.py defines, in the contract's order (read from the source, not imported)."""
    defined = {
        node.name for node in ast.parse(MAIN_SOURCE.read_text()).body if isinstance(node, ast.FunctionDef)
    }
    return [name for name in ENTRY_POINTS if name in defined]


def command() -> str:
    """The command line that reproduces this run."""
    module = Path(sys.argv[0]).resolve().relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
    return shlex.join(["python", "-m", module, *sys.argv[1:]])


class Stack:
    """One Firestore emulator, one Firebase Auth emulator and any number of served functions, all stopped on exit.

    Tokens are the emulator's unsigned ones (`token`); generate and checkout look each account up
    in the Auth emulator (disabled, revoked), so benchmarks that call them pass `auth=True` and
    `seed_user` creates the account there. Without it nothing listens at the Auth host.
    """

    def __init__(self, *, auth: bool = False) -> None:
        self.log_dir = Path(tempfile.mkdtemp(prefix="credits-bench-"))
        self._stops: list[Callable[[], None]] = []
        self.auth = AuthEmulator(PROJECT, log_dir=self.log_dir, wait=False) if auth else None
        if self.auth:
            self._stops.append(self.auth.stop)
        self.firestore = FirestoreEmulator(PROJECT, log_dir=self.log_dir)
        self._stops.append(self.firestore.stop)
        if self.auth:
            self.auth.wait_ready()
        self.env = {
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "FIRESTORE_EMULATOR_HOST": self.firestore.host,
            "FIREBASE_AUTH_EMULATOR_HOST": self.auth.host if self.auth else "127.0.0.1:9",
            "GENERATOR": "offline",
            "TERMS_VERSION": TERMS,
            "STRIPE_SECRET_KEY": "sk_test_bench",
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "ALLOWED_ORIGINS": "http://localhost:5173",
            # Benchmarks measure the paths, not the abuse limits: each limit is checked and counted the
            # same way at any value, so the per-user windows and concurrency are set out of reach.
            "GENERATE_LIMIT": "1000000",
            "GENERATE_CONCURRENCY": "1000",
            "CREDITS_LIMIT": "1000000",
            "CONSENT_LIMIT": "1000000",
            "EXPORT_LIMIT": "1000000",
        }
        # The bench process itself seeds data through the real domain code, against the same emulator.
        os.environ.update(self.env)
        self._warm_emulator()

    def _warm_emulator(self, timeout: float = 120) -> None:
        """Wait until the emulator serves a write: its JVM answers `Ok` well before its first commit is fast."""
        from functions.lib import db

        deadline = time.monotonic() + timeout
        while True:
            try:
                db.get_client().collection("bench_warmup").document("w").set({"at": time.time()}, timeout=30)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def serve(
        self, target: str, *, source: Path = MAIN_SOURCE, env: dict[str, str] | None = None, wait: bool = True
    ) -> ServedFunction:
        fn = ServedFunction(
            target, env={**self.env, **(env or {})}, log_dir=self.log_dir, source=source, wait=wait
        )
        self._stops.append(fn.stop)
        return fn

    def add_stop(self, stop: Callable[[], None]) -> None:
        self._stops.append(stop)

    def close(self) -> None:
        for stop in reversed(self._stops):
            with contextlib.suppress(Exception):
                stop()
        self._stops.clear()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def token(uid: str) -> str:
    return emulator_id_token(uid, PROJECT)


def seed_user(uid: str, credits: int) -> None:
    """A user with a Firebase Auth account who accepted the current terms and holds `credits`, written through the real domain code."""
    from firebase_admin import auth

    from functions.lib import db, ledger, terms
    from functions.lib.auth import _app

    with contextlib.suppress(auth.UidAlreadyExistsError):
        auth.create_user(uid=uid, app=_app())
    client = db.get_client()
    terms.accept(client, uid, TERMS, TERMS)
    if credits:
        ledger.grant(client, uid, f"bench-{uid}", credits, "benchmark seed")


def seed_project(project_id: str, versions: int, *, age_days: int = 120, marked: bool = False) -> None:
    """An expired project (last activity `age_days` ago) with `versions` versions, written in commits of 500
    (versions are not money, so they are written directly, as the sweep's tests do)."""
    from datetime import UTC, datetime, timedelta

    from functions.lib import db

    client = db.get_client()
    updated = datetime.now(UTC) - timedelta(days=age_days)
    project = client.collection("projects").document(project_id)
    batch, pending = client.batch(), 0
    for n in range(versions):
        doc = {
            "number": n + 1,
            "prompt": f"prompt {n}",
            "output": "output " * 20,
            "generationId": f"g{n}",
            "createdAt": updated,
        }
        batch.set(project.collection("versions").document(f"v{n:05d}"), doc)
        pending += 1
        if pending == 500:
            batch.commit()
            batch, pending = client.batch(), 0
    batch.set(
        project,
        {
            "ownerId": "bench",
            "shard": shard_of(project.id),
            "createdAt": updated,
            "updatedAt": updated,
            "versionCount": versions,
            "deletingAt": updated if marked else None,
        },
    )
    batch.commit()


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One keep-alive HTTP/1.1 connection to a served function, as a load balancer would hold it.

    gunicorn closes idle connections after 2 s, so a connection idle for 1 s is replaced before use
    rather than retrying a request that may have been received.
    """

    IDLE_S = 1.0

    def __init__(self, url: str, index: int = 0) -> None:
        self.index = index  # which of a run's clients this is, so a job can pick that client's user
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self._conn: http.client.HTTPConnection | None = None
        self._last = 0.0

    def request(
        self, method: str, path: str = "/", body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Answer:
        if self._conn is None or time.monotonic() - self._last > self.IDLE_S:
            self.close()
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        started = time.perf_counter()
        try:
            self._conn.request(method, path, body=body, headers=headers or {})
            response = self._conn.getresponse()
            data = response.read()
        except Exception:
            self.close()
            raise
        seconds = time.perf_counter() - started
        self._last = time.monotonic()
        if response.will_close:
            self.close()
        return Answer(response.status, data, {k.lower(): v for k, v in response.getheaders()}, seconds)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def json_post(
    client: Client, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None, path: str = "/"
) -> Answer:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.request("POST", path, data, {"Content-Type": "application/json", **(headers or {})})


@dataclass
class Run:
    """The answers of one load run and its wall time."""

    answers: list[Answer] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def latencies(self) -> list[float]:
        return [a.seconds for a in self.answers]

    @property
    def rate(self) -> float:
        return len(self.answers) / self.wall_s if self.wall_s else 0.0

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for a in self.answers:
            counts[a.status] = counts.get(a.status, 0) + 1
        return dict(sorted(counts.items()))

    def extend(self, other: Run) -> None:
        self.answers.extend(other.answers)
        self.wall_s += other.wall_s


def run_load(
    url: str, jobs: Sequence[Callable[[Client], Answer]], concurrency: int, *, together: bool = False
) -> Run:
    """Run `jobs` over `concurrency` clients (threads, one keep-alive connection each), as fast as they answer.

    With `together`, every job gets a client of its own (job i on client i), the connections are opened
    first, and a barrier releases all the requests at once.
    """
    if together:
        concurrency = len(jobs)
    clients = [Client(url, i) for i in range(concurrency)]
    if together:
        for c in clients:  # so the barrier releases requests, not TCP handshakes
            c.request("OPTIONS")
    barrier = threading.Barrier(concurrency) if together else None
    answers: list[Answer | None] = [None] * len(jobs)
    cursor = iter(range(len(jobs)))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(client: Client) -> None:
        if barrier is not None:
            barrier.wait()
        while True:
            with lock:
                i = client.index if barrier is not None else next(cursor, None)
            if i is None or answers[i] is not None:
                return
            try:
                answers[i] = jobs[i](client)
            except BaseException as exc:  # noqa: BLE001 - surfaced to the caller below
                errors.append(exc)
                return

    wall = _run_threads(clients, worker)
    if errors:
        raise errors[0]
    return Run([a for a in answers if a is not None], wall)


def _run_threads(clients: list[Client], worker: Callable[[Client], None]) -> float:
    """One thread per client running `worker`; the wall time until all are done (clients closed after)."""
    threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    for c in clients:
        c.close()
    return wall


def pct(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank, of `values`."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "n/a"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


@contextlib.contextmanager
def section(title: str) -> Iterator[None]:
    """Print a Markdown section with the command that reproduces it and the machine's load around it."""
    print(f"## {title}\n", flush=True)
    print(f"Command: `{command()}`  ", flush=True)
    print(f"Before: {load_average()}\n", flush=True)
    started = time.perf_counter()
    yield
    print(f"\nAfter: {load_average()}; took {time.perf_counter() - started:.0f} s\n", flush=True)


def progress(message: str) -> None:
    """Progress goes to stderr, so stdout stays the report."""
    print(message, file=sys.stderr, flush=True)


def cpu_seconds(pgid: int) -> float:
    """User plus system CPU time of every process in a process group (a served function: arbiter and worker)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
                total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


@contextlib.contextmanager
def cpu_meter(groups: dict[str, int], into: dict[str, float]) -> Iterator[None]:
    """Add the CPU seconds each named process group uses inside the block to `into[name]`."""
    before = {name: cpu_seconds(pgid) for name, pgid in groups.items()}
    yield
    for name, pgid in groups.items():
        into[name] = into.get(name, 0.0) + cpu_seconds(pgid) - before[name]
