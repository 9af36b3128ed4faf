"""DiskIO's grouped small file operations: results and errors reach their own callers, in order, with at
most GROUP_RUNNERS pool threads at once, and many calls share few wake-ups of the event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from mailprov.queue import diskio
from mailprov.queue.diskio import DiskIO


def test_grouped_calls_return_their_own_results_and_errors():
    def work(n: int) -> int:
        if n % 7 == 3:
            raise FileNotFoundError(n)
        return n * n

    async def main():
        io = DiskIO(8)
        try:
            return await asyncio.gather(*(io.grouped(work, n) for n in range(200)), return_exceptions=True)
        finally:
            io.close()

    results = asyncio.run(main())
    for n, result in enumerate(results):
        if n % 7 == 3:
            assert isinstance(result, FileNotFoundError) and result.args == (n,)
        else:
            assert result == n * n


def test_grouped_calls_are_bounded_in_threads_and_share_wakeups(monkeypatch):
    running, peak, lock = 0, 0, threading.Lock()
    settles = []
    real_settle = diskio._settle
    monkeypatch.setattr(diskio, "_settle", lambda outcomes: (settles.append(len(outcomes)), real_settle(outcomes)))

    def slow(n: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.002)
        with lock:
            running -= 1
        return n

    async def main():
        io = DiskIO(8)
        try:
            return await asyncio.gather(*(io.grouped(slow, n) for n in range(300)))
        finally:
            io.close()

    assert asyncio.run(main()) == list(range(300))
    assert peak <= diskio.GROUP_RUNNERS
    assert sum(settles) == 300
    assert len(settles) < 300 / 4  # grouped: far fewer loop wake-ups than calls


def test_a_cancelled_caller_does_not_break_the_group():
    gate = threading.Event()

    async def main():
        io = DiskIO(1)  # one pool thread, held by the first call: the others wait in the next group
        try:
            first = asyncio.ensure_future(io.grouped(gate.wait, 5))
            await asyncio.sleep(0.05)
            others = [asyncio.ensure_future(io.grouped(lambda n=n: n)) for n in range(10)]
            await asyncio.sleep(0.05)
            others[0].cancel()
            gate.set()
            assert await first is True
            with pytest.raises(asyncio.CancelledError):
                await others[0]
            return [await o for o in others[1:]]
        finally:
            io.close()

    assert asyncio.run(main()) == list(range(1, 10))
