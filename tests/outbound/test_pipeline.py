"""PIPELINING (RFC 2920) on the outbound side, and what it relies on from aiosmtplib.

The peers here are raw asyncio servers that answer nothing until the whole pipelined group has arrived:
a client that waits for the reply to MAIL before sending RCPT (no pipelining) times out against them, so
these tests fail unless MAIL, every RCPT and BDAT (with the message) or DATA go out together. Replies
then come back in one write, or cut into pieces at awkward places, and must be matched in order.

Addresses in 127.0.16.0/24: raw peers on 127.0.16.30-39.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib
import pytest
from packaging.requirements import Requirement

from mailprov.delivery.base import Envelope, Outcome
from mailprov.delivery.remote import RemoteCourier
from mailprov.delivery.remote.pipeline import Reply, ReplyError, exchange, parse_replies
from mailprov.delivery.remote.pool import DestinationSlots
from mailprov.delivery.remote.transaction import Conversation, decide, prepare

MESSAGE = b"From: alex@example.test\r\nSubject: pipelined\r\n\r\nhello\r\n.leading dot\r\n"
RCPTS = ("one@far.test", "two@far.test", "three@far.test")


@dataclass
class RawPeer:
    """Answers EHLO with ``keywords``, then waits for a complete MAIL/RCPT/(BDAT|DATA) group before it
    answers, with ``replies`` (a function of the RCPT addresses) written in ``pieces`` writes."""

    ip: str
    keywords: tuple[str, ...] = ("PIPELINING", "CHUNKING", "SIZE 1000000")
    rcpt_reply: dict[str, bytes] = field(default_factory=dict)  # RCPT address -> reply line
    pieces: int = 1
    groups: list[bytes] = field(default_factory=list)  # what each transaction's first group was
    bodies: list[bytes] = field(default_factory=list)
    port: int = 0
    server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._session, self.ip, 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Write ``data`` in ``pieces`` parts, cut at awkward offsets, with a pause between them."""
        size = max(1, len(data) // self.pieces + 1)
        for i in range(0, len(data), size):
            writer.write(data[i : i + size])
            await writer.drain()
            if self.pieces > 1:
                await asyncio.sleep(0.02)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"220 raw.test ESMTP\r\n")
            await reader.readuntil(b"\r\n")  # EHLO
            lines = ["raw.test", *self.keywords]
            writer.write("".join(f"250{'-' if i < len(lines) - 1 else ' '}{k}\r\n" for i, k in enumerate(lines)).encode())
            buffer = b""
            for _ in range(100):  # bounded: a few transactions, then QUIT
                chunk = await asyncio.wait_for(reader.read(65536), 10)
                if not chunk:
                    return
                buffer += chunk
                if buffer.startswith((b"QUIT", b"RSET", b"NOOP")):
                    verb, _, buffer = buffer.partition(b"\r\n")
                    await self._send(writer, b"221 bye\r\n" if verb == b"QUIT" else b"250 ok\r\n")
                    if verb == b"QUIT":
                        return
                    continue
                answer, buffer = self._group(buffer)
                if answer is not None:
                    await self._send(writer, answer)
                    if answer.endswith(b"354 go ahead\r\n"):
                        while b"\r\n.\r\n" not in buffer:
                            buffer += await asyncio.wait_for(reader.read(65536), 10)
                        body, _, buffer = buffer.partition(b"\r\n.\r\n")
                        self.bodies.append(body)
                        await self._send(writer, b"250 2.0.0 queued as D\r\n")
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def _group(self, buffer: bytes) -> tuple[bytes | None, bytes]:
        """The replies to a complete group at the start of ``buffer`` (None while it is incomplete)."""
        match = re.match(rb"(MAIL FROM:<[^>]*>[^\r]*\r\n)((?:RCPT TO:<[^>]*>\r\n)+)(DATA\r\n|BDAT (\d+) LAST\r\n)", buffer)
        if not match:
            return None, buffer
        end = match.end()
        if match.group(4) is not None:
            size = int(match.group(4))
            if len(buffer) < end + size:
                return None, buffer
            self.bodies.append(buffer[end : end + size])
            end += size
        self.groups.append(buffer[:end])
        rcpts = re.findall(rb"RCPT TO:<([^>]*)>", match.group(2))
        replies = [b"250 2.1.0 sender ok\r\n"]
        replies += [self.rcpt_reply.get(r.decode(), b"250 2.1.5 ok\r\n") for r in rcpts]
        some = any(r.startswith(b"250") for r in replies[1:])
        if match.group(4) is not None:
            replies.append(b"250 2.0.0 queued as B\r\n" if some else b"554 5.5.1 no valid recipients\r\n")
        else:
            replies.append(b"354 go ahead\r\n" if some else b"554 5.5.1 no valid recipients\r\n")
        return b"".join(replies), buffer[end:]


