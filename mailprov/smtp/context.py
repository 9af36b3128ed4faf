"""What the SMTP sessions of one process share, and how a process builds it.

Both kinds of SMTP process build their :class:`SMTPContext` here: the single-process server and the
master (mailprov.smtp.service), whose intake hands queued items to its own queue runner and whose
limits are counted in memory; and each worker process (mailprov.smtp.workers), whose intake tells
the master the queue id and whose connection and AUTH-failure counts live in the master, asked over
the worker's channel. The handler depends only on the interfaces below, not on the protocol's module
(mailprov.smtp.server, which builds handlers) nor on the service's: no import goes back up.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from typing import Any, Protocol

from mailprov.config import Config
from mailprov.limits import AuthThrottle
from mailprov.queue.store import QueueItem
from mailprov.users import AliasDB, Directory, UserDB

RECHECK = 0.5  # seconds between checks of the users and aliases files for changes


class Acceptor(Protocol):
    """Takes a received message into custody (mailprov.queue.intake.Intake)."""

    async def accept(self, item: QueueItem, message: bytes) -> bool:
        """Return once the message is durable: True if delivered at once, False if queued."""
        ...


class Limiter(Protocol):
    """Concurrent connections (mailprov.limits.ConnectionLimiter, or in a worker the master's)."""

    def acquire(self, client: str) -> str | None: ...

    def release(self, client: str) -> None: ...


class Connection(Protocol):
    """What the handler uses of the protocol object serving its session (mailprov.smtp.server's)."""

    client_ip: str
    transport: Any

    @property
    def is_tls(self) -> bool: ...

    async def push(self, status: str) -> None: ...

    async def challenge_auth(self, challenge: str | bytes, encode_to_b64: bool = True, log_client_response: bool = False) -> Any: ...

    def close(self) -> None: ...


@dataclass
class SMTPContext:
    """What every session of one process shares: configuration, directory, intake and limits."""

    config: Config
    directory: Directory
    intake: Acceptor
    tls_context: ssl.SSLContext | None
    auth_limiter: AuthThrottle
    connections: Limiter


class _Throttled:
    """Check the watched file for changes at most every RECHECK seconds instead of at every lookup (a
    stat per lookup was a few percent of the hot path); changes still apply without a restart."""

    _checked = 0.0

    def refresh(self) -> None:
        now = time.monotonic()
        if getattr(self, "_stamp", None) is not None and now - self._checked < RECHECK:
            return
        self._checked = now
        super().refresh()  # type: ignore[misc]


class ThrottledUserDB(_Throttled, UserDB):
    """The users file, re-checked at most every RECHECK seconds."""


class ThrottledAliasDB(_Throttled, AliasDB):
    """The aliases file, re-checked at most every RECHECK seconds."""


def open_directory(config: Config) -> Directory:
    """The users and aliases of ``config``, as an SMTP process reads them (re-checked every RECHECK s)."""
    return Directory(ThrottledUserDB(config.paths.users_file), ThrottledAliasDB(config.paths.aliases_file), config.server.domains)
