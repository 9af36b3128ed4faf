"""One mail transaction on an open session: MAIL, RCPT..., DATA or BDAT, and the replies turned into a
reply per recipient.

Three steps, the middle one the only one that talks:

1. :func:`prepare` (pure): the MAIL parameters (SIZE, BODY=8BITMIME, SMTPUTF8) from the server's EHLO
   keywords, and what fails before anything is sent (a message over the server's SIZE, an address that
   needs SMTPUTF8 it does not offer, an address that cannot go on a command line).
2. :func:`converse`: with PIPELINING (RFC 2920) MAIL, every RCPT and ``BDAT n LAST`` with the message
   (CHUNKING, RFC 3030) or ``DATA`` go out in one write and the replies are read in order; then, for
   DATA, the dot-stuffed message. Without PIPELINING, one command at a time, stopping when MAIL fails
   or no RCPT is accepted.
3. :func:`decide` (pure): 2xx to RCPT and to the end of data delivers; a refusal of MAIL applies to every
   recipient, a refusal of DATA/BDAT to every accepted one; 421 (the server is closing) goes to everyone
   not yet decided; no reply at all (timeout, lost connection) is a temporary 451 for everyone the
   transaction had not settled.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiosmtplib

from mailprov.delivery.base import Envelope
from mailprov.delivery.remote.pipeline import Reply, ReplyError, exchange

MAX_REPLY = 500
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")


@dataclass(frozen=True)
class Plan:
    """What to send for one transaction."""

    mail: bytes  # the MAIL command line, CRLF included
    recipients: tuple[str, ...]  # the ones that can be sent, in order
    rcpt_lines: tuple[bytes, ...]
    data: bytes  # the message, CRLF line ends (not yet dot-stuffed)
    pipelining: bool
    chunking: bool


@dataclass
class Conversation:
    """The replies a transaction got, in order, and how it ended."""

    mail: Reply | None = None
    rcpts: list[Reply] = field(default_factory=list)
    data: Reply | None = None  # to DATA (354 expected) or, with CHUNKING, to BDAT (the final reply)
    end: Reply | None = None  # to the end of data after DATA's 354
    error: BaseException | None = None


@dataclass
class Outcome:
    """Replies per recipient decided, whether the session may carry another transaction, whether it needs
    an RSET first, and whether the connection died before any reply (a stale reused connection)."""

    replies: dict[str, tuple[int, str]]
    keep: bool
    reset: bool = False
    stale: bool = False


def one_line(text: str) -> str:
    """A server's text on one line, at most MAX_REPLY characters."""
    return " ".join(text.split())[:MAX_REPLY]


def wire_safe(address: str) -> bool:
    """Can ``address`` go on a MAIL or RCPT line (no controls, no angle brackets, no line breaks)?"""
    return not any(ord(ch) < 0x20 or ch in "<>\x7f" for ch in address)


def prepare(
    envelope: Envelope, rcpts: Sequence[str], message: bytes, extensions: dict[str, str], relay: str
) -> tuple[Plan | None, dict[str, tuple[int, str]]]:
    """(the plan, or None when nothing can be sent; the replies already decided without the server)."""
    options: list[str] = []
    encoding = "ascii"
    # Queued messages already end their lines with CRLF (counting is much cheaper than the substitution).
    crlf = message.count(b"\r\n")
    data = message if message.count(b"\n") == crlf == message.count(b"\r") else _LINE_ENDINGS.sub(b"\r\n", message)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if "size" in extensions:
        limit = extensions["size"]
        if limit.isdigit() and 0 < int(limit) < len(data):
            text = f"message size {len(data)} exceeds the size limit {limit} of {relay}"
            return None, {r: (552, f"5.3.4 {text}") for r in rcpts}
        options.append(f"SIZE={len(data)}")
    if envelope.body_8bit and "8bitmime" in extensions:
        options.append("BODY=8BITMIME")
    # RFC 6531: an address with non-ASCII characters can only travel with SMTPUTF8.
    if envelope.smtputf8 or not all(a.isascii() for a in (envelope.sender, *rcpts)):
        if "smtputf8" not in extensions:
            return None, {r: (553, f"5.6.7 {relay} does not support SMTPUTF8, which this message needs") for r in rcpts}
        options.append("SMTPUTF8")
        encoding = "utf-8"
    # An address that cannot be put on a command line fails alone, before anything is sent.
    if not wire_safe(envelope.sender):
        return None, {r: (553, "5.1.7 the sender address cannot be sent over SMTP") for r in rcpts}
    replies = {r: (553, "5.1.3 the address cannot be sent over SMTP") for r in rcpts if not wire_safe(r)}
    sendable = tuple(r for r in rcpts if r not in replies)
    if not sendable:
        return None, replies
    # The envelope addresses go out exactly as queued (no re-parsing, which could rewrite unusual but
    # valid addresses).
    mail = b" ".join([b"MAIL FROM:<" + envelope.sender.encode(encoding) + b">", *(o.encode("ascii") for o in options)]) + b"\r\n"
    rcpt_lines = tuple(b"RCPT TO:<" + r.encode(encoding) + b">\r\n" for r in sendable)
    plan = Plan(mail, sendable, rcpt_lines, data, "pipelining" in extensions, "chunking" in extensions)
    return plan, replies


