"""Per-client limits shared by the SMTP and POP3 servers, as pure bookkeeping (the clock is injected).

* :class:`FailureThrottle`: failed logins counted per client address. Each failure is answered after a
  delay that grows with the count (``delay`` x failures, capped at ``max_delay``); once a client reaches
  ``max_failures`` it is blocked (SMTP answers 421, POP3 disconnects). A client's count is forgotten
  ``window`` seconds after its last failure, or at its next successful login. At most
  :data:`MAX_TRACKED` addresses are remembered (the oldest forgotten first), so a distributed attack
  cannot grow memory without bound.
* :class:`AuthThrottle`: the asynchronous face of a FailureThrottle the SMTP, POP3 and IMAP servers use,
  so that the counts can live in another process: :class:`LocalAuthThrottle` counts in this one (a
  single-process server, and the master of worker processes); a worker asks its master over its
  channel (mailprov.workers), so N workers still allow ``max_failures`` in all, not N times it.
* :class:`ConnectionLimiter`: concurrent connections in total and per client address.
* :func:`client_in`: whether a client address is in a list of networks (``plaintext_networks``).
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Protocol

MAX_DELAY = 30.0  # seconds: the longest a failed login is held back
WINDOW = 900.0  # seconds after the last failure before a client's count is forgotten
MAX_TRACKED = 100_000  # client addresses remembered at most


class FailureThrottle:
    """Failed-login bookkeeping per client address."""

    def __init__(
        self,
        delay: float,
        max_failures: int,
        *,
        window: float = WINDOW,
        max_delay: float = MAX_DELAY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.delay = delay
        self.max_failures = max_failures
        self.window = window
        self.max_delay = max_delay
        self.clock = clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def failures(self, client: str) -> int:
        """Recent failures from ``client``."""
        count, last = self._failures.get(client, (0, 0.0))
        if count and self.clock() - last > self.window:
            del self._failures[client]
            return 0
        return count

    def blocked(self, client: str) -> bool:
        """Whether ``client`` has used up its attempts."""
        return self.failures(client) >= self.max_failures

    def fail(self, client: str) -> float:
        """Record a failure; returns how long to wait before answering it."""
        count = self.failures(client) + 1
        self._failures[client] = (count, self.clock())
        self._failures.move_to_end(client)
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)
        return min(self.delay * count, self.max_delay)

    def success(self, client: str) -> None:
        """A successful login clears the client's count."""
        self._failures.pop(client, None)


class AuthThrottle(Protocol):
    """Failed-login counting as the SMTP handler sees it (the counts may live in another process)."""

    async def blocked(self, client: str) -> bool:
        """Whether ``client`` has used up its attempts."""
        ...

    async def fail(self, client: str) -> tuple[float, int]:
        """Record a failure; returns the delay before answering it and the client's failures so far."""
        ...

    async def success(self, client: str) -> None:
        """A successful login clears the client's count."""
        ...


class LocalAuthThrottle:
    """An :class:`AuthThrottle` over a :class:`FailureThrottle` held in this process."""

    def __init__(self, throttle: FailureThrottle) -> None:
        self.throttle = throttle

    async def blocked(self, client: str) -> bool:
        """Whether ``client`` has used up its attempts."""
        return self.throttle.blocked(client)

    async def fail(self, client: str) -> tuple[float, int]:
        """Record a failure; returns the delay before answering it and the client's failures so far."""
        delay = self.throttle.fail(client)
        return delay, self.throttle.failures(client)

    async def success(self, client: str) -> None:
        """A successful login clears the client's count."""
        self.throttle.success(client)


class ConnectionLimiter:
    """Concurrent connections in total and per client address."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.count = 0
        self._per: dict[str, int] = {}

    def acquire(self, client: str) -> str | None:
        """Take a slot; returns the refusal reason instead (and takes nothing) when a limit is reached."""
        if self.count >= self.total:
            return "Too many connections, try again later"
        if self._per.get(client, 0) >= self.per_client:
            return "Too many connections from your address, try again later"
        self.count += 1
        self._per[client] = self._per.get(client, 0) + 1
        return None

    def release(self, client: str) -> None:
        """Give back a slot that :meth:`acquire` took."""
        self.count = max(0, self.count - 1)
        left = self._per.get(client, 0) - 1
        if left > 0:
            self._per[client] = left
        else:
            self._per.pop(client, None)


def client_in(client: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether the address ``client`` (IPv4-mapped IPv6 counts as IPv4; a zone index is ignored) lies in
    one of ``networks``; False for anything that is not an address."""
    try:
        addr = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)
