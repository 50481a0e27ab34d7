"""The local stack's own plumbing: the ports it gives its children."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from devstack import procs


def test_ports_come_from_outside_the_range_outgoing_connections_use_and_never_twice() -> None:
    # CI once saw firebase-tools refuse a port from bind(0): a client's connection held it by then.
    ephemeral = procs.ephemeral_ports()
    ports = [procs.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert not [p for p in ports if p in ephemeral]
    for port in ports[:20]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
            sock.listen()


def test_a_port_something_holds_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        offered = iter([busy, busy + 1 if busy < 65535 else busy - 1])
        monkeypatch.setattr(procs.random, "choice", lambda _candidates: next(offered))
        assert procs.free_port() != busy


def test_no_free_port_is_an_error_naming_the_range(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        monkeypatch.setattr(procs.random, "choice", lambda _candidates: busy)
        with pytest.raises(RuntimeError, match=r"no free TCP port on 127\.0\.0\.1 in 10000-"):
            procs.free_port()


def test_an_unreadable_range_falls_back_to_linux_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setattr(procs, "_EPHEMERAL_RANGE", tmp_path / "missing")
    assert procs.ephemeral_ports() == range(32768, 61000)