def _bdat(data: bytes) -> bytes:
    return b"BDAT %d LAST\r\n" % len(data) + data


def _dot_stuffed(data: bytes) -> bytes:
    return _LEADING_DOT.sub(b"..", data) + b".\r\n"


def _accepted(reply: Reply) -> bool:
    return reply.code in (250, 251)


async def converse(smtp: aiosmtplib.SMTP, plan: Plan, timeout: float) -> Conversation:
    """Send the transaction and collect the replies (see the module docstring); never raises for what the
    server does or does not say."""
    talk = Conversation()
    n = len(plan.recipients)
    if plan.pipelining:
        tail = _bdat(plan.data) if plan.chunking else b"DATA\r\n"
        replies, talk.error = await exchange(smtp, plan.mail + b"".join(plan.rcpt_lines) + tail, n + 2, timeout)
        talk.mail = replies[0] if replies else None
        talk.rcpts = replies[1 : n + 1]
        talk.data = replies[n + 1] if len(replies) > n + 1 else None
    else:
        replies, talk.error = await exchange(smtp, plan.mail, 1, timeout)
        talk.mail = replies[0] if replies else None
        if talk.mail is None or talk.mail.code != 250:
            return talk
        for line in plan.rcpt_lines:
            replies, talk.error = await exchange(smtp, line, 1, timeout)
            if not replies:
                return talk
            talk.rcpts.append(replies[0])
            if replies[0].code == 421:
                return talk
        if not any(_accepted(r) for r in talk.rcpts):
            return talk
        replies, talk.error = await exchange(smtp, _bdat(plan.data) if plan.chunking else b"DATA\r\n", 1, timeout)
        talk.data = replies[0] if replies else None
    if talk.error is None and not plan.chunking and talk.data is not None and talk.data.code == 354:
        # After a pipelined group the server may say 354 although no recipient was accepted (RFC 2920
        # 3.1): the client then ends the (empty) data at once and ignores the reply.
        useful = talk.mail is not None and talk.mail.code == 250 and any(_accepted(r) for r in talk.rcpts)
        replies, talk.error = await exchange(smtp, _dot_stuffed(plan.data) if useful else b".\r\n", 1, timeout)
        talk.end = replies[0] if replies and useful else None
    return talk


def _failure_text(error: BaseException | None, relay: str, stage: str) -> str:
    if isinstance(error, aiosmtplib.SMTPTimeoutError):
        return f"4.4.2 timed out waiting for {relay} after {stage}"
    if isinstance(error, ReplyError):
        return f"4.5.0 unexpected reply from {relay} after {stage}: {one_line(str(error))}"
    return f"4.4.2 lost connection with {relay} after {stage}: {one_line(str(error or 'no reply'))}"


def decide(plan: Plan, talk: Conversation, relay: str, *, reused: bool) -> Outcome:
    """The replies of one transaction turned into a reply per recipient (see the module docstring)."""
    rcpts = plan.recipients
    replies: dict[str, tuple[int, str]] = {}
    mail = talk.mail
    if mail is None:
        return Outcome({}, keep=False, stale=True)
    if mail.code == 421:
        if reused:  # an idle connection the server is timing out: the caller tries a fresh one
            return Outcome({}, keep=False, stale=True)
        return Outcome({r: (mail.code, mail.text) for r in rcpts}, keep=False)
    if mail.code != 250:
        return Outcome({r: (mail.code, mail.text) for r in rcpts}, keep=talk.error is None, reset=talk.error is None)

    accepted: list[str] = []
    for rcpt, reply in zip(rcpts, talk.rcpts, strict=False):
        if reply.code == 421:
            replies.update({r: (reply.code, reply.text) for r in rcpts if r not in replies or r in accepted})
            return Outcome(replies, keep=False)
        if _accepted(reply):
            accepted.append(rcpt)
        else:
            replies[rcpt] = (reply.code, reply.text)
    undecided = [r for r in rcpts if r not in replies and r not in accepted]
    if undecided:  # the replies stopped during the RCPTs
        text = _failure_text(talk.error, relay, "RCPT TO")
        replies.update({r: (451, text) for r in (*undecided, *accepted)})
        return Outcome(replies, keep=False)
    if not accepted:
        return Outcome(replies, keep=talk.error is None, reset=talk.error is None)

    final = talk.data if plan.chunking or talk.data is None or talk.data.code != 354 else talk.end
    if final is None:
        stage = "BDAT" if plan.chunking else ("end of DATA" if talk.data is not None else "DATA")
        replies.update({r: (451, _failure_text(talk.error, relay, stage)) for r in accepted})
        return Outcome(replies, keep=False)
    replies.update({r: (final.code, final.text) for r in accepted})
    if final.code == 421:
        return Outcome(replies, keep=False)
    ok = 200 <= final.code < 300
    return Outcome(replies, keep=talk.error is None, reset=not ok and talk.error is None)
