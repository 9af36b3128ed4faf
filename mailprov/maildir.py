"""The one Maildir module: where mailboxes live and every rule about the files in them.

The MDA (:mod:`mailprov.delivery.local`), the POP3 server (:mod:`mailprov.pop3.mailbox`) and the IMAP
store (:mod:`mailprov.imap.store`) all go through here, so the three agree with each other and with
Dovecot, mutt and every other Maildir program:

* **Where**: ``MAIL_DIR/DOMAIN/LOCALPART/`` is a standard Maildir (``tmp``, ``new``, ``cur``); its
  IMAP sub-folders are Maildir++ directories beside them (see :mod:`mailprov.imap.store`).
* **Unique names**: ``SECONDS.M<usec>P<pid>Q<n>.HOST,S=<size>,W=<crlf size>`` (:func:`unique_name`), the
  form Dovecot writes. ``S=`` is the file's size in octets, ``W=`` its size once every bare LF is a CRLF
  (what POP3's LIST and IMAP's RFC822.SIZE report), so neither needs to read the file. Both hints are read
  back by :func:`size_hints`; names without them (other MDAs) are measured with :func:`file_crlf_size`.
* **Flags in names**: ``UNIQUE:2,FLAGS`` with ``D`` draft, ``F`` flagged, ``P`` passed, ``R`` replied,
  ``S`` seen, ``T`` trashed, and the letters ``a``-``z`` standing for the keywords listed in the folder's
  ``dovecot-keywords`` file (:class:`Keywords`), always in ASCII order (:func:`with_flags`).
* **Delivery**: :func:`deliver_file` writes into ``tmp/``, fsyncs, and renames into ``new/`` (or ``cur/``
  with flags); the caller fsyncs the directory before acknowledging (several deliveries can share it).
* **Crash leftovers**: a file in ``tmp/`` was never acknowledged nor visible; :func:`clean_tmp` removes
  those older than 36 hours, as the Maildir convention says.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import socket
import time
from collections.abc import Iterable
from pathlib import Path

from mailprov.atomic import durable_create, fsync_dir
from mailprov.errors import UsageError

# Local parts and domains are used as path components: only characters that are safe there.
_SAFE = re.compile(r"^[a-z0-9!#$%&'*+=?^_`{|}~.-]+$")
STALE_TMP = 36 * 3600  # seconds after which a file in tmp/ is a crash leftover (Maildir convention)
SUBDIRS = ("tmp", "new", "cur")
INFO = ":2,"  # the separator before the flags of a file name in cur/
FIRST_READ = 64 * 1024
CHUNK = 256 * 1024
# IMAP system flag <-> Maildir letter (the letters of the Maildir specification and Dovecot).
SYSTEM_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
FLAG_LETTERS = {flag.lower(): letter for letter, flag in SYSTEM_FLAGS.items()}  # IMAP flags are case-insensitive
KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"  # at most 26 keywords per folder (Dovecot's limit too)
KEYWORDS_FILE = "dovecot-keywords"

_HINT = re.compile(r",([SW])=(\d{1,15})(?=[,:]|$)")
_DIGITS = re.compile(r"(\d+)")
_counter = itertools.count()


def maildir_path(mail_dir: str | Path, address: str) -> Path:
    """The Maildir of ``address`` (already normalized: lower case, no subaddress)."""
    local, _, domain = address.rpartition("@")
    for part in (local, domain):
        if not part or not _SAFE.match(part) or part in (".", "..") or part.startswith("."):
            raise UsageError(f"{address!r} cannot name a mailbox", fix="use a plain local@domain address")
    return Path(mail_dir) / domain / local


# --- names -------------------------------------------------------------------------------------------


def maildir_host(hostname: str | None = None) -> str:
    """The host part of unique names: '/' and ':' cannot appear in them (':' starts the info), so they
    are written as ``\\057`` and ``\\072`` as the Maildir specification says."""
    host = hostname or socket.gethostname()
    return host.replace("/", "\\057").replace(":", "\\072")


def unique_name(host: str, size: int | None = None, crlf: int | None = None, now: float | None = None) -> str:
    """A new unique name ``SECONDS.M<usec>P<pid>Q<n>.HOST`` plus ``,S=size,W=crlf`` when given.

    Unique per host: seconds and microseconds, the process id and a per-process counter."""
    now = time.time() if now is None else now
    name = f"{int(now)}.M{int(now * 1e6) % 1000000}P{os.getpid()}Q{next(_counter)}.{host}"
    if size is not None:
        name += f",S={size}"
    if crlf is not None:
        name += f",W={crlf}"
    return name


def split_name(name: str) -> tuple[str, str | None]:
    """``(unique name, flags)`` of a file name; flags is None when the name has no ``:2,`` info."""
    base, sep, info = name.partition(":")
    if sep and info.startswith("2,"):
        return base, info[2:]
    return base, None


def base_name(name: str) -> str:
    """The unique name: the file name without its ``:`` info (the key that survives flag changes)."""
    return name.partition(":")[0]


def size_hints(name: str) -> tuple[int | None, int | None]:
    """``(S, W)`` from the name's ``,S=`` (file size) and ``,W=`` (CRLF size) hints, None where absent."""
    sizes: dict[str, int] = {}
    for key, value in _HINT.findall(base_name(name)):
        sizes[key] = int(value)
    return sizes.get("S"), sizes.get("W")


