"""Wake the running queue manager at once: a FIFO in the queue directory (Postfix's ``public/qmgr``).

``mailprov queue flush`` and ``release`` move files into ``incoming/``; without a wake-up the running
server would only notice at its next scan (``queue.scan_interval``). The runner keeps ``TRIGGER`` open for
reading while it runs; an operator's command writes one byte into it, and the runner rescans at once.

Nothing depends on the byte arriving: the FIFO is a shortcut, the periodic scan stays the guarantee.
Writing never blocks: with no server running (``ENXIO``) or a full pipe (a wake-up already pending,
``EAGAIN``) there is nothing to do. The FIFO is mode 0600 in the queue directory (0700), so only the
queue's owner (the service user, or root) can wake the runner.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

TRIGGER = "trigger"


def path(queue_dir: str | os.PathLike[str]) -> Path:
    """Where the trigger FIFO of a queue directory lives."""
    return Path(queue_dir) / TRIGGER


def open_listener(queue_dir: str | os.PathLike[str]) -> int:
    """Create the FIFO if needed and open it for the runner (non-blocking). Opened read-write so that the
    runner's end never sees end-of-file when a writer closes (Linux allows O_RDWR on a FIFO)."""
    fifo = path(queue_dir)
    try:
        mode = os.lstat(fifo).st_mode
    except FileNotFoundError:
        os.mkfifo(fifo, 0o600)
    else:
        if not stat.S_ISFIFO(mode):  # something else sits there: replace it, it is ours by name
            os.unlink(fifo)
            os.mkfifo(fifo, 0o600)
    return os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


def drain(fd: int) -> int:
    """Read every pending wake-up byte; returns how many there were (0 if none)."""
    total = 0
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return total
        if not chunk:
            return total
        total += len(chunk)


def pull(queue_dir: str | os.PathLike[str]) -> bool:
    """Wake the running queue manager, if any. Returns whether a runner was listening."""
    try:
        fd = os.open(path(queue_dir), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:  # no FIFO yet, or no reader (ENXIO): no server runs on this queue
        if exc.errno in (errno.ENOENT, errno.ENXIO, errno.ENOTDIR):
            return False
        raise
    try:
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is already pending
            os.write(fd, b"!")
    finally:
        os.close(fd)
    return True
