"""Misbehaving peers for the delivery fault tests, run in a background thread of the test process.

:class:`ScriptedMX` is a minimal SMTP server that misbehaves (``stall``: accepts and never speaks;
``drop``: closes the connection in the middle of DATA; ``busy``: answers ``421`` and hangs up) until the
test calls :meth:`heal`, then behaves (250 to everything) and counts each message it acknowledged by
Message-ID. :class:`SilentDNS` drops every query until healed, then answers from a small table with
dnspython. Both listen only on the address they are given (in 127.0.7.0/24).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections import Counter

import dns.flags
import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.peers.mailprov_server import free_port

MSGID = re.compile(rb"^Message-ID:\s*<([^>\r\n]+)>", re.I | re.M)


class _Loop:
    """An event loop on a daemon thread; ``call`` runs a coroutine there and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="fault-peer")
        self.thread.start()

    def call(self, coro, timeout: float = 10):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class ScriptedMX:
    """An SMTP peer that misbehaves in one way until healed."""

    def __init__(self, ip: str, mode: str, port: int | None = None) -> None:
        assert mode in ("stall", "drop", "busy")
        self.ip, self.mode = ip, mode
        self.port = port or free_port(ip)
        self.healthy = False
        self.received: Counter[str] = Counter()
        self.connections = 0
        self._rt = _Loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> ScriptedMX:
        async def go() -> None:
            self._server = await asyncio.start_server(self._client, self.ip, self.port)

        self._rt.call(go())
        return self

    def heal(self) -> None:
        self.healthy = True

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            if not self.healthy and self.mode == "stall":
                await reader.read()  # say nothing until the client gives up
                return
            if not self.healthy and self.mode == "busy":
                writer.write(b"421 4.3.2 mx.scripted.test Service not available, closing channel\r\n")
                await writer.drain()
                return
            writer.write(b"220 mx.scripted.test ESMTP scripted\r\n")
            while line := await asyncio.wait_for(reader.readline(), 30):
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-mx.scripted.test\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    data = await asyncio.wait_for(reader.readuntil(b"\r\n.\r\n"), 30)
                    if not self.healthy and self.mode == "drop":
                        return  # hang up before the final reply: the message was not accepted
                    match = MSGID.search(data)
                    self.received[match.group(1).decode() if match else "?"] += 1
                    writer.write(b"250 2.0.0 Ok: queued\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(b"250 2.0.0 Ok\r\n")
                if not self.healthy and self.mode == "drop" and verb == b"DATA":
                    return
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    def stop(self) -> None:
        async def down() -> None:
            if self._server:
                self._server.close()
            for w in list(self._writers):
                w.close()

        with contextlib.suppress(Exception):
            self._rt.call(down())
        self._rt.close()


class SilentDNS(asyncio.DatagramProtocol):
    """A UDP name server that drops every query until healed, then answers A and MX from ``records``."""

    def __init__(self, ip: str, records: dict[tuple[str, str], list[str]]) -> None:
        self.ip = ip
        self.port = free_port(ip)
        self.records = {(n.lower().rstrip(".") + ".", t): v for (n, t), v in records.items()}
        self.healthy = False
        self.dropped = 0
        self._rt = _Loop()
        self._transport: asyncio.DatagramTransport | None = None

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    def start(self) -> SilentDNS:
        async def go() -> None:
            loop = asyncio.get_running_loop()
            await loop.create_datagram_endpoint(lambda: self, local_addr=(self.ip, self.port))

        self._rt.call(go())
        return self

    def heal(self) -> None:
        self.healthy = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        if not self.healthy:
            self.dropped += 1
            return
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name, rtype = question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype)
        values = self.records.get((name, rtype), [])
        if values:
            response.answer.append(dns.rrset.from_text_list(name, 60, dns.rdataclass.IN, rtype, values))
        assert self._transport is not None
        self._transport.sendto(response.to_wire(), addr)

    def stop(self) -> None:
        if self._transport:
            self._rt.loop.call_soon_threadsafe(self._transport.close)
        self._rt.close()