def crlf_hint(name: str) -> int | None:
    """The ``,W=`` hint alone (:func:`size_hints` without the regular expression: it runs per message
    on every folder open)."""
    base = name.partition(":")[0]
    at = base.rfind(",W=")
    if at < 0:
        return None
    digits = base[at + 3 :].partition(",")[0]
    return int(digits) if digits.isdigit() and len(digits) <= 15 else None


def order_key(name: str) -> list[str | int]:
    """Sort key for delivery order: digit runs compare as numbers, so ``T.M99P1`` comes before
    ``T.M100P1`` (MDAs write microseconds and counters without zero padding)."""
    parts: list[str | int] = list(_DIGITS.split(base_name(name)))
    for i in range(1, len(parts), 2):
        parts[i] = int(parts[i])
    return parts


def with_flags(name: str, letters: Iterable[str]) -> str:
    """``name`` carrying exactly the flag ``letters`` in its ``:2,`` info, in ASCII order as the Maildir
    specification asks. A name with another kind of info (not ``2,``) is returned unchanged."""
    base, sep, info = name.partition(":")
    if sep and not info.startswith("2,"):
        return name
    return f"{base}{INFO}{''.join(sorted(set(letters)))}"


def add_flag(name: str, letter: str) -> str:
    """``name`` with ``letter`` added to its flags (see :func:`with_flags`)."""
    _base, flags = split_name(name)
    return with_flags(name, set(flags or "") | {letter})


# --- sizes -------------------------------------------------------------------------------------------


def crlf_size(data: bytes, *, final: bool = True) -> int:
    """Octets of ``data`` once bare LFs become CRLF (and, when ``final``, a missing last CRLF is added)."""
    size = len(data) + data.count(b"\n")
    if data.find(b"\r") >= 0:  # memchr: only files with CRs pay for the two-byte count
        size -= data.count(b"\r\n")
    if final and data and not data.endswith(b"\n"):
        size += 2
    return size


