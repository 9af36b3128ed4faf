"""Maildir access for POP3: list, size, render and update one user's Maildir, plus its session lock.

What POP3 needs from a Maildir, and how it is done here:

* **Listing without loading messages**: one ``os.scandir`` of ``new/`` and ``cur/`` (no per-file
  ``stat``); messages are numbered in unique-name order with digit runs compared as numbers, which is
  delivery order for names of the usual ``SECONDS.M<usec>P<pid>Q<n>.host`` form.
* **Sizes equal to what RETR sends**: POP3 sizes count the message with CRLF line endings (before
  byte-stuffing). That size is the raw file size plus one for every bare LF, so it needs one read of
  the file. It is taken from a ``,W=NNN`` hint in the file name when there is one (Dovecot's
  convention, which mailprov's MDA writes too: see :mod:`mailprov.maildir`), else computed once and kept
  in a size cache (``STATE_DIR/pop3/DOMAIN/LOCAL.sizes``,
  written with :func:`atomic_write`); the cache is only an accelerator and is rebuilt when lost.
* **Stable UIDs that never repeat**: the UID is the Maildir unique name (the file name before
  ``:2,``), which the MDA never reuses and which survives the ``new/`` to ``cur/`` move and restarts.
  A name that is not a valid RFC 1939 unique-id (over 70 characters, or outside 0x21-0x7E) is
  replaced by a SHA-256-derived id of the name, equally stable.
* **CRLF and byte-stuffing**: :func:`render` converts bare LF to CRLF, doubles a leading dot and
  appends the terminating ``.`` line; large messages are converted in chunks, never held whole.
* **Maildir compatibility**: on QUIT, deleted messages are unlinked and retrieved messages in
  ``new/`` are renamed into ``cur/`` with ``:2,S`` (file names otherwise left as the MDA wrote them);
  retrieved messages already in ``cur/`` get the ``S`` flag added in order.
* **One session per mailbox**: :class:`MailboxLock` holds ``flock`` on ``STATE_DIR/pop3/DOMAIN/LOCAL.lock``;
  the kernel drops it when the descriptor closes, so a vanished client (or a crashed server) never
  leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mailprov import maildir as md
from mailprov.atomic import atomic_write, fsync_dir
from mailprov.maildir import CHUNK, file_crlf_size

_UID_OK = re.compile(r"^[\x21-\x7e]{1,70}$")
_CACHE_MAGIC = "mailprov-pop3-sizes 1"
_DOT_LINE = re.compile(rb"\n\.")
_BLANK_LINE = re.compile(rb"\n\r?\n")


class MailboxError(Exception):
    """A Maildir operation failed in a way the client should see as a temporary server problem."""


class MailboxBusy(MailboxError):
    """Another POP3 session holds this mailbox."""


@dataclass(slots=True)
class Message:
    """One message of a session's snapshot. ``name`` is the file name in ``subdir`` (``new`` or ``cur``).

    Slotted: a session over tens of thousands of messages holds one of these per message, nothing more."""

    name: str
    subdir: str
    size: int
    uid: str
    deleted: bool = False
    retrieved: bool = False

    @property
    def base(self) -> str:
        """The Maildir unique name: the file name without its ``:2,FLAGS`` info."""
        return self.name.split(":", 1)[0]


def uid_for(base: str) -> str:
    """The POP3 unique-id of a Maildir unique name (RFC 1939: 1-70 characters 0x21-0x7E)."""
    if _UID_OK.match(base):
        return base
    return "h" + hashlib.sha256(base.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def _convert(data: bytes, at_line_start: bool) -> bytes:
    """CRLF-normalize and byte-stuff ``data`` (a run of whole lines, except possibly the last).

    Written for speed on the RETR path: single-byte ``find`` is a memchr, and the precompiled regex
    finds a line-leading dot several times faster than ``bytes.find(b"\\n.")``."""
    if data.find(b"\r") >= 0:
        data = data.replace(b"\r\n", b"\n")
    stuff = _DOT_LINE.search(data) is not None
    data = data.replace(b"\n", b"\r\n")
    if stuff:
        data = data.replace(b"\n.", b"\n..")
    if at_line_start and data[:1] == b".":
        data = b"." + data
    return data


def render_bytes(data: bytes) -> bytes:
    """A whole message as POP3 sends it: CRLF lines, byte-stuffed, ending with ``.`` CRLF."""
    if not data:
        return b".\r\n"
    out = _convert(data, True)
    return out + (b".\r\n" if out.endswith(b"\n") else b"\r\n.\r\n")


def _header_end(data: bytes | bytearray, start: int = 0) -> int:
    """Offset just past the blank line ending the header of raw ``data`` (a line that is empty once
    rendered: LF or CRLF alone), searching from ``start``; -1 when there is none. Works on the raw bytes:
    normalizing first and rendering again would turn ``CR CR LF`` into an empty line (TOP != RETR)."""
    if data[:1] == b"\n":
        return 1
    if data[:2] == b"\r\n":
        return 2
    found = _BLANK_LINE.search(data, start)
    return found.end() if found else -1


def top_bytes(data: bytes, lines: int) -> bytes:
    """The header and the first ``lines`` body lines, as TOP sends them (RFC 1939)."""
    cut = _header_end(data)
    if cut < 0:
        return render_bytes(data)  # header only: all of it
    for _ in range(lines):
        nl = data.find(b"\n", cut)
        if nl < 0:
            cut = len(data)
            break
        cut = nl + 1
    return render_bytes(data[:cut])


def read_top(path: str, lines: int) -> bytes:
    """Read only as much of the file as TOP needs: the header and ``lines`` more line ends."""
    raw = bytearray()
    header_end = -1
    body_lines = 0
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(CHUNK):
            start = len(raw)
            raw += chunk
            if header_end < 0:
                header_end = _header_end(raw, max(0, start - 2))
                if header_end < 0:
                    continue
                body_lines = raw.count(b"\n", header_end)
            else:
                body_lines += raw.count(b"\n", start)
            if body_lines >= lines:
                break
    return top_bytes(bytes(raw), lines)


def render_file(path: str, expected: int = 0) -> Iterator[bytes]:
    """The rendered message at ``path`` (see :func:`render_bytes`) as an iterator of bounded pieces.

    A small file takes one open and one read and is closed before this returns; a file larger than
    :data:`CHUNK` is streamed (the iterator owns the descriptor), each piece cut at a line end so CRLF
    pairs and leading dots are never split. Raises FileNotFoundError at once if the file is gone."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    streamed = False
    try:
        want = max(expected, 4096) + 1
        data = os.read(fd, want)
        if len(data) < want:  # a short read of a regular file is its end: no second read needed
            return iter((render_bytes(data),))
        while len(data) <= CHUNK:
            more = os.read(fd, CHUNK)
            if not more:
                return iter((render_bytes(data),))
            data += more
        streamed = True
        return _render_stream(fd, data)  # the generator closes fd
    finally:
        if not streamed:
            os.close(fd)


