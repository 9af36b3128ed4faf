"""Peers that fail during delivery: a stalling MX, one that drops mid-DATA, one that answers 421, and DNS
that times out. Every message defers, is retried, and arrives exactly once when the peer recovers.
"""

from __future__ import annotations

import smtplib

import pytest

from tests.faults.conftest import next_peer_ip, queue_empty, wait_until
from tests.faults.peers import ScriptedMX, SilentDNS
from tests.peers.mailprov_server import free_port

pytestmark = [pytest.mark.peers, pytest.mark.timeout(180)]

MODES = ("stall", "drop", "busy")
PER_DOMAIN = 3


def test_stall_drop_421_and_dns_timeout_defer_then_deliver_once(make_tree, mailprov_server) -> None:
    peers = {mode: ScriptedMX(next_peer_ip(), mode).start() for mode in MODES}
    mx_ip = next_peer_ip()
    mx_port = free_port(mx_ip)
    dns_peer = ScriptedMX(mx_ip, "busy", port=mx_port).start()  # healthy from the start: only DNS fails
    dns_peer.heal()
    resolver = SilentDNS(next_peer_ip(), {("dns.test", "MX"): ["10 mx.dns.test."], ("mx.dns.test", "A"): [mx_ip]}).start()
    try:
        tree = make_tree(
            queue={"retry_min": 1, "retry_max": 1, "scan_interval": 0.3},
            outbound={
                "port": mx_port,
                "resolvers": [resolver.address],
                "connect_timeout": 2,
                "command_timeout": 2,
                "tls": "none",
                "mta_sts": False,
                "transports": [{"domain": f"{m}.test", "host": p.ip, "port": p.port, "tls": "none"} for m, p in peers.items()],
            },
        )
        server = mailprov_server(tree)
        domains = [*MODES, "dns"]
        with smtplib.SMTP(tree.ip, tree.ports["smtp"], timeout=30) as client:
            for domain in domains:
                for i in range(PER_DOMAIN):
                    msg = f"Subject: {domain} {i}\r\nMessage-ID: <{domain}-{i}@client.test>\r\n\r\nbody\r\n"
                    client.sendmail("sender@client.test", [f"user{i}@{domain}.test"], msg)

        # Each failure is seen and deferred (a temporary failure, never a bounce) before the peer heals.
        for domain in domains:
            deferred = lambda d=domain: any(f"@{d}.test>" in ln and "status=deferred" in ln for ln in server.log().splitlines())  # noqa: E731
            assert wait_until(deferred, 30), f"{domain}: no deferral logged\n{server.log()[-3000:]}"
        assert resolver.dropped > 0 and all(p.connections > 0 for p in peers.values())
        for p in [*peers.values(), resolver]:
            p.heal()

        assert wait_until(lambda: queue_empty(tree), 60, 0.2), server.log()[-3000:]
        for domain in domains:
            peer = dns_peer if domain == "dns" else peers[domain]
            for i in range(PER_DOMAIN):
                assert peer.received[f"{domain}-{i}@client.test"] == 1, (domain, i, dict(peer.received))
        assert "status=bounced" not in server.log()
        assert not tree.queue_files("corrupt")
    finally:
        for p in [*peers.values(), dns_peer]:
            p.stop()
        resolver.stop()
