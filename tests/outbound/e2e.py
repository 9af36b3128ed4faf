"""Helpers for the outbound end-to-end tests: alex's server, polling, DSN parsing, DNS for dkimpy."""

from __future__ import annotations

import email
import email.policy
import smtplib
import time
from collections.abc import Callable
from pathlib import Path

import dns.exception
import dns.resolver
import pytest

from tests.outbound.conftest import ALPHA_IP, DNS_ADDR, DNS_PORT
from tests.peers.mailprov_server import MailprovTree


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> object:
    """Poll ``predicate`` every 0.1 s until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def knot_txt(name: bytes, timeout: float = 5) -> bytes | None:
    """dkimpy's DNS hook, answered by the test Knot."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [DNS_ADDR]
    resolver.port = DNS_PORT
    try:
        answer = resolver.resolve(name.decode(), "TXT")
    except dns.exception.DNSException:
        return None
    return b"".join(b"".join(r.strings) for r in answer)


def alpha_tree(knot, *, port: int, outbound: dict | None = None, queue: dict | None = None) -> MailprovTree:
    """alex's server: mail.alpha.test on 127.0.5.100, its MX lookups answered by the test Knot."""
    values = {"resolvers": [f"{DNS_ADDR}:{DNS_PORT}"], "port": port, "connect_timeout": 5, "command_timeout": 10}
    values.update(outbound or {})
    tree = MailprovTree.create(
        hostname="mail.alpha.test",
        domains=["alpha.test"],
        ip=ALPHA_IP,
        outbound=values,
        queue={"scan_interval": 0.5, "retry_min": 1, "retry_max": 2, **(queue or {})},
    )
    tree.add_user("alex@alpha.test", "alex-pw")
    return tree


def relay(tree: MailprovTree, rcpts: list[str], subject: str = "test") -> None:
    """Hand a message to alex's server on port 25 from a trusted (loopback) network."""
    body = f"From: alex@alpha.test\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n\r\nHello.\r\n"
    with smtplib.SMTP(tree.ip, tree.ports["smtp"], timeout=10) as client:
        client.sendmail("alex@alpha.test", rcpts, body)


def queue_id_of(line: str) -> str:
    """The queue id of a delivery line (``... INFO QID: to=<...>``)."""
    return line.split(": to=<")[0].split()[-1]


def lines_for(log_text: str, qid: str) -> list[str]:
    return [line for line in log_text.splitlines() if qid and qid in line]


def dsn_parts(path: Path) -> tuple[email.message.Message, str]:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)
    status = ""
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            status = "\n".join(str(p) for p in part.get_payload())
    return msg, status
