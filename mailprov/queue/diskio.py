"""The write path's engine room: blocking file work off the event loop, and grouped directory fsyncs.

An fsync costs about a millisecond of kernel time here, so it must never run on the event loop (every
session would stall behind it). :class:`DiskIO` owns a small thread pool for file writes and a
*group commit* for directory fsyncs: callers that renamed a file into a directory ask for that directory
to be synced; all requests that arrive while one fsync runs are satisfied together by the next one. A
caller's request is only answered by an fsync that *started after* the request, so its rename is covered.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from mailprov.atomic import fsync_dir

T = TypeVar("T")


class DiskIO:
    """A thread pool for blocking file work plus a group-committing directory syncer."""

    def __init__(self, threads: int = 8) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mailprov-io")
        self._pending: dict[str, list[asyncio.Future[None]]] = {}
        self._running: dict[str, asyncio.Task[None]] = {}

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(*args)`` in the I/O thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    async def sync_dir(self, directory: str | os.PathLike[str]) -> None:
        """Return once an fsync of ``directory`` that started after this call has completed."""
        key = os.fspath(directory)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._pending.setdefault(key, []).append(waiter)
        if key not in self._running:
            self._running[key] = loop.create_task(self._drain(key))
        await waiter

    async def _drain(self, key: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            while batch := self._pending.pop(key, None):
                try:
                    await loop.run_in_executor(self.executor, fsync_dir, key)
                except OSError as exc:
                    for waiter in batch:
                        if not waiter.done():
                            waiter.set_exception(exc)
                else:
                    for waiter in batch:
                        if not waiter.done():
                            waiter.set_result(None)
        finally:
            self._running.pop(key, None)

    def close(self) -> None:
        """Stop the thread pool (waits for running jobs)."""
        self.executor.shutdown(wait=True)
