"""Child processes and ports: start, wait until ready, stop."""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def ephemeral_ports() -> range:
    """The ports the kernel gives the local end of outgoing connections (Linux's default if unreadable)."""
    try:
        low, high = (int(n) for n in _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing holds right now, outside the ephemeral range, never handed out twice.

    A port from bind(0) comes from the ephemeral range, where every outgoing connection on the machine
    takes its local port: between this call and the child's listen, a client's connection could hold it,
    and the child (firebase-tools checks first) refuses to start. Ports below the range are never taken
    that way; one handed out earlier in this process is not offered again (the child may not listen yet).
    """
    ephemeral = ephemeral_ports()
    candidates = [*range(10000, min(ephemeral.start, 65536)), *range(max(ephemeral.stop, 10000), 65536)]
    if len(candidates) < 1000:  # the kernel's range covers (nearly) everything: take what it gives
        return _bind_any()
    for _ in range(500):
        port = random.choice(candidates)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(
        f"no free TCP port on 127.0.0.1 among {len(candidates)} outside the ephemeral range "
        f"{ephemeral.start}-{ephemeral.stop - 1}"
    )


def _bind_any() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    _handed_out.add(port)
    return port


def http_ok(url: str, *, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


def wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Poll `ready` until it is true; fail with the child's log tail if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    state = (
        f"exited with {proc.returncode}"
        if proc is not None and proc.poll() is not None
        else f"not ready after {timeout:.0f}s"
    )
    raise RuntimeError(f"{what} {state}\n{tail}")


_running: set[Child] = set()


@atexit.register
def _stop_leftovers() -> None:
    """A run that ends with an exception (or Ctrl-C) still stops what it started."""
    for child in list(_running):
        child.stop(grace=2)


class Child:
    """A child process in its own process group, logging to a file; stopped at exit at the latest."""

    def __init__(
        self, argv: Sequence[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.argv = list(argv)
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        _running.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL the whole group: what a function timeout or a crash does."""
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, *, grace: float = 5.0) -> None:
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log_file.close()
        _running.discard(self)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