def file_crlf_size(path: str | os.PathLike[str], *, final: bool = True) -> int:
    """The CRLF size of a message file (see :func:`crlf_size`), reading it once, in chunks when large."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # First read below malloc's mmap threshold: a 256 KiB buffer per small file would cost an
        # mmap/munmap pair each time, and most messages fit in 64 KiB.
        chunk = os.read(fd, FIRST_READ)
        if len(chunk) < FIRST_READ:
            return crlf_size(chunk, final=final)
        size = 0
        carry_cr = False
        last = b""
        while chunk:
            size += crlf_size(chunk, final=False)
            if carry_cr and chunk[:1] == b"\n":
                size -= 1  # a CRLF split across two reads
            carry_cr = chunk.endswith(b"\r")
            last = chunk[-1:]
            chunk = os.read(fd, CHUNK)
    finally:
        os.close(fd)
    return size + 2 if final and last != b"\n" else size


def to_crlf(data: bytes) -> bytes:
    """``data`` with every bare LF turned into CRLF (nothing added at the end): what IMAP sends."""
    if data.find(b"\r") >= 0:
        data = data.replace(b"\r\n", b"\n")
    return data.replace(b"\n", b"\r\n")


# --- directories -------------------------------------------------------------------------------------


def ensure_maildir(box: Path, *, mode: int = 0o700) -> bool:
    """Create ``tmp``, ``new`` and ``cur`` under ``box`` if missing; returns whether anything was created.
    New directories are fsynced up to the grandparent so a message renamed into them survives a crash."""
    created = False
    for sub in SUBDIRS:
        path = box / sub
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True, mode=mode)
            created = True
    if created:
        for path in (box.parent.parent, box.parent, box):
            with contextlib.suppress(OSError):
                fsync_dir(path)
    return created


def clean_tmp(box: Path, max_age: float = STALE_TMP) -> int:
    """Remove files left in ``box/tmp`` by a crash mid-write (never acknowledged, never visible) once
    they are older than ``max_age`` seconds; returns how many were removed."""
    now = time.time()
    removed = 0
    with contextlib.suppress(OSError), os.scandir(box / "tmp") as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > max_age:
                    os.unlink(entry.path)
                    removed += 1
    return removed


def deliver_file(box: Path, data: bytes, host: str, *, subdir: str = "new", flags: str = "", mtime: float | None = None) -> Path:
    """Write ``data`` as a new message of ``box``: into ``tmp/``, fsync, rename into ``subdir`` (``new``,
    or ``cur`` with the ``flags`` letters). Returns the final path. The caller fsyncs the final directory
    before it acknowledges anything (so that several deliveries can share one directory fsync)."""
    name = unique_name(host, len(data), crlf_size(data, final=False))
    final_name = with_flags(name, flags) if subdir == "cur" else name
    tmp, final = box / "tmp" / name, box / subdir / final_name
    durable_create(tmp, final, data, mtime=mtime)
    return final


def scan(box: Path) -> dict[str, tuple[str, str]]:
    """Every message of ``box``: ``{unique name: (subdir, file name)}``, ``new/`` read before ``cur/`` so
    that a message moved from one to the other meanwhile is still seen (in ``cur/``; ``cur/`` wins when a
    crash left both names). Hidden files are skipped (Maildir programs' temporary names)."""
    found: dict[str, tuple[str, str]] = {}
    for subdir in ("new", "cur"):
        try:
            with os.scandir(box / subdir) as entries:
                for entry in entries:
                    name = entry.name
                    if not name.startswith("."):
                        found[name.partition(":")[0]] = (subdir, name)
        except FileNotFoundError:
            continue
    return found


# --- keywords ----------------------------------------------------------------------------------------


class Keywords:
    """A folder's ``dovecot-keywords`` file: line ``N NAME`` gives keyword NAME the letter ``a`` + N.

    Read again whenever the file changes; new keywords are appended under Dovecot's lock convention (a
    ``dovecot-keywords.lock`` dotlock that becomes the new file by rename)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / KEYWORDS_FILE
        self._stamp: tuple[int, int] | None = None
        self.names: dict[int, str] = {}
        self.version = 0  # bumped whenever the map is read again

    def load(self) -> dict[int, str]:
        """The current ``{index: keyword}`` map (re-read when the file changed)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self.names or self._stamp is not None:
                self.version += 1
            self._stamp, self.names = None, {}
            return self.names
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp != self._stamp:
            names: dict[int, str] = {}
            with contextlib.suppress(OSError):
                for line in self.path.read_text("utf-8", "replace").splitlines():
                    index, _, keyword = line.partition(" ")
                    if index.isdigit() and int(index) < len(KEYWORD_LETTERS) and keyword:
                        names[int(index)] = keyword
            self._stamp, self.names = stamp, names
            self.version += 1
        return self.names

    def flags_of(self, letters: str) -> set[str]:
        """IMAP flags (system flags and keywords) of a file name's flag letters. Unknown letters (``P``,
        or a keyword letter the file does not list) have no IMAP flag and are skipped."""
        flags: set[str] = set()
        names = None
        for letter in letters:
            flag = SYSTEM_FLAGS.get(letter)
            if flag:
                flags.add(flag)
            elif "a" <= letter <= "z":
                names = self.load() if names is None else names
                keyword = names.get(ord(letter) - 97)
                if keyword:
                    flags.add(keyword)
        return flags

    def letters_of(self, flags: Iterable[str], *, create: bool = True) -> str:
        """Flag letters for IMAP ``flags``; keywords not yet listed get a letter (the file is extended)
        when ``create``, else are dropped. Raises ``OverflowError`` past 26 keywords."""
        out: list[str] = []
        wanted: list[str] = []
        for flag in flags:
            letter = FLAG_LETTERS.get(flag.lower())
            if letter:
                out.append(letter)
            elif not flag.startswith("\\"):
                wanted.append(flag)
        if wanted:
            index = self._indexes(wanted, create)
            out += [KEYWORD_LETTERS[index[k]] for k in wanted if k in index]
        return "".join(sorted(set(out)))

    def _indexes(self, wanted: list[str], create: bool) -> dict[str, int]:
        by_name = {name.lower(): i for i, name in self.load().items()}
        missing = [k for k in wanted if k.lower() not in by_name]
        if missing and create:
            with DotLock(self.path) as lock:
                self._stamp = None
                names = dict(self.load())
                by_name = {name.lower(): i for i, name in names.items()}
                for keyword in missing:
                    if keyword.lower() in by_name:
                        continue
                    free = next((i for i in range(len(KEYWORD_LETTERS)) if i not in names), None)
                    if free is None:
                        raise OverflowError("a folder holds at most 26 keywords")
                    names[free] = keyword
                    by_name[keyword.lower()] = free
                lock.commit("".join(f"{i} {names[i]}\n" for i in sorted(names)).encode())
                self._stamp = None
        return {k: by_name[k.lower()] for k in wanted if k.lower() in by_name}


class LockTimeout(OSError):
    """A dotlock could not be taken in time."""


class DotLock:
    """Dovecot's dotlock for a state file ``PATH``: create ``PATH.lock`` exclusively; either write the new
    content into it and rename it over ``PATH`` (:meth:`commit`), or remove it (on exit). A lock file not
    modified for ``stale`` seconds belongs to a crashed process and is replaced (Dovecot: 2 minutes)."""

    def __init__(self, path: Path, *, timeout: float = 30.0, stale: float = 120.0) -> None:
        self.path = path
        self.lock = path.with_name(path.name + ".lock")
        self.timeout, self.stale = timeout, stale
        self.fd: int | None = None

    def acquire(self) -> DotLock:
        """Take the lock, waiting (bounded by ``timeout``) while another holder has it."""
        deadline = time.monotonic() + self.timeout
        delay = 0.002
        while True:
            try:
                self.fd = os.open(self.lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                return self
            except FileExistsError:
                pass
            with contextlib.suppress(FileNotFoundError):
                if time.time() - os.stat(self.lock).st_mtime > self.stale:
                    os.unlink(self.lock)  # a crashed holder's: take over (as Dovecot does)
                    continue
            if time.monotonic() > deadline:
                raise LockTimeout(f"{self.lock} is held by another process")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def commit(self, data: bytes) -> None:
        """Write ``data`` as the new content of the locked file (fsync, rename, directory fsync)."""
        assert self.fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = None
        os.rename(self.lock, self.path)
        fsync_dir(self.path.parent)

    def release(self) -> None:
        """Drop the lock without changing the file (a no-op after :meth:`commit`)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock)

    def __enter__(self) -> DotLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