def courier_config(make_config, peer: RawPeer):
    return make_config(
        outbound={
            "transports": [{"domain": "*", "host": peer.ip, "port": peer.port, "tls": "none"}],
            "connect_timeout": 3,
            "command_timeout": 3,
            "mta_sts": False,
        }
    )


def run_courier(make_config, peer: RawPeer, messages: int = 1):
    async def main():
        await peer.start()
        courier = RemoteCourier(courier_config(make_config, peer))
        try:
            results = []
            for i in range(messages):
                results.append(await courier.deliver(Envelope(f"Q{i}", "alex@example.test", RCPTS, time.time()), MESSAGE))
            return results
        finally:
            await courier.close()
            await peer.stop()

    return asyncio.run(main())


@pytest.mark.parametrize("pieces", [1, 7])
def test_mail_rcpts_and_bdat_go_in_one_write_and_replies_match_in_order(make_config, pieces):
    """RFC 2920 3.1 and RFC 3030 4: MAIL, the RCPTs and ``BDAT n LAST`` with the message in one group; the
    replies (in one segment, or cut into seven) are matched to the commands in order."""
    peer = RawPeer("127.0.16.30", rcpt_reply={"two@far.test": b"550 5.1.1 no such user\r\n"}, pieces=pieces)
    (results,) = run_courier(make_config, peer)
    assert results["one@far.test"].outcome is Outcome.DELIVERED and results["three@far.test"].outcome is Outcome.DELIVERED
    assert "queued as B" in results["one@far.test"].message
    assert results["two@far.test"].outcome is Outcome.PERMANENT and results["two@far.test"].enhanced == "5.1.1"
    assert len(peer.groups) == 1 and peer.bodies == [MESSAGE]  # BDAT: no dot-stuffing


def test_data_is_pipelined_too_and_the_connection_is_reused(make_config):
    """Without CHUNKING: MAIL, RCPTs and DATA in one group (RFC 2920 3.1: DATA may end a group), then the
    dot-stuffed message; a second message reuses the connection."""
    peer = RawPeer("127.0.16.31", keywords=("PIPELINING", "SIZE 1000000"), pieces=3)
    first, second = run_courier(make_config, peer, messages=2)
    assert all(r.ok for r in (*first.values(), *second.values()))
    assert "queued as D" in first["one@far.test"].message
    assert len(peer.groups) == 2 and all(g.endswith(b"DATA\r\n") for g in peer.groups)
    assert peer.bodies == [MESSAGE.replace(b"\r\n.leading", b"\r\n..leading")[:-2]] * 2


def test_all_recipients_refused_in_a_pipelined_group(make_config):
    """Every RCPT refused: the server's refusal of BDAT is read (and ignored), each recipient keeps its own
    reply, and the session survives (RSET) for the next message."""
    refuse = {r: b"550 5.7.1 refused\r\n" for r in RCPTS}
    peer = RawPeer("127.0.16.32", rcpt_reply=refuse)
    first, second = run_courier(make_config, peer, messages=2)
    assert all(r.outcome is Outcome.PERMANENT and r.message == "refused" for r in (*first.values(), *second.values()))
    assert len(peer.groups) == 2


def test_parse_replies():
    """RFC 5321 4.2.1: ``NNN-`` continues a reply, ``NNN `` ends it; partial replies wait for more."""
    buffer = bytearray(b"250-first\r\n250 second\r\n550 5.1.1 no\r\n354 go")
    assert parse_replies(buffer) == [Reply(250, "first\nsecond"), Reply(550, "5.1.1 no")]
    assert buffer == b"354 go"
    buffer += b" ahead\r\n250\r\n"
    assert parse_replies(buffer) == [Reply(354, "go ahead"), Reply(250, "")]
    for bad in (b"hello\r\n", b"25x ok\r\n", b"250-a\r\n550 b\r\n", b"250 " + b"x" * 3000 + b"\r\n"):
        with pytest.raises(ReplyError):
            parse_replies(bytearray(bad))


