"""The domain's clock: when grants expire is decided by this, not by the database.

Wall time in production. Tests and the reference model set a time of their own (`frozen`), so a
grant can expire at an exact second without waiting for it. The setting is process-wide on purpose:
the concurrent steps under test run in threads of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime

_fixed: datetime | None = None


def now() -> datetime:
    return _fixed if _fixed is not None else datetime.now(UTC)


@contextlib.contextmanager
def frozen(at: datetime) -> Iterator[None]:
    """Within the block, `now()` answers `at` (move it with `set_to`)."""
    global _fixed
    saved, _fixed = _fixed, at
    try:
        yield
    finally:
        _fixed = saved


def set_to(at: datetime) -> None:
    """Move a frozen clock (inside `frozen`)."""
    global _fixed
    if _fixed is None:
        raise RuntimeError("clock.set_to outside clock.frozen")
    _fixed = at
