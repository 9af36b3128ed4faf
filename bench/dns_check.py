"""Benchmark ``mailprov check``'s engine: N generated domains against a local Knot, concurrent vs one at a time.

Starts its own knotd on 127.0.2.10:5310 with a zone of N mail domains (MX, host A record, PTR, SPF,
DMARC, MTA-STS, TLS-RPT: 11 queries per domain), checks them all with bounded concurrency, then again one
domain at a time (a fresh cache each run), prints domains per second and the ratio, and stops knotd.

    .venv/bin/python bench/dns_check.py [--domains 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mailprov.dns.checker import CheckOptions, check_domains
from tests.peers.knot import KnotServer

ADDRESS, PORT = "127.0.2.10", 5310


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


def run(domains: list[str], domain_concurrency: int) -> tuple[float, int]:
    """Seconds to check ``domains`` and how many came out with a verdict other than pass/warn."""
    options = CheckOptions(resolvers=[(ADDRESS, PORT)], timeout=5, domain_concurrency=domain_concurrency)
    start = time.perf_counter()
    report = asyncio.run(check_domains(domains, options))
    elapsed = time.perf_counter() - start
    bad = sum(1 for d in report.domains if d.verdict not in ("pass", "warn"))
    return elapsed, bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=1000, help="number of generated domains (default 1000)")
    args = parser.parse_args()
    domains = [f"d{i}.bench.test" for i in range(args.domains)]
    with tempfile.TemporaryDirectory(prefix="mailprov-bench-") as tmp, KnotServer(Path(tmp), ADDRESS, PORT, zones(args.domains)):
        concurrent, bad_c = run(domains, domain_concurrency=200)
        sequential, bad_s = run(domains, domain_concurrency=1)
    print(f"dns_check: {args.domains} domains, 11 queries each, knotd on {ADDRESS}:{PORT}")
    print(f"  concurrent (200 domains, 256 queries in flight): {concurrent:6.2f} s  {args.domains / concurrent:8.0f} domains/s")
    print(f"  one domain at a time:                            {sequential:6.2f} s  {args.domains / sequential:8.0f} domains/s")
    print(f"  speed-up: {sequential / concurrent:.1f}x")
    if bad_c or bad_s:
        print(f"  UNEXPECTED: {bad_c} / {bad_s} domains failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
