"""The IMAP dialogue (RFC 3501 and the extensions in :data:`EXTENSIONS`) as a state machine without sockets.

The server feeds it parsed commands; it writes responses through an :class:`Output` and returns an
:class:`Action` when the socket side must act (check a password, start TLS, idle, hang up). Commands run
synchronously against the user's :class:`~mailprov.imap.store.Store` (the server calls
:meth:`Session.execute` in a worker thread, one command at a time per connection).

Mailbox state for a selected folder is the per-session sequence-number map: ``uids`` (index + 1 is the
message sequence number) and the flags last reported. Before answering, the session syncs the folder
and reports what changed as untagged EXPUNGE, EXISTS, RECENT and FETCH FLAGS (RFC 3501 5.2, 7.4.1),
except during FETCH, STORE and SEARCH, which must not shift sequence numbers (RFC 3501 7.4.1: no
EXPUNGE then).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from mailprov.imap import fetch, mutf7
from mailprov.imap.parser import (
    NIL,
    Atom,
    Command,
    ParseError,
    String,
    Token,
    astring,
    astring_out,
    expect,
    format_date_time,
    parse_date_time,
    parse_flags,
    parse_sequence_set,
    quote,
    resolve_sequence,
    resolve_uids,
)
from mailprov.imap.search import Candidate, Context, matches, parse_search
from mailprov.imap.store import Folder, MessageInfo, Store, StoreError

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
EXTENSIONS = ("LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE", "UNSELECT", "CHILDREN", "UIDPLUS", "MOVE", "SPECIAL-USE")
DELIMITER = "."
# FETCH of message contents goes out in batches of this many octets; one session at a time (per
# process) reads and renders a batch: threads taking turns cost less than ten threads trading the GIL
# at every open() and read().
FETCH_BATCH = 256 * 1024
_READING = threading.Lock()
META_LINES_PER_WRITE = 2048  # response lines per write of a metadata-only FETCH (about 120 KiB)


class Output(Protocol):
    """Where responses go (the socket side buffers and applies flow control)."""

    def write(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class Authenticate:
    """Check this password (in the server: throttled, off the event loop), then call
    :meth:`Session.login_result`."""

    tag: str
    user: str
    password: str

    def __repr__(self) -> str:
        return f"Authenticate(tag={self.tag!r}, user={self.user!r}, password=<hidden>)"


@dataclass(frozen=True)
class AuthContinue:
    """Send ``+ `` and pass the client's next line to :meth:`Session.auth_response`."""

    tag: str


@dataclass(frozen=True)
class StartTLS:
    """Stop reading, discard anything pipelined after STARTTLS, write :attr:`reply`, start the handshake
    (in that order: the client's handshake may follow the reply at once and must not be discarded)."""

    reply: bytes


@dataclass(frozen=True)
class Idle:
    """Enter IDLE (``+ idling`` written): report changes until the client sends DONE."""

    tag: str


@dataclass(frozen=True)
class Close:
    """Close the connection once the output is flushed."""


Action = Authenticate | AuthContinue | StartTLS | Idle | Close


class No(Exception):
    """A command that fails: ``NO [code] text``."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


def _store_no(exc: StoreError) -> No:
    code = {"NONEXISTENT": "NONEXISTENT", "ALREADYEXISTS": "ALREADYEXISTS", "CANNOT": "CANNOT", "LIMIT": "LIMIT"}.get(exc.code, "SERVERBUG")
    return No(exc.message, code)


def mailbox_name(token: Token) -> str:
    """A mailbox argument as its Unicode name (modified UTF-7 on the wire, RFC 3501 5.1.3); ``INBOX``
    in any case is INBOX (5.1)."""
    raw = astring(token, "mailbox name")
    try:
        name = mutf7.decode(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        try:
            name = raw.decode("utf-8")  # RFC 9051 clients may send UTF-8
        except UnicodeDecodeError as exc:
            raise ParseError("Invalid mailbox name") from exc
    return "INBOX" if name.upper() == "INBOX" else name


def wire_name(name: str) -> bytes:
    """A mailbox name for output."""
    return astring_out(mutf7.encode(name))


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """LIST wildcards (RFC 3501 6.3.8): ``*`` matches anything, ``%`` anything but the delimiter."""
    out = []
    for char in pattern:
        if char == "*":
            out.append(".*")
        elif char == "%":
            out.append(f"[^{re.escape(DELIMITER)}]*")
        else:
            out.append(re.escape(char))
    return re.compile("^" + "".join(out) + "$", re.DOTALL)


def list_matches(regex: re.Pattern[str], name: str) -> bool:
    """Whether a folder name matches a LIST pattern; INBOX matches case-insensitively."""
    if name == "INBOX":
        return bool(re.match(regex.pattern, name, re.IGNORECASE | re.DOTALL))
    return bool(regex.match(name))


class UidIndex:
    """A read-only mapping uid -> position over an ascending UID list, by binary search."""

    __slots__ = ("uids",)

    def __init__(self, uids: list[int]) -> None:
        self.uids = uids

    def get(self, uid: int) -> int | None:
        """The position of ``uid``, or None."""
        i = bisect.bisect_left(self.uids, uid)
        return i if i < len(self.uids) and self.uids[i] == uid else None

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self.get(uid) is not None

    def __getitem__(self, uid: int) -> int:
        i = self.get(uid)
        if i is None:
            raise KeyError(uid)
        return i

    def __iter__(self) -> Iterator[int]:
        return iter(self.uids)


def ordered_flags(flags: Iterable[str], recent: bool) -> list[str]:
    """Flags in the order they are reported: system flags, then keywords, then \\Recent."""
    out = sorted(flags, key=lambda f: (not f.startswith("\\"), f))
    if recent:
        out.append("\\Recent")
    return out


@dataclass
class Selected:
    """The selected folder and this session's view of it."""

    folder: Folder
    readonly: bool
    uids: list[int] = field(default_factory=list)
    infos: dict[int, MessageInfo] = field(default_factory=dict)
    recent: set[int] = field(default_factory=set)

    @property
    def index(self) -> UidIndex:
        """UID to sequence number - 1 (a view on ``uids``, which stays sorted: no second copy per session)."""
        return UidIndex(self.uids)

    def reindex(self) -> None:
        """Kept for call sites that changed ``uids``: the index is a view, nothing to rebuild."""

    def flags(self, uid: int) -> list[str]:
        """The flags to report for a message (\\Recent included)."""
        return ordered_flags(self.infos[uid].flags, uid in self.recent)


