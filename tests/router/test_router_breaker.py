"""Circuit breaker: when it opens, how it probes, when it closes."""

from __future__ import annotations

from router.breaker import BreakerConfig, BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(**kwargs) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    config = BreakerConfig(
        **{"consecutive_failures": 3, "min_requests": 10, "cooldown_s": 5.0, **kwargs}
    )
    return CircuitBreaker(config, clock=clock), clock


def test_opens_after_consecutive_failures():
    breaker, _ = make()
    for _ in range(2):
        assert breaker.allow()
        breaker.record(False)
    assert breaker.state is BreakerState.CLOSED
    breaker.record(False)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()


def test_success_resets_the_consecutive_count():
    breaker, _ = make()
    for ok in (False, False, True, False, False, True):
        breaker.record(ok)
    assert breaker.state is BreakerState.CLOSED


def test_opens_on_error_rate_over_the_window():
    breaker, _ = make(consecutive_failures=100, error_rate=0.5, min_requests=10)
    for i in range(10):
        breaker.record(i % 2 == 0)  # alternate: never 2 failures in a row, 50 % errors
    assert breaker.state is BreakerState.OPEN


def test_old_failures_leave_the_window():
    breaker, clock = make(consecutive_failures=100, error_rate=0.5, min_requests=4, window_s=10)
    breaker.record(False)
    breaker.record(False)
    clock.now = 20
    for _ in range(3):
        breaker.record(True)
    breaker.record(False)
    assert breaker.state is BreakerState.CLOSED


def test_after_cooldown_one_probe_passes_and_success_closes():
    breaker, clock = make()
    for _ in range(3):
        breaker.record(False)
    clock.now = 4.9
    assert not breaker.peek() and not breaker.allow()
    clock.now = 5.0
    assert breaker.peek()
    assert breaker.allow()  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # only one probe at a time
    breaker.record(True)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()


def test_failed_probe_opens_again_for_another_cooldown():
    breaker, clock = make()
    for _ in range(3):
        breaker.record(False)
    clock.now = 6
    assert breaker.allow()
    breaker.record(False)
    assert breaker.state is BreakerState.OPEN
    assert breaker.opened_count == 2
    clock.now = 10
    assert not breaker.allow()
    clock.now = 11
    assert breaker.allow()


def test_reset_closes_for_a_new_canary():
    breaker, _ = make()
    for _ in range(3):
        breaker.record(False)
    breaker.reset()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