def test_decide_matches_replies_to_recipients():
    """The pure decision: refusals per RCPT, the final reply for the accepted ones, 451 when replies stop."""
    env = Envelope("Q", "a@example.test", RCPTS, 0.0)
    plan, early = prepare(env, RCPTS, MESSAGE, {"pipelining": "", "chunking": ""}, "relay")
    assert plan is not None and early == {}
    talk = Conversation(Reply(250, "ok"), [Reply(250, "ok"), Reply(450, "4.2.0 busy"), Reply(250, "ok")], Reply(250, "done"))
    outcome = decide(plan, talk, "relay", reused=False)
    assert outcome.replies == {"one@far.test": (250, "done"), "two@far.test": (450, "4.2.0 busy"), "three@far.test": (250, "done")}
    assert outcome.keep and not outcome.reset
    cut = Conversation(Reply(250, "ok"), [Reply(250, "ok")], error=aiosmtplib.SMTPServerDisconnected("gone"))
    outcome = decide(plan, cut, "relay", reused=False)
    assert {code for code, _ in outcome.replies.values()} == {451} and not outcome.keep
    assert decide(plan, Conversation(error=ConnectionResetError()), "relay", reused=True).stale
    closing = Conversation(Reply(250, "ok"), [Reply(250, "ok"), Reply(421, "4.3.2 bye")])
    assert {code for code, _ in decide(plan, closing, "relay", reused=False).replies.values()} == {421}


def test_destination_slots_hold_the_limit_and_forget_idle_destinations():
    """At most ``limit`` holders per destination; an entry lives only while it is used (no private
    attributes of asyncio.Semaphore read)."""

    async def main():
        slots = DestinationSlots(2)
        active = peak = 0

        async def one(dest: str) -> None:
            nonlocal active, peak
            async with slots.hold(dest):
                active += 1
                peak = max(peak, active)
                await asyncio.sleep(0.01)
                active -= 1

        await asyncio.gather(*(one("d") for _ in range(6)))
        assert peak == 2 and len(slots) == 0
        await asyncio.gather(*(one(f"d{i}") for i in range(50)))
        assert len(slots) == 0

    asyncio.run(main())


# -- what mailprov relies on from aiosmtplib ---------------------------------------------------------


def test_aiosmtplib_and_aiosmtpd_are_inside_the_tested_range():
    """pyproject.toml pins the ranges these tests were run against; an upgrade outside them must come with
    a new run of tests/outbound and tests/smtp (and a new pin)."""
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    requirements = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
    for name in ("aiosmtplib", "aiosmtpd"):
        spec = requirements[name].specifier
        assert any(s.operator == "<" for s in spec), f"{name} has no upper bound in pyproject.toml"
        assert importlib.metadata.version(name) in spec, f"{name} {importlib.metadata.version(name)} is outside {spec}"


def test_exchange_hands_the_connection_back_to_aiosmtplib():
    """After a pipelined group aiosmtplib's own commands work on the same connection; a connection lost
    during a group reaches aiosmtplib (is_connected turns false) and the group reports it."""

    async def main():
        async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"220 raw.test\r\n")
            await reader.readuntil(b"\r\n")
            writer.write(b"250-raw.test\r\n250 PIPELINING\r\n")
            data = b""
            while data.count(b"\r\n") < 2:
                data += await reader.read(1024)
            writer.write(b"250 one\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"250-two\r\n250 two more\r\n")
            assert (await reader.readuntil(b"\r\n")) == b"NOOP\r\n"
            writer.write(b"250 noop\r\n")
            await reader.readuntil(b"\r\n")  # the next group: hang up in its middle
            writer.write(b"250 half\r\n")
            await writer.drain()
            writer.close()

        srv = await asyncio.start_server(server, "127.0.16.33", 0)
        port = srv.sockets[0].getsockname()[1]
        smtp = aiosmtplib.SMTP(hostname="127.0.16.33", port=port, timeout=5, start_tls=False)
        await smtp.connect()
        await smtp.ehlo()
        assert smtp.supports_extension("pipelining")
        replies, error = await exchange(smtp, b"NOOP\r\nNOOP\r\n", 2, 5)
        assert error is None and replies == [Reply(250, "one"), Reply(250, "two\ntwo more")]
        assert (await smtp.noop()).message == "noop"  # aiosmtplib reads its own reply again
        replies, error = await exchange(smtp, b"NOOP\r\nNOOP\r\n", 2, 5)
        assert replies == [Reply(250, "half")] and isinstance(error, aiosmtplib.SMTPServerDisconnected)
        assert not smtp.is_connected
        srv.close()
        await srv.wait_closed()

    asyncio.run(main())

