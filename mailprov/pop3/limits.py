"""Per-client limits for the POP3 server, as pure bookkeeping (the clock is injected).

* :class:`AuthThrottle`: failed logins counted per client address. Each failure is answered after a
  delay that grows with the count (``auth_failure_delay`` x failures, capped at :data:`MAX_DELAY`);
  once a client reaches ``max_auth_failures`` every further failure also disconnects it. A client's
  count is forgotten :data:`WINDOW` seconds after its last failure, or at its next successful login.
* :class:`ConnectionCounter`: connections in total and per client address.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

MAX_DELAY = 30.0  # seconds: the longest a failed login is held back
WINDOW = 900.0  # seconds after the last failure before a client's count is forgotten
MAX_TRACKED = 100_000  # client addresses remembered at most (oldest forgotten first)


class AuthThrottle:
    """Failed-login bookkeeping per client address."""

    def __init__(self, delay: float, max_failures: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.delay = delay
        self.max_failures = max_failures
        self._clock = clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def failures(self, client: str) -> int:
        """Failures counted for ``client`` now."""
        count, last = self._failures.get(client, (0, 0.0))
        if count and self._clock() - last > WINDOW:
            del self._failures[client]
            return 0
        return count

    def failure(self, client: str) -> tuple[float, bool]:
        """Record a failure; returns (seconds to wait before replying, whether to disconnect)."""
        count = self.failures(client) + 1
        self._failures[client] = (count, self._clock())
        self._failures.move_to_end(client)
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)
        return min(self.delay * count, MAX_DELAY), count >= self.max_failures

    def success(self, client: str) -> None:
        """A successful login clears the client's count."""
        self._failures.pop(client, None)


class ConnectionCounter:
    """Open connections, in total and per client address."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self._open = 0
        self._by_client: dict[str, int] = {}

    def admit(self, client: str) -> str | None:
        """Count a new connection, or return why it is refused (and count nothing)."""
        if self._open >= self.total:
            return "too many connections"
        if self._by_client.get(client, 0) >= self.per_client:
            return "too many connections from your address"
        self._open += 1
        self._by_client[client] = self._by_client.get(client, 0) + 1
        return None

    def release(self, client: str) -> None:
        """Forget a connection that :meth:`admit` counted."""
        self._open -= 1
        left = self._by_client.get(client, 1) - 1
        if left > 0:
            self._by_client[client] = left
        else:
            self._by_client.pop(client, None)
