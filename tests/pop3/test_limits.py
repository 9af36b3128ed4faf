"""Failed-login throttle and connection counts (pure bookkeeping, injected clock)."""

from __future__ import annotations

from mailprov.pop3.limits import MAX_DELAY, WINDOW, AuthThrottle, ConnectionCounter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delay_grows_per_client_and_disconnects_at_the_limit():
    clock = Clock()
    throttle = AuthThrottle(1.0, 3, clock=clock)
    assert throttle.failure("192.0.2.1") == (1.0, False)
    assert throttle.failure("192.0.2.1") == (2.0, False)
    assert throttle.failure("192.0.2.2") == (1.0, False)  # another client has its own count
    assert throttle.failure("192.0.2.1") == (3.0, True)
    assert throttle.failure("192.0.2.1") == (4.0, True)  # stays disconnecting while remembered
    for _ in range(100):
        delay, _ = throttle.failure("192.0.2.1")
    assert delay == MAX_DELAY


def test_failures_are_forgotten_after_the_window_or_a_success():
    clock = Clock()
    throttle = AuthThrottle(1.0, 3, clock=clock)
    throttle.failure("192.0.2.1")
    throttle.failure("192.0.2.1")
    clock.now += WINDOW + 1
    assert throttle.failures("192.0.2.1") == 0
    throttle.failure("192.0.2.1")
    throttle.success("192.0.2.1")
    assert throttle.failures("192.0.2.1") == 0


def test_connection_counter():
    counter = ConnectionCounter(total=3, per_client=2)
    assert counter.admit("a") is None and counter.admit("a") is None
    assert counter.admit("a") == "too many connections from your address"
    assert counter.admit("b") is None
    assert counter.admit("c") == "too many connections"
    counter.release("a")
    assert counter.admit("c") is None
    counter.release("a")
    counter.release("b")
    counter.release("c")
    assert counter.admit("a") is None and counter.admit("a") is None
