#!/usr/bin/env python3
"""Relay benchmark: N messages of S bytes submitted for a remote domain and relayed to a local sink.

Two phases, each run for mailprov (``mailprov serve``: durable queue, RemoteCourier) and for Postfix (a
private instance from Debian's package) with the same load, the same sink, on the same machine:

* end-to-end: wall-clock time from the first submitted byte until the sink has the last message
  (acceptance, queue and relay together);
* drain (relay only): the messages are queued while the sink is down (every first attempt fails and
  defers them), then the sink starts, the queue is flushed (``mailprov queue flush``'s function, run in
  the benchmark process / ``postfix flush``)
  and the clock runs until the sink has them all. This isolates the outbound side: queue manager,
  connection handling and the SMTP client.

It prints messages per second for each and the ratios mailprov / Postfix. The load generator is
Postfix's ``smtp-source`` (20 sessions, a new connection per message); the sink is Postfix's
``smtp-sink`` (an aiosmtpd sink when it is not installed). Both MTAs route the sink domain statically
(mailprov: an ``[[outbound.transports]]`` entry; Postfix: ``relayhost``), so neither spends time on DNS,
and both run with their default concurrency (mailprov: ``queue.workers`` 20, ``queue.per_destination``
10; Postfix: 20 per destination). Both fsync each message into their queue before answering 250.

    .venv/bin/python bench/smtp_relay.py [--messages 5000] [--size 1024] [--sessions 20]
                                         [--phase both|end-to-end|drain] [--skip-postfix]

Addresses: 127.0.5.200 (sink), 127.0.5.210 (mailprov), 127.0.5.211 (Postfix); all loopback. Needs root
(Postfix, and smtp-sink's ``-u nobody``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailprov.queue import admin
from mailprov.queue.store import QueueStore
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

            self.controller = Controller(Handler(), hostname=SINK_IP, port=SINK_PORT, server_hostname="sink.bench.test")
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


def wait_for(predicate, deadline: float) -> bool:
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(predicate())


def report(name: str, phase: str, count: int, elapsed: float, extra: str = "") -> float:
    rate = count / elapsed
    print(f"{phase:10s} {name:9s} {count} messages relayed in {elapsed:6.2f} s = {rate:6.0f} msg/s{extra}")
    return rate


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder)) if folder.is_dir() else 0


class MailprovRelay:
    """``mailprov serve`` on MAILPROV_IP relaying DOMAIN to the sink."""

    name = "mailprov"

    def __init__(self, retry_min: int = 300) -> None:
        self.tree = MailprovTree.create(
            hostname="mail.alpha.test",
            domains=["alpha.test"],
            ip=MAILPROV_IP,
            outbound={"transports": [{"domain": DOMAIN, "host": SINK_IP, "port": SINK_PORT}], "mta_sts": False, "connect_timeout": 5},
            queue={"retry_min": retry_min, "retry_max": max(retry_min, 3600)},
            server={"log_level": "warning"},
            # smtp-source's 20 sessions all come from one address; the Postfix anchor allows 100 as well.
            smtp={"max_connections_per_client": 100},
        )
        self.server = run_mailprov(self.tree.config_path)
        self.host, self.port = self.tree.ip, self.tree.ports["smtp"]

    def deferred(self) -> int:
        return count_files(self.tree.queue_dir / "deferred")

    def flush(self) -> None:
        # What 'mailprov queue flush' does (move deferred items to incoming/ and wake the running server
        # through the queue's trigger FIFO), minus the CLI's Python start-up, which is not queue work.
        admin.flush(QueueStore(self.tree.queue_dir), [])

    def close(self) -> None:
        self.server.stop()
        self.tree.cleanup()


class PostfixRelay:
    """A private Postfix on POSTFIX_IP relaying everything to the sink."""

    name = "postfix"

    def __init__(self) -> None:
        self.peer = PostfixPeer(ip=POSTFIX_IP, port=POSTFIX_PORT, hostname="postfix.bench.test", relayhost=f"[{SINK_IP}]:{SINK_PORT}")
        self.peer.start()
        self.host, self.port = POSTFIX_IP, POSTFIX_PORT

    def deferred(self) -> int:
        return count_files(self.peer.root / "spool" / "deferred")

    def flush(self) -> None:
        self.peer.flush()

    def close(self) -> None:
        self.peer.cleanup()


def end_to_end(make, args: argparse.Namespace) -> float | None:
    sink = Sink().start()
    try:
        mta = make()
    except BaseException:  # the MTA did not start: do not leave the sink behind
        sink.stop()
        raise
    try:
        start = time.monotonic()
        submit = smtp_source(mta.host, mta.port, args.messages, args.size, args.sessions)
        if not wait_for(lambda: sink.count >= args.messages, start + TIMEOUT):
            print(f"end-to-end {mta.name}: only {sink.count} of {args.messages} messages reached the sink")
            return None
        return report(mta.name, "end-to-end", args.messages, time.monotonic() - start, f" (submission took {submit:.2f} s)")
    finally:
        mta.close()
        sink.stop()


def drain(make, args: argparse.Namespace) -> float | None:
    mta = make()
    sink = None
    try:
        smtp_source(mta.host, mta.port, args.messages, args.size, args.sessions)
        if not wait_for(lambda: mta.deferred() >= args.messages, time.monotonic() + TIMEOUT):
            print(f"drain      {mta.name}: only {mta.deferred()} of {args.messages} messages got deferred")
            return None
        sink = Sink().start()
        start = time.monotonic()
        mta.flush()
        if not wait_for(lambda: sink.count >= args.messages, start + TIMEOUT):
            print(f"drain      {mta.name}: only {sink.count} of {args.messages} messages reached the sink")
            return None
        return report(mta.name, "drain", args.messages, time.monotonic() - start)
    finally:
        mta.close()
        if sink is not None:
            sink.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--phase", choices=("both", "end-to-end", "drain"), default="both")
    parser.add_argument("--skip-postfix", action="store_true")
    args = parser.parse_args()
    if not (shutil.which("smtp-source") or Path("/usr/sbin/smtp-source").exists()):
        print("smtp-source (Debian package postfix) is needed as the load generator", file=sys.stderr)
        return 2
    print(f"relay benchmark: {args.messages} x {args.size} bytes, {args.sessions} sessions, sink on {SINK_IP}:{SINK_PORT}")
    phases = (
        [("end-to-end", end_to_end), ("drain", drain)]
        if args.phase == "both"
        else [(args.phase, {"end-to-end": end_to_end, "drain": drain}[args.phase])]
    )
    ok = True
    for phase, run in phases:
        # In the drain phase mailprov must not retry on its own before the flush: a long retry_min.
        ours = run(lambda phase=phase: MailprovRelay(retry_min=3600 if phase == "drain" else 300), args)
        theirs = None if args.skip_postfix else run(PostfixRelay, args)
        ok = ok and ours is not None
        if ours and theirs:
            print(f"{phase:10s} ratio     mailprov / postfix = {ours / theirs:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
