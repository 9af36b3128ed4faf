"""One user's IMAP mailboxes on disk, in Dovecot's own Maildir++ layout (so Dovecot can read them as is).

The layout (documented in docs/imap.md, "Storage"):

* The user's Maildir is ``INBOX``; every other folder is a Maildir beside its ``cur``/``new``/``tmp``, in a
  directory named ``.`` + the folder name in modified UTF-7 (RFC 3501 5.1.3), hierarchy delimiter ``.``
  (``Archive.2024`` is ``.Archive.2024``), holding an empty ``maildirfolder`` file. ``.Sent``,
  ``.Drafts``, ``.Trash`` and ``.Junk`` are created for every user and carry SPECIAL-USE (RFC 6154).
* ``subscriptions`` in the root: one subscribed folder name per line (UTF-8).
* Per folder, ``dovecot-uidlist`` (Dovecot's version 3 format) keeps UIDVALIDITY, the next UID and the UID
  of each unique name, so UIDs are stable across sessions, restarts and server switches and never
  reused. It is only ever replaced whole under Dovecot's lock convention: create ``dovecot-uidlist.lock``
  exclusively, write the new list into it, fsync, rename it over ``dovecot-uidlist``. A lost or corrupt
  list starts a new UIDVALIDITY (from the root ``dovecot-uidvalidity`` counter, always increasing)
  instead of guessing old UIDs.
* Flags live in the file names (``:2,`` + letters, keywords through ``dovecot-keywords``), see
  :mod:`mailprov.maildir`; ``\\Recent`` is whoever moves a message from ``new/`` to ``cur/``.

Concurrency: several sessions and processes may use one folder while the MDA delivers and POP3 deletes.
Every change is a single rename, link or unlink of a message file (atomic), or a replacement of the
uidlist under its lock; UIDs are handed out only under the lock, after a scan made under it, so a message
is never given two UIDs nor a UID given twice. The store is synchronous; call it from a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import secrets
import shutil
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mailprov import maildir as md
from mailprov.atomic import atomic_write, durable_create, fsync_dir
from mailprov.imap import mutf7, watch

UIDLIST = "dovecot-uidlist"
UIDVALIDITY = "dovecot-uidvalidity"
SUBSCRIPTIONS = "subscriptions"
FOLDER_MARK = "maildirfolder"
DELIMITER = "."
SPECIAL_USE = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk"}
_TRASHED = "mailprov-trashed."  # prefix of a deleted folder's directory while it is removed
POLL_INTERVAL = 0.25  # seconds between checks when inotify is unavailable
# A sync skips the directory scan when new/, cur/ and the lists are unchanged since the last one and
# were last modified this many seconds ago: a change within the same timestamp tick would not show in
# the modification time (Dovecot keeps the same safety margin).
SETTLED = 2.0
_VALIDITY_MARK = re.compile(r"^dovecot-uidvalidity\.([0-9a-f]{8})$")


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One message as IMAP sees it."""

    uid: int  # IMAP UID, stable, never reused within a uidvalidity
    key: str  # Maildir unique name (file name before ':2,')
    flags: frozenset[str]  # IMAP spelling: '\\Seen', '\\Answered', '\\Flagged', '\\Deleted', '\\Draft', keywords
    size: int  # RFC822.SIZE: octets with CRLF line endings (what FETCH BODY[] sends)
    internaldate: float  # epoch seconds (file mtime, as Dovecot uses)


@dataclass(frozen=True, slots=True)
class FolderInfo:
    """One folder as LIST shows it."""

    name: str  # Unicode name, hierarchy delimiter '.', 'INBOX' for the root Maildir
    special_use: str | None  # '\\Sent', '\\Drafts', '\\Trash', '\\Junk' (RFC 6154) or None
    has_children: bool
    subscribed: bool
    # False for a level that exists only because a folder below it does ('a' of '.a.b' when '.a' is
    # missing, as Dovecot leaves it): LIST shows it \Noselect (RFC 3501 6.3.8).
    selectable: bool = True


