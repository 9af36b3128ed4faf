"""SMTP AUTH support: failure counting per client, and connection limits.

Passwords are checked by :meth:`mailprov.users.UserDB.verify` (argon2id, run in a worker thread). This
module holds the bookkeeping around it: a failed attempt is answered after ``auth_failure_delay`` seconds
times the number of recent failures from that client, and after ``max_auth_failures`` the client is
disconnected (421). Failures are forgotten ``window`` seconds after the last one. Both classes are pure
bookkeeping with an injectable clock, testable without sockets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class AuthIdentity:
    """What a successful AUTH leaves on the session: the login only, never the password."""

    login: str

    def __repr__(self) -> str:
        return f"AuthIdentity({self.login!r})"


class AuthLimiter:
    """Counts failed AUTH attempts per client address."""

    def __init__(self, delay: float, max_failures: int, *, window: float = 900.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.delay = delay
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self._failures: dict[str, tuple[int, float]] = {}

    def failures(self, client: str) -> int:
        """Recent failures from ``client``."""
        count, last = self._failures.get(client, (0, 0.0))
        if count and self.clock() - last > self.window:
            self._failures.pop(client, None)
            return 0
        return count

    def blocked(self, client: str) -> bool:
        """Whether ``client`` has used up its attempts."""
        return self.failures(client) >= self.max_failures

    def fail(self, client: str) -> float:
        """Record a failure; returns how long to wait before answering it."""
        count = self.failures(client) + 1
        self._failures[client] = (count, self.clock())
        if len(self._failures) > 100_000:  # bound memory under a distributed attack: forget the oldest
            oldest = sorted(self._failures.items(), key=lambda kv: kv[1][1])[:10_000]
            for key, _ in oldest:
                self._failures.pop(key, None)
        return self.delay * count


class ConnectionLimiter:
    """Concurrent connections in total and per client address."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.count = 0
        self._per: dict[str, int] = {}

    def acquire(self, client: str) -> str | None:
        """Take a slot; returns the refusal reason instead when a limit is reached."""
        if self.count >= self.total:
            return "Too many connections, try again later"
        if self._per.get(client, 0) >= self.per_client:
            return "Too many connections from your address, try again later"
        self.count += 1
        self._per[client] = self._per.get(client, 0) + 1
        return None

    def release(self, client: str) -> None:
        """Give a slot back."""
        self.count = max(0, self.count - 1)
        left = self._per.get(client, 0) - 1
        if left > 0:
            self._per[client] = left
        else:
            self._per.pop(client, None)
