#!/usr/bin/env python3
"""Relay benchmark: N messages of S bytes submitted for a remote domain and relayed to a local sink.

What it measures: wall-clock time from the first submitted byte until the sink has received the last
message, for mailprov (``mailprov serve`` with its durable queue and RemoteCourier) and for Postfix
(a private instance from Debian's package) relaying the same load to the same sink; it prints messages
per second for each and the ratio. The load generator is Postfix's ``smtp-source`` (20 sessions); the
sink is Postfix's ``smtp-sink`` (an aiosmtpd sink when it is not installed).

Both MTAs route the sink domain statically (mailprov: an ``[[outbound.transports]]`` entry; Postfix:
``relayhost``), so neither spends time on DNS, and both use their default concurrency (mailprov:
``queue.workers`` 20, ``queue.per_destination`` 10; Postfix: 20 per destination). Both fsync each
message into their queue before answering 250.

    .venv/bin/python bench/smtp_relay.py [--messages 5000] [--size 1024] [--sessions 20] [--skip-postfix]

Addresses: 127.0.5.200 (sink), 127.0.5.210 (mailprov), 127.0.5.211 (Postfix); all loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.peers.mailprov_server import MailprovTree, run_mailprov
from tests.peers.postfix import PostfixPeer

SINK_IP, SINK_PORT = "127.0.5.200", 2525
MAILPROV_IP = "127.0.5.210"
POSTFIX_IP, POSTFIX_PORT = "127.0.5.211", 2526
DOMAIN = "sink.test"
TIMEOUT = 600.0


class Sink:
    """Counts messages received on SINK_IP:SINK_PORT: smtp-sink's running counters, or aiosmtpd's."""

    def __init__(self) -> None:
        self.count = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.controller = None
        self.kind = ""

    def start(self) -> Sink:
        binary = shutil.which("smtp-sink") or ("/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").exists() else "")
        if binary:
            self.kind = "smtp-sink"
            # -c prints "sess=N quit=N mesg=N" whenever a message ends; -u nobody is required as root.
            self.proc = subprocess.Popen([binary, "-u", "nobody", "-c", f"{SINK_IP}:{SINK_PORT}", "1024"], stdout=subprocess.PIPE)
            threading.Thread(target=self._read, daemon=True).start()
        else:
            from aiosmtpd.controller import Controller

            outer = self
            self.kind = "aiosmtpd sink"

            class Handler:
                async def handle_DATA(self, server, session, envelope):
                    outer.count += 1
                    return "250 OK"

            self.controller = Controller(Handler(), hostname=SINK_IP, port=SINK_PORT)
            self.controller.start()
        time.sleep(0.3)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        tail = b""
        while chunk := self.proc.stdout.read1(65536):
            tail = (tail + chunk)[-256:]
            found = re.findall(rb"mesg=(\d+)", tail)
            if found:
                self.count = int(found[-1])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.controller is not None:
            self.controller.stop()


def smtp_source(host: str, port: int, messages: int, size: int, sessions: int) -> float:
    """Submit the load with Postfix's smtp-source; returns the seconds it took."""
    binary = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    start = time.monotonic()
    command = [binary, "-s", str(sessions), "-l", str(size), "-m", str(messages)]
    subprocess.run([*command, "-f", "alex@alpha.test", "-t", f"user@{DOMAIN}", f"{host}:{port}"], check=True, timeout=TIMEOUT)
    return time.monotonic() - start


def wait_for(sink: Sink, target: int, deadline: float) -> bool:
    while sink.count < target and time.monotonic() < deadline:
        time.sleep(0.02)
    return sink.count >= target


def run_load(name: str, sink: Sink, host: str, port: int, args: argparse.Namespace) -> float | None:
    base = sink.count
    start = time.monotonic()
    submit = smtp_source(host, port, args.messages, args.size, args.sessions)
    done = wait_for(sink, base + args.messages, start + TIMEOUT)
    elapsed = time.monotonic() - start
    got = sink.count - base
    if not done:
        print(f"{name}: only {got} of {args.messages} messages reached the sink in {elapsed:.0f} s")
        return None
    rate = args.messages / elapsed
    print(f"{name:9s} {args.messages} messages relayed in {elapsed:6.2f} s = {rate:7.0f} msg/s (submission took {submit:.2f} s)")
    return rate


def bench_mailprov(sink: Sink, args: argparse.Namespace) -> float | None:
    tree = MailprovTree.create(
        hostname="mail.alpha.test",
        domains=["alpha.test"],
        ip=MAILPROV_IP,
        outbound={"transports": [{"domain": DOMAIN, "host": SINK_IP, "port": SINK_PORT}], "mta_sts": False},
        server={"log_level": "warning"},
    )
    server = run_mailprov(tree.config_path)
    try:
        return run_load("mailprov", sink, tree.ip, tree.ports["smtp"], args)
    finally:
        server.stop()
        tree.cleanup()


def bench_postfix(sink: Sink, args: argparse.Namespace) -> float | None:
    with PostfixPeer(ip=POSTFIX_IP, port=POSTFIX_PORT, hostname="postfix.bench.test", relayhost=f"[{SINK_IP}]:{SINK_PORT}"):
        return run_load("postfix", sink, POSTFIX_IP, POSTFIX_PORT, args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--skip-postfix", action="store_true")
    args = parser.parse_args()
    if not (shutil.which("smtp-source") or Path("/usr/sbin/smtp-source").exists()):
        print("smtp-source (Debian package postfix) is needed as the load generator", file=sys.stderr)
        return 2
    asyncio.set_event_loop_policy(None)
    sink = Sink().start()
    print(f"relay benchmark: {args.messages} x {args.size} bytes, {args.sessions} sessions, sink: {sink.kind} on {SINK_IP}:{SINK_PORT}")
    try:
        ours = bench_mailprov(sink, args)
        theirs = None if args.skip_postfix else bench_postfix(sink, args)
    finally:
        sink.stop()
    if ours and theirs:
        print(f"ratio     mailprov / postfix = {ours / theirs:.2f}")
    return 0 if ours else 1


if __name__ == "__main__":
    sys.exit(main())
