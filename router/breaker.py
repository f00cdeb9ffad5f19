"""A circuit breaker that stops sending traffic to a failing canary.

closed: requests pass; it opens after N consecutive failures, or when the failure rate over a
sliding window reaches a threshold with enough requests. open: requests are refused (the router
sends them to stable) until the cool-down ends. half-open: one probe request passes; success
closes the breaker, failure opens it again for another cool-down.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerConfig:
    consecutive_failures: int = 5
    error_rate: float = 0.5
    min_requests: int = 20
    window_s: float = 10.0
    cooldown_s: float = 5.0


class CircuitBreaker:
    """Breaker state for one upstream; not thread-safe (one event loop owns it)."""

    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._events: deque[tuple[float, bool]] = deque()
        self._failures_in_window = 0
        self._consecutive = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self.state = BreakerState.CLOSED
        self.opened_count = 0

    def allow(self) -> bool:
        """Whether a request may go to the upstream now (claims the probe when half-open)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.config.cooldown_s:
                return False
            self.state = BreakerState.HALF_OPEN
            self._probe_in_flight = False
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def peek(self) -> bool:
        """Whether `allow` would let a request through, without claiming a probe."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            return self._clock() - self._opened_at >= self.config.cooldown_s
        return not self._probe_in_flight

    def record(self, success: bool) -> None:
        """Report the outcome of a request that `allow` let through."""
        now = self._clock()
        if self.state is BreakerState.HALF_OPEN:
            self._probe_in_flight = False
            if success:
                self._close()
            else:
                self._open(now)
            return
        if self.state is BreakerState.OPEN:
            return  # a late answer to a request sent before the breaker opened
        self._events.append((now, success))
        if not success:
            self._failures_in_window += 1
        self._consecutive = 0 if success else self._consecutive + 1
        self._expire(now)
        total = len(self._events)
        if self._consecutive >= self.config.consecutive_failures or (
            total >= self.config.min_requests
            and self._failures_in_window / total >= self.config.error_rate
        ):
            self._open(now)

    def reset(self) -> None:
        """Forget everything (a new canary version is a new upstream)."""
        self._close()

    def _expire(self, now: float) -> None:
        horizon = now - self.config.window_s
        while self._events and self._events[0][0] < horizon:
            _, ok = self._events.popleft()
            if not ok:
                self._failures_in_window -= 1

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self._opened_at = now
        self.opened_count += 1
        self._events.clear()
        self._failures_in_window = 0
        self._consecutive = 0

    def _close(self) -> None:
        self.state = BreakerState.CLOSED
        self._events.clear()
        self._failures_in_window = 0
        self._consecutive = 0
        self._probe_in_flight = False
