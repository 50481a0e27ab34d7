"""The local stack's own plumbing: the ports it gives its children."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from devstack import procs

Range = Callable[[int, int], None]


@pytest.fixture
def kernel_range(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[int, int], None]:
    """Set the ephemeral range free_port reads, as `ip_local_port_range` would say it."""

    def set_range(low: int, high: int) -> None:
        (tmp_path / "range").write_text(f"{low}\t{high}\n")
        monkeypatch.setattr(procs, "_EPHEMERAL_RANGE", tmp_path / "range")

    return set_range


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


@pytest.mark.parametrize(("low", "high"), [(32768, 60999), (20000, 40000), (1024, 30000)])
def test_any_kernel_range_leaves_ports_on_either_side(kernel_range: Range, low: int, high: int) -> None:
    kernel_range(low, high)

    ports = [procs.free_port() for _ in range(50)]

    assert not [p for p in ports if low <= p <= high or p < 10000]


def test_a_range_covering_nearly_every_port_falls_back_to_what_the_kernel_gives(kernel_range: Range) -> None:
    kernel_range(1024, 65535)

    port = procs.free_port()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_a_port_something_holds_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held, socket.socket() as spare:
        held.bind(("127.0.0.1", 0))
        held.listen()
        spare.bind(("127.0.0.1", 0))
        busy, free = held.getsockname()[1], spare.getsockname()[1]
        spare.close()
        offered = iter([busy, free])
        monkeypatch.setattr(procs.random, "choice", lambda _candidates: next(offered))

        assert procs.free_port() == free


def test_no_free_port_is_an_error_naming_the_range(
    monkeypatch: pytest.MonkeyPatch, kernel_range: Range
) -> None:
    kernel_range(32768, 60999)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        monkeypatch.setattr(procs.random, "choice", lambda _candidates: busy)
        with pytest.raises(RuntimeError, match=r"outside the ephemeral range 32768-60999"):
            procs.free_port()


def test_an_unreadable_range_falls_back_to_linux_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(procs, "_EPHEMERAL_RANGE", tmp_path / "missing")
    assert procs.ephemeral_ports() == range(32768, 61000)
