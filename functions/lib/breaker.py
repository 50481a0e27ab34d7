"""The model's circuit breaker: when the model answers 429 or 5xx in a burst, stop calling it for a
while and answer 503 with Retry-After, charging nothing.

Per process (one instance of `generate`), in memory: it costs no round trip, and each instance
learns of an outage from its own calls, at most `failures` of them. Only upstream answers count
(429 quota, 5xx): a timeout or a blocked prompt can be provoked by a user's own prompt and must not
let one user shut the model off for everyone.

States: closed (calls pass; failures within `window_s` are counted), open (for `cooldown_s` every
call is refused), half-open (after the cooldown one trial call passes; its success closes the
breaker, an upstream failure opens it again, anything else lets the next call be the trial).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from functions.lib.config import get_settings
from functions.lib.errors import ModelUnavailable
from functions.lib.once import once

# While the trial call is out, other callers come back after about one model call.
TRIAL_RETRY_S = 2


@dataclass(frozen=True)
class Ticket:
    """Leave to call the model once; `trial` when it is the half-open breaker's one call."""

    trial: bool = False


class CircuitBreaker:
    def __init__(
        self, failures: int, window_s: float, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures, self.window_s, self.cooldown_s = failures, window_s, cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: deque[float] = deque()
        self._open_until: float | None = None
        self._trial_out = False

    @property
    def state(self) -> str:
        with self._lock:
            if self._open_until is None:
                return "closed"
            return "open" if self._clock() < self._open_until else "half-open"

    def admit(self) -> Ticket:
        """Leave to call the model, or ModelUnavailable (503 with Retry-After) while open."""
        with self._lock:
            if self._open_until is None:
                return Ticket()
            left = self._open_until - self._clock()
            if left > 0:
                raise ModelUnavailable(retry_after_s=max(1, math.ceil(left)))
            if self._trial_out:
                raise ModelUnavailable(retry_after_s=TRIAL_RETRY_S)
            self._trial_out = True
            return Ticket(trial=True)

    def succeeded(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket.trial:
                self._open_until, self._trial_out = None, False
                self._recent.clear()

    def failed_upstream(self, ticket: Ticket) -> None:
        """The model answered 429 or 5xx."""
        with self._lock:
            now = self._clock()
            if ticket.trial:
                self._open_until, self._trial_out = now + self.cooldown_s, False
                return
            self._recent.append(now)
            while self._recent and self._recent[0] <= now - self.window_s:
                self._recent.popleft()
            if len(self._recent) >= self.failures and self._open_until is None:
                self._open_until = now + self.cooldown_s
                self._recent.clear()

    def release(self, ticket: Ticket) -> None:
        """The model was not called, or answered in a way that says nothing about its health."""
        with self._lock:
            if ticket.trial:
                self._trial_out = False


@once
def get_breaker() -> CircuitBreaker:
    """This process's breaker, from the settings. Tests call `get_breaker.cache_clear()`."""
    s = get_settings()
    return CircuitBreaker(s.breaker_failures, s.breaker_window_s, s.breaker_cooldown_s)
