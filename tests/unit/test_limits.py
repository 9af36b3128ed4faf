"""The per-client limits shared by SMTP and POP3 (pure bookkeeping, injected clock)."""

from __future__ import annotations

from mailprov.limits import MAX_DELAY, WINDOW, ConnectionLimiter, FailureThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delay_grows_per_client_and_blocks_at_the_limit():
    throttle = FailureThrottle(1.0, 3, clock=Clock())
    assert throttle.fail("192.0.2.1") == 1.0
    assert throttle.fail("192.0.2.1") == 2.0
    assert throttle.fail("192.0.2.2") == 1.0  # another client has its own count
    assert not throttle.blocked("192.0.2.1")
    assert throttle.fail("192.0.2.1") == 3.0
    assert throttle.blocked("192.0.2.1") and not throttle.blocked("192.0.2.2")
    for _ in range(100):
        delay = throttle.fail("192.0.2.1")
    assert delay == MAX_DELAY


def test_failures_are_forgotten_after_the_window_or_a_success():
    clock = Clock()
    throttle = FailureThrottle(1.0, 3, clock=clock)
    throttle.fail("192.0.2.1")
    throttle.fail("192.0.2.1")
    clock.now += WINDOW + 1
    assert throttle.failures("192.0.2.1") == 0
    throttle.fail("192.0.2.1")
    throttle.success("192.0.2.1")
    assert throttle.failures("192.0.2.1") == 0


def test_connection_limiter():
    limiter = ConnectionLimiter(total=3, per_client=2)
    assert limiter.acquire("a") is None and limiter.acquire("a") is None
    assert "from your address" in limiter.acquire("a")
    assert limiter.acquire("b") is None
    assert limiter.acquire("c") == "Too many connections, try again later"
    limiter.release("a")
    assert limiter.acquire("c") is None
    for client in ("a", "b", "c"):
        limiter.release(client)
    assert limiter.count == 0
    assert limiter.acquire("a") is None and limiter.acquire("a") is None
