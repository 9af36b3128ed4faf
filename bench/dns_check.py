"""Benchmark ``mailprov check``'s engine: N generated domains against a local Knot, concurrent vs one at a time.

Starts its own knotd on 127.0.2.10 (a free port) with a zone of N mail domains (MX, host A record, PTR,
SPF, DMARC, MTA-STS, TLS-RPT: 8 distinct queries per domain), checks them all with bounded concurrency,
then again one domain at a time (a fresh cache each run), and prints domains per second and the ratio.

On loopback Knot answers in microseconds, so both runs are bound by the checker's own CPU (dnspython's
message parsing). A second scenario puts a UDP proxy that delays every answer by ``--latency`` ms (a
resolver across a network) on 127.0.2.11, in a child process; there the one-at-a-time run is measured
on a sample of ``--sample`` domains. A third scenario signs the zone with Knot (``dnssec-signing: on``,
a key generated with keymgr) and runs the checks with ``dnssec`` (DNSSEC validated by the checker from
the zone's DS as trust anchor, and DANE): 4 more queries per domain with DO+CD (MX, the MX host's A and
AAAA, TLSA), and the signatures checked. Each run prints the CPU time per domain and the load average
(the machine is often shared: wall times then mostly measure waiting for a CPU). Every process started is stopped at the end.

    .venv/bin/python bench/dns_check.py [--domains 1000] [--latency 20] [--sample 100] [--no-dnssec]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mailprov.dns.checker import CheckOptions, run_checks
from mailprov.dns.dnssec import parse_trust_anchors
from tests.dns.dnssec_lab import SigningKnot
from tests.peers.knot import KnotServer, free_port

ADDRESS = "127.0.2.10"
PROXY_ADDRESS = "127.0.2.11"


def zones(count: int) -> dict[str, str]:
    """A forward zone with ``count`` mail domains and the reverse zone of their hosts (10.0.0.0/8)."""
    forward = ["$ORIGIN bench.test.", "$TTL 3600", "@ SOA ns hostmaster 1 3600 600 86400 300", "@ NS ns", "ns A 10.255.255.253"]
    reverse = [
        "$ORIGIN 10.in-addr.arpa.",
        "$TTL 3600",
        "@ SOA ns.bench.test. hostmaster.bench.test. 1 3600 600 86400 300",
        "@ NS ns.bench.test.",
    ]
    for i in range(count):
        d = f"d{i}"
        b, c = divmod(i, 250)
        forward += [
            f"{d} MX 10 mx.{d}",
            f"mx.{d} A 10.0.{b}.{c + 1}",
            f'{d} TXT "v=spf1 mx -all"',
            f'_dmarc.{d} TXT "v=DMARC1; p=reject; rua=mailto:dmarc@{d}.bench.test"',
            f'_mta-sts.{d} TXT "v=STSv1; id=2026{i}"',
            f'_smtp._tls.{d} TXT "v=TLSRPTv1; rua=mailto:tls@{d}.bench.test"',
        ]
        reverse.append(f"{c + 1}.{b}.0 PTR mx.{d}.bench.test.")
    return {"bench.test": "\n".join(forward) + "\n", "10.in-addr.arpa": "\n".join(reverse) + "\n"}


def run(domains: list[str], domain_concurrency: int, server: tuple[str, int], anchor: str = "") -> tuple[float, float, int]:
    """Wall and CPU seconds to check ``domains``, and how many came out with a verdict other than pass/warn."""
    options = CheckOptions(resolvers=[server], timeout=5, domain_concurrency=domain_concurrency)
    if anchor:
        options.dnssec, options.anchors = True, parse_trust_anchors(anchor)
    start, cpu = time.perf_counter(), time.process_time()
    report = run_checks(domains, options)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    bad = sum(1 for d in report.domains if d.verdict not in ("pass", "warn"))
    return elapsed, cpu, bad


def proxy(listen_port: int, upstream_port: int, delay: float) -> None:
    """Child process: forward UDP queries to Knot and hold each answer back ``delay`` seconds."""

    class Upstream(asyncio.DatagramProtocol):
        def __init__(self, front: asyncio.DatagramTransport, client: tuple) -> None:
            self.front, self.client = front, client

        def datagram_received(self, data: bytes, addr: tuple) -> None:
            asyncio.get_running_loop().call_later(delay, self.front.sendto, data, self.client)

    class Front(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.upstreams: dict[tuple, asyncio.DatagramTransport] = {}
            self.tasks: set[asyncio.Future] = set()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple) -> None:
            task = asyncio.ensure_future(self.forward(data, addr))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        async def forward(self, data: bytes, addr: tuple) -> None:
            if addr not in self.upstreams:
                loop = asyncio.get_running_loop()
                self.upstreams[addr], _ = await loop.create_datagram_endpoint(
                    lambda: Upstream(self.transport, addr), remote_addr=(ADDRESS, upstream_port)
                )
            self.upstreams[addr].sendto(data)

    async def serve() -> None:
        await asyncio.get_running_loop().create_datagram_endpoint(Front, local_addr=(PROXY_ADDRESS, listen_port))
        print("ready", flush=True)
        await asyncio.sleep(3600)  # the parent terminates us long before

    asyncio.run(serve())


SUMMARY: dict[str, float] = {}  # figure -> value, printed last


def report(
    label: str,
    count: int,
    concurrent: tuple[float, float, int],
    sequential: tuple[float, float, int],
    seq_count: int,
    goal: float = 0,
    short: str = "",
) -> int:
    """Print one scenario's figures (and keep its CPU per domain, and the speed-up against a goal, for the summary)."""
    c_rate, s_rate = count / concurrent[0], seq_count / sequential[0]
    if short:
        goal_text = "; goal <= 1" if short == "without DNSSEC" else ""  # the goal is for the plain check
        SUMMARY[f"CPU per domain, {short} (ms, concurrent{goal_text})"] = concurrent[1] / count * 1000
    if goal:
        SUMMARY[f"speed-up over one at a time, {label} (goal >= {goal:g}x)"] = c_rate / s_rate
    print(f"  {label} (load average {os.getloadavg()[0]:.1f})")
    for name, n, (wall, cpu, _) in (
        ("concurrent (200 domains at once)", count, concurrent),
        ("one domain at a time", seq_count, sequential),
    ):
        print(f"    {name:<33} {n:5d} in {wall:6.2f} s  {n / wall:6.0f} domains/s  (CPU {cpu:.2f} s, {cpu / n * 1000:.2f} ms per domain)")
    print(f"    speed-up: {c_rate / s_rate:.1f}x" + (f" (goal >= {goal:g}x)" if goal else ""))
    cpu = concurrent[1] / count * 1000
    print(f"    CPU per domain, concurrent: {cpu:.2f} ms (goal <= 1 ms); on an idle CPU that is at most {1000 / cpu:.0f} domains/s")
    return concurrent[2] + sequential[2]


