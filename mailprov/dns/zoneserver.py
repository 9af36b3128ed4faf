"""A tiny authoritative DNS server (UDP and TCP, asyncio) answering from zone files.

It lets the demo publish its mail domains on a machine without root and without Knot:
``mailprov dns serve-zones --listen 127.0.0.1:5353 examples/zones/*.zone``, or from Python
``server = await serve_zones([Path("alpha.test.zone")], "127.0.0.1", 5353)`` ... ``server.close()``.

Answers (authoritative, AA set) come from :class:`~mailprov.dns.zonefile.ZoneSet`: the records, wildcards, CNAME
chains, NODATA and NXDOMAIN with the zone's SOA in the authority section (for negative caching), and
REFUSED for names outside every zone. No recursion, no referrals, no zone transfers, no DNSSEC.
A UDP answer larger than the client's buffer (512 bytes, or its EDNS size) is truncated (TC) so the client
retries over TCP. Malformed packets are dropped; other opcodes get NOTIMP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass

from mailprov.dns.zonefile import ZoneSet

log = logging.getLogger("mailprov.dns.zoneserver")
TCP_IDLE_TIMEOUT = 10.0
MAX_TCP_CONNECTIONS = 64


def answer(zones: ZoneSet, wire: bytes, *, max_size: int | None = None) -> bytes | None:
    """The response to one query in wire format (None to drop a packet that is not a query)."""
    try:
        query = dns.message.from_wire(wire)
    except Exception:  # whatever arrives, a bad packet is dropped, never a traceback
        return None
    if query.flags & dns.flags.QR:
        return None
    response = dns.message.make_response(query)
    response.flags &= ~dns.flags.RA
    if query.opcode() != dns.opcode.QUERY:
        response.set_rcode(dns.rcode.NOTIMP)
    elif len(query.question) != 1 or query.question[0].rdclass != dns.rdataclass.IN:
        response.set_rcode(dns.rcode.FORMERR if len(query.question) != 1 else dns.rcode.REFUSED)
    else:
        question = query.question[0]
        found = zones.lookup(question.name, question.rdtype)
        response.set_rcode(dns.rcode.from_text(found.rcode))
        if found.rcode != "REFUSED":
            response.flags |= dns.flags.AA
            response.answer = found.answer
            response.authority = found.authority
    if max_size is None:
        return response.to_wire()
    limit = max(512, query.payload if query.edns >= 0 else 512)
    try:
        return response.to_wire(max_size=min(limit, max_size))
    except dns.exception.TooBig:
        response.answer, response.authority, response.additional = [], [], []
        response.flags |= dns.flags.TC
        return response.to_wire()


def safe_answer(zones: ZoneSet, wire: bytes, *, max_size: int | None = None) -> bytes | None:
    """:func:`answer`, but a bug on some odd query drops that one query (logged) instead of raising in the loop."""
    try:
        return answer(zones, wire, max_size=max_size)
    except Exception:
        log.exception("dropped a query that could not be answered")
        return None


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, zones: ZoneSet) -> None:
        self.zones = zones
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        reply = safe_answer(self.zones, data, max_size=65535)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class Server:
    """A running zone server: its UDP transport and TCP server; :meth:`close` stops both."""

    def __init__(self, zones: ZoneSet, host: str, port: int) -> None:
        self.zones = zones
        self.host = host
        self.port = port
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._slots = asyncio.Semaphore(MAX_TCP_CONNECTIONS)

    async def start(self) -> None:
        """Bind UDP and TCP on host:port (port 0 picks one, the same for both where possible)."""
        loop = asyncio.get_running_loop()
        self._tcp = await asyncio.start_server(self._tcp_client, self.host, self.port)
        self.port = self._tcp.sockets[0].getsockname()[1]
        try:
            self._udp, _ = await loop.create_datagram_endpoint(lambda: _UDP(self.zones), local_addr=(self.host, self.port))
        except BaseException:
            self._tcp.close()
            raise

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._slots:
            try:
                while True:
                    header = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                    (length,) = struct.unpack("!H", header)
                    data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE_TIMEOUT)
                    reply = safe_answer(self.zones, data)
                    if reply is None:
                        break
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()

    def close(self) -> None:
        """Stop answering (UDP and TCP)."""
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()

    async def wait_closed(self) -> None:
        """Wait until the TCP server has closed."""
        if self._tcp is not None:
            await self._tcp.wait_closed()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


async def serve_zones(zone_files: list[Path], host: str, port: int) -> Server:
    """Load the zone files and start answering on host:port (UDP and TCP); returns the running :class:`Server`.

    Raises :class:`~mailprov.errors.UsageError` for a zone file that cannot be read or parsed, and OSError
    when the address cannot be bound.
    """
    zones = ZoneSet.from_files([Path(p) for p in zone_files])
    server = Server(zones, host, port)
    await server.start()
    log.info("serving %s on %s port %d", ", ".join(z.origin.to_text() for z in zones.zones), host, server.port)
    return server