def _render_stream(fd: int, pending: bytes) -> Iterator[bytes]:
    try:
        at_line_start = True
        while chunk := os.read(fd, CHUNK):
            pending += chunk
            if len(pending) < CHUNK:
                continue
            cut = pending.rfind(b"\n") + 1
            if cut == 0:  # a line longer than CHUNK: cut it, but never between CR and LF
                cut = len(pending) - 1 if pending.endswith(b"\r") else len(pending)
                if cut == 0:
                    continue
            out = _convert(pending[:cut], at_line_start)
            pending = pending[cut:]
            at_line_start = out.endswith(b"\n")
            yield out
        if pending:
            out = _convert(pending, at_line_start)
            at_line_start = out.endswith(b"\n")
            yield out
        yield b".\r\n" if at_line_start else b"\r\n.\r\n"
    finally:
        os.close(fd)


class MailboxLock:
    """An exclusive, non-blocking ``flock`` on the mailbox's lock file; released by :meth:`release`,
    or by the kernel when the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`MailboxBusy`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise MailboxBusy(str(self.path)) from None
            raise
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class UpdateResult:
    """What the UPDATE state did."""

    deleted: int = 0
    marked_seen: int = 0
    failed: list[str] = field(default_factory=list)


class Mailbox:
    """One user's Maildir as a POP3 session sees it: a snapshot taken at login, changed only on QUIT.

    Blocking file-system calls: the server runs :meth:`open` and :meth:`commit` in a worker thread."""

    def __init__(self, maildir: Path, state_base: Path) -> None:
        self.maildir = maildir
        self.cache_path = state_base.with_name(state_base.name + ".sizes")
        self.lock = MailboxLock(state_base.with_name(state_base.name + ".lock"))
        self.messages: list[Message] = []
        self._dirs = {"new": os.fspath(maildir / "new"), "cur": os.fspath(maildir / "cur")}
        self._cache: dict[str, int] = {}
        self._cache_dirty = False

    def open(self) -> list[Message]:
        """Lock the mailbox and take the snapshot. Raises :class:`MailboxBusy` or :class:`MailboxError`."""
        self.lock.acquire()
        try:
            self.messages = self._scan()
        except OSError as exc:
            self.lock.release()
            raise MailboxError(f"cannot read {self.maildir}: {exc.strerror}") from None
        except BaseException:
            self.lock.release()
            raise
        with contextlib.suppress(OSError):  # a full disk must not stop anyone reading mail
            self._save_cache()
        return self.messages

    def close(self) -> None:
        """Release the lock without changing anything (QUIT before login, or a dropped session)."""
        self.lock.release()

    def _load_cache(self) -> dict[str, int]:
        cache: dict[str, int] = {}
        try:
            text = self.cache_path.read_text("utf-8", "surrogateescape")
        except FileNotFoundError:
            return cache
        lines = text.split("\n")
        if lines[0] != _CACHE_MAGIC:
            return cache  # unknown or damaged: rebuilt from the files
        for line in lines[1:]:
            name, _, size = line.rpartition(" ")
            if name and size.isdigit():
                cache[name] = int(size)
        return cache

    def _save_cache(self) -> None:
        if not self._cache_dirty:
            return
        live = {m.base for m in self.messages}
        body = "".join(f"{base} {size}\n" for base, size in self._cache.items() if base in live)
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        # The cache can always be rebuilt: skip the directory fsync, keep the atomic rename.
        atomic_write(self.cache_path, (_CACHE_MAGIC + "\n" + body).encode("utf-8", "surrogateescape"), mode=0o600, sync_dir=False)
        self._cache_dirty = False

    def _scan(self) -> list[Message]:
        self._cache = self._load_cache()
        # One entry per unique name (a message in both new/ and cur/ after an interrupted move counts once).
        found = md.scan(self.maildir)
        messages: list[Message] = []
        for base in sorted(found, key=md.order_key):
            subdir, name = found[base]
            size = self._size(base, name, subdir)
            if size is None:
                continue  # vanished while we looked: another program removed it
            messages.append(Message(name, subdir, size, uid_for(base)))
        return messages

    def _size(self, base: str, name: str, subdir: str) -> int | None:
        size = self._cache.get(base)
        if size is not None:
            return size
        hint = md.size_hints(base)[1]
        if hint is not None:
            return hint
        try:
            size = file_crlf_size(f"{self._dirs[subdir]}/{name}")
        except FileNotFoundError:
            return None
        if " " not in base and "\n" not in base:
            self._cache[base] = size
            self._cache_dirty = True
        return size

    def path(self, msg: Message) -> str:
        """The current path of ``msg``'s file."""
        return f"{self._dirs[msg.subdir]}/{msg.name}"

    def relocate(self, msg: Message) -> bool:
        """Find ``msg`` again after another Maildir program renamed it (flags changed, new/ to cur/)."""
        for subdir in ("cur", "new"):
            with contextlib.suppress(FileNotFoundError), os.scandir(self.maildir / subdir) as entries:
                for entry in entries:
                    if entry.name.split(":", 1)[0] == msg.base:
                        msg.name, msg.subdir = entry.name, subdir
                        return True
        return False

    def render(self, msg: Message, top: int | None = None) -> Iterator[bytes]:
        """The message as RETR (``top`` None) or TOP sends it, ``.`` line included. Raises
        FileNotFoundError if it is gone for good."""
        try:
            return self._render(msg, top)
        except FileNotFoundError:
            if not self.relocate(msg):
                raise
            return self._render(msg, top)

    def _render(self, msg: Message, top: int | None) -> Iterator[bytes]:
        if top is None:
            return render_file(self.path(msg), msg.size)
        return iter((read_top(self.path(msg), top),))

    def commit(self) -> UpdateResult:
        """The UPDATE state: unlink deleted messages, move retrieved ones to ``cur/`` with the ``S`` flag.

        Each step is independent: a failure is reported and the rest still happens."""
        result = UpdateResult()
        touched: set[str] = set()
        for msg in self.messages:
            if not (msg.deleted or msg.retrieved):
                continue
            for attempt in range(2):
                try:
                    if msg.deleted:
                        os.unlink(self.path(msg))
                        result.deleted += 1
                        touched.add(msg.subdir)
                    else:
                        target = md.add_flag(msg.name, "S")
                        if msg.subdir == "cur" and target == msg.name:
                            break
                        os.rename(self.path(msg), os.path.join(self.maildir, "cur", target))
                        result.marked_seen += 1
                        touched.update((msg.subdir, "cur"))
                    break
                except FileNotFoundError:
                    if attempt or not self.relocate(msg):
                        if not msg.deleted:
                            result.failed.append(msg.name)
                        break  # already gone: for a deletion, that is the goal
                except OSError:
                    result.failed.append(msg.name)
                    break
        for subdir in touched:
            with contextlib.suppress(OSError):
                fsync_dir(self.maildir / subdir)
        if result.deleted:
            self.messages = [m for m in self.messages if not m.deleted]
            self._cache_dirty = True
            with contextlib.suppress(OSError):
                self._save_cache()
        return result
