"""The write path's engine room: blocking file work off the event loop, and grouped directory fsyncs.

An fsync costs about a millisecond of kernel time here, so it must never run on the event loop (every
session would stall behind it). :class:`DiskIO` owns a small thread pool for file writes and a
*group commit* for directory fsyncs: callers that renamed a file into a directory ask for that directory
to be synced; all requests that arrive while one fsync runs are satisfied together by the next one. A
caller's request is only answered by an fsync that *started after* the request, so its rename is covered.

Small file operations that need no fsync (the queue runner's rename into ``active/`` and read, its
unlink of a delivered item) go through :meth:`DiskIO.grouped`: every call that arrives while a group
runs joins the next one (up to ``GROUP_RUNNERS`` groups run at once), and a whole group costs one trip
to the pool and one wake-up of the event loop instead of one each. Draining a full queue makes thousands of them a second.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from mailprov.atomic import fsync_dir

T = TypeVar("T")
# Grouped calls run in up to this many pool threads at once: one slow unlink (a busy journal) must not
# hold up every other attempt, and under load each thread still takes whole groups.
GROUP_RUNNERS = 4


class DiskIO:
    """A thread pool for blocking file work plus a group-committing directory syncer."""

    def __init__(self, threads: int = 8) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mailprov-io")
        self._pending: dict[str, list[asyncio.Future[None]]] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._group: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._group_lock = threading.Lock()
        self._group_runners = 0  # pool threads working through self._group (at most GROUP_RUNNERS)

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(*args)`` in the I/O thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    async def grouped(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(*args)`` in the pool together with the other grouped calls of the moment (in order of
        arrival, one after the other: only for quick operations without fsync)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._group_lock:
            self._group.append((func, args, future))
            start = self._group_runners < GROUP_RUNNERS
            if start:
                self._group_runners += 1
        if start:
            self.executor.submit(self._run_groups, loop)
        return await future

    def _run_groups(self, loop: asyncio.AbstractEventLoop) -> None:
        """In a pool thread: run the waiting calls group by group until none is left."""
        while True:
            with self._group_lock:
                group, self._group = self._group, []
                if not group:
                    self._group_runners -= 1
                    return
            outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
            for func, args, future in group:
                try:
                    outcomes.append((future, func(*args), None))
                except Exception as exc:  # handed to its caller, like run_in_executor does
                    outcomes.append((future, None, exc))
            loop.call_soon_threadsafe(_settle, outcomes)

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


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """On the event loop: hand each grouped call's result or exception to its caller (if still waiting)."""
    for future, result, error in outcomes:
        if future.done():  # the caller was cancelled meanwhile
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
