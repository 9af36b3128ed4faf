"""The POP3 dialogue as a pure state machine: fed command lines, it returns replies and actions.

RFC 1939 (USER, PASS, STAT, LIST, RETR, DELE, NOOP, RSET, QUIT, TOP, UIDL), RFC 2449 (CAPA with
PIPELINING, RESP-CODES, AUTH-RESP-CODE; the [AUTH], [IN-USE] and [SYS/TEMP] codes), RFC 2595 (STLS)
and RFC 5034 (AUTH PLAIN). APOP is not offered: it needs the clear-text password on the server, and
the users file holds only argon2id hashes.

No sockets, files or clocks here. :class:`Session` returns :class:`Reply` (bytes to send) and action
objects the server carries out, then reports back:

* :class:`Login` -> check the password and open the mailbox; answer with :meth:`Session.login_result`.
* :class:`StartTLS` -> the ``+OK`` is already in the replies; upgrade, then :meth:`Session.tls_started`.
* :class:`Retrieve` -> send ``+OK`` and the rendered message (RETR or TOP).
* :class:`Update` -> the UPDATE state (delete, mark seen); answer with :meth:`Session.update_result`.
* :class:`Close` -> close the connection after sending what came before.

Trust boundary: everything fed in is hostile. A password is only accepted on a TLS connection or
from a network the configuration trusts (``pop3.plaintext_networks``); replies never say whether a
user exists.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mailprov.pop3.mailbox import Message

MAX_ERRORS = 10  # protocol errors (unknown commands, bad syntax) before the server hangs up
MAX_ARG = 255  # RFC 2449: a command line is at most 255 octets


@dataclass(frozen=True)
class Reply:
    """Bytes to send, CRLFs included."""

    data: bytes


@dataclass(frozen=True)
class Login:
    """Check ``password`` for ``user`` and open the mailbox. ``password`` None: undecodable, fail it.

    ``repr`` hides the password so it can never reach a log line."""

    user: str
    password: str | None

    def __repr__(self) -> str:
        return f"Login(user={self.user!r}, password=<hidden>)"


@dataclass(frozen=True)
class StartTLS:
    """Start the TLS handshake now; discard anything the client pipelined after STLS."""


@dataclass(frozen=True)
class Retrieve:
    """Send message ``msg`` (RETR when ``top`` is None, else TOP with that many body lines)."""

    msg: Message
    top: int | None = None


@dataclass(frozen=True)
class Update:
    """Enter the UPDATE state: apply the deletions and seen marks, then call update_result."""


@dataclass(frozen=True)
class Close:
    """Close the connection once the replies before it are sent."""


Action = Reply | Login | StartTLS | Retrieve | Update | Close


class LoginOutcome(enum.Enum):
    """What the server found when it carried out a :class:`Login`."""

    OK = "ok"
    BAD = "bad"  # wrong password or no such user: the reply does not say which
    BAD_DISCONNECT = "bad-disconnect"  # ... and this client has failed too often
    BUSY = "busy"  # another session holds the mailbox
    ERROR = "error"  # the mailbox could not be read


class State(enum.Enum):
    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    WAITING = "waiting"  # an action is out (login, TLS, update): nothing else is read
    DONE = "done"


def _line(text: str) -> bytes:
    return text.encode("utf-8") + b"\r\n"


def _ok(text: str = "") -> Reply:
    return Reply(_line(f"+OK {text}" if text else "+OK"))


def _err(text: str) -> Reply:
    return Reply(_line("-ERR " + text))


class Session:
    """One POP3 connection's protocol state.

    ``secure``: TLS is active. ``tls_available``: STLS may be offered (port 110 with a certificate).
    ``plaintext_ok``: the client is in a trusted network, so a password may come without TLS.
    ``default_domain``: appended to a login name without ``@`` (set when the host has one domain).
    """

    def __init__(
        self,
        *,
        hostname: str,
        secure: bool,
        tls_available: bool,
        plaintext_ok: bool,
        default_domain: str | None = None,
    ) -> None:
        self.hostname = hostname
        self.secure = secure
        self.tls_available = tls_available
        self.plaintext_ok = plaintext_ok
        self.default_domain = default_domain
        self.state = State.AUTHORIZATION
        self.user: str | None = None  # the authenticated login, once in TRANSACTION
        self.messages: Sequence[Message] = ()
        self._pending_user: str | None = None  # from USER, waiting for PASS
        self._sasl_pending = False  # AUTH PLAIN sent without initial response: next line is it
        self._errors = 0
        self._count = 0
        self._octets = 0

    # -- entry points -------------------------------------------------------------------------

    def greeting(self) -> list[Action]:
        """The banner. No APOP timestamp: APOP is not offered."""
        return [_ok(f"{self.hostname} POP3 server ready")]

    def feed(self, line: bytes) -> list[Action]:
        """One line from the client, without its CRLF (or LF)."""
        if self.state in (State.DONE, State.WAITING):
            return []
        if self._sasl_pending:
            self._sasl_pending = False
            return self._sasl_response(line)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self._error("command is not valid UTF-8")
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        handler = _COMMANDS[self.state].get(verb)
        if handler is None:
            if verb in _KNOWN:
                return self._error(f"{verb} is not allowed now")
            return self._error("unknown command")
        return handler(self, arg)

    def too_long(self) -> list[Action]:
        """The client sent a line over the limit (the server dropped it)."""
        return self._error("line too long")

    def login_result(self, outcome: LoginOutcome, user: str, messages: Sequence[Message] = ()) -> list[Action]:
        """The server's answer to a :class:`Login`."""
        if self.state is not State.WAITING:
            return []
        self.state = State.AUTHORIZATION
        if outcome is LoginOutcome.OK:
            self.state = State.TRANSACTION
            self.user = user
            self.messages = messages
            self._count = len(messages)
            self._octets = sum(m.size for m in messages)
            return [_ok(f"Logged in, {self._count} messages ({self._octets} octets)")]
        if outcome is LoginOutcome.BUSY:
            return [_err("[IN-USE] Mailbox is in use by another POP3 session")]
        if outcome is LoginOutcome.ERROR:
            return [_err("[SYS/TEMP] Cannot open the mailbox now, try again later")]
        reply = _err("[AUTH] Authentication failed")
        if outcome is LoginOutcome.BAD_DISCONNECT:
            self.state = State.DONE
            return [reply, Close()]
        return [reply]

    def tls_started(self) -> list[Action]:
        """The handshake finished: start over as RFC 2595 asks (forget anything said before)."""
        self.secure = True
        self.state = State.AUTHORIZATION
        self._pending_user = None
        return []

    def update_result(self, deleted: int, ok: bool) -> list[Action]:
        """The server's answer to :class:`Update`."""
        self.state = State.DONE
        if ok:
            return [_ok(f"{self.hostname} signing off ({deleted} messages deleted)"), Close()]
        return [_err(f"[SYS/TEMP] Some deleted messages were not removed ({deleted} were)"), Close()]

    @property
    def auth_allowed(self) -> bool:
        """Whether a password may be sent now (TLS, or a trusted network)."""
        return self.secure or self.plaintext_ok

    # -- helpers ------------------------------------------------------------------------------

    def _refuse(self, text: str) -> list[Action]:
        """A -ERR for a well-formed command that cannot be done now ("no such message", "use STLS
        first"): not a protocol error, so it does not count toward MAX_ERRORS."""
        return [_err(text)]

    def _error(self, text: str) -> list[Action]:
        """A -ERR for a protocol error (unknown command, bad syntax): the tenth ends the session."""
        self._errors += 1
        if self._errors >= MAX_ERRORS:
            self.state = State.DONE
            return [_err(f"{text}; too many errors, closing"), Close()]
        return [_err(text)]

    def _login_name(self, name: str) -> str:
        name = name.strip().lower()
        if "@" not in name and self.default_domain:
            name = f"{name}@{self.default_domain}"
        return name

    def _message(self, arg: str) -> Message | list[Action]:
        """The live message numbered ``arg``, or the error reply."""
        if not (arg.isascii() and arg.isdigit()) or len(arg) > 10:
            return self._error("invalid message number")
        number = int(arg)
        if not 1 <= number <= len(self.messages):
            return self._refuse(f"no such message, only {len(self.messages)} in maildrop")
        msg = self.messages[number - 1]
        if msg.deleted:
            return self._refuse(f"message {number} is deleted")
        return msg

    def _not_plain(self) -> list[Action] | None:
        if self.auth_allowed:
            return None
        return self._refuse("[AUTH] Plaintext authentication disallowed on non-secure connections, use STLS first")

    def _wait(self) -> None:
        self.state = State.WAITING

    # -- AUTHORIZATION ------------------------------------------------------------------------

    def _cmd_capa(self, arg: str) -> list[Action]:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER"]
        if self.state is State.AUTHORIZATION:
            if self.auth_allowed:
                caps += ["USER", "SASL PLAIN"]
            if self.tls_available and not self.secure:
                caps.append("STLS")
        caps.append("IMPLEMENTATION mailprov")
        return [Reply(b"+OK Capability list follows\r\n" + "".join(c + "\r\n" for c in caps).encode() + b".\r\n")]

    def _cmd_stls(self, arg: str) -> list[Action]:
        if self.secure:
            return self._error("TLS is already active")
        if not self.tls_available:
            return self._error("STLS is not available here")
        self._wait()
        return [_ok("Begin TLS negotiation"), StartTLS()]

    def _cmd_user(self, arg: str) -> list[Action]:
        refused = self._not_plain()
        if refused:
            return refused
        name = arg.strip()
        if not name or len(name) > MAX_ARG:
            return self._error("USER needs a name")
        self._pending_user = self._login_name(name)
        return [_ok("Send your password")]  # the same whether or not the user exists

    def _cmd_pass(self, arg: str) -> list[Action]:
        refused = self._not_plain()
        if refused:
            return refused
        if self._pending_user is None:
            return self._error("send USER first")
        user, self._pending_user = self._pending_user, None
        self._wait()
        return [Login(user, arg)]

    def _cmd_auth(self, arg: str) -> list[Action]:
        mech, _, initial = arg.strip().partition(" ")
        if not mech:
            return [Reply(b"+OK Supported mechanisms follow\r\nPLAIN\r\n.\r\n")]
        refused = self._not_plain()
        if refused:
            return refused
        if mech.upper() != "PLAIN":
            return self._error("unsupported authentication mechanism")
        if not initial:
            self._sasl_pending = True
            return [Reply(b"+ \r\n")]
        return self._sasl_response(initial.encode("ascii", "replace"))

    def _sasl_response(self, line: bytes) -> list[Action]:
        line = line.strip()
        if line == b"*":
            return self._refuse("authentication cancelled")
        try:
            raw = b"" if line == b"=" else base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            return self._error("invalid base64 in the AUTH response")
        parts = raw.split(b"\0")
        if len(parts) != 3:
            return self._error("malformed PLAIN response")
        try:
            authzid, authcid, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            return self._error("the PLAIN response is not valid UTF-8")
        user = self._login_name(authcid)
        if authzid and self._login_name(authzid) != user:
            password_or_none: str | None = None  # acting as another user is not supported: fail the login
        else:
            password_or_none = password
        self._wait()
        return [Login(user, password_or_none)]

    def _cmd_apop(self, arg: str) -> list[Action]:
        return self._error("APOP is not supported, use USER/PASS or AUTH PLAIN over TLS")

    def _cmd_quit(self, arg: str) -> list[Action]:
        if self.state is State.TRANSACTION:
            self._wait()
            return [Update()]
        self.state = State.DONE
        return [_ok(f"{self.hostname} signing off"), Close()]

    # -- TRANSACTION --------------------------------------------------------------------------

    def _cmd_stat(self, arg: str) -> list[Action]:
        return [_ok(f"{self._count} {self._octets}")]

    def _cmd_list(self, arg: str) -> list[Action]:
        if arg:
            msg = self._message(arg)
            return msg if isinstance(msg, list) else [_ok(f"{int(arg)} {msg.size}")]
        lines = [f"+OK {self._count} messages ({self._octets} octets)\r\n"]
        lines += [f"{i} {m.size}\r\n" for i, m in enumerate(self.messages, 1) if not m.deleted]
        lines.append(".\r\n")
        return [Reply("".join(lines).encode())]

    def _cmd_uidl(self, arg: str) -> list[Action]:
        if arg:
            msg = self._message(arg)
            return msg if isinstance(msg, list) else [_ok(f"{int(arg)} {msg.uid}")]
        lines = ["+OK unique-id listing follows\r\n"]
        lines += [f"{i} {m.uid}\r\n" for i, m in enumerate(self.messages, 1) if not m.deleted]
        lines.append(".\r\n")
        return [Reply("".join(lines).encode())]

    def _cmd_retr(self, arg: str) -> list[Action]:
        msg = self._message(arg)
        if isinstance(msg, list):
            return msg
        msg.retrieved = True
        return [Retrieve(msg)]

    def _cmd_top(self, arg: str) -> list[Action]:
        number, _, lines = arg.partition(" ")
        if not (lines.isascii() and lines.isdigit()) or len(lines) > 10:
            return self._error("usage: TOP message lines")
        msg = self._message(number)
        return msg if isinstance(msg, list) else [Retrieve(msg, int(lines))]

    def _cmd_dele(self, arg: str) -> list[Action]:
        msg = self._message(arg)
        if isinstance(msg, list):
            return msg
        msg.deleted = True
        self._count -= 1
        self._octets -= msg.size
        return [_ok(f"message {int(arg)} deleted")]

    def _cmd_noop(self, arg: str) -> list[Action]:
        return [_ok()]

    def _cmd_rset(self, arg: str) -> list[Action]:
        for msg in self.messages:
            msg.deleted = False
        self._count = len(self.messages)
        self._octets = sum(m.size for m in self.messages)
        return [_ok(f"maildrop has {self._count} messages ({self._octets} octets)")]


_KNOWN = {"CAPA", "STLS", "USER", "PASS", "AUTH", "APOP", "QUIT", "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "NOOP", "RSET"}
# The commands each state accepts, mapped to their handlers (one dict lookup per command).
_COMMANDS: dict[State, dict[str, Callable[[Session, str], list[Action]]]] = {
    State.AUTHORIZATION: {v: getattr(Session, f"_cmd_{v.lower()}") for v in ("CAPA", "STLS", "USER", "PASS", "AUTH", "APOP", "QUIT")},
    State.TRANSACTION: {
        v: getattr(Session, f"_cmd_{v.lower()}") for v in ("CAPA", "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "NOOP", "RSET", "QUIT")
    },
    State.WAITING: {},
    State.DONE: {},
}
