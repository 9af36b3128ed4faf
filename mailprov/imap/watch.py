"""Change notification for open folders: one inotify instance per process, shared by every session.

A folder changes when a file is created, renamed or removed in its ``new/`` or ``cur/`` (a delivery, a
flag change, an expunge, a move, by any process). The kernel reports those on the inotify descriptor;
each watched directory has a *generation* counter, bumped for every event read. A folder remembers the
generations when its ``sync()`` starts; ``wait_for_change`` returns as soon as one has moved on. Events
are read whenever anyone looks (a sync in a worker thread, or the event loop's reader callback), and
waiters of every event loop are woken thread-safely.

One descriptor for the whole process: the kernel allows only 128 inotify instances per user by default,
far fewer than IDLE sessions; watches (one per directory, shared by the sessions on it) are plentiful.
Where inotify is missing or out of watches, callers poll instead (see ``mailprov.imap.store``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import os
import struct
import threading
from collections.abc import Iterable

IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
MASK = IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, name length (then the name, padded)


class Watcher:
    """The process's inotify descriptor, its watches (reference-counted per directory) and waiters."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("c")
        self._libc = ctypes.CDLL(name, use_errno=True)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.fd = fd
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._wds: dict[str, int] = {}  # directory -> watch descriptor
        self._refs: dict[int, int] = {}
        self._gen: dict[int, int] = {}
        self._waiters: dict[int, set[tuple[asyncio.AbstractEventLoop, asyncio.Future[bool]]]] = {}
        self._readers: set[asyncio.AbstractEventLoop] = set()

    def add(self, directory: str | os.PathLike[str]) -> int:
        """Watch ``directory`` (again); returns its watch descriptor. Raises OSError (ENOSPC: no watches left)."""
        path = os.fsencode(directory)
        with self._lock:
            wd = self._libc.inotify_add_watch(self.fd, path, MASK)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {os.fsdecode(path)}")
            self._wds[os.fsdecode(path)] = wd
            self._refs[wd] = self._refs.get(wd, 0) + 1
            self._gen.setdefault(wd, 0)
            return wd

    def remove(self, wd: int) -> None:
        """Drop one reference to a watch; the last one removes it from the kernel."""
        with self._lock:
            refs = self._refs.get(wd, 0) - 1
            if refs > 0:
                self._refs[wd] = refs
                return
            self._refs.pop(wd, None)
            self._gen.pop(wd, None)
            self._waiters.pop(wd, None)
            for path, known in list(self._wds.items()):
                if known == wd:
                    del self._wds[path]
            self._libc.inotify_rm_watch(self.fd, wd)

    def generation(self, wds: Iterable[int]) -> tuple[int, ...]:
        """The current generations of ``wds`` (after reading what the kernel has queued)."""
        self.drain()
        with self._lock:
            return tuple(self._gen.get(wd, -1) for wd in wds)

    def drain(self) -> None:
        """Read every queued event, bump generations, wake the waiters of changed directories."""
        woken: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[bool]]] = []
        with self._lock:
            changed: set[int] = set()
            while True:
                try:
                    data = os.read(self.fd, 65536)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EINTR:
                        continue
                    break
                offset = 0
                while offset + _EVENT.size <= len(data):
                    wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                    offset += _EVENT.size + length
                    if mask & IN_Q_OVERFLOW:
                        changed.update(self._gen)  # events were lost: everything may have changed
                    else:
                        changed.add(wd)
            for wd in changed:
                if wd in self._gen:
                    self._gen[wd] += 1
                woken.extend(self._waiters.pop(wd, ()))
        for loop, future in woken:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(_resolve, future)

    async def wait(self, wds: tuple[int, ...], seen: tuple[int, ...], timeout: float) -> bool:
        """Wait until a generation of ``wds`` differs from ``seen``; False after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        entry = (loop, future)
        with self._lock:
            self._readers = {known for known in self._readers if not known.is_closed()}
            if loop not in self._readers:
                loop.add_reader(self.fd, self.drain)
                self._readers.add(loop)
            for wd in wds:
                self._waiters.setdefault(wd, set()).add(entry)
        try:
            if self.generation(wds) != seen:
                return True
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                return self.generation(wds) != seen
        finally:
            with self._lock:
                for wd in wds:
                    self._waiters.get(wd, set()).discard(entry)


def _resolve(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(True)


_watcher: Watcher | None = None
_watcher_failed = False
_create_lock = threading.Lock()


def watcher() -> Watcher | None:
    """The process's watcher, created on first use; None where inotify is unavailable (then poll)."""
    global _watcher, _watcher_failed
    with _create_lock:
        if _watcher is not None and _watcher.pid != os.getpid():
            _watcher = None  # a forked child: the parent's descriptor and watches are not ours
        if _watcher is None and not _watcher_failed:
            try:
                _watcher = Watcher()
            except (OSError, AttributeError):
                _watcher_failed = True
        return _watcher
