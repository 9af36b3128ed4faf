"""Open SMTP sessions kept for the next message, and the per-destination concurrency limit.

* :class:`ConnectionPool`: idle sessions by (address, port, host name, TLS level, user); one is reused for
  the next message to the same place (no new TCP, TLS or EHLO), closed after IDLE_TIMEOUT unused or
  REUSE_TIME_LIMIT after it opened.
* :class:`DestinationSlots`: at most ``queue.per_destination`` deliveries to one destination at a time.
  A destination's entry lives only while someone holds or waits for a slot, so the table stays as small
  as the number of destinations in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiosmtplib

IDLE_TIMEOUT = 5.0  # seconds an unused connection stays open for the next message
REUSE_TIME_LIMIT = 300.0  # seconds after which a connection is not reused any more


@dataclass
class Session:
    """One open SMTP connection and what is known about it."""

    smtp: aiosmtplib.SMTP
    key: tuple[object, ...]
    relay: str
    tls: str  # "" for plain text, else "Verified TLS TLSv1.3 TLS_AES_256_GCM_SHA384"
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    transactions: int = 0

    @property
    def usable(self) -> bool:
        """Connected, and young enough to carry another transaction."""
        return self.smtp.is_connected and time.monotonic() - self.created < REUSE_TIME_LIMIT

    async def quit(self) -> None:
        """Say goodbye politely, but never wait long for it."""
        with contextlib.suppress(Exception):
            if self.smtp.is_connected:
                await asyncio.wait_for(self.smtp.quit(timeout=2), 3)
        self.smtp.close()


class ConnectionPool:
    """Idle connections by (address, port, host name, TLS level, user), closed after IDLE_TIMEOUT."""

    def __init__(self) -> None:
        self._idle: dict[tuple[object, ...], list[Session]] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def take(self, key: tuple[object, ...]) -> Session | None:
        """The most recently used idle connection for ``key``, if it can still be used."""
        sessions = self._idle.get(key)
        while sessions:
            session = sessions.pop()
            if session.usable:
                return session
            self._close_later(session)
        return None

    def put(self, session: Session) -> None:
        """Keep ``session`` for the next message to the same place."""
        if not session.usable:
            self._close_later(session)
            return
        session.last_used = time.monotonic()
        self._idle.setdefault(session.key, []).append(session)
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    def _close_later(self, session: Session) -> None:
        task = asyncio.get_running_loop().create_task(session.quit())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _reap(self) -> None:
        while any(self._idle.values()):
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for key, sessions in list(self._idle.items()):
                keep = [s for s in sessions if now - s.last_used < IDLE_TIMEOUT and s.usable]
                for session in sessions:
                    if session not in keep:
                        self._close_later(session)
                if keep:
                    self._idle[key] = keep
                else:
                    del self._idle[key]

    async def close(self) -> None:
        """Close every idle connection."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        sessions = [s for group in self._idle.values() for s in group]
        self._idle.clear()
        await asyncio.gather(*(s.quit() for s in sessions), *self._closing, return_exceptions=True)


class DestinationSlots:
    """At most ``limit`` holders per destination at once (see the module docstring)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}  # semaphore, [holders + waiters]

    def __len__(self) -> int:
        return len(self._slots)

    @contextlib.asynccontextmanager
    async def hold(self, destination: str) -> AsyncIterator[None]:
        """Wait for a slot to ``destination``; it is given back when the block ends."""
        entry = self._slots.get(destination)
        if entry is None:
            entry = self._slots[destination] = (asyncio.Semaphore(self.limit), [0])
        semaphore, users = entry
        users[0] += 1
        try:
            async with semaphore:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._slots[destination]
