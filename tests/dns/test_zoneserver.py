"""The bundled zone server (``mailprov dns serve-zones``) answering dig, kdig, dnspython and the checker."""

from __future__ import annotations

import asyncio
import functools
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailprov.dns.zoneserver import serve_zones
from tests.conftest import require_programs
from tests.peers.knot import free_port

ADDRESS = "127.0.2.8"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "zones"
MAILPROV = str(Path(sys.executable).with_name("mailprov"))

EXTRA = """$ORIGIN extra.test.
$TTL 120
@ SOA ns hostmaster 1 3600 600 86400 30
@ NS ns
ns A 127.0.6.53
www CNAME host
host A 192.0.2.7
deep.empty TXT "below an empty non-terminal"
big TXT "{chunk}" "{chunk}" "{chunk}" "{chunk}"
""".format(chunk="x" * 250)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """serve_zones on 127.0.2.8 (a free port) in a thread with its own event loop; yields the port."""
    extra = tmp_path_factory.mktemp("zs") / "extra.test.zone"
    extra.write_text(EXTRA)
    files = [*sorted(EXAMPLES.glob("*.zone")), extra]
    loop = asyncio.new_event_loop()
    started: dict = {}
    ready = threading.Event()
    stop = asyncio.Event()

    async def main() -> None:
        started["server"] = await serve_zones(files, ADDRESS, 0)
        ready.set()
        async with started["server"]:
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10), "zone server did not start"
    yield started["server"].port
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


def ask(port: int, name: str, rdtype: str, *, tcp: bool = False, edns: bool = True) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, use_edns=0 if edns else False)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, ADDRESS, port=port, timeout=2)


def test_answers_are_authoritative(server: int) -> None:
    response = ask(server, "alpha.test.", "MX")
    assert response.rcode() == dns.rcode.NOERROR and response.flags & dns.flags.AA
    assert [rd.to_text() for rd in response.answer[0]] == ["10 mail.alpha.test."]


def test_reverse_zone(server: int) -> None:
    response = ask(server, "20.6.0.127.in-addr.arpa.", "PTR", tcp=True)
    assert response.answer[0][0].target.to_text() == "mail.beta.test."