def dnssec_scenario(domains: list[str]) -> int:
    """The zone signed by Knot; the checks validate DNSSEC (and DANE) from its DS."""
    with tempfile.TemporaryDirectory(prefix="mailprov-bench-dnssec-") as tmp:
        knot = SigningKnot(Path(tmp), ADDRESS, 0, zones(len(domains)), {"bench.test"})
        anchor = "\n".join(knot.generate_keys()["bench.test"])
        with knot:
            server = (ADDRESS, knot.port)
            label = f"signed zone, --dnssec (DNSSEC and DANE validated by the checker), knotd on {ADDRESS}:{knot.port}"
            concurrent, sequential = run(domains, 200, server, anchor), run(domains, 1, server, anchor)
            return report(label, len(domains), concurrent, sequential, len(domains), short="with DNSSEC and DANE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=1000, help="number of generated domains (default 1000)")
    parser.add_argument("--latency", type=float, default=20.0, help="added round-trip time in ms for the second scenario (0 skips it)")
    parser.add_argument("--sample", type=int, default=100, help="domains checked one at a time in the latency scenario")
    parser.add_argument("--no-dnssec", action="store_true", help="skip the DNSSEC scenario")
    parser.add_argument("--proxy", nargs=3, type=float, help=argparse.SUPPRESS)  # internal: LISTEN UPSTREAM DELAY
    args = parser.parse_args()
    if args.proxy:
        proxy(int(args.proxy[0]), int(args.proxy[1]), args.proxy[2])
        return 0
    domains = [f"d{i}.bench.test" for i in range(args.domains)]
    bad = 0
    with tempfile.TemporaryDirectory(prefix="mailprov-bench-") as tmp, KnotServer(Path(tmp), ADDRESS, 0, zones(args.domains)) as ns:
        server = (ADDRESS, ns.port)
        print(f"dns_check: {args.domains} domains, 8 distinct queries each; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        concurrent, sequential = run(domains, 200, server), run(domains, 1, server)
        label = f"knotd on {ADDRESS}:{ns.port} (loopback)"
        bad += report(label, args.domains, concurrent, sequential, args.domains, short="without DNSSEC")
        if args.latency > 0:
            port = free_port(PROXY_ADDRESS)
            child = subprocess.Popen(
                [sys.executable, __file__, "--proxy", str(port), str(ns.port), str(args.latency / 1000)], stdout=subprocess.PIPE, text=True
            )
            try:
                assert child.stdout is not None and child.stdout.readline().strip() == "ready"
                server = (PROXY_ADDRESS, port)
                sample = domains[: args.sample]
                label = f"through a proxy adding {args.latency:g} ms per query"
                bad += report(label, args.domains, run(domains, 200, server), run(sample, 1, server), len(sample), goal=20)
            finally:
                child.terminate()
                child.wait(10)
                child.stdout.close()  # type: ignore[union-attr]
    if not args.no_dnssec:
        bad += dnssec_scenario(domains)
    print(f"summary (load average {os.getloadavg()[0]:.1f}):")
    for name, value in SUMMARY.items():
        print(f"  {name:<80} {value:6.2f}")
    if bad:
        print(f"  UNEXPECTED: {bad} domains did not pass", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
