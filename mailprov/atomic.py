"""Durable file writes: the one helper every state file goes through.

A write lands in a temporary file in the destination's own directory, is flushed and fsynced, renamed
over the destination (atomic on POSIX), and then the directory itself is fsynced so the rename survives
a crash. Readers therefore see either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Fsync a directory so that entries created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_create(
    tmp: str | os.PathLike[str], final: str | os.PathLike[str], *chunks: bytes, mode: int = 0o600, mtime: float | None = None
) -> None:
    """Write a new file durably except for its directory entry: create ``tmp`` exclusively (``mode``,
    less the umask), write ``chunks``, set its modification time to ``mtime`` if given (IMAP's internal
    date), fsync, rename to ``final``. On any error ``tmp`` is removed and the
    error raised. The caller fsyncs ``final``'s directory before acknowledging anything, so that several
    renames (Maildir deliveries, queue files) can share one directory fsync."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, mode: int = 0o644, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data`` durably and atomically (temp file, fsync, rename, dir fsync)."""
    target = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(target.parent)
