"""Process-wide objects built on first use, exactly once even when first uses race.

A fresh instance takes up to `concurrency` requests at once, so its first calls arrive together.
`functools.cache` does not serialize a first call: every thread that finds the cache empty runs
the function. For firebase-admin that was a 401 for a valid token (the second
`initialize_app(name=...)` raises ValueError "already exists", and the token check reads any
ValueError as a bad token: about half of 200 fresh processes with 8 concurrent first calls failed);
for a Firestore, Stripe or Gemini client it is a second client whose connections nothing closes.
`once` runs the builder under a lock, so racing first callers wait for the one build and share it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Hashable
from typing import Generic, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Once(Generic[P, T]):
    """`fn`'s result per distinct arguments, built by one caller while the others wait."""

    def __init__(self, fn: Callable[P, T]) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        self._built: dict[Hashable, T] = {}
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        key = (args, tuple(sorted(kwargs.items())))
        try:
            return self._built[key]  # the common path, once built: no lock
        except KeyError:
            pass
        with self._lock:
            if key not in self._built:
                # A builder that raises caches nothing: the next caller tries again.
                self._built[key] = self._fn(*args, **kwargs)
            return self._built[key]

    def cache_clear(self) -> None:
        """Forget what was built (tests, which change the environment between cases)."""
        with self._lock:
            self._built.clear()


def once(fn: Callable[P, T]) -> Once[P, T]:
    """Decorate a builder of a process-wide object: see the module docstring."""
    return Once(fn)