def test_nxdomain_and_nodata_carry_the_soa(server: int) -> None:
    nx = ask(server, "nope.alpha.test.", "A")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].rdtype == dns.rdatatype.SOA
    nodata = ask(server, "mail.alpha.test.", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.authority[0].rdtype == dns.rdatatype.SOA
    ent = ask(server, "empty.extra.test.", "TXT")
    assert ent.rcode() == dns.rcode.NOERROR and not ent.answer


def test_cname_chain(server: int) -> None:
    response = ask(server, "www.extra.test.", "A")
    assert [r.rdtype for r in response.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert response.answer[1][0].address == "192.0.2.7"


def test_outside_every_zone_is_refused(server: int) -> None:
    assert ask(server, "example.org.", "A").rcode() == dns.rcode.REFUSED


def test_large_answer_truncated_over_udp_then_complete_over_tcp(server: int) -> None:
    small = ask(server, "big.extra.test.", "TXT", edns=False)
    assert small.flags & dns.flags.TC and not small.answer
    full = ask(server, "big.extra.test.", "TXT", tcp=True)
    assert len(b"".join(full.answer[0][0].strings)) == 1000


def test_garbage_is_dropped_and_the_server_keeps_answering(server: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\x00\x01garbage", (ADDRESS, server))
    assert ask(server, "alpha.test.", "SOA").rcode() == dns.rcode.NOERROR


@pytest.mark.peers
def test_dig_and_kdig(server: int) -> None:
    require_programs("dig", "kdig")
    dig = subprocess.run(
        ["dig", "+short", "+time=2", "+tries=1", f"@{ADDRESS}", "-p", str(server), "beta.test", "MX"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert dig.stdout.strip() == "10 mail.beta.test."
    kdig = subprocess.run(
        ["kdig", "+short", "+tcp", "+time=2", "+retry=0", f"@{ADDRESS}", "-p", str(server), "_dmarc.alpha.test", "TXT"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert kdig.stdout.strip() == '"v=DMARC1; p=reject; rua=mailto:postmaster@alpha.test"'


def test_checker_passes_against_the_zone_server(server: int) -> None:
    from typer.testing import CliRunner

    from mailprov.cli import app

    result = CliRunner().invoke(app, ["check", "--resolver", f"{ADDRESS}:{server}", "alpha.test", "beta.test"])
    assert result.exit_code == 0, result.output


def test_serve_zones_cli_runs_in_the_foreground_and_stops_on_sigterm() -> None:
    port = free_port(ADDRESS)
    proc = subprocess.Popen(
        [MAILPROV, "dns", "serve-zones", "--listen", f"{ADDRESS}:{port}", *map(str, sorted(EXAMPLES.glob("*.zone")))],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "serving" in proc.stderr.readline()  # printed once both sockets are bound
        assert ask(port, "mail.alpha.test.", "A").answer[0][0].address == "127.0.6.10"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        proc.stderr.close()


def test_serve_zones_cli_bad_input_exits_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mailprov.cli import app

    bad = CliRunner().invoke(app, ["dns", "serve-zones", "--listen", "nowhere", str(EXAMPLES / "alpha.test.zone")])
    assert bad.exit_code == 2 and "--listen" in bad.output
    missing = CliRunner().invoke(app, ["dns", "serve-zones", str(tmp_path / "none.zone")])
    assert missing.exit_code == 2 and "none.zone" in missing.output
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((ADDRESS, 0))
        port = taken.getsockname()[1]
        busy = CliRunner().invoke(app, ["dns", "serve-zones", "--listen", f"{ADDRESS}:{port}", str(EXAMPLES / "alpha.test.zone")])
    assert busy.exit_code == 2 and "cannot listen" in busy.output, busy.output


@pytest.mark.peers
def test_answers_match_knot_for_every_name_and_type(knot, zone_files: list[Path]) -> None:
    """Differential test: the zone server and Knot, fed the same zones, give the same rcode, answer and SOA."""
    import dns.zone

    names: set[str] = set()
    for path in zone_files:
        zone = dns.zone.from_text(path.read_text(), relativize=False, check_origin=False)
        for i, name in enumerate(sorted(zone.nodes)):
            names.add(name.to_text())
            if i % 4 == 0:
                names.add("nx-" + name.to_text())  # a sibling that does not exist
            if len(name.labels) > 3:
                names.add(name.parent().to_text())  # often an empty non-terminal
    # Names covered by the wildcard, and ones it must not cover (an existing name, an empty non-terminal).
    names |= {"host.wild.zz.test.", "a.b.wild.zz.test.", "exists.wild.zz.test.", "ent.wild.zz.test.", "x.ent.wild.zz.test."}
    types = ["A", "AAAA", "MX", "TXT", "PTR", "CNAME", "SOA"]

    async def main() -> list[str]:
        server = await serve_zones(zone_files, ADDRESS, 0)
        try:
            mismatches = []
            for name in sorted(names):
                for rdtype in types:
                    query = dns.message.make_query(name, rdtype)
                    ours = await dns.asyncquery.udp(query, ADDRESS, port=server.port, timeout=2)
                    theirs = await dns.asyncquery.udp(query, knot.address, port=knot.port, timeout=2)
                    if (
                        ours.rcode() != theirs.rcode()
                        or _rrsets(ours.answer) != _rrsets(theirs.answer)
                        or [r.rdtype for r in ours.authority if r.rdtype == dns.rdatatype.SOA]
                        != [r.rdtype for r in theirs.authority if r.rdtype == dns.rdatatype.SOA]
                    ):
                        mismatches.append(f"{name} {rdtype}: ours {ours.rcode()} {ours.answer} / knot {theirs.rcode()} {theirs.answer}")
            return mismatches
        finally:
            server.close()
            await server.wait_closed()

    import dns.asyncquery

    mismatches = asyncio.run(main())
    assert not mismatches, "\n".join(mismatches[:20])
    assert len(names) > 80


def _rrsets(section: list) -> list:  # type: ignore[type-arg]
    """A section comparable across servers: RRsets compare as sets of records; TTLs beside them."""
    return sorted(((r.name.to_text(), r.rdtype, r.ttl, frozenset(rd.to_text() for rd in r)) for r in section), key=str)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_any_packet_is_answered_or_dropped(data: bytes) -> None:
    from mailprov.dns.zonefile import ZoneSet
    from mailprov.dns.zoneserver import answer

    zones = _example_zones()
    reply = answer(zones, data, max_size=512)
    assert reply is None or len(reply) <= 512
    # A query header in front of random bytes is more likely to parse far.
    answer(zones, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + data, max_size=512)
    assert isinstance(zones, ZoneSet)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_resolver_socket_ignores_garbage(data: bytes) -> None:
    from mailprov.dns.resolver import _Mux, question_wire

    async def main() -> None:
        mux = _Mux()
        future = asyncio.get_running_loop().create_future()
        mux.pending[int.from_bytes(data[:2], "big") if len(data) >= 2 else 0] = (question_wire("alpha.test.", 15), True, future)
        mux.datagram_received(data, ("127.0.2.1", 53))
        assert not future.done()  # random bytes never make a matching answer to alpha.test. MX

    asyncio.run(main())


@functools.cache
def _example_zones():  # type: ignore[no-untyped-def]
    from mailprov.dns.zonefile import ZoneSet

    return ZoneSet.from_files(sorted(EXAMPLES.glob("*.zone")))