class Session:
    """One client's IMAP session."""

    def __init__(
        self,
        *,
        hostname: str,
        secure: bool,
        tls_available: bool,
        plaintext_ok: bool,
        append_limit: int,
        open_store: Callable[[str], Store],
        default_domain: str | None = None,
    ) -> None:
        self.hostname = hostname
        self.secure = secure
        self.tls_available = tls_available
        self.plaintext_ok = plaintext_ok
        self.append_limit = append_limit
        self.open_store = open_store
        self.default_domain = default_domain
        self.state = "notauth"  # notauth, auth, selected, logout
        self.user: str | None = None
        self.store: Store | None = None
        self.selected: Selected | None = None

    # -- capabilities -------------------------------------------------------------------------

    @property
    def password_allowed(self) -> bool:
        """Whether a password may be sent now (TLS, or a configured plaintext network)."""
        return self.secure or self.plaintext_ok

    def capabilities(self) -> str:
        """The CAPABILITY list for the current state (RFC 3501 6.1.1, 7.2.1)."""
        caps = ["IMAP4rev1", *EXTENSIONS, f"APPENDLIMIT={self.append_limit}"]
        if self.state == "notauth":
            if self.tls_available and not self.secure:
                caps.append("STARTTLS")
            caps.append("AUTH=PLAIN" if self.password_allowed else "LOGINDISABLED")
        return " ".join(caps)

    def greeting(self) -> bytes:
        """The server greeting, with capabilities (RFC 3501 7.1.1)."""
        return f"* OK [CAPABILITY {self.capabilities()}] {self.hostname} IMAP ready\r\n".encode()

    # -- dispatch -----------------------------------------------------------------------------

    _ANY = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "ID"})
    _NOTAUTH = frozenset({"STARTTLS", "LOGIN", "AUTHENTICATE"})
    _AUTH = frozenset({
        "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB", "STATUS",
        "APPEND", "NAMESPACE", "ENABLE", "IDLE",
    })  # fmt: skip
    _SELECTED = frozenset({
        "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE",
        "UID FETCH", "UID STORE", "UID COPY", "UID MOVE", "UID SEARCH", "UID EXPUNGE",
    })  # fmt: skip
    _NO_EXPUNGE = frozenset({"FETCH", "STORE", "SEARCH"})  # RFC 3501 7.4.1: no EXPUNGE response during these

    def execute(self, cmd: Command, out: Output) -> Action | None:
        """Run one command: responses are written to ``out``; an action is returned when the socket
        side must continue it."""
        name = cmd.name
        allowed = self._ANY | (self._NOTAUTH if self.state == "notauth" else frozenset())
        if self.state in ("auth", "selected"):
            allowed |= self._AUTH
        if self.state == "selected":
            allowed |= self._SELECTED
        handler = getattr(self, "_cmd_" + name.replace(" ", "_").lower(), None)
        if handler is None:
            out.write(f"{cmd.tag} BAD Unknown command\r\n".encode())
            return None
        if name not in allowed:
            out.write(f"{cmd.tag} BAD Command not allowed in this state\r\n".encode())
            return None
        try:
            action = handler(cmd, out)
        except ParseError as exc:
            out.write(f"{cmd.tag} BAD {exc}\r\n".encode())
            return None
        except No as exc:
            self.updates(out, expunge=name not in self._NO_EXPUNGE)
            code = f"[{exc.code}] " if exc.code else ""
            out.write(f"{cmd.tag} NO {code}{exc.text}\r\n".encode())
            return None
        except StoreError as exc:
            no = _store_no(exc)
            out.write(f"{cmd.tag} NO [{no.code}] {no.text}\r\n".encode())
            return None
        return action

    def _ok(self, cmd: Command, out: Output, text: str = "done", *, code: str | None = None, updates: bool = True) -> None:
        if updates:
            self.updates(out, expunge=cmd.name not in self._NO_EXPUNGE)
        prefix = f"[{code}] " if code else ""
        out.write(f"{cmd.tag} OK {prefix}{cmd.name} {text}\r\n".encode())

    # -- any state ----------------------------------------------------------------------------

    def _cmd_capability(self, cmd: Command, out: Output) -> None:
        expect(cmd.args, 0)
        out.write(f"* CAPABILITY {self.capabilities()}\r\n".encode())
        self._ok(cmd, out)

    def _cmd_noop(self, cmd: Command, out: Output) -> None:
        expect(cmd.args, 0)
        self._ok(cmd, out)

    def _cmd_logout(self, cmd: Command, out: Output) -> Action:
        expect(cmd.args, 0)
        out.write(b"* BYE Logging out\r\n")
        self._ok(cmd, out, updates=False)
        self.close()
        self.state = "logout"
        return Close()

    def _cmd_id(self, cmd: Command, out: Output) -> None:
        expect(cmd.args, 1)
        if not (cmd.args[0] is NIL or isinstance(cmd.args[0], list)):
            raise ParseError("ID takes a parameter list or NIL")
        out.write(b'* ID ("name" "mailprov")\r\n')  # no version: nothing for an attacker to look up
        self._ok(cmd, out)

    # -- not authenticated --------------------------------------------------------------------

    def _cmd_starttls(self, cmd: Command, out: Output) -> Action | None:
        expect(cmd.args, 0)
        if self.secure or not self.tls_available:
            raise No("TLS is already active" if self.secure else "TLS is not available here")
        return StartTLS(f"{cmd.tag} OK Begin TLS negotiation now\r\n".encode())

    def tls_started(self) -> None:
        """The handshake succeeded: the session is secure (the client asks CAPABILITY again)."""
        self.secure = True

    def login_name(self, name: str) -> str:
        """A login name as the users file spells it (bare local parts get the only domain)."""
        name = name.strip().lower()
        if "@" not in name and self.default_domain:
            name = f"{name}@{self.default_domain}"
        return name

    def _cmd_login(self, cmd: Command, out: Output) -> Action:
        expect(cmd.args, 2)
        if not self.password_allowed:
            raise No("Plaintext authentication disallowed on non-secure connections, use STARTTLS first", "PRIVACYREQUIRED")
        user = astring(cmd.args[0], "user name").decode("utf-8", "replace")
        password = astring(cmd.args[1], "password").decode("utf-8", "replace")
        return Authenticate(cmd.tag, self.login_name(user), password)

    def _cmd_authenticate(self, cmd: Command, out: Output) -> Action | None:
        expect(cmd.args, 1, 2)
        mech = astring(cmd.args[0], "mechanism").decode("ascii", "replace").upper()
        if mech != "PLAIN":
            raise No("Unsupported authentication mechanism", "CANNOT")
        if not self.password_allowed:
            raise No("Plaintext authentication disallowed on non-secure connections, use STARTTLS first", "PRIVACYREQUIRED")
        if len(cmd.args) == 1:
            return AuthContinue(cmd.tag)
        return self.auth_response(cmd.tag, astring(cmd.args[1], "initial response"), out)

    def auth_response(self, tag: str, line: bytes, out: Output) -> Action | None:
        """The client's SASL PLAIN response (RFC 4616; ``=`` is an empty initial response, RFC 4959)."""
        line = line.strip()
        if line == b"*":
            out.write(f"{tag} BAD Authentication cancelled\r\n".encode())
            return None
        try:
            decoded = b"" if line == b"=" else base64.b64decode(line, validate=True)
            authzid, authcid, password = decoded.decode("utf-8").split("\0")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            out.write(f"{tag} BAD Invalid SASL PLAIN response\r\n".encode())
            return None
        user = self.login_name(authcid)
        if authzid and self.login_name(authzid) != user:
            password = ""  # acting for another user is not supported: fails like a wrong password
        return Authenticate(tag, user, password)

    def login_result(self, tag: str, user: str, ok: bool, out: Output) -> None:
        """Finish LOGIN/AUTHENTICATE after the password check (opens the user's store when ``ok``)."""
        if not ok:
            out.write(f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed\r\n".encode())
            return
        try:
            self.store = self.open_store(user)
        except (StoreError, OSError):
            out.write(f"{tag} NO [UNAVAILABLE] The mailbox cannot be opened now\r\n".encode())
            raise
        self.user = user
        self.state = "auth"
        out.write(f"{tag} OK [CAPABILITY {self.capabilities()}] Logged in\r\n".encode())

    # -- authenticated ------------------------------------------------------------------------

    def _need_store(self) -> Store:
        assert self.store is not None
        return self.store

    def _cmd_select(self, cmd: Command, out: Output, *, readonly: bool = False) -> None:
        expect(cmd.args, 1, 2)
        name = mailbox_name(cmd.args[0])
        self._unselect()
        try:
            folder = self._need_store().open(name)
        except StoreError as exc:
            raise _store_no(exc) from None
        sel = Selected(folder, readonly)
        _infos, recent = folder.sync()
        sel.infos = folder.info_map()  # copied from the folder's snapshot: a 10,000-message SELECT is ~1 ms
        sel.uids = list(sel.infos)
        sel.recent = set(recent)
        self.selected = sel
        self.state = "selected"
        keywords = folder.keywords_in_use()
        flags = " ".join([*SYSTEM_FLAGS, *keywords])
        out.write(f"* FLAGS ({flags})\r\n".encode())
        permanent = "" if readonly else f"{flags} \\*"
        out.write(f"* OK [PERMANENTFLAGS ({permanent})] Limited\r\n".encode())
        out.write(f"* {len(sel.uids)} EXISTS\r\n* {len(sel.recent)} RECENT\r\n".encode())
        unseen = folder.first_unseen()
        if unseen is not None:
            out.write(f"* OK [UNSEEN {sel.index[unseen] + 1}] First unseen\r\n".encode())
        out.write(f"* OK [UIDVALIDITY {folder.uidvalidity}] UIDs valid\r\n* OK [UIDNEXT {folder.uidnext}] Predicted next UID\r\n".encode())
        out.write(f"{cmd.tag} OK [{'READ-ONLY' if readonly else 'READ-WRITE'}] {cmd.name} completed\r\n".encode())

    def _cmd_examine(self, cmd: Command, out: Output) -> None:
        self._cmd_select(cmd, out, readonly=True)

    def _cmd_create(self, cmd: Command, out: Output) -> None:
        expect(cmd.args, 1)
        name = mailbox_name(cmd.args[0]).rstrip(DELIMITER)  # RFC 3501 6.3.3: a trailing delimiter is dropped
        if name.upper() == "INBOX":
            raise No("INBOX always exists", "ALREADYEXISTS")
        self._need_store().create(name)
        self._ok(cmd, out)

    def _cmd_delete(self, cmd: Command, out: Output) -> None:
        expect(cmd.args, 1)
        name = mailbox_name(cmd.args[0])
        if name == "INBOX":
            raise No("INBOX cannot be deleted", "CANNOT")
        if self.selected and self.selected.folder.name == name:
            self._unselect()
            self.state = "auth"
        self._need_store().delete(name)
        self._ok(cmd, out)

    def _cmd_rename(self, cmd: Command, out: Output) -> None:
        expect(cmd.args, 2)
        old, new = mailbox_name(cmd.args[0]), mailbox_name(cmd.args[1]).rstrip(DELIMITER)
        if new.upper() == "INBOX":
            raise No("INBOX already exists", "ALREADYEXISTS")
        self._need_store().rename(old, new)
        self._ok(cmd, out)

    def _cmd_subscribe(self, cmd: Command, out: Output, *, on: bool = True) -> None:
        expect(cmd.args, 1)
        self._need_store().subscribe(mailbox_name(cmd.args[0]), on)
        self._ok(cmd, out)

    def _cmd_unsubscribe(self, cmd: Command, out: Output) -> None:
        self._cmd_subscribe(cmd, out, on=False)

    def _cmd_list(self, cmd: Command, out: Output, *, lsub: bool = False) -> None:
        args = list(cmd.args)
        subscribed_only, special_only, want_special = lsub, False, True
        if not lsub and args and isinstance(args[0], list):  # RFC 5258 selection options
            for opt in args.pop(0):
                word = opt.upper() if isinstance(opt, Atom) else ""
                if word == "SUBSCRIBED":
                    subscribed_only = True
                elif word == "SPECIAL-USE":
                    special_only = True
                elif word not in ("REMOTE", "RECURSIVEMATCH"):
                    raise ParseError("Unknown LIST selection option")
        return_subscribed = subscribed_only and not lsub
        if not lsub and len(args) == 4 and isinstance(args[2], Atom) and args[2].upper() == "RETURN":
            for opt in args[3] if isinstance(args[3], list) else []:
                word = opt.upper() if isinstance(opt, Atom) else ""
                if word == "SUBSCRIBED":
                    return_subscribed = True
            args = args[:2]
        expect(args, 2)
        ref = astring(args[0], "reference").decode("utf-8", "replace")
        pattern_raw = astring(args[1], "pattern").decode("utf-8", "replace")
        verb = "LSUB" if lsub else "LIST"
        if pattern_raw == "":  # RFC 3501 6.3.8: the delimiter and the root
            out.write(f'* {verb} (\\Noselect) "{DELIMITER}" ""\r\n'.encode())
            self._ok(cmd, out)
            return
        try:
            pattern = mutf7.decode(ref + pattern_raw)
        except ValueError:
            pattern = ref + pattern_raw
        regex = pattern_regex(pattern)
        for info in self._need_store().folders():
            if subscribed_only and not info.subscribed:
                continue
            if special_only and not info.special_use:
                continue
            if not list_matches(regex, info.name):
                continue
            attrs = [] if info.selectable else ["\\Noselect"]  # a level that exists only as a parent (RFC 3501 7.2.2)
            attrs.append("\\HasChildren" if info.has_children else "\\HasNoChildren")
            if info.special_use and want_special:
                attrs.append(info.special_use)
            if return_subscribed and info.subscribed:
                attrs.append("\\Subscribed")
            out.write(f'* {verb} ({" ".join(attrs)}) "{DELIMITER}" '.encode() + wire_name(info.name) + b"\r\n")
        self._ok(cmd, out)

    def _cmd_lsub(self, cmd: Command, out: Output) -> None:
        self._cmd_list(cmd, out, lsub=True)

    def _cmd_status(self, cmd: Command, out: Output) -> None:
        expect(cmd.args, 2)
        name = mailbox_name(cmd.args[0])
        if not isinstance(cmd.args[1], list) or not cmd.args[1]:
            raise ParseError("STATUS needs a list of items")
        wanted = [t.upper() if isinstance(t, Atom) else "" for t in cmd.args[1]]
        for w in wanted:
            if w not in ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE"):
                raise ParseError(f"Unknown STATUS item {w[:30]}")
        if self.selected and self.selected.folder.name == name:
            self.updates(out)
        try:
            folder = self._need_store().open(name)
        except StoreError as exc:
            raise _store_no(exc) from None
        try:
            infos, recent = folder.sync()
            values = {
                "MESSAGES": len(infos),
                "RECENT": len(recent),
                "UIDNEXT": folder.uidnext,
                "UIDVALIDITY": folder.uidvalidity,
                "UNSEEN": sum(1 for i in infos if "\\Seen" not in i.flags),
                "SIZE": sum(i.size for i in infos),
            }
        finally:
            folder.close()
        items = " ".join(f"{w} {values[w]}" for w in wanted)
        out.write(b"* STATUS " + wire_name(name) + f" ({items})\r\n".encode())
        self._ok(cmd, out)

    def _cmd_append(self, cmd: Command, out: Output) -> None:
        args = cmd.args
        if len(args) < 2:
            raise ParseError("APPEND needs a mailbox and a message")
        name = mailbox_name(args[0])
        flags: list[str] = []
        date: float | None = None
        rest = args[1:-1]
        if rest and isinstance(rest[0], list):
            flags = parse_flags(rest.pop(0), allow_recent=True)
        if rest:
            date = parse_date_time(rest.pop(0))
        if rest:
            raise ParseError("Too many APPEND arguments")
        message = args[-1]
        if not isinstance(message, String) or not message.literal:
            raise ParseError("The message must be a literal")
        if len(message.value) > self.append_limit:
            raise No(f"Message over the limit of {self.append_limit} octets", "TOOBIG")
        try:
            folder = self._need_store().open(name)
        except StoreError as exc:
            if exc.code == "NONEXISTENT":
                raise No("No such mailbox", "TRYCREATE") from None
            raise _store_no(exc) from None
        try:
            uid = folder.append(message.value, flags, date)
            validity = folder.uidvalidity
        finally:
            folder.close()
        self._ok(cmd, out, code=f"APPENDUID {validity} {uid}")

    def _cmd_namespace(self, cmd: Command, out: Output) -> None:
        expect(cmd.args, 0)
        out.write(f'* NAMESPACE (("" "{DELIMITER}")) NIL NIL\r\n'.encode())
        self._ok(cmd, out)

    def _cmd_enable(self, cmd: Command, out: Output) -> None:
        if not cmd.args:
            raise ParseError("ENABLE needs a capability")
        out.write(b"* ENABLED\r\n")  # none of the ENABLE-able extensions (RFC 5161) is offered
        self._ok(cmd, out)

    def _cmd_idle(self, cmd: Command, out: Output) -> Action:
        expect(cmd.args, 0)
        self.updates(out)
        out.write(b"+ idling\r\n")
        return Idle(cmd.tag)

    def idle_done(self, tag: str, line: bytes, out: Output) -> None:
        """The line that ended IDLE: ``DONE`` (RFC 2177) completes it, anything else is BAD."""
        if line.strip().upper() == b"DONE":
            self.updates(out)
            out.write(f"{tag} OK IDLE terminated\r\n".encode())
        else:
            out.write(f"{tag} BAD Expected DONE\r\n".encode())

    # -- selected -----------------------------------------------------------------------------

    def _sel(self) -> Selected:
        assert self.selected is not None
        return self.selected

    def _unselect(self) -> None:
        if self.selected is not None:
            self.selected.folder.close()
            self.selected = None
            if self.state == "selected":
                self.state = "auth"

    def _cmd_check(self, cmd: Command, out: Output) -> None:
        expect(cmd.args, 0)
        self._ok(cmd, out)

    def _cmd_close(self, cmd: Command, out: Output) -> None:
        expect(cmd.args, 0)
        sel = self._sel()
        if not sel.readonly:
            sel.folder.expunge()  # RFC 3501 6.4.2: silently, no EXPUNGE responses
        self._unselect()
        self._ok(cmd, out, updates=False)

    def _cmd_unselect(self, cmd: Command, out: Output) -> None:
        expect(cmd.args, 0)
        self._unselect()
        self._ok(cmd, out, updates=False)

    def _report_expunged(self, removed: Iterable[int], out: Output) -> None:
        sel = self._sel()
        gone = set(removed) & set(sel.index)
        if not gone:
            return
        seqs = sorted((sel.index[uid] for uid in gone), reverse=True)  # highest first: earlier ones do not shift
        chunks = []
        for i in seqs:
            chunks.append(b"* %d EXPUNGE\r\n" % (i + 1))
        out.write(b"".join(chunks))
        sel.uids = [u for u in sel.uids if u not in gone]
        for uid in gone:
            sel.infos.pop(uid, None)
            sel.recent.discard(uid)
        sel.reindex()

    def _cmd_expunge(self, cmd: Command, out: Output) -> None:
        expect(cmd.args, 0)
        self._expunge(cmd, out, None)

    def _cmd_uid_expunge(self, cmd: Command, out: Output) -> None:
        expect(cmd.args, 1)
        sel = self._sel()
        self.updates(out)
        self._expunge(cmd, out, resolve_uids(parse_sequence_set(cmd.args[0]), sel.uids))

    def _expunge(self, cmd: Command, out: Output, uids: list[int] | None) -> None:
        sel = self._sel()
        if sel.readonly:
            raise No("The mailbox is read-only", "READ-ONLY")
        self._report_expunged(sel.folder.expunge(uids), out)
        self._ok(cmd, out)

    def _targets(self, token: Token, out: Output, *, uid: bool) -> list[int]:
        """The UIDs a sequence set names (UID sets match existing UIDs only, RFC 3501 6.4.8). A UID
        command first brings the view up to date (its numbers cannot shift); a sequence-number command
        uses the view the client has."""
        sel = self._sel()
        ranges = parse_sequence_set(token)
        if uid:
            self.updates(out)
            return resolve_uids(ranges, sel.uids)
        seqs = resolve_sequence(ranges, len(sel.uids))
        for lo, hi in ranges:
            if None in (lo, hi) and not sel.uids:
                continue  # '1:*' in an empty folder names nothing
            if any(n is not None and n > len(sel.uids) for n in (lo, hi)):
                raise ParseError("Invalid message sequence number")  # RFC 3501 9: no such message
        return [sel.uids[s - 1] for s in sorted(seqs)]

    def _cmd_fetch(self, cmd: Command, out: Output, *, uid: bool = False) -> None:
        expect(cmd.args, 2, 3)
        if len(cmd.args) == 3:
            raise ParseError("FETCH modifiers are not supported")
        sel = self._sel()
        items = fetch.parse_items(cmd.args[1], uid=uid)
        targets = self._targets(cmd.args[0], out, uid=uid)
        if not sel.readonly and any(i.sets_seen for i in items):
            unseen = [u for u in targets if "\\Seen" not in sel.infos[u].flags]
            if unseen:
                for info in sel.folder.store_flags(unseen, ["\\Seen"], "add"):
                    sel.infos[info.uid] = info
                if not any(i.name == "FLAGS" for i in items):
                    items = [*items, fetch.Item("FLAGS")]
        if not any(i.needs_message for i in items):
            self._fetch_meta(targets, items, out)
            self._ok(cmd, out)
            return
        missing = False
        folder = sel.folder
        buffer: list[bytes] = []
        size = 0
        recent = sel.recent
        ordered: dict[tuple[frozenset[str], bool], list[str]] = {}  # flag order, once per distinct set
        held = False  # _READING, while this session reads a batch of messages
        try:
            for seq, target in zip(self._seqs(targets), targets, strict=True):
                if not held:
                    _READING.acquire()
                    held = True
                info = sel.infos[target]
                key = (info.flags, target in recent)
                flags = ordered.get(key)
                if flags is None:
                    flags = ordered[key] = ordered_flags(*key)
                try:
                    chunk = fetch.render(
                        seq,
                        target,
                        items,
                        flags=flags,
                        size=info.size,
                        internaldate=info.internaldate,
                        message=lambda t=target: folder.read(t),  # type: ignore[misc]
                    )
                except StoreError as exc:
                    if exc.code != "NONEXISTENT":
                        raise
                    missing = True
                    continue
                buffer.append(chunk)
                size += len(chunk)
                if size >= FETCH_BATCH:
                    _READING.release()  # not held while waiting for the client to read
                    held = False
                    out.write(b"".join(buffer))
                    buffer.clear()
                    size = 0
        finally:
            if held:
                _READING.release()
        if buffer:
            out.write(b"".join(buffer))
        if missing:
            raise No("Some of the requested messages no longer exist", "EXPUNGEISSUED")
        self._ok(cmd, out)

    def _seqs(self, targets: list[int]) -> Iterable[int]:
        """The sequence numbers of ``targets`` (UIDs of the selected folder, ascending)."""
        sel = self._sel()
        if len(targets) == len(sel.uids):
            return range(1, len(targets) + 1)  # every message: the position is the sequence number
        index = sel.index
        return [index[t] + 1 for t in targets]

    def _fetch_meta(self, targets: list[int], items: list[fetch.Item], out: Output) -> None:
        """FETCH of FLAGS, UID, RFC822.SIZE and INTERNALDATE only (what clients ask of every message
        when they open a folder): no message is read. Built column by column, then one ``%`` per line:
        the work per message is a few list and dict lookups (flag lists and dates are rendered once per
        distinct value), and the lines go out in large writes."""
        sel = self._sel()
        infos = [sel.infos[t] for t in targets]
        parts: list[bytes] = []
        columns: list[Iterable[object]] = [self._seqs(targets)]
        for item in items:
            if item.name == "FLAGS":
                parts.append(b"FLAGS %s")
                columns.append(_flag_column(targets, infos, sel.recent))
            elif item.name == "UID":
                parts.append(b"UID %d")
                columns.append(targets)
            elif item.name == "RFC822.SIZE":
                parts.append(b"RFC822.SIZE %d")
                columns.append([i.size for i in infos])
            else:
                parts.append(b'INTERNALDATE "%s"')
                dates: dict[int, bytes] = {}
                seconds = [int(i.internaldate) for i in infos]
                columns.append([dates.get(t) or dates.setdefault(t, format_date_time(t).encode()) for t in seconds])
        template = b"* %d FETCH (" + b" ".join(parts) + b")\r\n"
        rows = list(zip(*columns, strict=True))
        for start in range(0, len(rows), META_LINES_PER_WRITE):
            out.write(b"".join([template % row for row in rows[start : start + META_LINES_PER_WRITE]]))

    def _cmd_uid_fetch(self, cmd: Command, out: Output) -> None:
        self._cmd_fetch(cmd, out, uid=True)

    def _cmd_store(self, cmd: Command, out: Output, *, uid: bool = False) -> None:
        expect(cmd.args, 3)
        sel = self._sel()
        if not isinstance(cmd.args[1], Atom):
            raise ParseError("Invalid STORE item")
        item = cmd.args[1].upper()
        match = re.fullmatch(r"([+-]?)FLAGS(\.SILENT)?", item)
        if not match:
            raise ParseError("Invalid STORE item")
        flags = parse_flags(cmd.args[2], allow_recent=True)
        targets = self._targets(cmd.args[0], out, uid=uid)
        if sel.readonly:
            raise No("The mailbox is read-only", "READ-ONLY")
        mode = {"": "set", "+": "add", "-": "remove"}[match.group(1)]
        changed = sel.folder.store_flags(targets, flags, mode)  # type: ignore[arg-type]
        lines = []
        for info in changed:
            sel.infos[info.uid] = info
            if not match.group(2) and info.uid in sel.index:
                uid_part = f"UID {info.uid} " if uid else ""
                flag_text = " ".join(sel.flags(info.uid))
                lines.append(f"* {sel.index[info.uid] + 1} FETCH ({uid_part}FLAGS ({flag_text}))\r\n".encode())
        if lines:
            out.write(b"".join(lines))
        self._ok(cmd, out)

    def _cmd_uid_store(self, cmd: Command, out: Output) -> None:
        self._cmd_store(cmd, out, uid=True)

    def _cmd_copy(self, cmd: Command, out: Output, *, uid: bool = False, move: bool = False) -> None:
        expect(cmd.args, 2)
        sel = self._sel()
        targets = self._targets(cmd.args[0], out, uid=uid)
        name = mailbox_name(cmd.args[1])
        if move and sel.readonly:
            raise No("The mailbox is read-only", "READ-ONLY")
        try:
            dest = self._need_store().open(name)
        except StoreError as exc:
            if exc.code == "NONEXISTENT":
                raise No("No such mailbox", "TRYCREATE") from None
            raise _store_no(exc) from None
        try:
            pairs = sel.folder.move(targets, dest) if move else sel.folder.copy(targets, dest)
            validity = dest.uidvalidity
        finally:
            dest.close()
        code = None
        if pairs:
            code = f"COPYUID {validity} {_uid_set(p[0] for p in pairs)} {_uid_set(p[1] for p in pairs)}"
        if move:
            if code:
                out.write(f"* OK [{code}] Moved\r\n".encode())
            self._report_expunged([p[0] for p in pairs], out)
            self._ok(cmd, out)
        else:
            self._ok(cmd, out, code=code)

    def _cmd_uid_copy(self, cmd: Command, out: Output) -> None:
        self._cmd_copy(cmd, out, uid=True)

    def _cmd_move(self, cmd: Command, out: Output) -> None:
        self._cmd_copy(cmd, out, move=True)

    def _cmd_uid_move(self, cmd: Command, out: Output) -> None:
        self._cmd_copy(cmd, out, uid=True, move=True)

    def _cmd_search(self, cmd: Command, out: Output, *, uid: bool = False) -> None:
        sel = self._sel()
        try:
            _charset, key = parse_search(cmd.args)
        except LookupError:
            raise No("Supported charsets: UTF-8 US-ASCII", "BADCHARSET (UTF-8 US-ASCII)") from None
        if uid:
            self.updates(out)
        ctx = Context(len(sel.uids), sel.uids[-1] if sel.uids else 0)
        found: list[int] = []
        folder = sel.folder
        for i, u in enumerate(sel.uids):
            info = sel.infos[u]
            cand = Candidate(i + 1, u, info.flags, u in sel.recent, info.size, info.internaldate, lambda u=u: folder.read(u))  # type: ignore[misc]
            try:
                if matches(key, cand, ctx):
                    found.append(u if uid else i + 1)
            except StoreError:
                continue
        out.write(("* SEARCH" + "".join(f" {n}" for n in found) + "\r\n").encode())
        self._ok(cmd, out)

    def _cmd_uid_search(self, cmd: Command, out: Output) -> None:
        self._cmd_search(cmd, out, uid=True)

    # -- untagged updates ---------------------------------------------------------------------

    def updates(self, out: Output, *, expunge: bool = True) -> None:
        """Sync the selected folder and report changes since the last report (RFC 3501 7.4.1: without
        ``expunge``, messages gone stay in the map until a command that may report them)."""
        sel = self.selected
        if sel is None or not sel.folder.changed():
            return
        infos, recent = sel.folder.sync()
        now = {i.uid: i for i in infos}
        if expunge:
            self._report_expunged([u for u in sel.uids if u not in now], out)
        lines: list[bytes] = []
        for uid, info in now.items():
            old = sel.infos.get(uid)
            # Unchanged messages are the very same objects (the store shares them): skip those at once.
            if old is not None and old is not info and old.flags != info.flags and uid in sel.index:
                sel.infos[uid] = info
                lines.append(f"* {sel.index[uid] + 1} FETCH (FLAGS ({' '.join(sel.flags(uid))}))\r\n".encode())
        last = sel.uids[-1] if sel.uids else 0
        added = [i for i in infos if i.uid > last]
        sel.recent |= recent
        if added:
            for info in added:
                sel.infos[info.uid] = info
                sel.uids.append(info.uid)
            lines.append(f"* {len(sel.uids)} EXISTS\r\n* {len(sel.recent)} RECENT\r\n".encode())
        if lines:
            out.write(b"".join(lines))

    def close(self) -> None:
        """Release the selected folder (the connection is going away)."""
        self._unselect()


def _uid_set(uids: Iterable[int]) -> str:
    """A compact uid-set (``1:3,7``) in the given order (COPYUID pairs them by position, RFC 4315)."""
    values = list(uids)
    parts: list[str] = []
    start = prev = None
    for v in values:
        if start is None:
            start = prev = v
        elif prev is not None and v == prev + 1:
            prev = v
        else:
            parts.append(f"{start}:{prev}" if start != prev else f"{start}")
            start = prev = v
    if start is not None:
        parts.append(f"{start}:{prev}" if start != prev else f"{start}")
    return ",".join(parts)


__all__ = ["Action", "AuthContinue", "Authenticate", "Close", "Idle", "Output", "Session", "StartTLS", "quote"]


def _flag_column(targets: list[int], infos: list[MessageInfo], recent: set[int]) -> list[bytes]:
    """The ``(flag list)`` of each message for FETCH FLAGS, each distinct set rendered once."""
    rendered: dict[tuple[frozenset[str], bool], bytes] = {}

    def render(flags: frozenset[str], is_recent: bool) -> bytes:
        text = rendered[(flags, is_recent)] = fetch.flags_list(ordered_flags(flags, is_recent))
        return text

    if not recent:
        return [rendered.get((i.flags, False)) or render(i.flags, False) for i in infos]
    return [rendered.get((i.flags, t in recent)) or render(i.flags, t in recent) for t, i in zip(targets, infos, strict=True)]
