"""Send a group of SMTP commands in one write and read their replies in order (RFC 2920 PIPELINING).

aiosmtplib (which opens our sessions: banner, EHLO, STARTTLS, AUTH) sends one command and reads one
reply, and since 5.1.3 it discards data that arrives while no command waits, so it cannot read the
replies to a pipelined group. :func:`exchange` does, without touching aiosmtplib's internals: for the
duration of one group it puts a :class:`ReplyReader` on the connection's transport (asyncio's public
``set_protocol``), writes the group, collects the replies, and gives the transport back to aiosmtplib's
protocol, to which it forwards the connection's loss, end of file and flow control meanwhile. What it relies
on from aiosmtplib is public: ``SMTP.transport`` and ``SMTP.protocol`` (an ``asyncio.Protocol``), and that
between commands nothing of a reply is left in aiosmtplib's buffer (true after any complete reply).
tests/outbound/test_pipeline.py checks all of it against the pinned aiosmtplib range (pyproject.toml).

The reply grammar (RFC 5321 4.2): ``NNN-text`` lines continue a reply, ``NNN text`` (or ``NNN``) ends it;
a reply whose code is not three digits, a line over 2,048 bytes or more than 64 KiB of replies is a
protocol error and the connection is given up.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiosmtplib

MAX_LINE = 2048
MAX_BUFFER = 65536


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: its code and its text (lines joined with a newline, as aiosmtplib does)."""

    code: int
    text: str


class ReplyError(Exception):
    """The server broke the reply grammar; the connection cannot be trusted any more."""


def parse_replies(buffer: bytearray) -> list[Reply]:
    """Take every complete reply off the front of ``buffer`` (a partial one stays); raises ReplyError."""
    replies: list[Reply] = []
    lines: list[bytes] = []
    offset = consumed = 0
    while (end := buffer.find(b"\n", offset)) >= 0:
        line = bytes(buffer[offset : end + 1])
        offset = end + 1
        if len(line) > MAX_LINE:
            raise ReplyError("reply line too long")
        code = line[:3]
        if not code.isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
            raise ReplyError(f"malformed reply line {line[:80]!r}")
        if lines and code != lines[0][:3]:
            raise ReplyError("reply code changed inside a multi-line reply")
        lines.append(line)
        if line[3:4] != b"-":
            text = "\n".join(part[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape") for part in lines)
            replies.append(Reply(int(code), text))
            lines = []
            consumed = offset
    if len(buffer) - consumed > MAX_BUFFER:
        raise ReplyError("reply too long")
    del buffer[:consumed]
    return replies


class ReplyReader(asyncio.Protocol):
    """Collects the replies to one group of commands; forwards everything else to aiosmtplib's protocol."""

    def __init__(self, owner: asyncio.BaseProtocol, expected: int) -> None:
        self.owner = owner
        self.expected = expected
        self.buffer = bytearray()
        self.replies: list[Reply] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _finish(self, error: BaseException | None = None) -> None:
        if self.done.done():
            return
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)
            self.done.exception()  # retrieved here: nobody may wait any more

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            self.replies += parse_replies(self.buffer)
        except ReplyError as exc:
            self._finish(exc)
            return
        if len(self.replies) >= self.expected:
            self._finish()

    def eof_received(self) -> bool:
        self._finish(aiosmtplib.SMTPServerDisconnected("the server closed the connection"))
        return False  # close the transport, which calls connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(aiosmtplib.SMTPServerDisconnected("connection lost"))
        self.owner.connection_lost(exc)  # aiosmtplib's SMTP object learns it too

    def pause_writing(self) -> None:
        self.owner.pause_writing()

    def resume_writing(self) -> None:
        self.owner.resume_writing()


async def exchange(smtp: aiosmtplib.SMTP, payload: bytes, expected: int, timeout: float) -> tuple[list[Reply], BaseException | None]:
    """Write ``payload`` (one or more commands, and BDAT or message data) in one write and read
    ``expected`` replies: (the replies, in order, and None), or (those that came, the error: a timeout,
    a lost connection, a ReplyError). After an error the connection is closed."""
    transport = smtp.transport
    owner = smtp.protocol
    if transport is None or owner is None or transport.is_closing():
        return [], aiosmtplib.SMTPServerDisconnected("not connected")
    assert isinstance(transport, asyncio.Transport)
    reader = ReplyReader(owner, expected)
    transport.set_protocol(reader)
    error: BaseException | None = None
    try:
        transport.write(payload)
        await asyncio.wait_for(reader.done, timeout)
    except TimeoutError:
        error = aiosmtplib.SMTPReadTimeoutError("timed out waiting for the server's reply")
    except (aiosmtplib.SMTPServerDisconnected, ReplyError, ConnectionError, OSError) as exc:
        error = exc
    finally:
        if not transport.is_closing():
            transport.set_protocol(owner)
    if error is None and reader.buffer:  # more than was asked for: the dialogue is out of step
        error = ReplyError("unexpected data after the replies")
    if error is not None:
        smtp.close()
    return reader.replies[:expected], error