class StoreError(Exception):
    """A store operation the client asked for cannot be done. ``code`` is the RFC 5530 response code:
    NONEXISTENT, ALREADYEXISTS, CANNOT, LIMIT, OVERQUOTA, UNAVAILABLE or SERVERBUG."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- dovecot-uidlist ---------------------------------------------------------------------------------


@dataclass(slots=True)
class UidList:
    """A parsed ``dovecot-uidlist``: header fields and ``{uid: (unique name, extension fields)}``."""

    uidvalidity: int
    next_uid: int
    header: dict[str, str]  # other header fields (G: the mailbox GUID), kept as Dovecot wrote them
    entries: dict[int, tuple[str, str]]

    def by_base(self) -> dict[str, int]:
        """``{unique name: uid}``."""
        return {base: uid for uid, (base, _ext) in self.entries.items()}

    def render(self) -> bytes:
        """The version 3 text: ``3 V<uidvalidity> N<next uid> G<guid>`` then ``UID [EXT...] :NAME`` lines."""
        fields = [f"V{self.uidvalidity}", f"N{self.next_uid}"] + [k + v for k, v in self.header.items()]
        lines = ["3 " + " ".join(fields)]
        for uid in sorted(self.entries):
            base, ext = self.entries[uid]
            lines.append(f"{uid} {ext} :{base}" if ext else f"{uid} :{base}")
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def parse_uidlist(data: bytes) -> UidList | None:
    """Parse a ``dovecot-uidlist`` (versions 1 and 3); None when it is damaged in any way (then the
    caller must start a new UIDVALIDITY: trusting part of a damaged list could reuse a UID)."""
    try:
        text = data.decode("utf-8", "surrogateescape")
        # Dovecot appends records under the lock; a reader without the lock may see a partial last
        # line: only newline-terminated lines count (the caller re-reads under the lock before it writes).
        lines = text.split("\n")
        lines.pop()
        if not lines:
            return None
        head = lines[0].split(" ")
        header: dict[str, str] = {}
        if head[0] == "1" and len(head) == 3:
            uidvalidity, next_uid = int(head[1]), int(head[2])
            version = 1
        elif head[0] == "3":
            fields = {f[0]: f[1:] for f in head[1:] if f}
            uidvalidity, next_uid = int(fields.pop("V")), int(fields.pop("N"))
            header = fields
            version = 3
        else:
            return None
        if not 0 < uidvalidity < 2**32 or not 0 < next_uid < 2**32:
            return None
        entries: dict[int, tuple[str, str]] = {}
        last = 0
        for line in lines[1:]:
            if version == 1:
                uid_text, _, base = line.partition(" ")
                ext = ""
            else:
                before, sep, base = line.partition(" :")
                if not sep:
                    return None
                uid_text, _, ext = before.partition(" ")
            uid = int(uid_text)
            base = md.base_name(base)
            if uid <= last or not base:
                return None
            entries[uid] = (base, ext)
            last = uid
        # Dovecot appends records without rewriting the header, so N can lag behind the last UID.
        return UidList(uidvalidity, max(next_uid, last + 1), header, entries)
    except (ValueError, KeyError, IndexError):
        return None


def ext_field(ext: str, key: str) -> str | None:
    """The value of extension field ``key`` (``W``: CRLF size, ``S``: file size) of a uidlist entry."""
    for part in ext.split(" "):
        if part[:1] == key:
            return part[1:]
    return None


# --- folders -----------------------------------------------------------------------------------------


def check_name(name: str) -> str:
    """Validate a folder name for this store; returns the on-disk directory name (``.`` + modified UTF-7).
    Raises :class:`StoreError` (CANNOT) naming the problem."""
    if not name or name.upper() == "INBOX":
        raise StoreError("CANNOT", "that name is INBOX or empty")
    parts = name.split(DELIMITER)
    if any(not part for part in parts):
        raise StoreError("CANNOT", f"empty hierarchy level in {name!r} (a leading, trailing or doubled '.')")
    if "/" in name or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise StoreError("CANNOT", "folder names cannot contain '/' or control characters")
    if parts[0].upper() == "INBOX":
        parts[0] = "INBOX"  # INBOX.x: the INBOX part is case-insensitive (RFC 3501 5.1)
    disk = "." + mutf7.encode(DELIMITER.join(parts))
    if len(disk.encode()) > 240 or disk.startswith("." + _TRASHED):
        raise StoreError("CANNOT", "that folder name is too long or reserved")
    return disk


def _normal(name: str) -> str:
    """``INBOX`` whatever its case; other names as given."""
    if name.upper() == "INBOX":
        return "INBOX"
    head, sep, rest = name.partition(DELIMITER)
    return ("INBOX" + sep + rest) if head.upper() == "INBOX" and sep else name


class Store:
    """One user's mailboxes: the Maildir at ``maildir`` and its Maildir++ sub-folders."""

    def __init__(self, maildir: Path, *, create_special: bool = True, host: str | None = None, lock_timeout: float = 30.0) -> None:
        self.root = Path(maildir)
        self.host = md.maildir_host(host)
        self.lock_timeout = lock_timeout
        try:
            md.ensure_maildir(self.root)
            md.clean_tmp(self.root)
            self._remove_trashed()
            if create_special:
                existing = set(self._folder_dirs())
                for name in SPECIAL_USE:
                    if "." + name not in existing:
                        self._make_folder(name)
                        self.subscribe(name, True)
        except OSError as exc:
            raise _os_error(exc, f"cannot prepare the mailbox {self.root}") from exc

    def _folder_dirs(self) -> list[str]:
        out: list[str] = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.startswith(".") and entry.name not in (".", "..") and entry.is_dir(follow_symlinks=False):
                    out.append(entry.name)
        return out

    def _remove_trashed(self) -> None:
        """Finish deletions a crash interrupted (the folder was already renamed out of sight)."""
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.startswith(_TRASHED):
                    shutil.rmtree(entry.path, ignore_errors=True)

    def _names(self) -> dict[str, str]:
        """``{folder name: directory name}`` of every sub-folder whose name decodes."""
        names: dict[str, str] = {}
        for disk in self._folder_dirs():
            with contextlib.suppress(mutf7.MUTF7Error):
                names[mutf7.decode(disk[1:])] = disk
        return names

    def _dir(self, name: str) -> Path | None:
        name = _normal(name)
        if name == "INBOX":
            return self.root
        try:
            disk = check_name(name)
        except StoreError:
            return None
        path = self.root / disk
        return path if path.is_dir() else None

    def folders(self) -> list[FolderInfo]:
        """INBOX and every sub-folder, sorted by name."""
        real = set(self._names())
        implied = {DELIMITER.join(n.split(DELIMITER)[:i]) for n in real for i in range(1, n.count(DELIMITER) + 1)}
        names = sorted(real | (implied - {"INBOX"}))
        subscribed = set(self._subscriptions())
        out = []
        for name in ["INBOX", *names]:
            prefix = name + DELIMITER
            children = any(other.startswith(prefix) for other in names)
            selectable = name == "INBOX" or name in real
            out.append(FolderInfo(name, SPECIAL_USE.get(name), children, name in subscribed, selectable))
        return out

    def _make_folder(self, name: str) -> None:
        path = self.root / check_name(name)
        path.mkdir(mode=0o700)
        md.ensure_maildir(path)
        (path / FOLDER_MARK).touch(mode=0o600)
        fsync_dir(path)
        fsync_dir(self.root)

    def create(self, name: str) -> None:
        """CREATE (RFC 3501 6.3.3): the folder and any missing superior levels."""
        # A trailing delimiter only says the client means to create names below it (RFC 3501 6.3.3).
        name = _normal(name[:-1] if name.endswith(DELIMITER) else name)
        check_name(name)
        if self._dir(name) is not None:
            raise StoreError("ALREADYEXISTS", f"{name} already exists")
        parts = name.split(DELIMITER)
        try:
            for i in range(1, len(parts) + 1):
                level = DELIMITER.join(parts[:i])
                if level == "INBOX" or self._dir(level) is not None:
                    continue
                try:
                    self._make_folder(level)
                except FileExistsError:
                    if i == len(parts):
                        raise StoreError("ALREADYEXISTS", f"{name} already exists") from None
        except OSError as exc:
            raise _os_error(exc, f"cannot create {name}") from exc

    def delete(self, name: str) -> None:
        """DELETE (RFC 3501 6.3.4): the folder and its messages; its sub-folders stay (Maildir++ has no
        parent directories, as in Dovecot). INBOX cannot be deleted."""
        name = _normal(name)
        if name == "INBOX":
            raise StoreError("CANNOT", "INBOX cannot be deleted")
        path = self._dir(name)
        if path is None:
            raise StoreError("NONEXISTENT", f"{name} does not exist")
        trashed = self.root / (_TRASHED + secrets.token_hex(6))
        try:
            os.rename(path, trashed)  # one rename: the folder is gone for everyone at once
            fsync_dir(self.root)
        except FileNotFoundError:
            raise StoreError("NONEXISTENT", f"{name} does not exist") from None
        except OSError as exc:
            raise _os_error(exc, f"cannot delete {name}") from exc
        shutil.rmtree(trashed, ignore_errors=True)
        with contextlib.suppress(StoreError):
            self.subscribe(name, False)

    def rename(self, old: str, new: str) -> None:
        """RENAME (RFC 3501 6.3.5): the folder and its inferior levels; renaming INBOX moves its messages
        into a new folder and leaves INBOX empty."""
        old, new = _normal(old), _normal(new)
        new_disk = check_name(new)
        if self._dir(new) is not None:
            raise StoreError("ALREADYEXISTS", f"{new} already exists")
        if old == "INBOX":
            self.create(new)
            source, dest = self.open("INBOX"), self.open(new)
            try:
                source.move([m.uid for m in source.sync()[0]], dest)
            finally:
                source.close()
                dest.close()
            return
        if self._dir(old) is None:
            raise StoreError("NONEXISTENT", f"{old} does not exist")
        if (new + DELIMITER).startswith(old + DELIMITER):
            raise StoreError("CANNOT", f"{new} is inside {old}")
        moves = [(old, new)] + [(name, new + name[len(old) :]) for name in self._names() if name.startswith(old + DELIMITER)]
        try:
            for parent in range(1, len(new.split(DELIMITER))):
                level = DELIMITER.join(new.split(DELIMITER)[:parent])
                if level != "INBOX" and self._dir(level) is None:
                    self._make_folder(level)
            for src, dst in moves:
                dst_disk = new_disk if src == old else check_name(dst)
                os.rename(self.root / check_name(src), self.root / dst_disk)
            fsync_dir(self.root)
        except OSError as exc:
            raise _os_error(exc, f"cannot rename {old}") from exc
        subscribed = self._subscriptions()
        if any(s == old or s.startswith(old + DELIMITER) for s in subscribed):
            renamed = [new + s[len(old) :] if s == old or s.startswith(old + DELIMITER) else s for s in subscribed]
            self._write_subscriptions(renamed)

    def _subscriptions(self) -> list[str]:
        """Subscribed names. Reads Dovecot's version 2 file (``V\\t2``, a blank line, then one name a
        line in modified UTF-7 with tabs between hierarchy levels) and the older one-name-a-line form."""
        try:
            lines = (self.root / SUBSCRIPTIONS).read_text("utf-8", "replace").split("\n")
        except FileNotFoundError:
            return []
        if lines and lines[0].startswith("V\t"):
            body = lines[lines.index("", 1) + 1 :] if "" in lines[1:] else lines[1:]
            names = [line.replace("\t", DELIMITER) for line in body if line]
        else:
            names = [line for line in lines if line]
        out = []
        for name in names:
            try:
                out.append(_normal(mutf7.decode(name)))
            except mutf7.MUTF7Error:
                out.append(name)  # written by a program that stored UTF-8: take it as it is
        return out

    def _write_subscriptions(self, names: list[str]) -> None:
        unique = list(dict.fromkeys(names))
        body = "V\t2\n\n" + "".join(mutf7.encode(name).replace(DELIMITER, "\t") + "\n" for name in unique)
        with md.DotLock(self.root / SUBSCRIPTIONS, timeout=self.lock_timeout) as lock:
            lock.commit(body.encode())

    def subscribe(self, name: str, on: bool) -> None:
        """SUBSCRIBE / UNSUBSCRIBE (RFC 3501 6.3.6-7). Subscribing does not require the folder to exist."""
        name = _normal(name)
        current = self._subscriptions()
        if on == (name in current):
            return
        try:
            self._write_subscriptions([*current, name] if on else [s for s in current if s != name])
        except OSError as exc:
            raise _os_error(exc, "cannot update subscriptions") from exc

    def open(self, name: str) -> Folder:
        """The folder ``name`` (INBOX case-insensitive); raises StoreError('NONEXISTENT')."""
        name = _normal(name)
        path = self._dir(name)
        if path is None:
            raise StoreError("NONEXISTENT", f"{name} does not exist")
        return Folder(self, name, path)

    def next_uidvalidity(self) -> int:
        """A UIDVALIDITY no folder of this user had before: Dovecot's ``dovecot-uidvalidity`` counter
        (a marker file ``dovecot-uidvalidity.XXXXXXXX`` claimed by rename, so concurrent callers never
        get the same value), at least the current time."""
        for _ in range(100):
            marks = [int(m.group(1), 16) for n in os.listdir(self.root) if (m := _VALIDITY_MARK.match(n))]
            current = max(marks, default=0)
            value = max(int(time.time()), current + 1) & 0xFFFFFFFF or 1
            target = self.root / f"{UIDVALIDITY}.{value:08x}"
            try:
                if marks:
                    os.rename(self.root / f"{UIDVALIDITY}.{current:08x}", target)
                else:
                    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except (FileNotFoundError, FileExistsError):
                continue  # another process claimed it first: read again
            with contextlib.suppress(OSError):
                atomic_write(self.root / UIDVALIDITY, f"{value:08x}", mode=0o600, sync_dir=False)
            return value
        raise StoreError("UNAVAILABLE", "could not allocate a UIDVALIDITY (too much contention)")


def _os_error(exc: OSError, what: str) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError("OVERQUOTA", f"{what}: {exc.strerror}")
    if isinstance(exc, md.LockTimeout):
        return StoreError("UNAVAILABLE", f"{what}: {exc}")
    if exc.errno == errno.ENAMETOOLONG:
        return StoreError("LIMIT", f"{what}: name too long")
    return StoreError("SERVERBUG", f"{what}: {exc.strerror or exc}")


def _read_whole(path: str, hint: int) -> bytes:
    """A file's content: one ``read`` when it is no larger than ``hint`` octets (its CRLF size, never
    below the file size), more only for a larger one. Several times cheaper than ``open().read()``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        want = max(hint, 4096) + 1
        data = os.read(fd, want)
        if len(data) < want:  # a short read of a regular file is its end
            return data
        chunks = [data]
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# --- one folder --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Msg:
    """Where one message is and what IMAP sees of it. ``uid``, ``base``, ``subdir`` and ``name`` never
    change once made: when the file moves (flags, ``new/`` to ``cur/``) the view gets a new ``_Msg``,
    because the views of one folder in a process share these objects (see :class:`_Shared`). ``size``,
    ``mtime`` and ``info`` are filled in lazily and are the same whoever computes them."""

    uid: int
    base: str
    subdir: str
    name: str
    size: int | None
    mtime: float | None
    info: MessageInfo | None = None

    def moved(self, subdir: str, name: str) -> _Msg:
        """The same message (same octets, same date) under another name."""
        return _Msg(self.uid, self.base, subdir, name, self.size, self.mtime)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """One folder's state after a full sync in this process, for the next view to adopt as it is. Never
    changed once published (the views copy the dicts before they change them)."""

    stamp: tuple[int, ...]  # Folder._dir_stamp() taken before the scan
    settled: bool  # the stamp was already SETTLED seconds old then: equal stamps mean nothing changed
    # The inotify watches of new/ and cur/ and their generations when the sync began (None: polling).
    # The same generations later mean no file was created, renamed or removed there since, whatever
    # the timestamps say (watch descriptors are never reused while the process lives).
    watched: tuple[tuple[int, ...], tuple[int, ...]] | None
    uidvalidity: int
    uidnext: int
    keywords: dict[int, str]  # the keyword map the infos were made with
    msgs: dict[int, _Msg]
    by_base: dict[str, int]
    infos: list[MessageInfo]
    by_uid: dict[int, MessageInfo] = field(init=False)  # infos by UID, for the sessions to copy
    in_use: list[str] = field(init=False)  # the keywords some message carries, sorted
    first_unseen: int | None = field(init=False)  # the lowest UID without \Seen

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_uid", {info.uid: info for info in self.infos})
        distinct = {info.flags for info in self.infos}  # a handful of flag sets, shared by the messages
        object.__setattr__(self, "in_use", sorted({f for flags in distinct for f in flags if not f.startswith("\\")}))
        object.__setattr__(self, "first_unseen", next((i.uid for i in self.infos if "\\Seen" not in i.flags), None))


class _Shared:
    """What every view of one folder directory in this process shares: the parsed uidlist and the last
    full sync. A SELECT of a folder that did not change since then costs a few ``stat`` calls instead of
    a scan and one ``stat`` per message; after a change, only new files are ``stat``-ed (a file's date
    and octets never change: Maildir renames, it does not rewrite)."""

    __slots__ = ("peeked", "snapshot", "views")

    def __init__(self) -> None:
        self.peeked: tuple[tuple[int, ...], UidList | None] = ((), None)
        self.snapshot: _Snapshot | None = None
        self.views = 0

    def weight(self) -> int:
        """Messages it holds (what the cache bound counts)."""
        return len(self.snapshot.msgs) if self.snapshot is not None else 0


# Folders nobody has open keep their shared state until more than this many messages are held that way
# (about 0.4 KiB each): the next SELECT by the same client, or IMAP after POP3, starts from it.
SHARED_IDLE_MESSAGES = 200_000
_shared: dict[str, _Shared] = {}  # folder directory -> state, least recently used first
_shared_lock = threading.Lock()


def _share(directory: str) -> _Shared:
    """The shared state of a folder directory, counted as used by one more view."""
    with _shared_lock:
        shared = _shared.pop(directory, None) or _Shared()
        _shared[directory] = shared  # most recently used last
        shared.views += 1
        return shared


def _unshare(directory: str, shared: _Shared) -> None:
    """One view fewer; trims the states of closed folders to SHARED_IDLE_MESSAGES, oldest first."""
    with _shared_lock:
        shared.views -= 1
        idle = [(key, value) for key, value in _shared.items() if value.views <= 0]
        held = sum(value.weight() for _key, value in idle)
        for key, value in idle:
            if held <= SHARED_IDLE_MESSAGES:
                break
            held -= value.weight()
            del _shared[key]


class Folder:
    """One open folder. ``sync()`` brings this view up to date with the disk; every other method works
    on the UIDs the last ``sync()`` returned."""

    def __init__(self, store: Store, name: str, path: Path) -> None:
        self.store = store
        self.name = name
        self.dir = path
        self.uidvalidity = 0
        self.uidnext = 1
        self._keywords = md.Keywords(path)
        self._kw_names: dict[int, str] | None = None  # the keyword map the infos in _msgs were made with
        self._flagsets: dict[str, frozenset[str]] = {}  # flag letters -> IMAP flags, for this keyword map
        self._dirname = os.fspath(path)
        self._msgs: dict[int, _Msg] = {}
        self._by_base: dict[str, int] = {}
        self._borrowed = False  # _msgs and _by_base are a shared snapshot's (never changed in place)
        self._stamp: tuple[int, ...] = ()
        self._synced: _Snapshot | None = None  # this view's last sync (its dicts are this view's own)
        self._closed = False
        self._shared = _share(self._dirname)
        # Released by close(), or when the view is dropped unclosed (so the cache bound still holds).
        self._unshare = weakref.finalize(self, _unshare, self._dirname, self._shared)
        md.ensure_maildir(path)
        self._watcher = watch.watcher()
        self._wds: tuple[int, ...] = ()
        self._gens: tuple[int, ...] = ()
        if self._watcher is not None:
            try:
                self._wds = tuple(self._watcher.add(path / sub) for sub in ("new", "cur"))
            except OSError:  # out of inotify watches: this folder polls
                for wd in self._wds:
                    self._watcher.remove(wd)
                self._wds = ()
        listed = self._peek()
        if listed is None:
            listed = self._with_lock(lambda ul: ul)  # creates it with a new UIDVALIDITY
        self.uidvalidity, self.uidnext = listed.uidvalidity, listed.next_uid

    # uidlist ------------------------------------------------------------------------------------------

    def _read(self) -> UidList | None:
        """The uidlist as it is on disk now (under the lock: the caller may change what it returns)."""
        try:
            return parse_uidlist((self.dir / UIDLIST).read_bytes())
        except FileNotFoundError:
            return None

    def _peek(self) -> UidList | None:
        """The uidlist for reading only: parsed again only when the file changed (size, mtime, inode:
        Dovecot appends in place, everyone else replaces it by rename)."""
        try:
            with open(self.dir / UIDLIST, "rb") as handle:
                st = os.fstat(handle.fileno())
                stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
                peeked = self._shared.peeked  # one read of the attribute: other threads replace it whole
                if stamp != peeked[0]:
                    peeked = self._shared.peeked = (stamp, parse_uidlist(handle.read()))
        except FileNotFoundError:
            peeked = self._shared.peeked = ((), None)
        return peeked[1]

    def _with_lock(self, change: Callable[[UidList], UidList | None]) -> UidList:
        """Run ``change`` on the current uidlist under its lock; write what it returns (unless None)."""
        try:
            with md.DotLock(self.dir / UIDLIST, timeout=self.store.lock_timeout) as lock:
                current = self._read()
                fresh = current is None
                if fresh:
                    current = UidList(self.store.next_uidvalidity(), 1, {"G": uuid.uuid4().hex}, {})
                result = change(current)
                if result is not None or fresh:
                    lock.commit((result or current).render())
                return result or current
        except OSError as exc:
            raise _os_error(exc, f"cannot update {self.dir / UIDLIST}") from exc

    # sync ---------------------------------------------------------------------------------------------

    def _dir_stamp(self) -> tuple[int, ...]:
        out: list[int] = []
        for part in ("new", "cur", UIDLIST, md.KEYWORDS_FILE):
            try:
                st = os.stat(self.dir / part)
                out += (st.st_mtime_ns, st.st_ino)
            except FileNotFoundError:
                out += (0, 0)
        return tuple(out)

    def _move_new(self) -> set[str]:
        """Move every message in ``new/`` to ``cur/``; returns the unique names this call moved (they are
        \\Recent for this session: another session that moved one first gets it instead)."""
        moved: set[str] = set()
        try:
            names = [n for n in os.listdir(self.dir / "new") if not n.startswith(".")]
        except FileNotFoundError:
            return moved
        for name in names:
            base, flags = md.split_name(name)
            with contextlib.suppress(FileNotFoundError, PermissionError):
                os.rename(self.dir / "new" / name, self.dir / "cur" / md.with_flags(name, flags or ""))
                moved.add(base)
        return moved

    def sync(self) -> tuple[list[MessageInfo], set[int]]:
        """All messages sorted by UID, and the UIDs that are \\Recent for this caller. New messages get
        UIDs (under the uidlist lock); files gone from disk are expunged from this view."""
        # Taken first, so that a change made while this sync runs wakes the next wait_for_change.
        watched: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        if self._wds:
            self._gens = self._watcher.generation(self._wds)  # type: ignore[union-attr]
            watched = (self._wds, self._gens)
        now = time.time()
        stamp = self._stamp = self._dir_stamp()
        # Settled: the newest of new/, cur/ and the lists was modified SETTLED seconds before this stamp
        # was read, so any later change shows as another stamp (not hidden in the same timestamp tick).
        settled = now - max(stamp[0::2]) / 1e9 > SETTLED
        mine = self._synced
        if mine is not None and mine.stamp == stamp and (mine.settled or (watched is not None and mine.watched == watched)):
            return list(mine.infos), set()  # nothing in new/, cur/ or the lists changed
        shared = self._shared.snapshot
        if (
            shared is not None
            and shared.stamp == stamp
            and (shared.settled or (watched is not None and shared.watched == watched))
            and shared.uidvalidity == self.uidvalidity
        ):
            # Another view in this process synced this very state: take it over (nothing moved from
            # new/ by this view, so nothing is \Recent for it). After a delivery, the first session
            # to sync scans; the others idling on the folder take its result.
            # The snapshot's own dicts, copied only when this view changes them (see _mutable): the
            # sessions idling on one folder then hold little more than their sequence-number maps.
            self._msgs, self._by_base, self._borrowed = shared.msgs, shared.by_base, True
            if shared.keywords != self._kw_names:
                self._flagsets.clear()
            self._kw_names = shared.keywords
            self.uidnext = shared.uidnext
            self._synced = shared
            return list(shared.infos), set()
        moved = self._move_new()
        listed = None if moved else self._peek()  # just moved from new/: they need UIDs, go to the lock
        found = {} if listed is None else md.scan(self.dir)
        if listed is None or listed.uidvalidity != self.uidvalidity or self._needs_update(listed, found):
            listed = self._assign_all()
            found = self._found
        self.uidvalidity, self.uidnext = listed.uidvalidity, listed.next_uid
        keywords = dict(self._keywords.load())
        if keywords != self._kw_names:  # keyword letters may mean other names now
            self._flagsets.clear()
        self._apply(listed, found, keywords, shared)
        self._kw_names = keywords
        infos = [self._info(m) for m in self._msgs.values()]
        recent = {self._by_base[b] for b in moved if b in self._by_base}
        if moved:  # the moves changed the stamp and the generations: this state is not the one on disk
            watched, settled = None, False
        self._synced = _Snapshot(stamp, settled, watched, self.uidvalidity, self.uidnext, keywords, self._msgs, self._by_base, infos)
        if not moved:
            self._shared.snapshot = self._synced
            self._borrowed = True  # published: from now on this view copies before it changes them
        return list(infos), recent

    def info_map(self) -> dict[int, MessageInfo]:
        """``{uid: MessageInfo}`` as of the last ``sync()``, in UID order: a new dict, the caller's own."""
        return dict(self._synced.by_uid) if self._synced is not None else {}

    def first_unseen(self) -> int | None:
        """The lowest UID without \\Seen at the last ``sync()`` (None: every message is seen)."""
        return self._synced.first_unseen if self._synced is not None else None

    def keywords_in_use(self) -> list[str]:
        """The keywords that messages carried at the last ``sync()``, sorted."""
        return list(self._synced.in_use) if self._synced is not None else []

    def _needs_update(self, listed: UidList, found: dict[str, tuple[str, str]]) -> bool:
        if len(found) != len(listed.entries):
            return True
        return any(base not in found for base, _ext in listed.entries.values())

    def _assign_all(self) -> UidList:
        """Under the lock: scan again, give UIDs to unlisted messages (in delivery order), drop entries
        whose files are gone (checked twice: a file being renamed can be missed by one directory read)."""

        def change(listed: UidList) -> UidList | None:
            found = md.scan(self.dir)
            listed_bases = listed.by_base()
            missing = [b for b in listed_bases if b not in found]
            if missing:
                found.update(md.scan(self.dir))
                missing = [b for b in missing if b not in found and not self._still_there(b)]
            new = sorted((b for b in found if b not in listed_bases), key=md.order_key)
            self._found = found
            if not new and not missing:
                return None
            for base in missing:
                del listed.entries[listed_bases[base]]
            for base in new:
                subdir, name = found[base]
                ext = "" if md.size_hints(name)[1] is not None else self._size_ext(subdir, name)
                listed.entries[listed.next_uid] = (base, ext)
                listed.next_uid += 1
            return listed

        self._found: dict[str, tuple[str, str]] = {}
        listed = self._with_lock(change)
        if not self._found:
            self._found = md.scan(self.dir)
        return listed

    def _size_ext(self, subdir: str, name: str) -> str:
        """The ``W<size>`` extension field for a name without a ``,W=`` hint (Dovecot keeps it there too)."""
        try:
            return f"W{md.file_crlf_size(self.dir / subdir / name, final=False)}"
        except FileNotFoundError:
            return ""

    def _still_there(self, base: str) -> bool:
        uid = self._by_base.get(base)
        if uid is None:
            return False
        msg = self._msgs[uid]
        return os.path.exists(self.dir / msg.subdir / msg.name)

    def _apply(self, listed: UidList, found: dict[str, tuple[str, str]], keywords: dict[int, str], shared: _Snapshot | None) -> None:
        """Rebuild this view from the uidlist and a scan, reusing what is known of unchanged files (by
        this view, or by another view of the folder in this process): sizes and dates are not read
        again, flags are made again only for renamed files or when the keyword map changed."""
        msgs: dict[int, _Msg] = {}
        mine = self._msgs
        mine_ok = self._kw_names == keywords
        if shared is None or shared.uidvalidity != listed.uidvalidity:
            prior: dict[int, _Msg] = {}
            prior_ok = False
        else:
            prior, prior_ok = shared.msgs, shared.keywords == keywords
        for uid, (base, ext) in listed.entries.items():
            where = found.get(base)
            if where is None:
                continue
            subdir, name = where
            old = mine.get(uid)
            valid = mine_ok
            if old is None:
                old, valid = prior.get(uid), prior_ok
            if old is not None and old.base == base:
                if old.name != name or old.subdir != subdir or not valid:
                    old = old.moved(subdir, name)  # a new object: the old one may be shared
                msgs[uid] = old
                continue
            size = md.crlf_hint(name)
            if size is None and ext:
                hinted = ext_field(ext, "W")
                size = int(hinted) if hinted and hinted.isdigit() else None
            msgs[uid] = _Msg(uid, base, subdir, name, size, None)
        self._msgs = msgs
        self._by_base = {m.base: uid for uid, m in msgs.items()}
        self._borrowed = False

    def _info(self, msg: _Msg) -> MessageInfo:
        if msg.info is not None:
            return msg.info
        for _ in range(3):
            path = f"{self._dirname}/{msg.subdir}/{msg.name}"  # a string: 10,000 of these per SELECT
            try:
                if msg.mtime is None:
                    msg.mtime = os.stat(path).st_mtime
                if msg.size is None:
                    msg.size = md.file_crlf_size(path, final=False)
                break
            except FileNotFoundError:
                found = self._relocate(msg)
                if found is None:
                    break  # expunged meanwhile: the next sync drops it
                msg = found
        letters = md.split_name(msg.name)[1] or ""
        flags = self._flagsets.get(letters)
        if flags is None:
            flags = self._flagsets[letters] = frozenset(self._keywords.flags_of(letters))
        msg.info = MessageInfo(msg.uid, msg.base, flags, msg.size or 0, msg.mtime or 0.0)
        return msg.info

    # messages -----------------------------------------------------------------------------------------

    def _mutable(self) -> dict[int, _Msg]:
        """This view's message map, to change (and ``_by_base`` with it): copied first if borrowed."""
        if self._borrowed:
            self._msgs, self._by_base, self._borrowed = dict(self._msgs), dict(self._by_base), False
        return self._msgs

    def _relocate(self, msg: _Msg) -> _Msg | None:
        """Find ``msg``'s file again after another program renamed it (flags changed, new/ to cur/):
        the message as it is now (also put in this view), or None when it is gone."""
        for subdir in ("cur", "new"):
            with contextlib.suppress(FileNotFoundError), os.scandir(self.dir / subdir) as entries:
                for entry in entries:
                    if entry.name.partition(":")[0] == msg.base:
                        if entry.name != msg.name or subdir != msg.subdir:
                            msg = msg.moved(subdir, entry.name)
                            if msg.uid in self._msgs:
                                self._mutable()[msg.uid] = msg
                        return msg
        return None

    def _msg(self, uid: int) -> _Msg:
        msg = self._msgs.get(uid)
        if msg is None:
            raise StoreError("NONEXISTENT", f"no message with UID {uid}")
        return msg

    def _file(self, msg: _Msg) -> Path:
        """The current path of a message's file."""
        return self.dir / msg.subdir / msg.name

    def read(self, uid: int) -> bytes:
        """The message with CRLF line endings; StoreError('NONEXISTENT') if it is gone (expunged)."""
        msg = self._msg(uid)
        for _ in range(3):
            try:
                # FETCH BODY[] of many messages spends its time here: bare descriptors, no file object.
                return md.to_crlf(_read_whole(f"{self._dirname}/{msg.subdir}/{msg.name}", msg.size or 0))
            except FileNotFoundError:
                found = self._relocate(msg)
                if found is None:
                    break
                msg = found
        raise StoreError("NONEXISTENT", f"message UID {uid} has been expunged")

    def path(self, uid: int) -> Path | None:
        """The message's file (raw line endings), for streaming large ones; None if it is gone."""
        msg = self._msgs.get(uid)
        if msg is None:
            return None
        where = self._file(msg)
        if where.exists():
            return where
        found = self._relocate(msg)
        return self._file(found) if found is not None else None

    def store_flags(self, uids: Iterable[int], flags: Iterable[str], mode: Literal["set", "add", "remove"]) -> list[MessageInfo]:
        """STORE FLAGS / +FLAGS / -FLAGS: rename each file to its new flags (a rename from the name last
        seen is a compare-and-swap: a concurrent change is re-read and merged, never overwritten).
        Returns the updated messages; expunged ones are skipped. \\Recent cannot be stored."""
        flags = [f for f in flags if f.lower() != "\\recent"]
        try:
            letters = set(self._keywords.letters_of(flags, create=mode != "remove"))
        except OverflowError as exc:
            raise StoreError("LIMIT", "this folder already has 26 keywords") from exc
        except OSError as exc:
            raise _os_error(exc, "cannot record the keyword") from exc
        known = self._known_letters()
        changed: list[MessageInfo] = []
        touched = False
        for uid in sorted(set(uids)):
            msg = self._msgs.get(uid)
            if msg is None:
                continue
            for _ in range(5):
                current = set(md.split_name(msg.name)[1] or "")
                if mode == "set":
                    wanted = letters | {c for c in current if c not in known}
                elif mode == "add":
                    wanted = current | letters
                else:
                    wanted = current - letters
                target = md.with_flags(msg.name, wanted)
                if target == msg.name and msg.subdir == "cur":
                    break
                try:
                    os.rename(self._file(msg), self.dir / "cur" / target)
                    msg = self._mutable()[uid] = msg.moved("cur", target)
                    touched = True
                    break
                except FileNotFoundError:
                    found = self._relocate(msg)
                    if found is None:
                        break
                    msg = found
                except OSError as exc:
                    raise _os_error(exc, f"cannot store flags of UID {uid}") from exc
            else:
                continue
            if self._msgs.get(uid) is msg and os.path.exists(self._file(msg)):
                changed.append(self._info(msg))
        if touched:
            with contextlib.suppress(OSError):
                fsync_dir(self.dir / "cur")
        return changed

    def _known_letters(self) -> set[str]:
        """Letters that stand for an IMAP flag here (the others, like ``P``, are kept as they are)."""
        return set(md.SYSTEM_FLAGS) | {md.KEYWORD_LETTERS[i] for i in self._keywords.load()}

    def _claim(self, bases: list[str]) -> dict[str, int]:
        """UIDs for messages this session just put into ``cur/`` (under the lock; a concurrent sync may
        already have given them one, which is then used)."""

        def change(listed: UidList) -> UidList | None:
            known = listed.by_base()
            added = False
            for base in bases:
                if base not in known:
                    known[base] = listed.next_uid
                    listed.entries[listed.next_uid] = (base, "")
                    listed.next_uid += 1
                    added = True
            result.update({b: known[b] for b in bases})
            return listed if added else None

        result: dict[str, int] = {}
        listed = self._with_lock(change)
        self.uidnext = max(self.uidnext, listed.next_uid) if listed.uidvalidity == self.uidvalidity else self.uidnext
        return result

    def append(self, data: bytes, flags: Iterable[str] = (), internaldate: float | None = None) -> int:
        """APPEND: store the message durably (file and directory fsynced, UID recorded) and return its
        UID. The file appears at once under its final name: a crash leaves either nothing or a whole
        message, which then gets a UID at the next sync."""
        try:
            letters = self._keywords.letters_of([f for f in flags if f.lower() != "\\recent"])
        except OverflowError as exc:
            raise StoreError("LIMIT", "this folder already has 26 keywords") from exc
        try:
            final = md.deliver_file(self.dir, data, self.store.host, subdir="cur", flags=letters, mtime=internaldate)
            fsync_dir(self.dir / "cur")
        except FileNotFoundError:
            raise StoreError("NONEXISTENT", f"{self.name} was deleted") from None
        except OSError as exc:
            raise _os_error(exc, f"cannot append to {self.name}") from exc
        base = md.base_name(final.name)
        return self._claim([base])[base]

    def _transfer(self, uids: Iterable[int], dest: Folder, *, move: bool) -> list[tuple[int, int]]:
        placed: list[tuple[int, str]] = []
        for uid in sorted(set(uids)):
            msg = self._msgs.get(uid)
            if msg is None:
                continue
            info = self._info(msg)
            letters = set(dest._keywords.letters_of(info.flags - {"\\Recent"}))
            letters |= {c for c in (md.split_name(msg.name)[1] or "") if c.isupper() and c not in md.SYSTEM_FLAGS}
            _s, crlf = md.size_hints(msg.name)
            st_size = None
            with contextlib.suppress(OSError):
                st_size = os.stat(self._file(msg)).st_size
            # A new unique name: the same one coming back to a folder would find its old uidlist entry.
            name = md.with_flags(md.unique_name(self.store.host, st_size, crlf if crlf is not None else info.size), letters)
            target = dest.dir / "cur" / name
            for _ in range(5):
                try:
                    if move:
                        os.rename(self._file(msg), target)
                    else:
                        os.link(self._file(msg), target)
                    placed.append((uid, md.base_name(name)))
                    break
                except FileNotFoundError:
                    found = self._relocate(msg)
                    if found is None:
                        break
                    msg = found
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                        raise _os_error(exc, f"cannot copy UID {uid}") from exc
                    try:
                        self._copy_file(msg, dest, name)
                        if move:
                            os.unlink(self._file(msg))
                        placed.append((uid, md.base_name(name)))
                    except FileNotFoundError:
                        continue
                    except OSError as exc2:
                        raise _os_error(exc2, f"cannot copy UID {uid}") from exc2
                    break
        if not placed:
            return []
        try:
            fsync_dir(dest.dir / "cur")
            if move:
                fsync_dir(self.dir / "cur")
        except OSError as exc:
            raise _os_error(exc, f"cannot copy to {dest.name}") from exc
        if move:
            for uid, _base in placed:
                msg = self._mutable().pop(uid, None)
                if msg is not None:
                    self._by_base.pop(msg.base, None)
        uids_there = dest._claim([base for _uid, base in placed])
        return [(uid, uids_there[base]) for uid, base in placed]

    def _copy_file(self, msg: _Msg, dest: Folder, name: str) -> None:
        source = self._file(msg)
        data = source.read_bytes()
        mtime = os.stat(source).st_mtime
        tmp = dest.dir / "tmp" / md.base_name(name)
        durable_create(tmp, dest.dir / "cur" / name, data, mtime=mtime)

    def copy(self, uids: Iterable[int], dest: Folder) -> list[tuple[int, int]]:
        """COPY: (source UID, destination UID) pairs for COPYUID (RFC 4315); flags and internal date kept
        (the file is hard-linked when possible, as Dovecot does). Expunged messages are skipped."""
        return self._transfer(uids, dest, move=False)

    def move(self, uids: Iterable[int], dest: Folder) -> list[tuple[int, int]]:
        """MOVE (RFC 6851): each message is renamed into the destination in one step, so at every moment
        it is in exactly one folder. Returns (source UID, destination UID) pairs; the source UIDs are
        expunged from this view (the caller reports them)."""
        return self._transfer(uids, dest, move=True)

    def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        """EXPUNGE / UID EXPUNGE: remove the messages flagged \\Deleted (among ``uids`` if given), as their
        files say now. Returns the UIDs that are gone (removed here, or meanwhile by someone else)."""
        candidates = sorted(self._msgs) if uids is None else sorted(set(uids) & set(self._msgs))
        removed: list[int] = []
        for uid in candidates:
            msg = self._msgs[uid]
            for _ in range(5):
                if "T" not in (md.split_name(msg.name)[1] or ""):
                    break
                try:
                    os.unlink(self._file(msg))
                    removed.append(uid)
                    break
                except FileNotFoundError:
                    found = self._relocate(msg)
                    if found is None:
                        removed.append(uid)
                        break
                    msg = found
                except OSError as exc:
                    raise _os_error(exc, f"cannot expunge UID {uid}") from exc
        for uid in removed:
            msg = self._mutable().pop(uid)
            self._by_base.pop(msg.base, None)
        if removed:
            with contextlib.suppress(OSError):
                fsync_dir(self.dir / "cur")
        return removed

    def changed(self) -> bool:
        """Whether the folder may have changed since the last ``sync()`` (cheap: no directory read). With
        inotify this is exact; without it, always True (the caller then syncs, as before)."""
        if self._wds and self._watcher is not None:
            return self._watcher.generation(self._wds) != self._gens
        return True

    async def wait_for_change(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until the folder may have changed since the last ``sync()``:
        a delivery, a flag change or an expunge by anyone. True then; False on timeout. inotify wakes it
        at once; without inotify the directories are checked every POLL_INTERVAL seconds."""
        if self._wds and self._watcher is not None:
            return await self._watcher.wait(self._wds, self._gens, timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            stamp = await asyncio.to_thread(self._dir_stamp)
            if stamp != self._stamp:
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(POLL_INTERVAL, left))

    def close(self) -> None:
        """Release what this view holds (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None:
            for wd in self._wds:
                self._watcher.remove(wd)
        self._wds = ()
        self._msgs, self._by_base = {}, {}
        self._synced = None
        self._unshare()
